"""InboundPipeline: framing, VAD hysteresis, the turn buffer with pre-roll, sample times.
Pure: exact values, no event loop."""

from __future__ import annotations

import numpy as np
import pytest
from doubles import EnergyVadDouble, silence, tone

from voice_agent.session.inbound import InboundPipeline, SpeechEnd, SpeechOnset
from voice_agent.vad.hysteresis import VadState


def feed(p: InboundPipeline, pcm: np.ndarray, t0: float, chunk: int = 320) -> list[object]:
    """Feed ``pcm`` in chunks, each arriving when its last sample is captured."""
    events: list[object] = []
    for k in range(0, len(pcm), chunk):
        events += p.push(pcm[k : k + chunk], t0 + (k + chunk) / 16000)
    return events


def test_onset_and_end_are_dated_by_the_sample_they_happened_at() -> None:
    p = InboundPipeline(EnergyVadDouble(), vad_start_ms=60, vad_stop_ms=120, preroll_ms=100)
    audio = np.concatenate([silence(0.5), tone(1.0, 500), silence(0.5)])
    events = feed(p, audio, t0=100.0)
    assert events == [SpeechOnset(100.5), SpeechEnd(101.5)]
    assert p.samples_in == len(audio)
    # the turn opened where the VAD confirmed the speech (its third speech frame, 0.56 s)
    # with 100 ms of pre-roll back from there, and holds everything since
    assert p.turn_start_sample == int(0.46 * 16000)
    assert len(p.turn_audio()) == len(audio) - int(0.46 * 16000)
    assert p.state is VadState.QUIET


def test_frames_of_one_big_chunk_are_dated_by_their_place_in_it() -> None:
    p = InboundPipeline(EnergyVadDouble())
    audio = np.concatenate([silence(0.3), tone(0.5, 500), silence(0.2)])  # 1 s in one chunk
    assert p.push(audio, now=50.0) == [SpeechOnset(49.3), SpeechEnd(49.8)]
    assert p.sample_time(16000) == 50.0 and p.sample_at(50.5) == 24000


def test_a_chunk_that_is_not_a_whole_number_of_frames_is_carried() -> None:
    p = InboundPipeline(EnergyVadDouble())
    p.push(silence(0.015), 1.0)
    assert p.samples_in == 0  # 240 samples: not yet a frame
    p.push(silence(0.015), 1.015)
    assert p.samples_in == 320


def test_the_turn_buffer_is_capped_and_dropped_at_the_end_of_the_turn() -> None:
    p = InboundPipeline(EnergyVadDouble(), preroll_ms=0, max_turn_s=1.0)
    feed(p, np.concatenate([tone(3.0, 500), silence(0.2)]), t0=0.0)
    # pre-roll of one frame minimum, then at most 1 s (50 frames) of turn
    assert len(p.turn_audio()) == 50 * 320
    p.end_turn()
    assert not p.in_turn and len(p.turn_audio()) == 0


def test_speech_already_going_on_when_the_turn_ends_opens_the_next_turn() -> None:
    """The turn ended on a timer while the caller had begun again (the VAD's onset was
    on its way to the turn machine): the new speech is the next turn's, from its onset."""
    p = InboundPipeline(EnergyVadDouble(), vad_start_ms=60, vad_stop_ms=120, preroll_ms=100)
    first = np.concatenate([tone(1.0, 500), silence(0.5)])
    assert feed(p, first, t0=0.0) == [SpeechOnset(0.0), SpeechEnd(1.0)]
    second = tone(0.4, 700)
    assert feed(p, second, t0=1.5) == [SpeechOnset(1.5)]
    p.end_turn()  # the first turn is answered now
    # the next turn holds the new speech and the 100 ms before it, nothing of the first
    assert p.in_turn and p.turn_onset == 1.5
    assert p.turn_start_sample == int(1.4 * 16000)
    audio = p.turn_audio()
    assert len(audio) == int(0.5 * 16000)
    assert np.array_equal(audio[1600:], second) and not np.any(audio[:1600])


def test_a_word_starting_as_the_turn_ends_keeps_its_first_frames() -> None:
    p = InboundPipeline(EnergyVadDouble(), vad_start_ms=60, vad_stop_ms=120, preroll_ms=100)
    feed(p, np.concatenate([tone(1.0, 500), silence(0.5), tone(0.04, 700)]), t0=0.0)
    assert p.state is VadState.STARTING  # two frames of a new word: not yet an onset
    p.end_turn()
    assert not p.in_turn
    assert feed(p, tone(0.2, 700), t0=1.54) == [SpeechOnset(1.5)]
    # the turn opened 100 ms before the onset was confirmed (its third frame, 1.56 s):
    # 40 ms of silence, then the word from its first frame, which came before end_turn
    audio = p.turn_audio()
    assert p.turn_start_sample == int(1.46 * 16000)
    assert len(audio) == int(0.28 * 16000)
    assert np.count_nonzero(audio[:640]) == 0
    assert np.array_equal(audio[640:], np.concatenate([tone(0.04, 700), tone(0.2, 700)]))


def test_a_partial_is_due_each_time_the_turn_grows_by_the_interval() -> None:
    p = InboundPipeline(EnergyVadDouble(), preroll_ms=0)
    due = []
    for k in range(100):  # 2 s of speech, a frame at a time
        p.push(tone(0.02, 500), (k + 1) * 0.02)
        if p.partial_due(0.8):
            due.append(k)
    # the turn opens at the third speech frame (k = 2) with one frame (the minimum pre-roll):
    # a partial is due at 40 frames (0.8 s) of turn, k = 41, and again at k = 81
    assert due == [41, 81]


def test_frames_held_up_by_a_stall_are_dated_when_they_were_captured() -> None:
    """Our loop stalled 0.4 s: the 20 frames captured meanwhile arrive together at its
    end. Each is dated by the stream's real time, not its late arrival, so the input
    timeline (the echo guard's anchor) stays where the caller's microphone is."""
    p = InboundPipeline(EnergyVadDouble(), vad_start_ms=60, vad_stop_ms=120, capture_window_s=1.0)
    feed(p, silence(1.0), t0=10.0)  # on time: frame k arrives as it is captured
    late = np.concatenate([tone(0.2, 500), silence(0.2)])
    events: list[object] = []
    for k in range(0, len(late), 320):
        events += p.push(late[k : k + 320], 11.4)  # all at the stall's end
    assert events == [SpeechOnset(11.0), SpeechEnd(11.2)]
    assert p.sample_time(16000) == 11.0 and p.sample_time(int(1.4 * 16000)) == 11.4
    assert p.sample_at(11.5) == int(1.5 * 16000)


def test_the_least_delayed_frame_of_the_last_second_sets_the_timeline() -> None:
    """Network jitter delays frames by 0 to 30 ms: the timeline keeps the least delay."""
    p = InboundPipeline(EnergyVadDouble(), capture_window_s=1.0)
    delays = [0.03, 0.0, 0.02, 0.01]
    for k in range(50):
        p.push(silence(0.02), 5.0 + (k + 1) * 0.02 + delays[k % 4])
    assert p.sample_time(50 * 320) == pytest.approx(6.0)
    assert p.sample_time(48 * 320) == pytest.approx(5.96)


def test_a_stream_that_paused_is_followed_again_after_the_window() -> None:
    """A client that stopped sending for 2 s: its new audio arrives 2 s later than the
    old timeline says. Once a whole window (0.5 s) of it has come in, the old timeline's
    frames have left the window and the new arrivals date the stream."""
    p = InboundPipeline(EnergyVadDouble(), capture_window_s=0.5)
    feed(p, silence(1.0), t0=0.0)
    feed(p, silence(1.0), t0=3.0)  # samples 1 s..2 s, sent at 3 s..4 s
    # 0.4 s into the new audio the old frames are still in the window, at 0.6 s not
    assert p.sample_time(int(1.4 * 16000)) == pytest.approx(1.4)
    assert p.sample_time(int(1.6 * 16000)) == pytest.approx(3.6)
    assert p.sample_time(int(2.0 * 16000)) == pytest.approx(4.0)
    assert p.sample_at(4.25) == int(2.25 * 16000)
