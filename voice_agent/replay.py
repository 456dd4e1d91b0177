"""Replay recorded audio through the exact session core the server uses."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voice_agent.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE, Pcm, split_frames
from voice_agent.core.clock import Clock
from voice_agent.session.driver import Session, SessionConfig
from voice_agent.session.engine import Engine
from voice_agent.session.metrics import STAGES
from voice_agent.session.output import OutputBase


class ReplayRecorder(OutputBase):
    """An :class:`~voice_agent.session.driver.Output` that records what a caller would get.

    Agent frames are laid on the input's timeline: at the input position when
    they were sent, and never overlapping the previous agent frame.
    """

    def __init__(self) -> None:
        self.fed_samples = 0
        self.events: list[dict[str, Any]] = []
        self.frames: list[tuple[int, int, Pcm]] = []  # (position, gen, pcm)
        self._cursor = 0

    async def send_audio(self, gen: int, pcm: Pcm) -> None:
        pos = max(self._cursor, self.fed_samples)
        self.frames.append((pos, gen, pcm))
        self._cursor = pos + len(pcm)

    async def send_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def agent_track(self, length: int) -> Pcm:
        end = max([length] + [p + len(x) for p, _, x in self.frames])
        track = np.zeros(end, dtype=np.int16)
        for pos, _gen, pcm in self.frames:
            track[pos : pos + len(pcm)] = pcm
        return track


@dataclass
class ReplayResult:
    session: Session
    recorder: ReplayRecorder
    caller: Pcm
    t_start: float
    fast: bool
    report: dict[str, Any] = field(default_factory=dict)

    def stereo(self) -> np.ndarray:
        """Caller on the left, agent on the right, time-aligned."""
        agent = self.recorder.agent_track(len(self.caller))
        caller = np.zeros(len(agent), dtype=np.int16)
        caller[: len(self.caller)] = self.caller
        return np.stack([caller, agent], axis=1)

    def agent_audio(self, gen: int | None = None) -> Pcm:
        frames = [x for _, g, x in self.recorder.frames if gen is None or g == gen]
        return np.concatenate(frames) if frames else np.zeros(0, dtype=np.int16)


async def replay(
    engine: Engine,
    pcm: Pcm,
    clock: Clock,
    *,
    fast: bool = False,
    config: SessionConfig | None = None,
    tail_s: float = 1.0,
    max_wait_s: float = 90.0,
    speech_end_samples: list[int] | None = None,
) -> ReplayResult:
    """Stream ``pcm`` (16 kHz mono) in 20 ms frames through a new session.

    Real-time pacing by default. ``fast`` skips the waiting while the caller
    is talking or the line is idle, but keeps real time whenever timing
    matters (after speech stops, and while a reply is pending or playing),
    so the latency figures mean the same in both modes. After the input ends,
    silence is fed until the last reply has played (at most ``max_wait_s``).
    """
    recorder = ReplayRecorder()
    session = Session(engine, recorder, clock, config)
    frame_s = FRAME_SAMPLES / SAMPLE_RATE
    run = asyncio.create_task(session.run(), name="session")
    await asyncio.sleep(0)
    t_start = clock.now()
    t_next = t_start
    silence = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    try:
        frames = split_frames(pcm)
        tail_frames = int(tail_s / frame_s)
        limit = len(frames) + int(max_wait_s / frame_s)
        k = 0
        while k < limit and not run.done():
            extra = k >= len(frames)
            if extra and k >= len(frames) + tail_frames and not session.busy:
                break
            t_next += frame_s
            if not fast or session.busy:
                await clock.sleep_until(t_next)
            else:
                t_next = clock.now()
            session.feed(silence if extra else frames[k])
            recorder.fed_samples += FRAME_SAMPLES
            k += 1
            if fast:
                await session.input_processed()
        session.hangup()
        await run
    except BaseException:
        run.cancel()
        await asyncio.wait({run})
        raise
    caller = np.zeros(recorder.fed_samples, dtype=np.int16)
    caller[: len(pcm)] = pcm
    result = ReplayResult(session, recorder, caller, t_start, fast)
    result.report = build_report(result, speech_end_samples)
    return result


def build_report(result: ReplayResult, speech_end_samples: list[int] | None) -> dict[str, Any]:
    s = result.session
    report = s.report()
    report["mode"] = "fast" if result.fast else "real-time"
    report["engine"] = s.engine.info
    report["input_seconds"] = round(len(result.caller) / SAMPLE_RATE, 2)
    if speech_end_samples and not result.fast:
        # each true end of speech belongs to the first turn the VAD ended after it
        for end in speech_end_samples:
            true_end = result.t_start + end / SAMPLE_RATE
            for i, turn in enumerate(s.turns):
                if turn.speech_end is None or turn.speech_end < true_end - 0.5:
                    continue
                if turn.first_audio_out is not None:
                    v2v = round((turn.first_audio_out - true_end) * 1000, 1)
                    report["turns"][i]["voice_to_voice_true_ms"] = v2v
                break
    return report


def format_turns(report: dict[str, Any]) -> str:
    """The per-turn printout: transcript, reply, timeline in ms and voice-to-voice latency."""
    lines: list[str] = []
    for i, turn in enumerate(report["turns"], 1):
        lines.append(f"── turn {i} (gen {turn['gen']}, {turn['status']})")
        lines.append(f"  user : {turn['user_text']}")
        lines.append(f"  agent: {turn['reply_text']}")
        if turn["status"] == "interrupted":
            lines.append(f"  heard: {turn['heard_text']}")
        if turn["error"]:
            lines.append(f"  error: {turn['error']}")
        tl = turn["timeline_ms"]
        base = tl.get("speech_end")
        # in time order: a preemptive reply is generated before the end of turn is decided
        stages = sorted(
            ((tl[name], label) for name, label in STAGES if tl.get(name) is not None),
            key=lambda item: item[0],
        )
        for value, label in stages:
            delta = "" if base is None else f"  (+{value - base:7.1f})"
            lines.append(f"  {label:<26} {value:9.1f} ms{delta}")
        v2v = turn["voice_to_voice_ms"]
        lines.append(f"  voice-to-voice: {'n/a' if v2v is None else f'{v2v:.0f} ms'}")
    return "\n".join(lines)
