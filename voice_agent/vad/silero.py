"""Silero VAD v6 (ONNX, shipped inside faster-whisper) as a streaming classifier.

The model takes 512-sample windows at 16 kHz with 64 samples of left context
and carries an LSTM state (h, c) between calls. Frames of any size are
buffered; each call to :meth:`is_speech` answers with the latest window's
probability against ``threshold``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

from voice_agent.audio.pcm import Pcm, to_float32
from voice_agent.core.onnxrt import session_options

WINDOW = 512
CONTEXT = 64


def silero_model_path() -> Path:
    import faster_whisper

    return Path(faster_whisper.__file__).parent / "assets" / "silero_vad_v6.onnx"


class SileroSession:
    """The loaded ONNX model; share one per process."""

    def __init__(self, path: Path | None = None) -> None:
        opts = session_options(1)
        opts.log_severity_level = 4
        self.session = onnxruntime.InferenceSession(
            str(path or silero_model_path()), providers=["CPUExecutionProvider"], sess_options=opts
        )


class SileroVad:
    """Per-stream state over a shared :class:`SileroSession`."""

    name = "silero"

    def __init__(self, model: SileroSession, threshold: float = 0.5) -> None:
        self._session = model.session
        self.threshold = threshold
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self.probability = 0.0

    def is_speech(self, frame: Pcm) -> bool:
        self._pending = np.concatenate([self._pending, to_float32(frame)])
        while len(self._pending) >= WINDOW:
            window = self._pending[:WINDOW]
            self._pending = self._pending[WINDOW:]
            x = np.concatenate([self._context, window])[None, :].astype(np.float32)
            out, self._h, self._c = self._session.run(
                None, {"input": x, "h": self._h, "c": self._c}
            )
            self._context = window[-CONTEXT:]
            self.probability = float(np.asarray(out).reshape(-1)[0])
        return self.probability >= self.threshold


class SpeechDetector:
    """How much of a clip is speech, by Silero: whisper writes words into a cough or a
    burst of noise, so a transcript is only trusted when this finds speech under it."""

    def __init__(self, model: SileroSession, threshold: float = 0.5) -> None:
        self.model = model
        self.threshold = threshold

    def speech_seconds(self, pcm: Pcm) -> float:
        vad = SileroVad(self.model, self.threshold)
        windows = 0
        for i in range(0, len(pcm) - WINDOW + 1, WINDOW):
            if vad.is_speech(pcm[i : i + WINDOW]):
                windows += 1
        return windows * WINDOW / 16_000
