"""EchoGuard on real speech: the agent's voice coming back at -12 dB, 80 ms late, is removed
before the VAD sees it, while a caller talking over it passes through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voice_agent.audio.echo import EchoGuard
from voice_agent.audio.files import load_audio_16k
from voice_agent.audio.pcm import SAMPLE_RATE, rms_dbfs

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def run(guard: EchoGuard, far: np.ndarray, near: np.ndarray, anchor: int = 0) -> np.ndarray:
    out = []
    for k in range(0, len(near) - 319, 320):
        if k < len(far):
            guard.far_end(far[k : k + 320], anchor + k)
        out.append(guard.near_end(near[k : k + 320]))
    return np.concatenate(out)


def db(x: np.ndarray, a: float, b: float) -> float:
    return rms_dbfs(x[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)])


@pytest.fixture(scope="module")
def voices(jfk_path: Path) -> tuple[np.ndarray, np.ndarray]:
    far = load_audio_16k(jfk_path)[: 8 * SAMPLE_RATE]  # "the agent"
    caller = load_audio_16k(SAMPLES / "stereo_diarization.wav", channel=0)[
        2 * SAMPLE_RATE : 4 * SAMPLE_RATE
    ]
    return far, caller


def test_echo_is_removed_and_a_caller_over_it_passes(
    voices: tuple[np.ndarray, np.ndarray],
) -> None:
    far, caller = voices
    delay, gain = 1280, 10 ** (-12 / 20)  # 80 ms, -12 dB
    echo = np.zeros(len(far), dtype=np.float32)
    echo[delay:] = gain * far[:-delay]
    near = echo.copy()
    near[5 * SAMPLE_RATE : 7 * SAMPLE_RATE] += caller
    guard = EchoGuard()
    out = run(guard, far, near.astype(np.int16))
    assert guard.path is not None and guard.path.delay == delay
    assert guard.path.gain == pytest.approx(gain, rel=0.02)
    # echo alone: from about -27 dBFS down below -80 once the path is found (~0.5 s)
    assert db(near, 1, 5) > -32 and db(out, 1, 5) < -80
    # the first half second, before the path is known, is gated, not passed on
    assert db(out, 0, 0.5) < db(near, 0, 0.5) - 20 and guard.gated_frames > 0
    # a caller over the echo comes through at its own level (within 1 dB)
    talk = np.asarray(caller, dtype=np.float32)
    assert db(out, 5, 7) == pytest.approx(rms_dbfs(talk.astype(np.int16)), abs=1.0)


def test_a_new_burst_is_rechecked_with_its_own_anchor(
    voices: tuple[np.ndarray, np.ndarray],
) -> None:
    far, _ = voices
    guard = EchoGuard()
    gain = 0.25
    first, second = far[: 3 * SAMPLE_RATE], far[4 * SAMPLE_RATE : 7 * SAMPLE_RATE]
    near = np.zeros(8 * SAMPLE_RATE, dtype=np.float32)
    near[1280 : 1280 + len(first)] += gain * first
    # the second burst is anchored at 4.0 s but its echo arrives with 96 ms of delay
    b2 = 4 * SAMPLE_RATE
    near[b2 + 1536 : b2 + 1536 + len(second)] += gain * second
    out = []
    for k in range(0, len(near) - 319, 320):
        if k < len(first):
            guard.far_end(first[k : k + 320], k)
        if b2 <= k < b2 + len(second):
            guard.far_end(second[k - b2 : k - b2 + 320], k)
        out.append(guard.near_end(near[k : k + 320].astype(np.int16)))
    res = np.concatenate(out)
    assert guard.path is not None and guard.path.delay == 1536
    assert db(res, 4.6, 7.0) < -80  # the second burst's echo is removed too


def test_no_echo_means_no_path_and_the_caller_untouched_after_the_probe(
    voices: tuple[np.ndarray, np.ndarray],
) -> None:
    far, caller = voices
    near = np.zeros(len(far), dtype=np.int16)  # a client that cancels its own echo
    near[2 * SAMPLE_RATE : 4 * SAMPLE_RATE] = caller
    guard = EchoGuard()
    out = run(guard, far, near)
    assert guard.path is None
    np.testing.assert_array_equal(out[SAMPLE_RATE:], near[SAMPLE_RATE : len(out)])


def test_a_burst_that_starts_while_the_caller_talks_leaves_the_caller_whole(
    voices: tuple[np.ndarray, np.ndarray],
) -> None:
    """Sound before a burst cannot be its echo: resuming over a talking caller gates nothing."""
    far, caller = voices
    near = np.zeros(4 * SAMPLE_RATE, dtype=np.int16)
    near[SAMPLE_RATE : 3 * SAMPLE_RATE] = caller
    # the agent (louder than the caller) starts 0.5 s into the caller's speech
    assert rms_dbfs(far[:SAMPLE_RATE]) > rms_dbfs(caller) + 6
    b = int(1.5 * SAMPLE_RATE)
    guard = EchoGuard()
    out = []
    for k in range(0, len(near), 320):
        if b <= k < b + 2 * SAMPLE_RATE:
            guard.far_end(far[k - b : k - b + 320], k)
        out.append(guard.near_end(near[k : k + 320]))
    assert guard.bursts == 1 and guard.gated_frames == 0 and guard.path is None
    np.testing.assert_array_equal(np.concatenate(out), near)


def test_after_an_echo_free_burst_a_caller_who_starts_early_in_the_next_is_not_gated(
    voices: tuple[np.ndarray, np.ndarray],
) -> None:
    far, caller = voices
    guard = EchoGuard()
    # burst 1 (0-1 s): the agent talks, the caller's input stays silent (no echo comes back)
    out1 = run(guard, far[:SAMPLE_RATE], np.zeros(2 * SAMPLE_RATE, dtype=np.int16))
    assert guard.echo_free and guard.path is None and not np.any(out1)
    # burst 2 at 2.0 s: the caller talks over it from 0.1 s in, quieter than the agent
    near = np.zeros(2 * SAMPLE_RATE, dtype=np.int16)
    near[1600:] = caller[: len(near) - 1600]
    gated = guard.gated_frames
    out2 = run(guard, far[SAMPLE_RATE : 3 * SAMPLE_RATE], near, anchor=2 * SAMPLE_RATE)
    assert guard.bursts == 2 and guard.gated_frames == gated
    np.testing.assert_array_equal(out2, near[: len(out2)])


def test_without_that_evidence_the_first_burst_still_gates_a_quiet_onset(
    voices: tuple[np.ndarray, np.ndarray],
) -> None:
    """The other side of the trade: early in a call's first burst, quiet input is taken for
    echo until the probe ends (an echo caller's first words of echo never reach the VAD)."""
    far, caller = voices
    near = np.zeros(2 * SAMPLE_RATE, dtype=np.int16)
    near[1600:] = (caller[: len(near) - 1600] * 0.25).astype(np.int16)
    guard = EchoGuard()
    out = run(guard, far[: 2 * SAMPLE_RATE], near)
    assert guard.gated_frames > 0 and not guard.echo_free
    # after the probe (0.6 s) the caller passes untouched
    after = int(0.64 * SAMPLE_RATE)
    np.testing.assert_array_equal(out[after:], near[after : len(out)])
