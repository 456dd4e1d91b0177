"""Text-to-speech interface. Implementations are blocking; the driver runs them in a thread."""

from __future__ import annotations

from typing import Protocol

from voice_agent.audio.pcm import Pcm


class TTS(Protocol):
    name: str

    def synthesize(self, text: str) -> Pcm:
        """Speak ``text``; 16 kHz mono int16 (blocking; call from a worker thread)."""
        ...
