"""Smart Turn v3.2 on real speech: jfk.flac cut at its mid-sentence pause and mid-phrase
reads as unfinished, and at its end as finished. (On espeak voices its scores are near
random, so it is judged on human speech.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voice_agent.audio.files import load_audio_16k
from voice_agent.audio.pcm import SAMPLE_RATE

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def model() -> Any:
    from voice_agent.endpoint.smart_turn import SmartTurn

    return SmartTurn()


def cut(pcm: np.ndarray, seconds: float) -> np.ndarray:
    return pcm[: int(seconds * SAMPLE_RATE)]


def test_jfk_is_unfinished_at_its_pause_and_mid_phrase_and_finished_at_the_end(
    model: Any, jfk_path: Path
) -> None:
    jfk = load_audio_16k(jfk_path)
    # "ask not what your country can do for you, [pause 4.42-5.40 s] ask what you can..."
    assert model.probability(cut(jfk, 4.6)) < 0.2
    assert model.probability(cut(jfk, 1.0)) < 0.2  # "And so my fel-"
    assert model.probability(cut(jfk, 7.5)) < 0.2  # "ask what you can do"
    assert model.probability(jfk) > 0.5  # "...for your country."


def test_it_reads_only_the_last_8_s_left_padded(model: Any, jfk_path: Path) -> None:
    jfk = load_audio_16k(jfk_path)
    last8 = jfk[-8 * SAMPLE_RATE :]
    assert np.array_equal(model.features(jfk), model.features(last8))
    short = cut(jfk, 3.0)
    padded = np.concatenate([np.zeros(2 * SAMPLE_RATE, dtype=np.int16), short])
    assert np.array_equal(model.features(short), model.features(padded))
    features = model.features(short)
    assert features.shape == (80, 800) and features.dtype == np.float32
    # the left padding is silence: the first 5 s of frames are all at the floor value
    assert np.ptp(features[:, : 5 * 100 - 2]) == 0 and np.ptp(features[:, -290:]) > 0.5
