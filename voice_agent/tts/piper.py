"""Piper TTS on the embedded en_US-joe-medium voice, resampled to 16 kHz."""

from __future__ import annotations

import numpy as np
from piper import PiperVoice, SynthesisConfig

from voice_agent.audio.pcm import SAMPLE_RATE, Pcm
from voice_agent.audio.resample import resample
from voice_agent.models import piper_voice


class PiperTTS:
    def __init__(self, voice: str = "joe-medium", length_scale: float | None = None) -> None:
        model, config = piper_voice(voice)
        self.name = f"piper:{voice}"
        self._voice = PiperVoice.load(model, config_path=config)
        self.native_rate = int(self._voice.config.sample_rate)
        self._syn = SynthesisConfig(length_scale=length_scale)

    def synthesize(self, text: str) -> Pcm:
        parts = [
            np.asarray(chunk.audio_int16_array, dtype=np.int16).reshape(-1)
            for chunk in self._voice.synthesize(text, syn_config=self._syn)
        ]
        if not parts:
            return np.zeros(0, dtype=np.int16)
        return resample(np.concatenate(parts), self.native_rate, SAMPLE_RATE)
