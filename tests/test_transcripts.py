"""TranscriptFilter: noise by measured speech, echo by the agent words sent while the
caller spoke. Pure: exact values."""

from __future__ import annotations

import numpy as np

from voice_agent.audio.playout import Playout
from voice_agent.session.transcripts import TranscriptFilter
from voice_agent.stt.base import Transcript


def heard(text: str, speech_s: float | None = 1.0) -> Transcript:
    return Transcript(text=text, audio_samples=16000, compute_s=0.1, speech_s=speech_s)


def sent_sentence(f: TranscriptFilter, text: str, start_sample: int, seconds: float) -> None:
    """The agent said ``text`` (``seconds`` long), its first frame playing at input sample
    ``start_sample``."""
    playout = Playout()
    playout.push(1, np.ones(int(seconds * 16000), dtype=np.int16), text)
    k = 0
    while (item := playout.pull()) is not None:
        f.agent_frame(start_sample + k * 320, item[2])
        k += 1


def test_words_over_no_measured_speech_are_noise() -> None:
    f = TranscriptFilter(min_speech_s=0.06)
    assert f.final(heard("I'm gonna go to the end", speech_s=0.0), turn_start=0) == ""
    assert f.final(heard("Wait", speech_s=0.08), turn_start=0) == "Wait"
    assert f.final(heard("Hello there", speech_s=None), turn_start=0) == "Hello there"


def test_the_agents_own_words_while_the_caller_spoke_are_echo() -> None:
    f = TranscriptFilter(echo_reach_s=0.6)
    sent_sentence(f, "The weather in Paris is sunny today.", start_sample=32000, seconds=2.0)
    # the caller's turn began at 2.5 s, while that sentence played
    assert f.final(heard("weather in Paris is sunny"), turn_start=40000) == ""
    assert f.check(heard("Paris is sunny"), turn_start=40000) == ("", True)
    # the caller's own words over it are not
    assert f.final(heard("Stop, tell me about London"), turn_start=40000) == (
        "Stop, tell me about London"
    )
    # one word the agent said proves nothing either way: the check says "" and not echo
    assert f.check(heard("sunny"), turn_start=40000) == ("", False)


def test_on_a_line_that_has_shown_no_echo_the_agents_words_are_the_callers() -> None:
    """Echo is only judged by words on a line that echoes: a caller saying the agent's
    words at the same time as the agent is heard (the guard found no echo path)."""
    found = [False]
    f = TranscriptFilter(echo_reach_s=0.6, line_echoes=lambda: found[0])
    sent_sentence(f, "Ask what you can do for your country.", start_sample=32000, seconds=2.0)
    line = "ask what you can do for your country"
    assert f.final(heard(line), turn_start=40000) == line
    assert f.check(heard(line), turn_start=40000) == (line, False)
    found[0] = True  # the echo guard has found an echo path: the same words are echo
    assert f.final(heard(line), turn_start=40000) == ""
    assert f.check(heard(line), turn_start=40000) == ("", True)


def test_a_caller_quoting_a_finished_line_later_is_heard() -> None:
    f = TranscriptFilter(echo_reach_s=0.6)
    sent_sentence(f, "The weather in Paris is sunny today.", start_sample=0, seconds=2.0)
    # the line ended at 2 s; the caller's turn began at 3 s, 1 s later (> 0.6 s reach)
    assert f.final(heard("Paris is sunny today?"), turn_start=48000) == "Paris is sunny today?"


def test_words_whisper_was_unsure_of_are_unclear() -> None:
    f = TranscriptFilter(unclear_logprob=-0.7)
    sure = Transcript("What time is it?", 16000, 0.1, avg_logprob=-0.15)
    unsure = Transcript("You're opening our month on May.", 16000, 0.1, avg_logprob=-1.0)
    assert not f.is_unclear(sure) and f.is_unclear(unsure)
    assert not f.is_unclear(Transcript("x", 16000, 0.1))  # no score: not judged
    assert not TranscriptFilter().is_unclear(unsure)  # no floor: never
