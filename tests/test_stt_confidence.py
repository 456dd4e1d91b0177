"""Whisper's own confidence on real speech: jfk.flac reads clearly, the same recording
played backwards (speech-like, but no words) and noise read as unsure, on both sides of
the session's unclear floor (-0.7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voice_agent.audio.files import load_audio_16k
from voice_agent.session.config import SessionConfig

pytestmark = pytest.mark.models


def test_clear_speech_scores_above_the_floor_and_garbled_speech_below(
    stt_tts: Any, jfk_path: Path
) -> None:
    stt, _ = stt_tts
    assert SessionConfig().unclear_logprob is None  # the STT's own floor
    floor = stt.unclear_logprob
    assert floor == -0.7
    jfk = load_audio_16k(jfk_path)
    clear = stt.transcribe(jfk)
    assert "fellow Americans" in clear.text and clear.avg_logprob > -0.4
    backwards = stt.transcribe(jfk[::-1].copy())
    noise = stt.transcribe((np.random.default_rng(0).standard_normal(48000) * 2000).astype(np.int16))
    assert backwards.avg_logprob < floor and noise.avg_logprob < floor
