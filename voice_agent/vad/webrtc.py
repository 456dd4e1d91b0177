"""webrtcvad frame classifier (module ``webrtcvad`` from ``webrtcvad-wheels``)."""

from __future__ import annotations

import webrtcvad

from voice_agent.audio.pcm import SAMPLE_RATE, Pcm


class WebRtcVad:
    """Classifies 10/20/30 ms frames of 16 kHz int16 audio as speech or not."""

    name = "webrtc"

    def __init__(self, aggressiveness: int = 2) -> None:
        if not 0 <= aggressiveness <= 3:
            raise ValueError(f"webrtcvad aggressiveness must be 0..3, got {aggressiveness}")
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: Pcm) -> bool:
        return bool(self._vad.is_speech(frame.tobytes(), SAMPLE_RATE))
