"""Reading and writing audio files at the edge (replay, bench, reports)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from voice_agent.audio.pcm import SAMPLE_RATE, Pcm, to_mono
from voice_agent.audio.resample import resample
from voice_agent.errors import AudioInputError


def load_audio(path: str | Path, channel: int | None = None) -> tuple[Pcm, int]:
    """Read a WAV/FLAC/OGG file as mono int16 at its own rate.

    ``channel`` selects one channel of a multichannel file; None mixes them.
    Raises :class:`AudioInputError` with a one-line fix for missing, empty,
    corrupt or unsupported files.
    """
    p = Path(path)
    if not p.exists():
        raise AudioInputError(f"audio file not found: {p}", "check the path")
    if p.stat().st_size == 0:
        raise AudioInputError(f"audio file is empty: {p}", "record or export it again")
    try:
        data, rate = sf.read(str(p), dtype="int16", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioInputError(
            f"cannot read {p.name}: {exc}",
            "use a WAV or FLAC file (e.g. `sox in.mp3 out.wav`)",
        ) from exc
    if data.shape[0] == 0:
        raise AudioInputError(f"audio file has no samples: {p}", "record or export it again")
    try:
        mono = to_mono(np.asarray(data, dtype=np.int16), channel)
    except ValueError as exc:
        raise AudioInputError(f"{p.name}: {exc}", "pass --channel 0..N-1 or --mix") from exc
    return mono, int(rate)


def load_audio_16k(path: str | Path, channel: int | None = None) -> Pcm:
    """Like :func:`load_audio`, resampled to the internal 16 kHz."""
    pcm, rate = load_audio(path, channel)
    return resample(pcm, rate, SAMPLE_RATE)


def write_wav(path: str | Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write int16 samples, shape ``(n,)`` or ``(n, channels)``, as a WAV file."""
    sf.write(str(path), samples, rate, subtype="PCM_16")
