"""TurnMachine: events with exact times in, commands out. No event loop."""

import pytest

from voice_agent.session.turns import (
    AgentState,
    CancelReply,
    ClearPlayout,
    Close,
    CommitReply,
    DiscardTurn,
    EndpointPolicy,
    Hangup,
    Interrupt,
    PrepareReply,
    ReplyAudioStarted,
    ReplyFinished,
    RequestTranscript,
    ScoreTurn,
    SpeechStarted,
    SpeechStopped,
    StartReply,
    TextInput,
    Tick,
    TranscriptReady,
    TurnMachine,
    TurnScore,
    UserState,
    looks_finished,
    trails_off,
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
    assert m.handle(TranscriptReady(t=2.5, request=1, text="ask not what your country")) == []
    assert m.next_deadline() == pytest.approx(2.9)
    assert m.handle(Tick(2.9)) == [
        StartReply(1, "ask not what your country", speech_end=2.0, decided=2.9)
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
    assert m.handle(TranscriptReady(t=3.4, request=1, text="hello there")) == [
        StartReply(1, "hello there", speech_end=2.0, decided=3.4)
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


# -- full duplex: barge-in, false interruptions, fillers, idle ---------------

from voice_agent.session.turns import (  # noqa: E402
    BargeInTranscript,
    CheckBargeIn,
    Command,
    ConfirmBargeIn,
    DuplexPolicy,
    PausePlayout,
    PlayFiller,
    ResumePlayout,
    Say,
    content_words,
)


def confirmed(gen: int, text: str) -> list[Command]:
    """What a confirmed barge-in does: confirm it with the words heard, cancel the reply,
    and clear its audio."""
    return [ConfirmBargeIn(gen, text), CancelReply(gen), ClearPlayout(gen)]


def duplex(**kw: object) -> TurnMachine:
    policy = DuplexPolicy(**{"filler_after_s": None, "idle_prompt_s": None, **kw})  # type: ignore[arg-type]
    return TurnMachine(0.3, 0.9, preemptive=False, duplex=policy)


def caller_starts_at_3(**kw: object) -> TurnMachine:
    """Reply 1 plays from 1.0 s; the caller starts talking over it at 3.0 s."""
    m = duplex(**kw)
    speaking(m)
    m.handle(SpeechStarted(t=3.07, at=3.0))
    return m


def speaking(m: TurnMachine, t: float = 1.0) -> None:
    """Reply 1 is playing from ``t``."""
    m.handle(TextInput(t=t, text="tell me a story"))
    m.handle(ReplyAudioStarted(t=t + 0.5, gen=1))


def test_onset_pauses_then_words_confirm_the_barge_in() -> None:
    m = duplex(barge_in_min_s=0.2)
    speaking(m)
    assert m.handle(SpeechStarted(t=3.07, at=3.0)) == [PausePlayout(1, onset=3.0)]
    assert m.agent is AgentState.SPEAKING and m.barge is not None
    assert m.next_deadline() == pytest.approx(3.2)
    assert m.handle(Tick(3.19)) == []
    assert m.handle(Tick(3.2)) == [CheckBargeIn(1)]
    # while the check runs: the give-up time plus the grace for a late check
    assert m.next_deadline() == pytest.approx(5.5)
    assert m.handle(BargeInTranscript(t=3.3, request=1, text="Wait, stop")) == confirmed(
        1, "Wait, stop"
    )
    assert (m.agent, m.barge, m.user) == (AgentState.IDLE, None, UserState.SPEAKING)
    # the caller's turn goes on as usual and gets its own reply
    m.handle(SpeechStopped(t=4.12, at=4.0))
    assert m.handle(TranscriptReady(t=4.2, request=1, text="Wait, stop. What time is it?")) == []
    assert m.handle(Tick(4.3)) == [
        StartReply(2, "Wait, stop. What time is it?", speech_end=4.0, decided=4.3)
    ]


def test_backchannel_words_recheck_then_resume_at_the_false_interruption_window() -> None:
    m = caller_starts_at_3(barge_in_min_s=0.2, recheck_s=0.3, false_interruption_s=1.5)
    assert m.handle(Tick(3.2)) == [CheckBargeIn(1)]
    assert m.handle(BargeInTranscript(t=3.3, request=1, text="Uh-huh.")) == []
    assert m.next_deadline() == pytest.approx(3.6)  # check again 0.3 s later
    assert m.handle(Tick(3.6)) == [CheckBargeIn(2)]
    assert m.handle(BargeInTranscript(t=3.7, request=1, text="stale")) == []
    assert m.handle(BargeInTranscript(t=3.7, request=2, text="")) == []
    assert m.handle(Tick(3.99)) == []
    assert m.handle(Tick(4.0)) == [CheckBargeIn(3)]
    assert m.handle(Tick(4.5)) == []  # the check is still running at the give-up time
    assert m.handle(BargeInTranscript(t=4.6, request=3, text="mm-hmm")) == [ResumePlayout(1)]
    assert m.barge is None and m.agent is AgentState.SPEAKING


def checking_at_3_2() -> TurnMachine:
    """Reply 1 plays; the caller starts at 3.0 s; the first words check starts at 3.2 s
    (window 1.5 s, grace 1 s)."""
    m = caller_starts_at_3(
        barge_in_min_s=0.2, recheck_s=0.3, false_interruption_s=1.5, check_grace_s=1.0
    )
    assert m.handle(Tick(3.2)) == [CheckBargeIn(1)]
    return m


def test_a_check_still_running_at_the_window_is_waited_for_and_one_word_then_confirms() -> None:
    """A loaded CPU makes whisper slow: the agent stays paused for the late answer."""
    m = checking_at_3_2()
    assert m.handle(Tick(4.5)) == []
    assert m.next_deadline() == pytest.approx(5.5)
    assert m.handle(BargeInTranscript(t=4.9, request=1, text="ask")) == confirmed(1, "ask")
    # no answer within the grace: the reply resumes, and the late answer changes nothing
    m = checking_at_3_2()
    assert m.handle(Tick(5.49)) == []
    assert m.handle(Tick(5.5)) == [ResumePlayout(1)]
    assert m.handle(BargeInTranscript(t=5.6, request=1, text="Stop now")) == []
    assert m.barge is None and m.agent is AgentState.SPEAKING
    # one word from an earlier check, and the late check hears nothing more: still going
    # with a word is a barge-in, as at the mark itself
    m = checking_at_3_2()
    assert m.handle(BargeInTranscript(t=3.5, request=1, text="Ask")) == []  # one: not yet
    assert m.handle(Tick(3.8)) == [CheckBargeIn(2)]
    assert m.handle(Tick(4.5)) == []
    assert m.handle(BargeInTranscript(t=4.7, request=2, text="")) == confirmed(1, "Ask")


def test_a_cough_that_ends_before_any_check_resumes_and_discards_the_turn() -> None:
    m = caller_starts_at_3(barge_in_min_s=0.2)
    assert m.handle(SpeechStopped(t=3.27, at=3.15)) == [RequestTranscript(1)]
    assert m.next_deadline() == pytest.approx(3.2)  # the words check, in the pause too
    assert m.handle(Tick(3.2)) == [CheckBargeIn(1)]
    assert m.handle(TranscriptReady(t=3.35, request=1, text="")) == [
        ResumePlayout(1),
        DiscardTurn(),
    ]
    assert (m.agent, m.user, m.barge) == (AgentState.SPEAKING, UserState.QUIET, None)


def test_a_short_real_word_confirms_at_the_end_of_the_turn() -> None:
    m = caller_starts_at_3(barge_in_min_s=0.2)
    m.handle(SpeechStopped(t=3.27, at=3.15))
    assert m.handle(TranscriptReady(t=3.35, request=1, text="Stop.")) == confirmed(1, "Stop.")
    assert m.handle(Tick(3.45)) == [StartReply(2, "Stop.", speech_end=3.15, decided=3.45)]


def test_backchannel_turn_while_the_agent_speaks_is_not_a_turn() -> None:
    m = caller_starts_at_3(false_interruption_s=0.5)
    # the window is over and no check has run: the caller still talking is looked at
    assert m.handle(Tick(3.5)) == [CheckBargeIn(1)]
    m.handle(SpeechStopped(t=3.72, at=3.6))
    assert m.handle(BargeInTranscript(t=3.75, request=1, text="Yeah")) == [ResumePlayout(1)]
    assert m.handle(TranscriptReady(t=3.8, request=1, text="Yeah, okay.")) == [DiscardTurn()]
    assert m.agent is AgentState.SPEAKING and m.gen == 1


def test_duration_only_rule_confirms_without_words() -> None:
    m = duplex(barge_in_min_s=0.15, barge_in_words=0)
    speaking(m)
    assert m.handle(SpeechStarted(t=3.07, at=3.0)) == [PausePlayout(1, onset=3.0)]
    assert m.handle(Tick(3.15)) == confirmed(1, "")


def test_onset_while_thinking_pauses_too_and_nothing_when_idle_or_disabled() -> None:
    m = duplex()
    assert m.handle(SpeechStarted(t=0.5, at=0.45)) == []  # agent idle: just speech
    m2 = duplex()
    m2.handle(TextInput(t=1.0, text="hi"))
    assert m2.handle(SpeechStarted(t=1.2, at=1.1)) == [PausePlayout(1, onset=1.1)]
    m3 = duplex(barge_in=False)
    speaking(m3)
    assert m3.handle(SpeechStarted(t=3.07, at=3.0)) == []


def test_two_words_rule_counts_only_content_words() -> None:
    m = caller_starts_at_3(barge_in_words=2)
    m.handle(Tick(3.2))
    assert m.handle(BargeInTranscript(t=3.3, request=1, text="Yeah, no")) == []
    m.handle(Tick(3.6))
    assert m.handle(BargeInTranscript(t=3.7, request=2, text="Yeah, no wait")) == confirmed(
        1, "Yeah, no wait"
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Uh-huh.", []),
        ("Mm-hmm", []),
        ("Yeah, okay, I see.", []),
        ("Hmm, got it!", []),
        ("Mmmm", []),
        ("Uh uh", []),
        ("Ahh, hmm.", []),
        ("Wait, stop.", ["wait", "stop"]),
        ("No, that's wrong", ["no", "that's", "wrong"]),
    ],
)
def test_content_words(text: str, words: list[str]) -> None:
    assert content_words(text) == words


def test_filler_when_no_reply_audio_by_the_deadline_and_only_once() -> None:
    m = duplex(filler_after_s=0.8)
    m.handle(SpeechStarted(t=0.1, at=0.0))
    m.handle(SpeechStopped(t=1.12, at=1.0))
    m.handle(TranscriptReady(t=1.2, request=1, text="What is the weather?"))
    assert m.handle(Tick(1.3)) == [
        StartReply(1, "What is the weather?", speech_end=1.0, decided=1.3)
    ]
    assert m.next_deadline() == pytest.approx(2.1)
    assert m.handle(Tick(2.09)) == []
    assert m.handle(Tick(2.1)) == [PlayFiller(1)]
    assert m.next_deadline() is None
    # a reply whose audio starts in time gets no filler
    m.handle(ReplyFinished(t=3.0, gen=1))
    m.handle(TextInput(t=4.0, text="and tomorrow"))
    m.handle(ReplyAudioStarted(t=4.5, gen=2))
    assert m.handle(Tick(4.8)) == []


def test_idle_prompt_once_then_goodbye_then_close() -> None:
    m = TurnMachine(
        0.3, 0.9, preemptive=False, t0=0.0,
        duplex=DuplexPolicy(filler_after_s=None, idle_prompt_s=10.0, idle_end_s=5.0),
    )  # fmt: skip
    assert m.next_deadline() == pytest.approx(10.0)
    assert m.handle(Tick(10.0)) == [Say(1, "idle_prompt")]
    assert m.agent is AgentState.THINKING
    m.handle(ReplyAudioStarted(t=10.2, gen=1))
    m.handle(ReplyFinished(t=11.5, gen=1))
    assert m.next_deadline() == pytest.approx(16.5)  # idle_end_s after the prompt played
    assert m.handle(Tick(16.5)) == [Say(2, "goodbye")]
    assert m.handle(SpeechStarted(t=16.6, at=16.55)) == []  # the goodbye is not interruptible
    m.handle(SpeechStopped(t=16.8, at=16.7))
    assert m.handle(ReplyFinished(t=18.0, gen=2)) == [Close()]
    assert m.closed


def test_speech_resets_the_idle_prompt() -> None:
    m = TurnMachine(
        0.3, 0.9, preemptive=False, t0=0.0,
        duplex=DuplexPolicy(filler_after_s=None, idle_prompt_s=10.0, idle_end_s=5.0),
    )  # fmt: skip
    m.handle(Tick(10.0))
    m.handle(ReplyFinished(t=11.0, gen=1))
    m.handle(SpeechStarted(t=12.0, at=11.95))
    assert m.next_deadline() is None
    m.handle(SpeechStopped(t=13.12, at=13.0))
    assert m.handle(TranscriptReady(t=13.2, request=1, text="")) == [DiscardTurn()]
    assert m.next_deadline() == pytest.approx(23.2)  # a fresh idle prompt, not the goodbye
    assert m.handle(Tick(23.2)) == [Say(2, "idle_prompt")]


def test_while_talking_one_word_is_not_enough_and_repeats_count_once() -> None:
    m = caller_starts_at_3(barge_in_min_s=0.2)
    m.handle(Tick(3.2))
    # a word cut off half-way, and whisper's repetition of one word: not a barge-in yet
    assert m.handle(BargeInTranscript(t=3.3, request=1, text="Earth")) == []
    m.handle(Tick(3.6))
    assert m.handle(BargeInTranscript(t=3.7, request=2, text="Run. Run. Run. Run")) == []
    m.handle(SpeechStopped(t=3.9, at=3.78))
    # the whole utterance, once it is over: "Right." four times is a backchannel
    assert m.handle(TranscriptReady(t=4.0, request=1, text="Right. Right. Right.")) == [
        ResumePlayout(1),
        DiscardTurn(),
    ]


def test_one_word_and_still_talking_at_the_window_end_confirms() -> None:
    m = caller_starts_at_3(barge_in_min_s=0.2, recheck_s=0.3, false_interruption_s=1.5)
    m.handle(Tick(3.2))
    assert m.handle(BargeInTranscript(t=3.3, request=1, text="Wait...")) == []
    # a short gap between words: the checks go on while the caller pauses
    m.handle(SpeechStopped(t=3.52, at=3.4))
    assert m.handle(Tick(3.6)) == [CheckBargeIn(2)]
    assert m.handle(BargeInTranscript(t=3.7, request=2, text="Wait... um")) == []
    m.handle(SpeechStarted(t=3.75, at=3.7))
    m.handle(Tick(4.0))
    assert m.handle(BargeInTranscript(t=4.1, request=3, text="")) == []
    assert m.handle(Tick(4.5)) == confirmed(1, "Wait...")


def test_function_words_alone_never_confirm_a_barge_in() -> None:
    """Whisper tiny.en wrote "And then the" into an espeak "mm-hmm" cut off at 0.78 s (seen
    in the barge-in bench): words that say nothing cannot prove an interruption."""
    m = caller_starts_at_3(barge_in_min_s=0.2, recheck_s=0.3)
    m.handle(Tick(3.2))
    assert m.handle(BargeInTranscript(t=3.4, request=1, text="And then the")) == []
    m.handle(Tick(3.7))
    # with a word that means something, two words confirm while the caller talks
    assert m.handle(BargeInTranscript(t=3.9, request=2, text="Hold on")) == confirmed(1, "Hold on")


def test_a_sentence_begun_with_function_words_and_still_going_at_the_window_confirms() -> None:
    """What whisper tiny.en heard of jfk's "And so my fellow Americans" at 0.8 and 1.4 s: words
    that say nothing alone. The caller still talking at the window's end: a barge-in,
    not a resume over them. The same words with the caller gone quiet resume."""
    m = caller_starts_at_3(barge_in_min_s=0.2, recheck_s=0.3, false_interruption_s=1.5)
    assert m.handle(Tick(3.2)) == [CheckBargeIn(1)]
    assert m.handle(BargeInTranscript(t=3.8, request=1, text="and so")) == []
    assert m.handle(Tick(4.1)) == [CheckBargeIn(2)]
    assert m.handle(BargeInTranscript(t=4.4, request=2, text="And so my")) == []
    assert m.user is UserState.SPEAKING
    assert m.handle(Tick(4.5)) == confirmed(1, "And so my")
    # one such word is not enough, still talking or not
    m = caller_starts_at_3(barge_in_min_s=0.2, recheck_s=0.3, false_interruption_s=1.5)
    m.handle(Tick(3.2))
    assert m.handle(BargeInTranscript(t=3.8, request=1, text="And")) == []
    m.handle(Tick(4.1))
    assert m.handle(BargeInTranscript(t=4.4, request=2, text="")) == []
    assert m.handle(Tick(4.5)) == [ResumePlayout(1)]
    # the caller paused (a backchannel that is over): the same words resume
    m = caller_starts_at_3(barge_in_min_s=0.2, recheck_s=0.3, false_interruption_s=1.5)
    m.handle(Tick(3.2))
    m.handle(SpeechStopped(t=3.9, at=3.8))
    assert m.handle(BargeInTranscript(t=4.0, request=1, text="And then the")) == []
    assert m.user is UserState.PAUSED
    assert m.handle(Tick(4.5)) == [ResumePlayout(1)]


def test_a_late_check_that_heard_nothing_of_a_caller_still_talking_is_made_again() -> None:
    """On a busy CPU the first check may read only the first 200 ms (""), and its answer
    comes after the window: the caller still talking, it is looked at again within the
    grace rather than the agent resuming over them (the soak: 26 of 44 talk-overs did)."""
    m = checking_at_3_2()  # window ends at 4.5, grace 1 s
    assert m.handle(BargeInTranscript(t=4.7, request=1, text="")) == [CheckBargeIn(2)]
    assert m.next_deadline() == pytest.approx(5.5)
    assert m.handle(BargeInTranscript(t=5.1, request=2, text="And so my")) == confirmed(
        1, "And so my"
    )
    # nothing heard by the end of the grace: the reply resumes
    m = checking_at_3_2()
    assert m.handle(BargeInTranscript(t=4.7, request=1, text="")) == [CheckBargeIn(2)]
    assert m.handle(BargeInTranscript(t=5.2, request=2, text="")) == [CheckBargeIn(3)]
    assert m.handle(Tick(5.5)) == [ResumePlayout(1)]
    # the caller stopped: no looking again
    m = checking_at_3_2()
    m.handle(SpeechStopped(t=4.6, at=4.4))
    assert m.handle(BargeInTranscript(t=4.7, request=1, text="")) == [ResumePlayout(1)]


def test_a_lone_function_word_at_the_end_of_the_turn_resumes_the_reply() -> None:
    m = caller_starts_at_3(barge_in_min_s=0.2)
    m.handle(SpeechStopped(t=3.25, at=3.13))
    assert m.handle(TranscriptReady(t=3.5, request=1, text="The.")) == [
        ResumePlayout(1),
        DiscardTurn(),
    ]


# -- the endpoint policy: transcript cues and the end-of-turn model's score ---------------


def scored(preemptive: bool = False, **policy: float) -> TurnMachine:
    """Complete at 0.5: 0.2 s when the transcript agrees, 0.8 s when not, else 2 s;
    whatever the defaults."""
    values = {"complete_p": 0.5, "complete_wait_s": 0.2, "unsure_wait_s": 0.8,
              "max_wait_s": 2.0} | policy  # fmt: skip
    return TurnMachine(
        0.6, 1.0, preemptive=preemptive, prepare_after_s=0.1,
        endpoint=EndpointPolicy(scored=True, **values),  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "trailing"),
    [("I'd like a table for.", True), ("My order number is, um", True), ("and", True),
     ("So the thing is,", True), ("I want to go to the", True), ("What is it for?", False),
     ("Book it for Friday.", False), ("Ask not what your country can do for you.", False),
     ("Thanks!", False), ("", False), ("My name is Anna and", True),
     ("The horizon seems extremely...", True), ("Well…", True)],
)  # fmt: skip
def test_a_transcript_that_trails_off(text: str, trailing: bool) -> None:
    assert trails_off(text) is trailing


@pytest.mark.parametrize(
    ("text", "trailing"),
    [("Tell me a fun fact about octopuses,", False), ("So the thing is,", True),
     ("I'd like a table for,", True), ("My order number is, um,", True), ("Well…", False),
     ("What is it for?", False), ("I want to go to the", True)],
)  # fmt: skip
def test_without_the_stts_marks_only_the_last_word_trails_off(text: str, trailing: bool) -> None:
    assert trails_off(text, marks=False) is trailing


def test_a_final_comma_can_still_be_read_as_trailing_off_to_compare() -> None:
    m = scored(unmarked_abstains=True, unmarked_commas=False)
    assert scored_pause(m, "Tell me a fun fact about octopuses,", 0.988)[0] == 2.0


def test_a_transcript_that_trails_off_waits_the_longest() -> None:
    m = machine()  # no model: a finished sentence would end at 0.3 s
    m.handle(SpeechStarted(t=0.1, at=0.0))
    m.handle(SpeechStopped(t=1.2, at=1.0))
    assert m.handle(TranscriptReady(t=1.5, request=1, text="I'd like a table for.")) == []
    assert m.wait_s == 2.0 and m.next_deadline() == pytest.approx(3.0)
    assert m.handle(Tick(2.9)) == []
    assert m.handle(Tick(3.0)) == [
        StartReply(1, "I'd like a table for.", speech_end=1.0, decided=3.0)
    ]


def test_a_complete_score_ends_the_turn_at_its_short_wait() -> None:
    m = scored()
    m.handle(SpeechStarted(t=0.1, at=0.0))
    assert m.handle(SpeechStopped(t=1.12, at=1.0)) == [RequestTranscript(1), ScoreTurn(1)]
    # the transcript first: until the score comes, the transcript rule (0.6 s) stands
    assert m.handle(TranscriptReady(t=1.15, request=1, text="What time is it?")) == []
    assert m.next_deadline() == pytest.approx(1.6)
    # the score says complete: 0.2 s after the last word, which has passed
    assert m.handle(TurnScore(t=1.25, request=1, p=0.91)) == [
        StartReply(1, "What time is it?", speech_end=1.0, decided=1.25)
    ]


def test_a_score_before_the_transcript_is_used_when_it_comes() -> None:
    m = scored()
    m.handle(SpeechStarted(t=0.1, at=0.0))
    m.handle(SpeechStopped(t=1.12, at=1.0))
    assert m.handle(TurnScore(t=1.14, request=1, p=0.8)) == []
    assert m.handle(TranscriptReady(t=1.15, request=1, text="What time is it?")) == []
    assert m.wait_s == 0.2 and m.next_deadline() == pytest.approx(1.2)
    assert m.handle(Tick(1.2)) == [StartReply(1, "What time is it?", speech_end=1.0, decided=1.2)]


def scored_pause(m: TurnMachine, text: str, p: float) -> tuple[float, float | None]:
    """Speech from 0 to 1 s, its transcript and its score: (the wait, the deadline)."""
    m.handle(SpeechStarted(t=0.1, at=0.0))
    m.handle(SpeechStopped(t=1.12, at=1.0))
    m.handle(TranscriptReady(t=1.15, request=1, text=text))
    m.handle(TurnScore(t=1.18, request=1, p=p))
    return m.wait_s, m.next_deadline()


@pytest.mark.parametrize(
    ("p", "text", "wait"),
    [(0.5, "Ask not what your country can do for you.", 0.2),  # both say complete
     (0.49, "Ask not what your country can do for you.", 0.8),  # a full stop it doubts
     (0.9, "Ask not what your country can do", 0.8),  # no full stop, the model says done
     (0.1, "Ask not what your country can do", 2.0),  # neither
     (0.9, "Ask not what your country can do for", 2.0)],  # it trails off: the longest
)  # fmt: skip
def test_the_score_and_the_transcript_set_the_wait(p: float, text: str, wait: float) -> None:
    assert scored_pause(scored(), text, p) == (wait, pytest.approx(1.0 + wait))


def test_the_model_alone_ignores_the_full_stop() -> None:
    m = scored(model_alone=True)
    assert scored_pause(m, "Ask not what your country can do", 0.9)[0] == 0.2


@pytest.mark.parametrize(
    ("p", "text", "wait"),
    [(0.9, "Ask what you can do for your country", 0.2),  # no full stop: the model decides
     (0.45, "Ask what you can do for your country", 0.8),  # it doubts: unsure, not the max
     (0.9, "Ask what you can do for your country.", 0.2),  # a full stop still counts
     (0.49, "Ask what you can do for your country.", 0.8),
     (0.9, "Ask what you can do for", 2.0),  # trailing off still waits the longest
     (0.988, "Tell me a fun fact about octopuses,", 0.2),  # its final comma says nothing
     (0.3, "Tell me a fun fact about octopuses,", 0.8),
     (0.9, "I'd like a table for,", 2.0)],  # the word still does
)  # fmt: skip
def test_an_stt_that_leaves_sentences_unpunctuated_lets_the_model_decide(
    p: float, text: str, wait: float
) -> None:
    m = scored(unmarked_abstains=True)
    assert scored_pause(m, text, p) == (wait, pytest.approx(1.0 + wait))


def test_a_doubted_full_stop_waits_and_the_caller_goes_on_in_the_same_turn() -> None:
    m = scored(preemptive=True)
    m.handle(SpeechStarted(t=0.1, at=0.0))
    m.handle(SpeechStopped(t=4.5, at=4.4))
    text = "Ask not what your country can do for you."
    m.handle(TranscriptReady(t=4.8, request=1, text=text))
    # jfk's mid-sentence pause scores 0.015 against whisper's full stop: the unsure wait
    # (0.8 s); a reply is prepared meanwhile, held
    assert m.handle(TurnScore(t=4.9, request=1, p=0.015)) == [
        PrepareReply(1, text, speech_end=4.4)
    ]
    assert m.next_deadline() == pytest.approx(5.2)
    # he goes on after 540 ms: one turn, and the held reply is dropped unheard
    assert m.handle(SpeechStarted(t=5.0, at=4.94)) == [CancelReply(1)]
    assert m.handle(SpeechStopped(t=11.1, at=11.0)) == [RequestTranscript(2), ScoreTurn(2)]
    assert m.handle(TurnScore(t=11.2, request=1, p=0.99)) == []  # stale: ignored
    assert m.handle(TurnScore(t=11.25, request=2, p=0.83)) == []
    whole = "Ask not what your country can do for you, ask what you can do for your country."
    assert m.handle(TranscriptReady(t=11.3, request=2, text=whole)) == [
        PrepareReply(2, whole, speech_end=11.0), CommitReply(2, decided=11.3)
    ]


def test_a_low_score_and_no_full_stop_prepare_nothing_and_wait_the_longest() -> None:
    m = scored(preemptive=True)
    m.handle(SpeechStarted(t=0.1, at=0.0))
    m.handle(SpeechStopped(t=1.12, at=1.0))
    m.handle(TranscriptReady(t=1.2, request=1, text="So I was wondering whether"))
    assert m.handle(TurnScore(t=1.3, request=1, p=0.05)) == []
    assert m.prepared is None and m.next_deadline() == pytest.approx(3.0)


def test_a_reply_is_prepared_once_the_score_leans_complete() -> None:
    m = scored(preemptive=True, complete_wait_s=0.5)
    m.handle(SpeechStarted(t=0.1, at=0.0))
    m.handle(SpeechStopped(t=1.12, at=1.0))
    assert m.handle(TranscriptReady(t=1.2, request=1, text="What time is it?")) == []
    assert m.prepared is None  # no score yet: nothing prepared
    assert m.handle(TurnScore(t=1.3, request=1, p=0.7)) == [
        PrepareReply(1, "What time is it?", speech_end=1.0)
    ]
    assert m.handle(Tick(1.5)) == [CommitReply(1, decided=1.5)]


def test_a_trailing_transcript_prepares_nothing_whatever_the_score() -> None:
    m = scored(preemptive=True)
    m.handle(SpeechStarted(t=0.1, at=0.0))
    m.handle(SpeechStopped(t=1.12, at=1.0))
    m.handle(TranscriptReady(t=1.2, request=1, text="My order number is three five,"))
    assert m.handle(TurnScore(t=1.3, request=1, p=0.9)) == []
    assert m.prepared is None and m.wait_s == 2.0 and m.next_deadline() == pytest.approx(3.0)
