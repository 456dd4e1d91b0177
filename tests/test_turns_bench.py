"""`voice-agent bench --turns` without models: the session's TurnMachine replays a pause's
measured times under each policy, and the bench tells a cut-off from a true end (exact
times), and the stretched set keeps the speech and adds only a pause of its background."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.turns import Analysed, Pause, Utterance, decide, judge, policies, summarize
from voice_agent.session.config import SessionConfig

MID = "And so my fellow Americans ask not what your country can do for you."
END = "And so my fellow Americans ask not what your country can do for you, ask what you can."


def jfk_like(inner_p: float) -> Analysed:
    """Speech 0–2 s, a pause (whisper writes a full stop), speech 2.6–5 s, the end."""
    a = Analysed(Utterance("jfk+0.5s@5", np.zeros(16000, np.int16)))
    a.onsets = [(0.0, 0.06), (2.6, 2.66)]
    a.pauses = [
        Pause(at=2.0, confirmed=2.12, text=MID, stt_s=0.2, p=inner_p, score_s=0.05),
        Pause(at=5.0, confirmed=5.12, text=END, stt_s=0.2, p=0.9, score_s=0.05),
    ]
    return a


def test_a_policy_that_ends_at_the_inner_pause_cuts_the_speaker_off() -> None:
    made = {name: make for name, make, _ in policies(SessionConfig())}
    # 300 ms of silence ends the turn at the first pause, once its transcript is in (2.32 s)
    vad = made["vad silence 0.3 s"]
    assert decide(jfk_like(0.1), vad) == pytest.approx(2.32)
    assert judge(jfk_like(0.1), 2.32) == {
        "name": "jfk+0.5s@5", "ended": True, "cut_off": True, "endpoint_ms": None
    }  # fmt: skip
    # the model's low score at the pause waits 2 s: the speaker goes on at 2.6 s, and the
    # turn ends 0.2 s after the true end (the transcript at 5.32 s decides it)
    default = next(make for name, make in made.items() if name.startswith("default"))
    assert decide(jfk_like(0.1), default) == pytest.approx(5.32)
    assert judge(jfk_like(0.1), 5.32)["endpoint_ms"] == 320
    # a high score at the pause (whisper's full stop agreeing) cuts in: 0.2 s wait
    assert decide(jfk_like(0.9), default) == pytest.approx(2.32)


def test_the_summary_counts_cut_offs_by_recording() -> None:
    rows = [
        {"name": "jfk", "ended": True, "cut_off": False, "endpoint_ms": 300},
        {"name": "jfk+1.0s@3", "ended": True, "cut_off": True, "endpoint_ms": None},
        {"name": "dir:a.wav", "ended": True, "cut_off": False, "endpoint_ms": 500},
    ]
    s = summarize(rows)
    assert s["cut_offs"] == 1 and s["cut_off_pct"] == 33.3 and s["cut"] == ["jfk+1.0s@3"]
    assert s["by_recording"] == {"jfk": "1/2", "dir": "0/1"}
    assert s["endpoint_ms"]["p50"] == 400


def test_a_stretched_pause_is_filled_with_the_recordings_own_quiet_stretch() -> None:
    from benchmarks.turns import noise_floor

    rng = np.random.default_rng(0)

    def noise(seconds: float, std: float) -> np.ndarray:
        return (rng.standard_normal(int(seconds * 16000)) * std).astype(np.int16)

    # loud sound (webrtcvad: speech) around a half-second of faint background
    pcm = np.concatenate([noise(2.0, 8000), noise(0.5, 30), noise(2.0, 8000)])
    fill = noise_floor(pcm, 1.0)
    # (attenuated until webrtcvad hears no speech in the loop, never louder)
    assert len(fill) == 16000 and 1 < fill.std() < 40 and np.abs(fill).max() < 200


def test_a_final_pass_started_40_ms_into_the_pause_decides_sooner() -> None:
    (name, make, early), *_ = [p for p in policies(SessionConfig()) if p[2] is not None]
    assert early == 0.04 and name.endswith("STT 40 ms in")
    # the transcript is in at 5.0 + 0.04 + 0.2 = 5.24 s, not 5.32: the turn ends then
    assert decide(jfk_like(0.1), make, early) == pytest.approx(5.24)
