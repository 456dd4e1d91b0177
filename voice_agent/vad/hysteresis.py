"""VAD hysteresis: per-frame speech decisions → speech start/stop events.

Pure and counted in frames. States follow the usual vocabulary:
QUIET → STARTING → SPEAKING → STOPPING → QUIET. A start needs ``start_frames``
speech frames in a row; a stop needs ``stop_frames`` non-speech frames in a
row. Events carry the sample index where speech truly began or ended (the
first frame of the run), not where the decision was made.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class VadState(Enum):
    QUIET = "quiet"
    STARTING = "starting"
    SPEAKING = "speaking"
    STOPPING = "stopping"


@dataclass(frozen=True)
class VadStart:
    at_sample: int
    """First sample of the first speech frame of the run."""


@dataclass(frozen=True)
class VadStop:
    at_sample: int
    """First sample of the first non-speech frame after speech."""


VadEvent = VadStart | VadStop


def frames(ms: int, frame_ms: int) -> int:
    """How many whole frames cover ``ms`` (at least one)."""
    return max(1, -(-ms // frame_ms))  # ceil division


class VadHysteresis:
    """Feed one decision per frame with :meth:`update`; get at most one event back."""

    def __init__(self, frame_samples: int, start_frames: int, stop_frames: int) -> None:
        if start_frames < 1 or stop_frames < 1:
            raise ValueError("start_frames and stop_frames must be >= 1")
        self.frame_samples = frame_samples
        self.start_frames = start_frames
        self.stop_frames = stop_frames
        self.state = VadState.QUIET
        self._run = 0
        self._run_start = 0
        self._frame_index = 0

    @classmethod
    def from_ms(
        cls, frame_ms: int, start_ms: int, stop_ms: int, rate: int = 16_000
    ) -> VadHysteresis:
        return cls(
            rate * frame_ms // 1000, frames(start_ms, frame_ms), frames(stop_ms, frame_ms)
        )

    def update(self, is_speech: bool) -> VadEvent | None:
        at = self._frame_index * self.frame_samples
        self._frame_index += 1
        match self.state:
            case VadState.QUIET:
                if is_speech:
                    self._run, self._run_start = 1, at
                    return self._maybe_start()
            case VadState.STARTING:
                if is_speech:
                    self._run += 1
                    return self._maybe_start()
                self.state = VadState.QUIET
            case VadState.SPEAKING:
                if not is_speech:
                    self._run, self._run_start = 1, at
                    return self._maybe_stop()
            case VadState.STOPPING:
                if is_speech:
                    self.state = VadState.SPEAKING
                else:
                    self._run += 1
                    return self._maybe_stop()
        return None

    def _maybe_start(self) -> VadEvent | None:
        if self._run >= self.start_frames:
            self.state = VadState.SPEAKING
            return VadStart(self._run_start)
        self.state = VadState.STARTING
        return None

    def _maybe_stop(self) -> VadEvent | None:
        if self._run >= self.stop_frames:
            self.state = VadState.QUIET
            return VadStop(self._run_start)
        self.state = VadState.STOPPING
        return None

    @property
    def quiet_run(self) -> tuple[int, int] | None:
        """While a stop is being confirmed: (its first silent sample, silent frames so far)."""
        if self.state is not VadState.STOPPING:
            return None
        return self._run_start, self._run

    @property
    def speaking(self) -> bool:
        """True from a confirmed start until a confirmed stop."""
        return self.state in (VadState.SPEAKING, VadState.STOPPING)
