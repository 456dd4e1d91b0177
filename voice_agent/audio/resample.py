"""Resampling: libswresample (av) for live streams, soxr for whole clips.

Live audio is resampled 20 ms at a time, and what matters there is the delay the
resampler adds. soxr's streaming resampler works in blocks: fed 20 ms chunks it
returns nothing for several chunks and then a block at once, holding back 20–37
ms on average between 48 and 16 kHz (HQ) and 63 ms (up to 115 ms) between 8 and
16 kHz, the telephone's rates. On the caller's side that is time before the VAD
hears the end of speech; on the agent's side it is time before the first audio
and a tail that waits for a flush. libswresample (through av) returns each chunk
at once and holds 1–2 ms, and its filter matches soxr VHQ's output to -40 dB
(8 ↔ 16 kHz) and better (16 ↔ 48 kHz): ``StreamResampler`` uses it.
"""

from __future__ import annotations

import av
import numpy as np
import soxr

from voice_agent.audio.pcm import Pcm


class StreamResampler:
    """Streaming int16 mono resampler (libswresample, through av).

    Feed chunks of any size with :meth:`process`; call :meth:`flush` at the end
    of the stream to drain the filter's delay line. Equal rates pass through.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} → {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._swr = (
            None
            if in_rate == out_rate
            else av.AudioResampler(format="s16", layout="mono", rate=out_rate)
        )

    def process(self, pcm: Pcm) -> Pcm:
        if self._swr is None:
            return pcm
        if len(pcm) == 0:
            return np.zeros(0, dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self.in_rate
        return self._join(self._swr.resample(frame))

    def flush(self) -> Pcm:
        if self._swr is None:
            return np.zeros(0, dtype=np.int16)
        return self._join(self._swr.resample(None))

    @staticmethod
    def _join(frames: list[av.AudioFrame]) -> Pcm:
        if not frames:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16)


def resample(pcm: Pcm, in_rate: int, out_rate: int) -> Pcm:
    """Resample a whole clip at once."""
    if in_rate == out_rate or pcm.size == 0:
        return pcm
    out: Pcm = soxr.resample(pcm, in_rate, out_rate)
    return out
