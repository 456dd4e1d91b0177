"""Both VAD classifiers on real speech and on silence/noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voice_agent.audio.files import load_audio_16k
from voice_agent.audio.pcm import split_frames
from voice_agent.vad.silero import SileroSession, SileroVad
from voice_agent.vad.webrtc import WebRtcVad


def speech_share(vad: object, pcm: np.ndarray) -> float:
    decisions = [vad.is_speech(f) for f in split_frames(pcm)]  # type: ignore[attr-defined]
    return sum(decisions) / len(decisions)


@pytest.mark.parametrize(
    "make", [lambda: WebRtcVad(2), lambda: SileroVad(SileroSession())], ids=["webrtc", "silero"]
)
def test_speech_vs_silence(make: object, jfk_path: Path) -> None:
    jfk = load_audio_16k(jfk_path)
    speech = jfk[int(0.4 * 16000) : int(2.2 * 16000)]  # "And so my fellow Americans"
    assert speech_share(make(), speech) >= 0.8  # type: ignore[operator]
    assert speech_share(make(), np.zeros(16000, dtype=np.int16)) == 0.0  # type: ignore[operator]


def test_silero_ignores_white_noise() -> None:
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(32000) * 1000).astype(np.int16)
    assert speech_share(SileroVad(SileroSession()), noise) <= 0.05


def test_webrtc_rejects_bad_aggressiveness() -> None:
    with pytest.raises(ValueError, match="0..3"):
        WebRtcVad(7)
