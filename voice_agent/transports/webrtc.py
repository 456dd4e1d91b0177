"""WebRTC transport pieces (aiortc): the paced outbound audio track and the session output.

Outbound audio is paced by sample count against the injected clock, as aiortc's
own tracks are: frame ``k`` carries ``pts = k * 960`` (time base 1/48000) and is
released at ``t0 + k * 20 ms``, so the pace never drifts and never runs ahead of
real time. When nothing is queued the track sends silence. A cleared generation
stops at the next frame. What the track has sent is the playout position.
"""

from __future__ import annotations

import fractions
import json
from collections import deque
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from voice_agent.audio.pcm import SAMPLE_RATE, FrameCutter, Pcm
from voice_agent.audio.resample import StreamResampler
from voice_agent.core.clock import Clock
from voice_agent.session.output import SlowClient

RTC_RATE = 48_000
RTC_FRAME = RTC_RATE // 50  # 960 samples = 20 ms
TIME_BASE = fractions.Fraction(1, RTC_RATE)


def restrict_ice_addresses(addresses: list[str]) -> None:
    """Gather ICE host candidates only on ``addresses`` (for example ``["127.0.0.1"]``).

    aiortc has no option for this and aioice leaves loopback out of its host
    candidates, so the choice is process-wide: it replaces aioice's address lookup.
    An empty list restores aioice's own lookup (every non-loopback interface).
    """
    import aioice.ice

    original = getattr(aioice.ice, "_va_original_get_host_addresses", None)
    if original is None:
        original = aioice.ice.get_host_addresses
        aioice.ice._va_original_get_host_addresses = original  # type: ignore[attr-defined]
    if not addresses:
        aioice.ice.get_host_addresses = original
        return
    chosen = list(addresses)
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [
        a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)
    ]


class PacedAudioTrack(MediaStreamTrack):
    """A 48 kHz mono s16 track fed with :meth:`push` and read by aiortc with :meth:`recv`.

    ``max_frames`` bounds the queue; when it is full the oldest frame is dropped
    and counted in ``dropped``. If the reader stalls (more than ``resync_s``
    late), the schedule is moved forward instead of bursting to catch up.
    """

    kind = "audio"

    def __init__(
        self,
        clock: Clock,
        max_frames: int = 100,
        resync_s: float = 0.2,
        on_sent: Callable[[int, int], None] | None = None,
    ) -> None:
        super().__init__()
        self.on_sent = on_sent
        """Called with (gen, samples of gen sent so far, 48 kHz) after each frame of a reply."""
        self.clock = clock
        self.max_frames = max_frames
        self.resync_s = resync_s
        self._queue: deque[tuple[int, Pcm]] = deque()
        self._silence = np.zeros(RTC_FRAME, dtype=np.int16)
        self._t0: float | None = None
        self._k = 0
        self.sent: dict[int, int] = {}
        """Samples (48 kHz) of each generation actually handed to the encoder."""
        self.dropped = 0
        self.resyncs = 0
        self.cleared_below = 0
        self.held: int | None = None
        """A paused generation: its queued frames wait (silence is sent) until released."""

    def push(self, gen: int, frame: Pcm) -> None:
        """Queue one 960-sample frame of generation ``gen``."""
        if gen < self.cleared_below:
            return
        if len(self._queue) >= self.max_frames:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append((gen, frame))

    def clear(self, gen: int) -> int:
        """Drop queued audio of generations ``<= gen``; returns frames dropped."""
        self.cleared_below = max(self.cleared_below, gen + 1)
        before = len(self._queue)
        self._queue = deque(item for item in self._queue if item[0] > gen)
        return before - len(self._queue)

    @classmethod
    def from_pcm(cls, clock: Clock, pcm48: Pcm) -> PacedAudioTrack:
        """A track that plays ``pcm48`` (48 kHz) once in real time, then silence:
        a caller for tests and benchmarks."""
        frames = [pcm48[i : i + RTC_FRAME] for i in range(0, len(pcm48), RTC_FRAME)]
        track = cls(clock, max_frames=max(1, len(frames)))
        for frame in frames:
            pad = RTC_FRAME - len(frame)
            track.push(0, np.concatenate([frame, np.zeros(pad, dtype=np.int16)]) if pad else frame)
        return track

    @property
    def started_at(self) -> float | None:
        """Clock time of the first frame (None before it)."""
        return self._t0

    @property
    def queued_frames(self) -> int:
        return len(self._queue)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = self.clock.now()
        if self._t0 is None:
            self._t0 = now
        deadline = self._t0 + self._k * RTC_FRAME / RTC_RATE
        if now - deadline > self.resync_s:
            self._t0 = now - self._k * RTC_FRAME / RTC_RATE  # late: move on, don't burst
            self.resyncs += 1
        else:
            await self.clock.sleep_until(deadline)
        if self._queue and self._queue[0][0] != self.held:
            gen, pcm = self._queue.popleft()
            self.sent[gen] = self.sent.get(gen, 0) + len(pcm)
            if self.on_sent is not None:
                self.on_sent(gen, self.sent[gen])
        else:
            pcm = self._silence
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RTC_RATE
        frame.pts = self._k * RTC_FRAME
        frame.time_base = TIME_BASE
        self._k += 1
        return frame


class WebRtcOutput:
    """Session :class:`Output` for a peer: audio into a :class:`PacedAudioTrack`, events as
    JSON on a data channel (once it is open; earlier events wait in a bounded list).

    A channel holding more than ``max_buffered`` bytes not yet sent (a client that stopped
    reading) gets no more: playout positions are dropped, and the next event raises
    :class:`SlowClient`, which ends the session."""

    def __init__(
        self,
        track: PacedAudioTrack,
        max_pending_events: int = 200,
        position_every_ms: int = 200,
        max_buffered: int = 256 * 1024,
    ) -> None:
        self.track = track
        self.max_buffered = max_buffered
        self.dropped_events = 0
        self.channel: Any = None
        self._resampler = StreamResampler(SAMPLE_RATE, RTC_RATE)
        self._frames = FrameCutter(RTC_FRAME)
        self._frames_gen: int | None = None
        """The generation the cutter's left-over samples belong to."""
        self._pending: deque[str] = deque(maxlen=max_pending_events)
        self._position_every = RTC_RATE * position_every_ms // 1000
        self._reported: dict[int, int] = {}

    def sent(self, gen: int, samples: int) -> None:
        """The track sent ``samples`` (48 kHz) of ``gen`` so far: a ``playout`` event to the
        client every ``position_every_ms`` of audio (the same field names as the WS ack)."""
        if samples - self._reported.get(gen, 0) >= self._position_every:
            self._reported = {gen: samples}
            self._send_text(
                json.dumps(
                    {"type": "playout", "gen": gen, "samples": samples, "sample_rate": RTC_RATE}
                )
            )

    def attach(self, channel: Any) -> None:
        self.channel = channel
        while self._pending:
            channel.send(self._pending.popleft())

    async def send_audio(self, gen: int, pcm: Pcm) -> None:
        if gen != self._frames_gen:  # another generation's left-over never plays
            self._frames.clear()
            self._frames_gen = gen
        for frame in self._frames.cut(self._resampler.process(pcm)):
            self.track.push(gen, frame)

    async def send_event(self, event: dict[str, Any]) -> None:
        if not self._send_text(json.dumps(event)):
            raise SlowClient(f"the data channel holds over {self.max_buffered} bytes unsent")

    async def clear(self, gen: int) -> None:
        self.track.clear(gen)
        self.track.held = None
        self._frames.clear()

    async def pause(self, gen: int) -> None:
        self.track.held = gen  # the caller began to talk: hold, don't drop

    async def resume(self, gen: int) -> None:
        if self.track.held == gen:
            self.track.held = None

    async def flush(self) -> None:
        return None  # the ~10 ms the 16 -> 48 kHz resampler holds goes out with the next audio

    def _send_text(self, text: str) -> bool:
        """Send or keep ``text``; False (and dropped) when the channel is backed up."""
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            if channel.bufferedAmount > self.max_buffered:
                self.dropped_events += 1
                return False
            channel.send(text)
        else:
            self._pending.append(text)
        return True


class OfferError(Exception):
    """A signaling request that cannot be answered: an HTTP status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


MAX_SDP_BYTES = 64 * 1024
"""A browser's offer is 2-6 KB."""
MAX_MEDIA_SECTIONS = 8
"""A call needs one audio section (and a data channel); a browser offers a few more."""


def check_offer(body: Any) -> str:
    """The SDP of a well-formed offer request, or :class:`OfferError` (400, or 413 for
    an SDP over :data:`MAX_SDP_BYTES`)."""
    if not isinstance(body, dict):
        raise OfferError(400, "the body must be a JSON object with 'sdp' and 'type'")
    sdp, kind = body.get("sdp"), body.get("type", "offer")
    if kind != "offer":
        shown = repr(kind)[:40] if isinstance(kind, str) else type(kind).__name__
        raise OfferError(400, f"expected type 'offer', got {shown}")
    if not isinstance(sdp, str) or not sdp.strip().startswith("v=0"):
        raise OfferError(
            400, "malformed SDP: 'sdp' must be a session description starting with v=0"
        )
    if len(sdp) > MAX_SDP_BYTES:
        raise OfferError(413, f"the SDP is over {MAX_SDP_BYTES // 1024} KB")
    lines = sdp.replace("\r\n", "\n").split("\n")
    media = [line for line in lines if line.startswith("m=")]
    if len(media) > MAX_MEDIA_SECTIONS:
        raise OfferError(400, f"the offer has more than {MAX_MEDIA_SECTIONS} media sections")
    if not any(line.startswith("m=audio ") for line in media):
        raise OfferError(400, "the offer has no audio: add an audio track (sendrecv)")
    return sdp


async def inbound_audio(track: Any, feed: Any) -> None:
    """Remote Opus audio (decoded by aiortc) → av's resampler → 16 kHz int16 → ``feed``."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        for out in resampler.resample(frame):
            feed(out.to_ndarray().reshape(-1).astype(np.int16))
