"""``voice-agent bench --turns``: does the agent wait while the caller pauses, and answer
as soon as the caller is done?

Each utterance is one turn of real human speech. The set:

- the project's real recordings as they are (jfk.flac has two natural pauses, one of
  half a second mid-sentence; the two speakers of stereo_diarization.wav; beckett.flac,
  a quotation read with natural pauses of up to a second between its phrases);
- the same recordings with a pause stretched into them at a word boundary (found by
  whisper's word timestamps, placed at the quietest 20 ms near it, filled with the
  recording's own background noise): every boundary, at each of ``STRETCH_S``;
- with ``--turns-dir DIR``, every WAV/FLAC in DIR as it is (one utterance each).

Each utterance goes through the session's own inbound pipeline (framing, webrtcvad and its
hysteresis, the turn buffer with pre-roll). At every pause the VAD reports, the turn's
audio so far is transcribed by the final STT pass and scored by the end-of-turn model,
both timed. Then the session's own :class:`~voice_agent.session.turns.TurnMachine`
replays the events with those times under each endpoint policy, and says when it would
have ended the turn:

- a **cut-off** is a turn ended at a pause before the speaker's last word;
- the **endpoint latency** is the time from the end of the speech (the VAD's first silent
  frame, as the session measures voice-to-voice) to the end of turn.

The policies form the trade-off curve: VAD silence alone at several lengths, the
transcript rule (the earlier default), transcript cues, the model's score at several
thresholds, and the default (model + cues).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.corpus import SAMPLES
from benchmarks.stats import machine, p50_p95
from voice_agent.audio.files import load_audio_16k
from voice_agent.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE, Pcm
from voice_agent.session import turns as t
from voice_agent.session.config import SessionConfig
from voice_agent.session.engine import EngineConfig, transcribe_checked
from voice_agent.session.inbound import InboundPipeline, SpeechEnd, SpeechOnset
from voice_agent.session.transcripts import TranscriptFilter

STRETCH_S = (0.5, 1.0, 1.5)
"""Pauses stretched into real speech at word boundaries."""
TAIL_S = 3.0
"""Silence after the last word: longer than any policy's wait."""


@dataclass
class Utterance:
    name: str
    pcm: Pcm
    stretched_at_s: float | None = None
    stretch_s: float = 0.0


@dataclass
class Pause:
    """One pause the VAD reported, with what the session would know about it."""

    at: float
    """The first silent frame (s from the start of the utterance)."""
    confirmed: float
    """When the VAD reported it (``vad_stop_ms`` later)."""
    text: str
    stt_s: float
    p: float | None
    score_s: float


@dataclass
class Analysed:
    utt: Utterance
    onsets: list[tuple[float, float]] = field(default_factory=list)
    """(speech onset, when the VAD reported it)."""
    pauses: list[Pause] = field(default_factory=list)


def noise_floor(pcm: Pcm, seconds: float) -> Pcm:
    """``seconds`` of the recording's own background: its longest stretch that webrtcvad
    hears as no speech, looped with 10 ms cross-fades (digital silence if it has none)."""
    from voice_agent.vad.webrtc import WebRtcVad

    vad, n = WebRtcVad(2), len(pcm) // FRAME_SAMPLES
    quiet = [not vad.is_speech(pcm[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES]) for k in range(n)]
    best, run_start = (0, 0), 0
    for k in range(n + 1):
        if k == n or not quiet[k]:
            if k - run_start > best[1] - best[0]:
                best = (run_start, k)
            run_start = k + 1
    need = int(seconds * SAMPLE_RATE)
    if best[1] - best[0] < 5:
        return np.zeros(need, dtype=np.int16)
    piece = pcm[best[0] * FRAME_SAMPLES : best[1] * FRAME_SAMPLES].astype(np.float64)
    fade = min(160, len(piece) // 4)
    ramp = np.linspace(0.0, 1.0, fade)
    out = piece.copy()
    while len(out) < need:
        out[-fade:] = out[-fade:] * (1 - ramp) + piece[:fade] * ramp
        out = np.concatenate([out, piece[fade:]])
    # looped, a short stretch may read as speech: quieter until webrtcvad hears none
    for gain in (1.0, 0.5, 0.25, 0.1, 0.0):
        fill = np.round(out[:need] * gain).astype(np.int16)
        vad = WebRtcVad(2)
        frames = range(0, need - FRAME_SAMPLES + 1, FRAME_SAMPLES)
        if sum(vad.is_speech(fill[k : k + FRAME_SAMPLES]) for k in frames) <= len(frames) // 20:
            break
    return fill


def words_of(model: Any, pcm: Pcm) -> list[Any]:
    """Whisper's words with their timestamps."""
    audio = pcm.astype(np.float32) / 32768.0
    segments, _ = model.transcribe(audio, language="en", word_timestamps=True, beam_size=1)
    return [w for s in segments for w in (s.words or [])]


def word_boundaries(words: list[Any], pcm: Pcm) -> list[int]:
    """Sample positions between words, each moved to the quietest 20 ms within 100 ms of
    the timestamps' gap (a stretch must not cut into a word)."""
    out = []
    for a, b in itertools.pairwise(words):
        mid = int((a.end + b.start) / 2 * SAMPLE_RATE)
        lo, hi = max(0, mid - 1600), min(len(pcm) - FRAME_SAMPLES, mid + 1600)
        starts = range(lo, hi, 160)
        best = min(starts, key=lambda s: float(np.mean(pcm[s : s + FRAME_SAMPLES] ** 2.0)))
        out.append(best + FRAME_SAMPLES // 2)
    return out


def utterances(stt_model: Any, extra: Path | None) -> list[Utterance]:
    jfk = load_audio_16k(SAMPLES / "jfk.flac")
    left = load_audio_16k(SAMPLES / "stereo_diarization.wav", channel=0)
    right = load_audio_16k(SAMPLES / "stereo_diarization.wav", channel=1)
    beckett = load_audio_16k(SAMPLES / "beckett.flac")
    real = [("jfk", jfk), ("diarization-left", left), ("diarization-right", right),
            ("beckett", beckett)]  # fmt: skip
    out = []
    for name, whole in real:
        # the turn ends 300 ms after its last word (the left channel goes on with the
        # other speaker's voice, faint, which is not this speaker's turn)
        words = words_of(stt_model, whole)
        pcm = whole[: int((words[-1].end + 0.3) * SAMPLE_RATE)]
        out.append(Utterance(name, pcm))
        fill = noise_floor(pcm, max(STRETCH_S))
        for k, cut in enumerate(word_boundaries(words, pcm)):
            for s in STRETCH_S:
                gap = fill[: int(s * SAMPLE_RATE)]
                stretched = np.concatenate([pcm[:cut], gap, pcm[cut:]])
                out.append(Utterance(f"{name}+{s}s@{k + 1}", stretched, cut / SAMPLE_RATE, s))
    if extra is not None:
        for path in sorted(extra.iterdir()):
            if path.suffix.lower() in (".wav", ".flac"):
                out.append(Utterance(f"dir:{path.name}", load_audio_16k(path)))
    return out


class Scorer:
    """The final STT pass and the end-of-turn score of a turn's audio, timed, cached by
    the audio (stretched copies share their audio up to the stretch)."""

    def __init__(self, stt: Any, model: Any, speech_seconds: Callable[[Pcm], float]) -> None:
        self.stt, self.model, self.speech_seconds = stt, model, speech_seconds
        self.filter = TranscriptFilter(SessionConfig().min_speech_s)
        self.cache: dict[str, tuple[str, float, float | None, float]] = {}
        self.seeded: set[str] = set()

    def partial(self, pcm: Pcm) -> None:
        """A partial pass, untimed: the session runs one every ``partial_interval_s`` of
        the turn, and an STT that reuses its last pass over the turn (Moonshine's
        drafts) starts the final pass from it."""
        key = hashlib.sha1(pcm.tobytes()).hexdigest()
        if key not in self.seeded:
            self.seeded.add(key)
            self.stt.transcribe(pcm)

    def __call__(self, pcm: Pcm) -> tuple[str, float, float | None, float]:
        key = hashlib.sha1(pcm.tobytes()).hexdigest()
        if key not in self.cache:
            t0 = time.perf_counter()
            result = transcribe_checked(self.stt, self.speech_seconds, pcm)
            text = self.filter.final(result, 0).strip()
            t1 = time.perf_counter()
            p = None if self.model is None else self.model.probability(pcm)
            self.cache[key] = (text, t1 - t0, p, time.perf_counter() - t1)
        return self.cache[key]


def analyse(
    utt: Utterance, cfg: SessionConfig, new_vad: Callable[[], Any], score: Scorer
) -> Analysed:
    """Stream ``utt`` (and a tail of silence, as a file replay ends) through the inbound
    pipeline."""
    from voice_agent.vad.hysteresis import VadState

    inbound = InboundPipeline(
        new_vad(), None, cfg.vad_start_ms, cfg.vad_stop_ms, cfg.preroll_ms, cfg.max_turn_s
    )
    pcm = np.concatenate([utt.pcm, np.zeros(int(TAIL_S * SAMPLE_RATE), dtype=np.int16)])
    out = Analysed(utt)
    partial = None  # the turn's audio at its latest partial pass
    for k in range(0, len(pcm) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        now = (k + FRAME_SAMPLES) / SAMPLE_RATE
        if inbound.partial_due(cfg.partial_interval_s):
            partial = inbound.turn_audio()
        for ev in inbound.push(pcm[k : k + FRAME_SAMPLES], now):
            if isinstance(ev, SpeechOnset):
                out.onsets.append((ev.at, now))
            elif isinstance(ev, SpeechEnd):
                if partial is not None:
                    score.partial(partial)
                text, stt_s, p, score_s = score(inbound.turn_audio())
                out.pauses.append(Pause(ev.at, now, text, stt_s, p, score_s))
    assert inbound.state is not VadState.SPEAKING, f"{utt.name}: no silence at the end"
    return out


def decide(
    a: Analysed, make: Callable[[], t.TurnMachine], speculate_s: float | None = None
) -> float | None:
    """When the turn machine ends the turn (s), replaying ``a`` with its measured times.
    With ``speculate_s`` the final pass starts that far into each pause (as the session
    does), not when the VAD confirms it."""
    m = make()
    events: list[t.Event] = [t.SpeechStarted(conf, at) for at, conf in a.onsets]
    for k, p in enumerate(a.pauses, start=1):
        events.append(t.SpeechStopped(p.confirmed, p.at))
        began = p.confirmed if speculate_s is None else min(p.at + speculate_s, p.confirmed)
        events.append(t.TranscriptReady(max(p.confirmed, began + p.stt_s), k, p.text))
        if p.p is not None:
            events.append(t.TurnScore(p.confirmed + p.score_s, k, p.p))
    order = {t.SpeechStarted: 0, t.SpeechStopped: 0, t.TurnScore: 1, t.TranscriptReady: 2}
    events.sort(key=lambda e: (e.t, order[type(e)]))
    now, i = 0.0, 0
    while True:
        deadline = m.next_deadline()
        if deadline is not None and (i == len(events) or deadline < events[i].t):
            now = max(now, deadline)
            cmds = m.handle(t.Tick(now))
        elif i < len(events):
            now = events[i].t
            cmds = m.handle(events[i])
            i += 1
        else:
            return None
        if any(isinstance(c, t.StartReply | t.CommitReply) for c in cmds):
            return now


def policies(
    cfg: SessionConfig, marks_sentence_ends: bool = True
) -> list[tuple[str, Callable[[], t.TurnMachine], float | None]]:
    """The curve's policies: (name, machine, when the final pass starts into a pause).
    Each replays with the final pass started at the VAD's stop, except the last: the
    session's default as it runs, with the pass ``speculate_ms`` into the pause."""
    def machine(
        lo: float, hi: float, policy: t.EndpointPolicy | None = None, **endpoint: Any
    ) -> Callable[[], t.TurnMachine]:
        chosen = policy or t.EndpointPolicy(**endpoint)
        return lambda: t.TurnMachine(lo, hi, preemptive=False, endpoint=chosen)

    out = [
        (f"vad silence {s:.1f} s", machine(s, s, scored=False, cues=False))
        for s in (0.3, 0.5, 0.8, 1.0, 1.5)
    ]
    lo, hi = cfg.min_silence_s, cfg.max_silence_s
    out.append(
        (f"transcript {lo:.1f}/{hi:.1f} s (before)", machine(lo, hi, scored=False, cues=False))
    )
    out.append(("transcript + cues", machine(lo, hi, scored=False, cues=True)))
    for p in (0.3, 0.5, 0.7, 0.9):
        out.append(
            (f"model p>={p}", machine(lo, hi, cues=False, complete_p=p, model_alone=True))
        )
    for p in (0.3, 0.5, 0.7):
        out.append((f"model p>={p} + cues", machine(lo, hi, complete_p=p, model_alone=True)))
    for p in (0.5, 0.9):
        out.append((f"model p>={p} + transcript + cues", machine(lo, hi, complete_p=p)))
    e = cfg.endpoint
    if not marks_sentence_ends:  # as the session sets it for this STT
        out.append(("default, a missing full stop read as unfinished", machine(lo, hi, e)))
        e = dataclasses.replace(e, unmarked_abstains=True)
        commas = dataclasses.replace(e, unmarked_commas=False)
        out.append(("default, a final comma read as trailing off", machine(lo, hi, commas)))
    out.append((f"default (model p>={e.complete_p} + transcript + cues)", machine(lo, hi, e)))
    rows: list[tuple[str, Callable[[], t.TurnMachine], float | None]]
    rows = [(name, make, None) for name, make in out]
    if cfg.speculate_ms is not None:
        name, make = out[-1]
        rows.append((f"{name}, STT {cfg.speculate_ms} ms in", make, cfg.speculate_ms / 1000))
    return rows


def judge(a: Analysed, decided: float | None) -> dict[str, Any]:
    last = a.pauses[-1].at if a.pauses else None
    if decided is None or last is None:
        return {"name": a.utt.name, "ended": False}
    return {
        "name": a.utt.name, "ended": True, "cut_off": decided < last - 1e-9,
        "endpoint_ms": None if decided < last else round((decided - last) * 1000),
    }  # fmt: skip


def source(name: str) -> str:
    """The recording an utterance came from (``jfk+1.0s@5`` → ``jfk``)."""
    return name.split("+")[0] if not name.startswith("dir:") else "dir"


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ended = [r for r in rows if r["ended"]]
    cut = [r for r in ended if r["cut_off"]]
    lat = [r["endpoint_ms"] for r in ended if not r["cut_off"]]
    by: dict[str, list[int]] = {}
    for r in rows:
        tally = by.setdefault(source(r["name"]), [0, 0])
        tally[0] += bool(r.get("cut_off"))
        tally[1] += 1
    return {
        "by_recording": {k: f"{c}/{n}" for k, (c, n) in by.items()},
        "utterances": len(rows), "cut_offs": len(cut),
        "cut_off_pct": round(100 * len(cut) / max(1, len(rows)), 1),
        "never_ended": len(rows) - len(ended), "endpoint_ms": p50_p95(lat),
        "cut": [r["name"] for r in cut],
    }  # fmt: skip


async def run_turns_bench(
    args: argparse.Namespace, cfg: EngineConfig, log: Callable[[str], None]
) -> int:
    from voice_agent.endpoint.smart_turn import SmartTurn
    from voice_agent.models import smart_turn_path
    from voice_agent.runtime import _vad_factory, load_stt, speech_seconds
    from voice_agent.stt.whisper import WhisperSTT

    session = SessionConfig()
    stt = load_stt(cfg.stt_model, cfg.stt_threads)
    model = None if cfg.turn_model == "off" else SmartTurn(smart_turn_path(cfg.turn_model))
    log("building the set (word timestamps from whisper tiny-en)…")
    utts = utterances(WhisperSTT("tiny-en")._model, getattr(args, "turns_dir", None))
    score = Scorer(stt, model, speech_seconds())
    new_vad = _vad_factory(cfg)
    analysed = []
    for k, u in enumerate(utts, start=1):
        analysed.append(analyse(u, session, new_vad, score))
        if k % 20 == 0 or k == len(utts):
            log(f"  {k}/{len(utts)} utterances through the VAD, STT and end-of-turn model")
    results: dict[str, Any] = {}
    print(f"voice-agent bench --turns: {len(utts)} utterances of real speech ({cfg.stt_model}, "
          f"end-of-turn model {cfg.turn_model})")  # fmt: skip
    head = f"  {'policy':<36} {'cut-offs':>12} {'endpoint p50':>13} {'p95':>7}"
    print(f"{head}   cut-offs by recording")
    for name, make, early in policies(session, stt.marks_sentence_ends):
        rows = [judge(a, decide(a, make, early)) for a in analysed]
        s = summarize(rows)
        results[name] = s
        lat = s["endpoint_ms"]
        each = ", ".join(f"{k} {v}" for k, v in s["by_recording"].items())
        print(f"  {name:<36} {s['cut_offs']:>4} ({s['cut_off_pct']:>4.1f}%) "
              f"{lat['p50'] or 0:>10.0f} ms {lat['p95'] or 0:>4.0f} ms   {each}")  # fmt: skip
    stt_ms = [1000 * v[1] for v in score.cache.values()]
    score_ms = [1000 * v[3] for v in score.cache.values() if v[2] is not None]
    pauses = [
        {"utterance": a.utt.name, "at_s": round(p.at, 3), "last": p is a.pauses[-1],
         "text": p.text, "p": None if p.p is None else round(p.p, 3)}
        for a in analysed for p in a.pauses
    ]  # fmt: skip
    out = {
        "machine": machine(), "stt": cfg.stt_model, "turn_model": cfg.turn_model,
        "stretch_s": STRETCH_S, "utterances": len(utts), "policies": results,
        "stt_final_ms": p50_p95(stt_ms), "turn_score_ms": p50_p95(score_ms), "pauses": pauses,
    }  # fmt: skip
    print(f"  final STT pass {out['stt_final_ms']} ms; end-of-turn score {out['turn_score_ms']} ms")
    args.json.write_text(json.dumps(out, indent=2))
    log(f"figures written to {args.json}")
    return 0
