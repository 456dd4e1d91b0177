"""A simulated caller on the WebSocket protocol, for benchmarks and integration tests.

It behaves as the browser page does, in real time: it sends its microphone as
20 ms PCM16 frames on the clock, plays the agent's audio from a small jitter
buffer at one frame per tick, reports its playout cursor after every tick,
pauses its playback on ``reply.paused``, resumes on ``reply.resumed``, and drops
buffered audio on ``clear``. Optionally its "microphone" also hears its own
speaker: the audio it played, delayed and attenuated (a client without echo
cancellation).

Everything is stamped with the event loop's clock, so a caller can say when its
own speech began and when the agent's audio stopped coming out of its speaker.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voice_agent.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE, Pcm

FRAME_S = FRAME_SAMPLES / SAMPLE_RATE


@dataclass
class CallerLog:
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    received: list[tuple[float, int, int]] = field(default_factory=list)
    """(arrival time, gen, samples) of each agent audio message."""
    played: list[tuple[float, int]] = field(default_factory=list)
    """(tick time, gen) of each agent frame played (its sound lasts 20 ms from then)."""
    played_samples: dict[int, int] = field(default_factory=dict)
    played_audio: dict[int, list[Pcm]] = field(default_factory=dict)

    def of_type(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, e) for t, e in self.events if e["type"] == kind]

    def last_played(self, gen: int) -> float | None:
        times = [t for t, g in self.played if g == gen]
        return times[-1] + FRAME_S if times else None

    def audio(self, gen: int) -> Pcm:
        chunks = self.played_audio.get(gen, [])
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


class WsCaller:
    """Run with :meth:`run`; the microphone is ``mic`` (16 kHz), then silence."""

    def __init__(
        self,
        url: str,
        mic: Pcm,
        echo_gain: float = 0.0,
        echo_delay_s: float = 0.08,
        jitter_frames: int = 2,
        honor_pause: bool = True,
    ) -> None:
        self.url = url
        self.mic = np.zeros(len(mic) + 60 * SAMPLE_RATE, dtype=np.int16)
        self.mic[: len(mic)] = mic
        self.echo_gain = echo_gain
        self.echo_delay = round(echo_delay_s * SAMPLE_RATE)
        self.jitter_frames = jitter_frames
        self.honor_pause = honor_pause
        self.log = CallerLog()
        self.t0: float | None = None
        """Loop time at which mic sample 0 was sent."""
        self._queue: deque[tuple[int, Pcm]] = deque()
        self._drop_below = 0
        self._paused = False
        self._buffering = True
        total = len(self.mic)
        self._echo = np.zeros(total + self.echo_delay + FRAME_SAMPLES, dtype=np.float32)
        self.texts: list[str] = []
        self._k = 0

    @property
    def position(self) -> int:
        """The next mic sample to be sent."""
        return self._k * FRAME_SAMPLES

    def insert(self, clip: Pcm, at_sample: int) -> None:
        """Add ``clip`` to the microphone from ``at_sample`` on (it must be in the future)."""
        if at_sample < self.position:
            raise ValueError("that part of the microphone was already sent")
        end = min(len(self.mic), at_sample + len(clip))
        mixed = self.mic[at_sample:end].astype(np.int32) + clip[: end - at_sample]
        self.mic[at_sample:end] = np.clip(mixed, -32768, 32767).astype(np.int16)

    def mic_time(self, sample: int) -> float:
        assert self.t0 is not None
        return self.t0 + sample / SAMPLE_RATE

    def say(self, text: str) -> None:
        """Typed input, sent with the next frame."""
        self.texts.append(text)

    async def run(self, seconds: float, stop: Any = None) -> CallerLog:
        """Call for ``seconds`` (or until ``stop()`` is true), then end the session."""
        from websockets.asyncio.client import connect

        loop = asyncio.get_running_loop()
        async with connect(self.url, max_size=2**22) as ws:
            await ws.send(
                json.dumps(
                    {
                        "type": "session.start",
                        "sample_rate": SAMPLE_RATE,
                        "output_sample_rate": SAMPLE_RATE,
                        "encoding": "pcm16",
                    }
                )
            )
            reader = asyncio.create_task(self._read(ws))
            try:
                self.t0 = start = loop.time()
                k = 0
                while k * FRAME_S < seconds and not (stop and stop()):
                    await self._tick(ws, k, loop.time())
                    k = self._k = k + 1
                    delay = start + k * FRAME_S - loop.time()
                    await asyncio.sleep(max(0.0, delay))
                await ws.send(json.dumps({"type": "session.end"}))
                await asyncio.sleep(0.2)
            finally:
                reader.cancel()
                await asyncio.wait({reader})  # let it finish cancelling (nothing is swallowed)
        return self.log

    async def _tick(self, ws: Any, k: int, now: float) -> None:
        a = k * FRAME_SAMPLES
        frame = np.zeros(FRAME_SAMPLES, dtype=np.float32)
        part = self.mic[a : a + FRAME_SAMPLES]
        frame[: len(part)] = part
        if a + FRAME_SAMPLES <= len(self._echo):
            frame += self._echo[a : a + FRAME_SAMPLES]
        await ws.send(np.clip(np.round(frame), -32768, 32767).astype(np.int16).tobytes())
        while self.texts:
            await ws.send(json.dumps({"type": "text", "text": self.texts.pop(0)}))
        played = self._play(now)
        if played is not None:
            gen, pcm = played
            self.log.played.append((now, gen))
            self.log.played_samples[gen] = self.log.played_samples.get(gen, 0) + len(pcm)
            self.log.played_audio.setdefault(gen, []).append(pcm)
            at = a + self.echo_delay
            if self.echo_gain and at + len(pcm) <= len(self._echo):
                self._echo[at : at + len(pcm)] += self.echo_gain * pcm.astype(np.float32)
            await ws.send(
                json.dumps({"type": "playout", "gen": gen, "samples": self.log.played_samples[gen]})
            )

    def _play(self, now: float) -> tuple[int, Pcm] | None:
        if self._paused or not self._queue:
            self._buffering = True
            return None
        if self._buffering and len(self._queue) < self.jitter_frames:
            return None
        self._buffering = False
        return self._queue.popleft()

    async def _read(self, ws: Any) -> None:
        loop = asyncio.get_running_loop()
        async for message in ws:
            now = loop.time()
            if isinstance(message, bytes):
                gen, _seq = struct.unpack_from("<II", message)
                pcm = np.frombuffer(message[8:], dtype=np.int16)
                self.log.received.append((now, gen, len(pcm)))
                if gen >= self._drop_below:
                    for i in range(0, len(pcm), FRAME_SAMPLES):
                        self._queue.append((gen, pcm[i : i + FRAME_SAMPLES]))
                continue
            event = json.loads(message)
            self.log.events.append((now, event))
            kind = event["type"]
            if kind == "clear":
                self._drop_below = max(self._drop_below, event["gen"] + 1)
                self._queue = deque(f for f in self._queue if f[0] >= self._drop_below)
                self._paused = False
            elif kind == "reply.paused" and self.honor_pause:
                self._paused = True
            elif kind == "reply.resumed":
                self._paused = False
