"""VAD hysteresis: frame decisions in, start/stop events with exact sample positions out."""

import pytest

from voice_agent.vad.hysteresis import VadHysteresis, VadStart, VadState, VadStop

F = 320  # samples per 20 ms frame


def run(pattern: str, start: int = 3, stop: int = 5) -> list[tuple[int, object]]:
    h = VadHysteresis(F, start, stop)
    return [(i, ev) for i, c in enumerate(pattern) if (ev := h.update(c == "#")) is not None]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("....", []),
        ("##.", []),  # too short to start
        ("###", [(2, VadStart(0))]),
        ("..####", [(4, VadStart(2 * F))]),
        ("###....", [(2, VadStart(0))]),  # 4 silent frames: not yet a stop
        ("###.....", [(2, VadStart(0)), (7, VadStop(3 * F))]),
        # a short pause inside speech is bridged
        ("###..##.....", [(2, VadStart(0)), (11, VadStop(7 * F))]),
        # two utterances
        (
            "###.....###.....",
            [(2, VadStart(0)), (7, VadStop(3 * F)), (10, VadStart(8 * F)), (15, VadStop(11 * F))],
        ),
        # flicker never starts
        ("#.#.#.#.", []),
    ],
)
def test_events(pattern: str, expected: list[tuple[int, object]]) -> None:
    assert run(pattern) == expected


def test_states_follow_the_vocabulary() -> None:
    h = VadHysteresis(F, 2, 2)
    states = [(h.update(c == "#"), h.state)[1] for c in "#.##..##."]
    assert states == [
        VadState.STARTING,
        VadState.QUIET,
        VadState.STARTING,
        VadState.SPEAKING,
        VadState.STOPPING,
        VadState.QUIET,
        VadState.STARTING,
        VadState.SPEAKING,
        VadState.STOPPING,
    ]


def test_from_ms_rounds_up_to_whole_frames() -> None:
    h = VadHysteresis.from_ms(20, 60, 210)
    assert (h.frame_samples, h.start_frames, h.stop_frames) == (320, 3, 11)


def test_rejects_zero_frames() -> None:
    with pytest.raises(ValueError):
        VadHysteresis(F, 0, 1)


def test_the_quiet_run_of_a_stop_being_confirmed() -> None:
    h = VadHysteresis(F, 1, 3)
    assert h.update(True) == VadStart(0) and h.quiet_run is None
    h.update(True)
    assert h.update(False) is None and h.quiet_run == (2 * F, 1)
    assert h.update(False) is None and h.quiet_run == (2 * F, 2)
    assert h.update(False) == VadStop(2 * F) and h.quiet_run is None
