"""Underruns: gaps beyond real time in an answer's audio, counted once the answer (not a
filler) began to play, never across a pause for the caller's speech."""

from __future__ import annotations

import numpy as np

from voice_agent.audio.playout import Segment
from voice_agent.session.metrics import TurnMetrics
from voice_agent.session.record import CallRecord
from voice_agent.telemetry import ServerMetrics


def _seg(filler: bool = False) -> Segment:
    return Segment(1, "Hmm." if filler else "Hello there.", np.zeros(320, np.int16), 0, filler)


def _send(rec: CallRecord, times: list[float], filler: bool = False) -> None:
    for t in times:
        rec.first_frame(1, _seg(filler), t)
        rec.frame_sent(1, t, paused=False)


def test_a_late_sentence_counts_once_with_its_gap_and_filler_waits_do_not() -> None:
    rec = CallRecord("sys", 0.0)
    m = TurnMetrics(gen=1, user_text="hi")
    rec.track(m)
    _send(rec, [0.0, 0.02, 0.04], filler=True)  # "Hmm.", then 1.5 s until the answer
    _send(rec, [1.5 + 0.02 * k for k in range(10)])  # 1.50 .. 1.68; due next at 1.70
    _send(rec, [1.75])  # 50 ms late: within a jitter buffer
    _send(rec, [1.77, 2.27])  # due 1.79 → 480 ms late: one underrun
    assert (m.underruns, round(m.underrun_s, 3)) == (1, 0.48)
    assert m.to_dict(0.0)["underruns"] == {"count": 1, "ms": 480.0}


def test_frames_sent_ahead_are_not_owed_back_and_a_pause_is_no_underrun() -> None:
    rec = CallRecord("sys", 0.0)
    m = TurnMetrics(gen=1, user_text="hi")
    rec.track(m)
    _send(rec, [0.0] * 10)  # a burst sent at once: 200 ms of audio due by 0.2 s
    _send(rec, [0.25])  # the client still had audio until 0.2: 50 ms late, no underrun
    rec.paused(1, onset=0.26, now=0.3, sent_samples=0)  # the caller began to speak
    _send(rec, [2.0, 2.02])  # resumed after a recovered barge-in
    assert m.underruns == 0
    metrics = ServerMetrics()
    m.underruns, m.underrun_s = 2, 0.5
    metrics.observe_turn(m)
    text = metrics.render().decode()
    assert "voice_agent_underruns_total 2.0" in text
    assert "voice_agent_underrun_seconds_total 0.5" in text
