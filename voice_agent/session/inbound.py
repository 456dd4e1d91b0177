"""The inbound pipeline: caller audio → 20 ms frames → echo removal → VAD → turn audio.

Pure and synchronous (no awaits, no clock reads): :meth:`InboundPipeline.push`
takes a chunk and the time it arrived and returns the speech events it caused.
It keeps the turn buffer (with pre-roll), the sample timeline (when each input
sample was captured) and the VAD hysteresis state.

The sample timeline. A caller's audio is captured in real time, but it reaches
us late by a varying amount: network jitter, and any stall of our own event
loop, after which the frames held up behind it arrive together. Dating each
frame by its arrival would put the input stream behind where the caller's
microphone really is, by as much as the stall. So each frame is dated by the
least delay seen over the last ``capture_window_s`` of input (as an RTP jitter
estimate uses the least transit time): frame k of a real-time stream is
captured 20 ms after frame k-1, and whichever frame of the window came
soonest tells when. The echo guard anchors the agent's audio on this timeline,
and speech onsets and ends are dated by it.

A stream that is slower than real time, or that paused (a client that stopped
sending for a while), is followed again once ``capture_window_s`` of its new
audio has come in.

The default window is one frame: each frame dated by its own arrival, as before.
A 1 s window broke phone calls in the tests (the jfk call over the Plivo bridge
failed in 3 of 6 runs with a false barge-in after the caller had finished, and
passed 4 of 4 with one frame): a stream that runs ahead of real time for a
moment (a bridge feeding a stall's silence at once) sets a least delay that is
too small for the whole window, which puts the echo guard's anchor ahead of the
microphone. Not yet pinned down; the option stays, tested, for that work.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from voice_agent.audio.echo import EchoGuard
from voice_agent.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE, Pcm
from voice_agent.vad.hysteresis import VadHysteresis, VadStart, VadState, VadStop


class FrameClassifier(Protocol):
    name: str

    def is_speech(self, frame: Pcm) -> bool:
        """One 20 ms frame of 16 kHz int16: speech or not (blocking, cheap)."""
        ...


@dataclass(frozen=True)
class SpeechOnset:
    at: float
    """Clock time the speech began (its first speech frame was captured)."""


@dataclass(frozen=True)
class SpeechEnd:
    at: float
    """Clock time of the first silent frame after the speech."""


InboundEvent = SpeechOnset | SpeechEnd


class InboundPipeline:
    """Frames, VAD hysteresis, the turn buffer with pre-roll, and sample times.

    A turn buffer opens at a speech onset (with ``preroll_ms`` of audio before
    it) and grows until :meth:`end_turn`; it keeps at most ``max_turn_s``.
    """

    def __init__(
        self,
        vad: FrameClassifier,
        echo: EchoGuard | None = None,
        vad_start_ms: int = 60,
        vad_stop_ms: int = 120,
        preroll_ms: int = 300,
        max_turn_s: float = 28.0,
        capture_window_s: float = 0.02,
    ) -> None:
        self.vad = vad
        self.echo = echo
        self.hysteresis = VadHysteresis.from_ms(20, vad_start_ms, vad_stop_ms)
        self.samples_in = 0
        """Input samples framed so far (the input's timeline)."""
        self.turn_start_sample = 0
        self.turn_onset: float | None = None
        """Clock time of the current turn's first speech onset."""
        self._carry = np.zeros(0, dtype=np.int16)
        self._turn: list[Pcm] | None = None
        self._preroll: deque[Pcm] = deque(maxlen=max(1, preroll_ms // 20))
        self._max_frames = int(max_turn_s * 50)
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=1000)
        """(input samples so far, clock time the last of them was captured) per frame."""
        self._window = int(capture_window_s * SAMPLE_RATE)
        self._delays: deque[tuple[int, float]] = deque()
        """(samples so far, arrival time less the stream's own time) of the frames in the
        window whose delay no later frame beat, increasing in both: the least is first."""
        self._partial_at = 0
        self._speech_sample: int | None = None
        """Where the speech going on now began (None: no speech since the last stop)."""
        self.stop_sample: int | None = None
        """The first silent sample of the last confirmed stop."""

    @property
    def state(self) -> VadState:
        return self.hysteresis.state

    @property
    def in_turn(self) -> bool:
        return self._turn is not None

    def push(self, chunk: Pcm, now: float) -> list[InboundEvent]:
        """Frame ``chunk`` (16 kHz int16, any length) that arrived at ``now``."""
        carry = np.concatenate([self._carry, chunk]) if self._carry.size else chunk
        n = len(carry) // FRAME_SAMPLES
        events: list[InboundEvent] = []
        for i in range(n):
            frame = carry[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
            if self.echo is not None:  # the VAD and STT hear the caller, not our echo
                frame = self.echo.near_end(frame)
            self.samples_in += FRAME_SAMPLES
            # a frame is captured when its last sample is: later frames of one chunk
            # arrive together, so date each by its position in the chunk
            arrived = now - (n - 1 - i) * FRAME_SAMPLES / SAMPLE_RATE
            self._arrivals.append((self.samples_in, self._captured(arrived)))
            event = self.hysteresis.update(self.vad.is_speech(frame))
            if self._turn is not None:
                if len(self._turn) < self._max_frames:
                    self._turn.append(frame)
            else:
                self._preroll.append(frame)
            if isinstance(event, VadStart):
                at = self.sample_time(event.at_sample)
                self._speech_sample = event.at_sample
                if self._turn is None:
                    self._begin_turn(at)
                events.append(SpeechOnset(at))
            elif isinstance(event, VadStop):
                self._speech_sample = None
                self.stop_sample = event.at_sample
                events.append(SpeechEnd(self.sample_time(event.at_sample)))
        self._carry = carry[n * FRAME_SAMPLES :]
        return events

    def _captured(self, arrived: float) -> float:
        """When the frame that ends at ``samples_in`` and arrived at ``arrived`` was
        captured: real time from the window's least-delayed frame."""
        end = self.samples_in
        delay = arrived - end / SAMPLE_RATE
        while self._delays and self._delays[-1][1] >= delay:
            self._delays.pop()
        self._delays.append((end, delay))
        while self._delays[0][0] <= end - self._window:
            self._delays.popleft()
        return end / SAMPLE_RATE + self._delays[0][1]

    def _begin_turn(self, at: float) -> None:
        self._turn = list(self._preroll)
        self.turn_start_sample = self.samples_in - len(self._turn) * FRAME_SAMPLES
        self._preroll.clear()
        self.turn_onset = at
        self._partial_at = 0

    def end_turn(self) -> None:
        """The turn is over (answered or discarded): drop its audio.

        The caller may already be talking again (the turn ended on a timer while the
        VAD's new onset was on its way): that speech opens the next turn at once, from
        its onset less the pre-roll, or it would never be heard. Otherwise the last
        frames become the pre-roll of the next turn (a word may be starting in them)."""
        old, start = self._turn, self.turn_start_sample
        self._turn = None
        if not old:
            return
        if self._speech_sample is not None:
            keep = max(start, self._speech_sample - (self._preroll.maxlen or 1) * FRAME_SAMPLES)
            i = (keep - start) // FRAME_SAMPLES
            self._turn = old[i:]
            self.turn_start_sample = start + i * FRAME_SAMPLES
            self.turn_onset = self.sample_time(self._speech_sample)
            self._partial_at = 0
            return
        self._preroll.clear()
        self._preroll.extend(old[-(self._preroll.maxlen or 1) :])

    def turn_audio(self) -> Pcm:
        if not self._turn:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._turn)

    def partial_due(self, every_s: float) -> bool:
        """True (once) each time the turn has grown by ``every_s`` since the last partial."""
        if self._turn is None:
            return False
        n = len(self._turn) * FRAME_SAMPLES
        if n - self._partial_at < every_s * SAMPLE_RATE:
            return False
        self._partial_at = n
        return True

    def sample_time(self, sample: int) -> float:
        """Clock time at which input sample ``sample`` was captured."""
        for end, t in reversed(self._arrivals):
            if end <= sample:
                return t + (sample - end) / SAMPLE_RATE
        if self._arrivals:
            end, t = self._arrivals[0]
            return t - (end - sample) / SAMPLE_RATE
        return 0.0

    def sample_at(self, t: float) -> int:
        """The input sample being captured at clock time ``t`` (from the latest arrival)."""
        if not self._arrivals:
            return self.samples_in
        end, at = self._arrivals[-1]
        return end + round((t - at) * SAMPLE_RATE)
