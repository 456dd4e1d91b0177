"""Speech-to-text interface. Implementations are blocking; the driver runs them in a thread."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from voice_agent.audio.pcm import Pcm


@dataclass(frozen=True)
class Transcript:
    text: str
    audio_samples: int
    """How many 16 kHz samples were transcribed."""
    compute_s: float
    """Seconds the pass took."""
    speech_s: float | None = None
    """Seconds the speech detector (Silero) took for speech; None when not checked."""
    avg_logprob: float | None = None
    """The decoder's mean log-probability per token (None: not known). Clear speech scores
    about -0.05 to -0.5; garbled speech, reversed speech and noise below -0.7."""


class STT(Protocol):
    name: str
    unclear_logprob: float | None
    """A final transcript whose ``avg_logprob`` is below this reads as a guess (garbled
    speech, a bad line), on this model's own scale; None: it never does."""
    marks_sentence_ends: bool
    """Does a finished sentence nearly always get its full stop? (whisper: yes; Moonshine
    leaves long sentences unpunctuated, so a missing one says nothing.)"""

    def transcribe(self, pcm: Pcm) -> Transcript:
        """Transcribe 16 kHz mono int16 audio (blocking; call from a worker thread)."""
        ...
