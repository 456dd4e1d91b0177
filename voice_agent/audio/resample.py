"""Resampling with soxr: streaming for live audio, one-shot for whole clips."""

from __future__ import annotations

import numpy as np
import soxr

from voice_agent.audio.pcm import Pcm


class StreamResampler:
    """Streaming int16 mono resampler (soxr ``ResampleStream``).

    Feed chunks of any size with :meth:`process`; call :meth:`flush` at the end
    of the stream to drain the filter's delay line. Equal rates pass through.
    """

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} → {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)
        )

    def process(self, pcm: Pcm) -> Pcm:
        if self._stream is None:
            return pcm
        out: Pcm = self._stream.resample_chunk(pcm, last=False)
        return out

    def flush(self) -> Pcm:
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        out: Pcm = self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        return out


def resample(pcm: Pcm, in_rate: int, out_rate: int) -> Pcm:
    """Resample a whole clip at once."""
    if in_rate == out_rate or pcm.size == 0:
        return pcm
    out: Pcm = soxr.resample(pcm, in_rate, out_rate)
    return out
