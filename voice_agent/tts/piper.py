"""Piper TTS on the embedded en_US-joe-medium voice, resampled to 16 kHz."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import onnxruntime
from piper import PiperVoice, SynthesisConfig
from piper.config import PiperConfig

from voice_agent.audio.pcm import SAMPLE_RATE, Pcm
from voice_agent.audio.resample import resample
from voice_agent.core.onnxrt import session_options
from voice_agent.models import piper_voice

_ESPEAK = threading.Lock()
"""espeak-ng (piper's phonemizer) keeps global state: one phonemization at a time in
the process. The voice model itself (onnxruntime) may run in several threads."""


class _Voice(PiperVoice):
    def phonemize(self, text: str) -> list[list[str]]:
        with _ESPEAK:
            return super().phonemize(text)


class PiperTTS:
    def __init__(
        self, voice: str = "joe-medium", length_scale: float | None = None, threads: int = 2
    ) -> None:
        model, config = piper_voice(voice)
        self.name = f"piper:{voice}"
        # PiperVoice.load would give onnxruntime its default options (threads that spin)
        session = onnxruntime.InferenceSession(
            str(model), session_options(threads), providers=["CPUExecutionProvider"]
        )
        settings = json.loads(Path(config).read_text(encoding="utf-8"))
        self._voice = _Voice(session=session, config=PiperConfig.from_dict(settings))
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
