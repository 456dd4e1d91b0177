"""PCM16 helpers. The internal format is mono int16 at 16 kHz (``SAMPLE_RATE``)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16_000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 320

Pcm = npt.NDArray[np.int16]
Floats = npt.NDArray[np.float32]


def to_float32(pcm: Pcm) -> Floats:
    """int16 → float32 in [-1, 1)."""
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


def to_int16(x: npt.NDArray[np.floating]) -> Pcm:
    """float in [-1, 1] → int16, clipping out-of-range values."""
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def from_bytes(data: bytes) -> Pcm:
    """Little-endian PCM16 bytes → int16 array. Raises ValueError on an odd length."""
    if len(data) % 2:
        raise ValueError(f"PCM16 data must have an even byte count, got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def rms_dbfs(pcm: Pcm) -> float:
    """RMS level in dBFS; -inf-safe (returns -120.0 for silence or empty input)."""
    if pcm.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(pcm.astype(np.float64)))))
    if rms < 1e-9:
        return -120.0
    return max(-120.0, 20.0 * float(np.log10(rms / 32768.0)))


def to_mono(samples: npt.NDArray[np.int16], channel: int | None) -> Pcm:
    """Pick one channel of a ``(n, channels)`` array, or mix all when ``channel`` is None.

    A 1-D array is already mono and is returned unchanged.
    """
    if samples.ndim == 1:
        return samples
    n_channels = samples.shape[1]
    if channel is None:
        return to_int16(samples.astype(np.float64).mean(axis=1) / 32768.0)
    if not 0 <= channel < n_channels:
        raise ValueError(f"channel {channel} out of range: the input has {n_channels}")
    return np.ascontiguousarray(samples[:, channel])


def split_frames(pcm: Pcm, frame: int = FRAME_SAMPLES) -> list[Pcm]:
    """Split into frames of ``frame`` samples; the last one is zero-padded."""
    out: list[Pcm] = []
    for start in range(0, len(pcm), frame):
        chunk = pcm[start : start + frame]
        if len(chunk) < frame:
            chunk = np.concatenate([chunk, np.zeros(frame - len(chunk), dtype=np.int16)])
        out.append(chunk)
    return out


class FrameCutter:
    """The streaming form of :func:`split_frames`: audio in pieces of any length comes out
    in whole frames of ``frame`` samples; what is left over waits for the next piece."""

    def __init__(self, frame: int) -> None:
        self.frame = frame
        self._rest = np.zeros(0, dtype=np.int16)

    def cut(self, pcm: Pcm) -> list[Pcm]:
        buf = np.concatenate([self._rest, pcm]) if self._rest.size else pcm
        n = len(buf) // self.frame * self.frame
        self._rest = buf[n:]
        return [buf[i : i + self.frame] for i in range(0, n, self.frame)]

    def drain(self) -> list[Pcm]:
        """What is left over, as one zero-padded frame (none if nothing is left)."""
        rest, self._rest = self._rest, np.zeros(0, dtype=np.int16)
        return split_frames(rest, self.frame)

    def clear(self) -> None:
        self._rest = np.zeros(0, dtype=np.int16)
