"""``voice-agent bench --telephony``: phone calls through the Twilio and AudioSocket bridges
at 8 kHz, against an in-process server on 127.0.0.1 with the real models.

Each call is the caller simulator (:mod:`voice_agent.transports.telephony.phone`): it says
the utterance in the provider's codec and framing at real time and plays the agent's
audio into a phone buffer at real time, answering marks as they play.

- **Voice-to-voice as heard:** from the end of the caller's speech (known from the
  utterance) to the first agent audio the phone played.
- **Barge-in stop:** the caller asks for a long story by voice, then talks over it once
  ``offset`` s of it have played; from the true onset of the caller's speech (energy) to
  the last agent audio the phone played.
- **WER at 8 kHz against 16 kHz:** the same utterances through the same whisper, once as
  recorded (16 kHz) and once as a phone line carries them (μ-law at 8 kHz, then soxr back
  to 16 kHz); and the live transcripts of the calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.corpus import (
    Utterance,
    interjections,
    onset,
    phone_lines,
    speech_end,
    utterances,
)
from benchmarks.harness import in_process_server
from benchmarks.stats import machine, p50_p95, wer
from voice_agent.audio.g711 import ulaw_decode, ulaw_encode
from voice_agent.audio.pcm import SAMPLE_RATE, Pcm
from voice_agent.audio.resample import StreamResampler, resample
from voice_agent.session.engine import EngineConfig
from voice_agent.transports.telephony.phone import TICK_S, PhoneCall, dial

PROTOCOLS = ("twilio", "audiosocket")
PROMPT = "Tell me a long story about a lighthouse keeper and a storm, in about ten sentences."
BARGE_AFTER_S = (1.2, 2.6)


def phone_line(pcm: Pcm) -> Pcm:
    """What whisper gets from a phone caller: 8 kHz μ-law, back to 16 kHz by the same
    streaming resampler the bridges use."""
    ulaw = ulaw_encode(resample(pcm, SAMPLE_RATE, 8000))
    up = StreamResampler(8000, SAMPLE_RATE)
    return np.concatenate([up.process(ulaw_decode(ulaw)), up.flush()])


def first_heard_s(call: PhoneCall, after_s: float) -> float | None:
    start = int(after_s / TICK_S)
    for k in range(start, len(call.heard)):
        if np.any(np.abs(call.heard[k]) > 64):
            return k * TICK_S
    return None


def stopped_s(call: PhoneCall, onset_s: float, quiet_s: float = 1.0) -> float | None:
    """The end of the agent audio the caller heard after ``onset_s``: the last played frame
    before ``quiet_s`` of silence (longer than a pause between sentences, shorter than the
    caller's words and the turn's end before the next reply); None if it was already quiet
    at the onset."""
    k, last = int(onset_s / TICK_S), None
    while k < len(call.heard):
        if np.any(np.abs(call.heard[k]) > 64):
            last = k
        elif last is None or k - last >= quiet_s / TICK_S:
            break
        k += 1
    return None if last is None else (last + 1) * TICK_S


async def run_telephony_bench(
    args: argparse.Namespace, cfg: EngineConfig, log: Callable[[str], None]
) -> int:
    from voice_agent.runtime import open_engine
    from voice_agent.server import ServerConfig, create_app

    cfg.llm_max_tokens = max(cfg.llm_max_tokens, 220)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        tcp = int(s.getsockname()[1])
    async with open_engine(cfg, log) as engine:
        app = create_app(engine=engine, config=ServerConfig(audiosocket=("127.0.0.1", tcp)))
        state = app.state.va
        async with in_process_server(app) as base:
            urls = {"twilio": f"ws://{base}/v1/telephony/twilio/stream",
                    "audiosocket": f"127.0.0.1:{tcp}"}  # fmt: skip
            rows: list[dict[str, Any]] = []
            corpus = utterances(engine.tts, args.limit)
            for u in corpus:
                pcm = u.with_lead()
                end_s = speech_end(pcm) / SAMPLE_RATE
                row: dict[str, Any] = {"name": u.name, "source": u.source}
                # alternate which bridge goes first: the second call of an utterance
                # finds its prompt in llama-server's cache and answers sooner
                order = PROTOCOLS if len(rows) % 2 == 0 else PROTOCOLS[::-1]
                for protocol in order:
                    n = len(state.reports)
                    call = await dial(protocol, urls[protocol], pcm, linger_s=2.5, max_s=60.0)
                    heard = first_heard_s(call, end_s)
                    report = await _report(state, n)
                    said = " ".join(t["user_text"] for t in (report or {}).get("turns", []))
                    row[protocol] = {
                        "v2v_heard_ms": None if heard is None else round((heard - end_s) * 1000),
                        "transcript": said,
                        "wer": round(wer(u.reference, said), 3),
                        "errors": call.errors + (report or {}).get("errors", []),
                    }
                rows.append(row)
                log(f"{u.name:<18} " + ", ".join(
                    f"{p} {row[p]['v2v_heard_ms']} ms" for p in PROTOCOLS))  # fmt: skip
            stt_rows = [await _stt_row(engine.stt, u) for u in corpus + phone_lines(engine.tts)]
            prompt = engine.tts.synthesize(PROMPT)
            barges: list[dict[str, Any]] = []
            for name, clip in interjections():
                for after in BARGE_AFTER_S:
                    for protocol in PROTOCOLS if after < 2 else PROTOCOLS[::-1]:
                        call = await dial(protocol, urls[protocol], prompt, linger_s=2.0,
                                          max_s=60.0, barge_in=(after, clip))  # fmt: skip
                        barges.append(_barge_row(call, protocol, name, after, clip))
                        log(f"barge-in {protocol:<11} {name[:30]:<30} after {after} s: "
                            f"{barges[-1].get('stop_ms')} ms")  # fmt: skip
    summary = _summarize(rows, barges, stt_rows)
    args.json.write_text(json.dumps({"summary": summary, "utterances": rows, "stt": stt_rows,
                                     "barge_ins": barges}, indent=2))  # fmt: skip
    print(_format(summary))
    log(f"figures written to {args.json}")
    return 0


async def _stt_row(stt: Any, u: Utterance) -> dict[str, Any]:
    wide = (await asyncio.to_thread(stt.transcribe, u.pcm)).text
    narrow = (await asyncio.to_thread(stt.transcribe, phone_line(u.pcm))).text
    return {"name": u.name, "source": u.source, "reference": u.reference,
            "wer_16k": round(wer(u.reference, wide), 3),
            "wer_8k": round(wer(u.reference, narrow), 3),
            "text_16k": wide, "text_8k": narrow}  # fmt: skip


async def _report(state: Any, before: int) -> dict[str, Any] | None:
    """The server's report of the call that just ended (kept once its session is over)."""
    for _ in range(200):
        if len(state.reports) > before:
            return dict(list(state.reports.values())[-1])
        await asyncio.sleep(0.05)
    return None


def _barge_row(
    call: PhoneCall, protocol: str, name: str, after: float, clip: Pcm
) -> dict[str, Any]:
    row: dict[str, Any] = {"protocol": protocol, "clip": name, "after_s": after}
    if call.barge_in_at_s is None:
        row["valid"] = False  # the reply never played long enough
        return row
    true_onset = call.barge_in_at_s + onset(clip) / SAMPLE_RATE
    end = stopped_s(call, true_onset)
    # the agent was sounding at the onset (not between sentences, where any stop time
    # would be the sentence's own end)
    k = int(true_onset / TICK_S)
    sounding = any(np.any(np.abs(f) > 64) for f in call.heard[max(0, k - 3) : k + 1])
    row["valid"] = end is not None and sounding
    if row["valid"] and end is not None:
        row["stop_ms"] = round((end - true_onset) * 1000)
    row["clears"] = call.clears
    return row


def _summarize(
    rows: list[dict[str, Any]], barges: list[dict[str, Any]], stt_rows: list[dict[str, Any]]
) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": machine(), "utterances": len(rows)}
    for protocol in PROTOCOLS:
        v2v = [r[protocol]["v2v_heard_ms"] for r in rows if r[protocol]["v2v_heard_ms"] is not None]
        stops = [b["stop_ms"] for b in barges if b["protocol"] == protocol and "stop_ms" in b]
        live = [r[protocol]["wer"] for r in rows]
        out[protocol] = {
            "v2v_heard_ms": p50_p95(v2v),
            "barge_in_stop_ms": p50_p95(stops),
            "barge_ins": len(stops),
            "live_wer_mean": round(float(np.mean(live)), 3) if live else None,
        }
    recorded = [r for r in stt_rows if r["source"] == "recorded"]
    for label, subset in (("all", stt_rows), ("recorded", recorded)):
        wide = float(np.mean([r["wer_16k"] for r in subset]))
        narrow = float(np.mean([r["wer_8k"] for r in subset]))
        out[f"stt_{label}"] = {"utterances": len(subset), "wer_16k": round(wide, 3),
                               "wer_8k": round(narrow, 3),
                               "points": round(100 * (narrow - wide), 1)}  # fmt: skip
    return out


def _format(s: dict[str, Any]) -> str:
    lines = [f"voice-agent bench --telephony: {s['utterances']} utterances, 8 kHz"]
    for protocol in PROTOCOLS:
        p = s[protocol]
        lines.append(
            f"  {protocol:<11} voice-to-voice as heard p50 {p['v2v_heard_ms']['p50']} / "
            f"p95 {p['v2v_heard_ms']['p95']} ms; barge-in stop p50 "
            f"{p['barge_in_stop_ms']['p50']} / p95 {p['barge_in_stop_ms']['p95']} ms "
            f"({p['barge_ins']}); live WER {p['live_wer_mean']}"
        )
    for label in ("all", "recorded"):
        w = s[f"stt_{label}"]
        lines.append(
            f"  STT WER ({label}, {w['utterances']} utterances) 16 kHz {w['wer_16k']:.3f}, "
            f"8 kHz μ-law {w['wer_8k']:.3f} ({w['points']:+.1f} points)"
        )
    return "\n".join(lines)
