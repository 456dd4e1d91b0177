"""TurnMachine: events with exact times in, commands out. No event loop."""

import pytest

from voice_agent.session.turns import (
    AgentState,
    CancelReply,
    ClearPlayout,
    Close,
    CommitReply,
    DiscardTurn,
    Hangup,
    Interrupt,
    PrepareReply,
    ReplyAudioStarted,
    ReplyFinished,
    RequestTranscript,
    SpeechStarted,
    SpeechStopped,
    StartReply,
    TextInput,
    Tick,
    TranscriptReady,
    TurnMachine,
    UserState,
    looks_finished,
)


def machine() -> TurnMachine:
    """Without preemptive replies: the reply starts when the turn is over."""
    return TurnMachine(min_silence_s=0.3, max_silence_s=0.9, preemptive=False)


def preemptive(prepare_after_s: float = 0.0) -> TurnMachine:
    return TurnMachine(0.3, 0.9, preemptive=True, prepare_after_s=prepare_after_s)


def test_finished_sentence_ends_turn_at_min_silence() -> None:
    m = machine()
    assert m.handle(SpeechStarted(t=1.06, at=1.0)) == []
    assert m.handle(SpeechStopped(t=3.2, at=3.0)) == [RequestTranscript(1)]
    assert m.user is UserState.PAUSED
    assert m.next_deadline() == pytest.approx(3.9)  # fallback: max silence
    # transcript ready at 3.25, before min silence (3.3): wait until then
    assert m.handle(TranscriptReady(t=3.25, request=1, text="What time is it?")) == []
    assert m.next_deadline() == pytest.approx(3.3)
    assert m.handle(Tick(3.29)) == []
    assert m.handle(Tick(3.3)) == [StartReply(1, "What time is it?", speech_end=3.0, decided=3.3)]
    assert (m.user, m.agent, m.gen) == (UserState.QUIET, AgentState.THINKING, 1)
    assert m.next_deadline() is None


def test_late_transcript_of_finished_sentence_ends_turn_at_once() -> None:
    m = machine()
    m.handle(SpeechStarted(t=0.1, at=0.0))
    m.handle(SpeechStopped(t=2.2, at=2.0))
    assert m.handle(TranscriptReady(t=2.45, request=1, text="Hello.")) == [
        StartReply(1, "Hello.", speech_end=2.0, decided=2.45)
    ]


def test_unfinished_sentence_waits_for_max_silence() -> None:
    m = machine()
    m.handle(SpeechStarted(t=0.1, at=0.0))
    m.handle(SpeechStopped(t=2.2, at=2.0))
    assert m.handle(TranscriptReady(t=2.5, request=1, text="ask not what your country,")) == []
    assert m.next_deadline() == pytest.approx(2.9)
    assert m.handle(Tick(2.9)) == [
        StartReply(1, "ask not what your country,", speech_end=2.0, decided=2.9)
    ]


def test_speech_resuming_continues_the_turn_and_drops_the_old_transcript() -> None:
    m = machine()
    m.handle(SpeechStarted(t=0.1, at=0.0))
    m.handle(SpeechStopped(t=2.2, at=2.0))
    assert m.handle(SpeechStarted(t=2.6, at=2.5)) == []
    assert m.user is UserState.SPEAKING and m.next_deadline() is None
    # the stale transcript (request 1) is ignored
    assert m.handle(TranscriptReady(t=2.7, request=1, text="Stale.")) == []
    assert m.handle(SpeechStopped(t=4.2, at=4.0)) == [RequestTranscript(2)]
    assert m.handle(TranscriptReady(t=4.5, request=2, text="Whole turn.")) == [
        StartReply(1, "Whole turn.", speech_end=4.0, decided=4.5)
    ]


def test_transcript_later_than_deadline() -> None:
    m = machine()
    m.handle(SpeechStarted(t=0.1, at=0.0))
    m.handle(SpeechStopped(t=2.2, at=2.0))
    assert m.handle(Tick(2.9)) == []  # no transcript yet: keep waiting
    assert m.next_deadline() is None
    assert m.handle(TranscriptReady(t=3.4, request=1, text="so")) == [
        StartReply(1, "so", speech_end=2.0, decided=3.4)
    ]


def test_empty_transcript_discards_the_turn() -> None:
    m = machine()
    m.handle(SpeechStarted(t=0.1, at=0.0))
    m.handle(SpeechStopped(t=0.5, at=0.3))
    assert m.handle(TranscriptReady(t=0.8, request=1, text="  ")) == [DiscardTurn()]
    assert (m.user, m.agent, m.gen) == (UserState.QUIET, AgentState.IDLE, 0)


def test_reply_lifecycle_and_stale_generations() -> None:
    m = machine()
    m.handle(TextInput(t=1.0, text="hi"))
    assert m.agent is AgentState.THINKING
    assert m.handle(ReplyAudioStarted(t=1.5, gen=1)) == []
    assert m.agent is AgentState.SPEAKING
    m.handle(ReplyFinished(t=2.0, gen=0))  # stale: ignored
    assert m.agent is AgentState.SPEAKING
    m.handle(ReplyFinished(t=3.0, gen=1))
    assert m.agent is AgentState.IDLE


def test_new_turn_during_reply_cancels_it_first() -> None:
    m = machine()
    m.handle(TextInput(t=1.0, text="first"))
    m.handle(ReplyAudioStarted(t=1.5, gen=1))
    m.handle(SpeechStarted(t=2.0, at=1.9))
    assert m.agent is AgentState.SPEAKING  # speech alone does not cancel here
    m.handle(SpeechStopped(t=3.2, at=3.0))
    assert m.handle(TranscriptReady(t=3.4, request=1, text="Second.")) == [
        CancelReply(1),
        ClearPlayout(1),
        StartReply(2, "Second.", speech_end=3.0, decided=3.4),
    ]


def test_typed_text_is_a_turn_and_empty_text_is_ignored() -> None:
    m = machine()
    assert m.handle(TextInput(t=5.0, text="  ")) == []
    assert m.handle(TextInput(t=5.0, text="Hello")) == [
        StartReply(1, "Hello", speech_end=None, decided=5.0)
    ]


def test_hangup_cancels_and_closes() -> None:
    m = machine()
    m.handle(TextInput(t=1.0, text="hi"))
    assert m.handle(Hangup(t=2.0)) == [CancelReply(1), ClearPlayout(1), Close()]
    assert m.handle(TextInput(t=3.0, text="again")) == []


@pytest.mark.parametrize(
    ("text", "finished"),
    [
        ("Hello.", True),
        ("Why?", True),
        ('He said "go."', True),
        ("for you,", False),
        ("and so", False),
        ("Wow!", True),
    ],
)
def test_looks_finished(text: str, finished: bool) -> None:
    assert looks_finished(text) is finished


def test_bad_silence_config() -> None:
    with pytest.raises(ValueError):
        TurnMachine(min_silence_s=1.0, max_silence_s=0.5)


# -- preemptive replies ------------------------------------------------------


def test_preemptive_reply_is_prepared_at_transcript_and_committed_at_end_of_turn() -> None:
    m = preemptive()
    m.handle(SpeechStarted(t=0.1, at=0.0))
    assert m.handle(SpeechStopped(t=2.12, at=2.0)) == [RequestTranscript(1)]
    assert m.handle(TranscriptReady(t=2.15, request=1, text="What time is it?")) == [
        PrepareReply(1, "What time is it?", speech_end=2.0)
    ]
    assert (m.gen, m.prepared, m.agent) == (0, 1, AgentState.IDLE)  # held, not playing
    assert m.next_deadline() == pytest.approx(2.3)
    assert m.handle(Tick(2.3)) == [CommitReply(1, decided=2.3)]
    assert (m.gen, m.prepared, m.agent) == (1, None, AgentState.THINKING)
    assert m.handle(ReplyAudioStarted(t=2.31, gen=1)) == []
    assert m.agent is AgentState.SPEAKING


def test_preemptive_reply_is_dropped_when_the_caller_goes_on() -> None:
    m = preemptive()
    m.handle(SpeechStarted(t=0.1, at=0.0))
    m.handle(SpeechStopped(t=2.12, at=2.0))
    m.handle(TranscriptReady(t=2.15, request=1, text="ask not what your country can do for you."))
    assert m.handle(SpeechStarted(t=2.6, at=2.54)) == [CancelReply(1)]
    assert (m.gen, m.prepared, m.user) == (0, None, UserState.SPEAKING)
    assert m.handle(Tick(2.9)) == []  # the old deadline is gone
    m.handle(SpeechStopped(t=5.12, at=5.0))
    assert m.handle(TranscriptReady(t=5.2, request=2, text="The whole turn.")) == [
        PrepareReply(2, "The whole turn.", speech_end=5.0)
    ]
    assert m.handle(Tick(5.3)) == [CommitReply(2, decided=5.3)]


def test_late_transcript_prepares_and_commits_at_once() -> None:
    m = preemptive()
    m.handle(SpeechStarted(t=0.1, at=0.0))
    m.handle(SpeechStopped(t=2.12, at=2.0))
    assert m.handle(TranscriptReady(t=2.5, request=1, text="Hello.")) == [
        PrepareReply(1, "Hello.", speech_end=2.0),
        CommitReply(1, decided=2.5),
    ]


def test_no_preemption_while_a_reply_is_live() -> None:
    m = preemptive()
    m.handle(TextInput(t=1.0, text="first"))
    m.handle(ReplyAudioStarted(t=1.5, gen=1))
    m.handle(SpeechStarted(t=2.0, at=1.9))
    m.handle(SpeechStopped(t=3.12, at=3.0))
    assert m.handle(TranscriptReady(t=3.2, request=1, text="Second.")) == []
    assert m.handle(Tick(3.3)) == [
        CancelReply(1),
        ClearPlayout(1),
        StartReply(2, "Second.", speech_end=3.0, decided=3.3),
    ]


def test_typed_text_and_hangup_drop_a_prepared_reply() -> None:
    m = preemptive()
    m.handle(SpeechStarted(t=0.1, at=0.0))
    m.handle(SpeechStopped(t=2.12, at=2.0))
    m.handle(TranscriptReady(t=2.15, request=1, text="Hi."))
    assert m.handle(TextInput(t=2.2, text="typed")) == [
        CancelReply(1),
        StartReply(2, "typed", speech_end=None, decided=2.2),
    ]
    m2 = preemptive()
    m2.handle(SpeechStarted(t=0.1, at=0.0))
    m2.handle(SpeechStopped(t=2.12, at=2.0))
    m2.handle(TranscriptReady(t=2.15, request=1, text="Hi."))
    assert m2.handle(Hangup(t=2.2)) == [CancelReply(1), Close()]


def test_preparing_waits_until_the_pause_is_long_enough() -> None:
    m = preemptive(prepare_after_s=0.25)
    m.handle(SpeechStarted(t=0.1, at=0.0))
    m.handle(SpeechStopped(t=2.12, at=2.0))
    assert m.handle(TranscriptReady(t=2.15, request=1, text="What time is it?")) == []
    assert m.next_deadline() == pytest.approx(2.25)
    assert m.handle(Tick(2.24)) == []
    assert m.handle(Tick(2.25)) == [PrepareReply(1, "What time is it?", speech_end=2.0)]
    assert m.next_deadline() == pytest.approx(2.3)
    assert m.handle(Tick(2.3)) == [CommitReply(1, decided=2.3)]


def test_speech_before_the_prepare_time_prepares_nothing() -> None:
    m = preemptive(prepare_after_s=0.25)
    m.handle(SpeechStarted(t=0.1, at=0.0))
    m.handle(SpeechStopped(t=2.12, at=2.0))
    m.handle(TranscriptReady(t=2.15, request=1, text="What"))
    assert m.handle(SpeechStarted(t=2.2, at=2.18)) == []
    assert m.next_deadline() is None and m.prepared is None


def test_turn_ending_before_the_prepare_time_starts_the_reply_directly() -> None:
    m = TurnMachine(0.1, 0.9, preemptive=True, prepare_after_s=0.25)
    m.handle(SpeechStarted(t=0.1, at=0.0))
    m.handle(SpeechStopped(t=2.05, at=2.0))
    assert m.handle(TranscriptReady(t=2.06, request=1, text="Hi.")) == []
    assert m.handle(Tick(2.1)) == [StartReply(1, "Hi.", speech_end=2.0, decided=2.1)]


def test_interrupt_cancels_the_live_reply_only() -> None:
    m = machine()
    assert m.handle(Interrupt(t=0.5)) == []
    m.handle(TextInput(t=1.0, text="hi"))
    m.handle(ReplyAudioStarted(t=1.2, gen=1))
    assert m.handle(Interrupt(t=1.5)) == [CancelReply(1), ClearPlayout(1)]
    assert (m.agent, m.gen) == (AgentState.IDLE, 1)
    m.handle(ReplyFinished(t=1.6, gen=1))
    assert m.handle(TextInput(t=2.0, text="again")) == [
        StartReply(2, "again", speech_end=None, decided=2.0)
    ]
