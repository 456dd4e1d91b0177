"""Smart Turn v3.2: the probability that the caller's turn is complete, from its audio.

Pipecat's open end-of-turn model (BSD-2-Clause): a Whisper-tiny encoder with a classifier
head, int8 ONNX, run on onnxruntime. Its input is the last 8 s of the turn at 16 kHz
(left-padded with zeros), normalized to zero mean and unit variance, as 80-bin Whisper
log-mel features (400-sample FFT, 160-sample hop: 800 frames). faster-whisper's feature
extractor computes exactly those (within 6e-6 of the reference). Its output is a
sigmoid: P(complete); pipecat's threshold is 0.5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from voice_agent.audio.pcm import SAMPLE_RATE, Pcm

WINDOW_S = 8
FRAMES = 800


class SmartTurn:
    """One loaded model; :meth:`probability` is safe to call from one worker thread."""

    name = "smart-turn-v3"

    def __init__(self, path: Path | None = None, threads: int = 1) -> None:
        import onnxruntime as ort
        from faster_whisper.feature_extractor import FeatureExtractor

        from voice_agent.core.onnxrt import session_options
        from voice_agent.models import smart_turn_path

        options = session_options(threads)
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            str(path or smart_turn_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._features = FeatureExtractor(
            feature_size=80, sampling_rate=SAMPLE_RATE, hop_length=160, chunk_length=WINDOW_S,
            n_fft=400,
        )  # fmt: skip

    def features(self, pcm: Pcm) -> npt.NDArray[np.float32]:
        """(80, 800) log-mel features of the last 8 s of ``pcm`` (16 kHz int16)."""
        n = WINDOW_S * SAMPLE_RATE
        x = pcm[-n:].astype(np.float32) / 32768.0
        x = np.pad(x, (n - len(x), 0))
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        mel: npt.NDArray[np.float32] = self._features(x, padding=0)[:, :FRAMES]
        return mel.astype(np.float32)

    def probability(self, pcm: Pcm) -> float:
        """P(the turn is complete), given the turn's audio up to now."""
        (logits,) = self._session.run(None, {"input_features": self.features(pcm)[None]})
        return float(np.asarray(logits).ravel()[0])
