"""The session driver on virtual time, with model doubles: whole sessions in milliseconds.

Each test runs on a fresh :class:`VirtualTimeLoopDouble` (time jumps to the next timer
when nothing is ready), with modeled compute times for STT (0.3 s final, 0.2 s partial)
and TTS (0.1 s a sentence), an energy VAD and a scripted LLM. A caller feeds audio in
20 ms chunks, each arriving when its last sample is captured. ``run_virtual`` fails a
test that leaves any task pending.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from doubles import (
    HANG,
    CollectingOutput,
    ScriptedLLMDouble,
    ScriptedSTTDouble,
    double_engine,
    run_virtual,
    silence,
    tone,
)

from voice_agent.core.clock import LoopClock
from voice_agent.errors import LLMError
from voice_agent.llm.base import ToolCall
from voice_agent.llm.tools import Tool, ToolRegistry
from voice_agent.session.driver import Session, SessionConfig
from voice_agent.session.engine import LOST_THREAD, Engine
from voice_agent.session.turns import DuplexPolicy

WORDS = {
    500: "What time is it?",
    600: "Stop, tell me a joke instead.",
    700: "and the date?",
}
"""What the STT double hears in a tone of each level; any other level (a cough) is ""."""
CHUNK = 320


@dataclass
class Call:
    """A caller on the line of one session: audio flows in real (virtual) time."""

    session: Session
    out: CollectingOutput
    llm: ScriptedLLMDouble
    task: asyncio.Task[None]
    fed: int = 0

    @property
    def engine(self) -> Engine:
        return self.session.engine

    def now_ms(self) -> float:
        return round((self.session.clock.now() - self.session.t0) * 1000, 1)

    async def say(self, pcm: Any) -> None:
        for k in range(0, len(pcm), CHUNK):
            chunk = pcm[k : k + CHUNK]
            self.fed += len(chunk)
            await self.session.clock.sleep_until(self.session.t0 + self.fed / 16000)
            self.session.feed(chunk)

    async def quiet(self, seconds: float) -> None:
        await self.say(silence(seconds))

    async def until(self, cond: Callable[[], bool], limit_s: float = 60.0) -> None:
        """Silence on the line until ``cond()`` holds (fails after ``limit_s``)."""
        for _ in range(int(limit_s * 50)):
            if cond():
                return
            await self.say(silence(0.02))
        raise AssertionError("condition not reached in time")

    async def end(self) -> None:
        self.session.hangup()
        await self.task

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.out.events if e["type"] == kind]

    def frames_ms(self, gen: int) -> list[float]:
        t0 = self.session.t0
        return [round((t - t0) * 1000, 1) for t, g, _ in self.out.frames if g == gen]

    def samples(self, gen: int) -> int:
        return sum(n for _, g, n in self.out.frames if g == gen)


async def dial(
    llm: ScriptedLLMDouble,
    config: SessionConfig | None = None,
    tools: ToolRegistry | None = None,
    engine: Engine | None = None,
    **policy: Any,
) -> Call:
    engine = engine or double_engine(llm, WORDS)
    if tools is not None:
        engine.tools = tools
    if config is None:
        config = SessionConfig(echo_guard=False, duplex=DuplexPolicy(**policy))
    out = CollectingOutput()
    session = Session(engine, out, LoopClock(), config)
    return Call(session, out, llm, asyncio.create_task(session.run()))


def completed(call: Call, n: int = 1) -> Callable[[], bool]:
    """Turn ``n``'s reply has played to its end."""
    s = call.session
    return lambda: len(s.turns) >= n and s.turns[n - 1].reply_done is not None


def one_spoken_turn(llm: ScriptedLLMDouble, speech_s: float, **config: Any) -> Call:
    """A caller says one tone turn (0.5 s in) and hears the reply to its end."""

    async def main() -> Call:
        cfg = SessionConfig(echo_guard=False, duplex=DuplexPolicy(idle_prompt_s=None))
        call = await dial(llm, dataclasses.replace(cfg, **config))
        await call.quiet(0.5)
        await call.say(tone(speech_s, 500))
        await call.until(completed(call))
        await call.end()
        return call

    result: Call = run_virtual(main())
    return result


def test_a_spoken_turn_end_to_end_on_exact_times() -> None:
    llm = ScriptedLLMDouble([["It is ", "noon. ", "Have a ", "nice day."]], 0.05)
    call = one_spoken_turn(llm, 1.0)
    s, m = call.session, call.session.turns[0]
    assert [e["t_ms"] for e in call.events("speech.started")] == [500.0]
    assert [e["t_ms"] for e in call.events("speech.stopped")] == [1500.0]
    # the final pass starts 40 ms into the pause (before the VAD confirms it at 1.62 s)
    # and takes 0.3 s; the reply is prepared at once (the pause has passed 0.25 s) and
    # committed at 0.6 s of silence (a full stop; no end-of-turn model here)
    assert m.stt_final == pytest.approx(s.t0 + 1.84)
    assert m.llm_request == pytest.approx(s.t0 + 1.84)
    assert m.decided == pytest.approx(s.t0 + 2.1)
    # "noon." is a sentence once the third token shows it is over (3 x 50 ms); TTS takes
    # 0.1 s, so its audio is ready before the end of turn and plays at it
    assert m.first_sentence == pytest.approx(s.t0 + 1.99)
    assert m.tts_first_audio == pytest.approx(s.t0 + 2.09)
    assert m.first_audio_out == pytest.approx(s.t0 + 2.1)
    assert m.voice_to_voice == pytest.approx(0.6)
    types = call.out.types()
    # the whole reply was generated before the commit: its text goes out as one delta
    assert types == [
        "speech.started", "transcript.partial", "speech.stopped", "transcript.final",
        "reply.start", "reply.delta", "reply.audio.start", "reply.audio.end",
        "reply.done", "metrics",
    ]  # fmt: skip
    # every frame 20 ms after the one before (the second sentence was queued in time)
    times = call.frames_ms(1)
    assert np.diff(times).tolist() == pytest.approx([20.0] * (len(times) - 1))
    # "It is noon." is 12 characters with its space: 120 ms → 1920 samples → 6 frames;
    # "Have a nice day." 170 ms → 2720 → padded to 9 frames
    assert call.samples(1) == m.reply_samples == (6 + 9) * 320
    assert m.heard_text == m.reply_text == "It is noon. Have a nice day."
    assert s.history[1:] == [
        {"role": "user", "content": "What time is it?"},
        {"role": "assistant", "content": "It is noon. Have a nice day."},
    ]
    assert call.llm.closed_streams == 1


class SlowClientOutput(CollectingOutput):
    """A client that takes 2 s to take the ``speech.started`` event off our hands."""

    async def send_event(self, event: dict[str, Any]) -> None:
        if event["type"] == "speech.started":
            await asyncio.sleep(2.0)
        await super().send_event(event)


def test_audio_that_waits_behind_a_slow_client_is_dated_when_it_arrived() -> None:
    """The inbound loop is held 2 s sending ``speech.started``; the caller's audio
    queues meanwhile. Each chunk is dated as it arrived, so the stop the VAD finds in
    the backlog is dated where it happened (2 s), not when the loop got to it (2.56 s;
    the timeline's window, 1 s, has no frame that came in on time by then)."""

    async def main() -> Call:
        llm = ScriptedLLMDouble([["Sure."]], 0.05)
        cfg = SessionConfig(echo_guard=False, duplex=DuplexPolicy(idle_prompt_s=None))
        out = SlowClientOutput()
        session = Session(double_engine(llm, WORDS), out, LoopClock(), cfg)
        call = Call(session, out, llm, asyncio.create_task(session.run()))
        await call.quiet(0.5)
        await call.say(tone(1.5, 500))
        await call.quiet(0.2)
        # 2.2 s: the loop is held since the onset was confirmed (0.56 s), the stop is queued
        assert session._inbound_q.qsize() == 82
        await call.until(completed(call))
        await call.end()
        return call

    call = run_virtual(main())
    assert [e["t_ms"] for e in call.events("speech.started")] == [500.0]
    assert [e["t_ms"] for e in call.events("speech.stopped")] == [2000.0]
    assert call.session.inbound.sample_time(int(2.2 * 16000)) == call.session.t0 + 2.2


def test_a_final_pass_started_in_a_dip_the_caller_talks_through_is_not_used() -> None:
    """Speculation: a 60 ms dip starts a final pass (40 ms in), but the VAD never confirms
    that stop; the turn's final pass is the one started 40 ms into the real pause."""

    async def main() -> Call:
        llm = ScriptedLLMDouble([["Sure."]], 0.05)
        call = await dial(llm, idle_prompt_s=None)
        await call.quiet(0.5)
        await call.say(np.concatenate([tone(1.0, 500), silence(0.06), tone(0.5, 700)]))
        await call.until(completed(call))
        await call.end()
        return call

    call = run_virtual(main())
    s, m = call.session, call.session.turns[0]
    assert [e["t_ms"] for e in call.events("speech.stopped")] == [2060.0]
    assert m.user_text == "What time is it? and the date?"
    assert m.stt_final == pytest.approx(s.t0 + 2.06 + 0.04 + 0.3)


def test_an_llm_dying_mid_reply_keeps_the_partial_reply_and_tells_no_internals() -> None:
    boom = LLMError("LLM stream from http://10.0.0.7:8080 broke: reset", "check the server")

    async def main() -> Call:
        llm = ScriptedLLMDouble([["The answer is ", "forty two. ", "And also", boom]])
        call = await dial(llm, idle_prompt_s=None)
        call.session.send_text("What is the answer?")
        await call.until(completed(call))
        await call.end()
        return call

    call = run_virtual(main())
    m = call.session.turns[0]
    assert m.status == "llm_error"
    assert m.reply_text == m.heard_text == "The answer is forty two. And also"
    assert call.session.history[-1] == {"role": "assistant", "content": m.reply_text}
    assert call.session.errors == [str(boom)]  # the detail stays in the server's report
    (error,) = call.events("error")
    assert error["code"] == "llm_error" and "10.0.0.7" not in error["message"]
    assert error["message"] == "the language model failed mid-reply; what it said is kept"
    # the caller hears an apology after the partial reply, never a reply that just stops;
    # its words are not the answer's (not heard text, not history)
    (aside,) = call.events("reply.aside")
    assert aside == {"type": "reply.aside", "gen": m.gen, "text": LOST_THREAD,
                     "t_ms": aside["t_ms"]}  # fmt: skip
    clip = len(call.session.engine.clips[LOST_THREAD])
    assert call.samples(m.gen) > clip  # the partial's audio, then the apology's
    assert aside["t_ms"] >= call.frames_ms(m.gen)[0]


def test_a_new_turn_cancels_the_reply_and_the_history_keeps_only_what_was_heard() -> None:
    story = [f"Sentence {w} is here. " for w in ("one", "two", "three", "four", "five")]

    async def main() -> Call:
        llm = ScriptedLLMDouble([story, ["Okay."]], 0.01)
        call = await dial(llm, idle_prompt_s=None)
        call.session.send_text("Tell me a story.")
        await call.until(lambda: call.samples(1) >= 16000 * 0.5)
        call.session.send_text("Stop.")
        await call.until(completed(call, 2))
        await call.end()
        return call

    call = run_virtual(main())
    first, second = call.session.turns
    assert first.status == "interrupted" and second.status == "completed"
    # sent: "Sentence one is here." and "… two …" (0.22 s, 11 frames each), then 4 frames
    # (80 ms) of "Sentence three is here." (0.24 s): not yet the end of "Sentence" (90 ms)
    assert call.samples(1) == 26 * 320
    assert first.heard_text == "Sentence one is here. Sentence two is here."
    assert call.session.history[2] == {
        "role": "assistant",
        "content": "Sentence one is here. Sentence two is here.",
    }
    assert call.llm.requests[1][2]["content"] == call.session.history[2]["content"]
    (clear,) = call.events("clear")  # the frame in flight went out as the typed turn came
    assert clear["gen"] == 1 and max(call.frames_ms(1)) == clear["t_ms"] == 620.0
    assert call.llm.closed_streams == 2


def test_a_tool_call_reports_its_status_and_the_caller_hears_it() -> None:
    seen: list[dict[str, Any]] = []

    async def lookup(args: dict[str, Any]) -> str:
        seen.append(args)
        await asyncio.sleep(1.0)
        return '{"status": "shipped"}'

    tools = ToolRegistry(
        [Tool("lookup_order", "Look up an order", {"type": "object"}, lookup, "Checking.")]
    )

    async def main() -> Call:
        llm = ScriptedLLMDouble([[ToolCall("c1", "lookup_order", {"id": 7})], ["Shipped."]])
        call = await dial(llm, tools=tools, idle_prompt_s=None)
        call.session.send_text("Where is order 7?")
        await call.until(completed(call))
        await call.end()
        return call

    call = run_virtual(main())
    m = call.session.turns[0]
    assert seen == [{"id": 7}]
    assert [e["text"] for e in call.events("status")] == ["Checking."]
    assert [e["text"] for e in call.events("filler")] == ["Checking."]
    second = call.llm.requests[1]
    assert second[-2]["tool_calls"][0]["function"]["name"] == "lookup_order"
    assert second[-1] == {"role": "tool", "tool_call_id": "c1", "content": '{"status": "shipped"}'}
    assert m.reply_text == m.heard_text == "Shipped." and m.tool_calls == ["lookup_order"]
    assert [text for _, text in m.fillers] == ["Checking."]
    assert call.session.history[-1] == {"role": "assistant", "content": "Shipped."}
    # the filler (0.1 s) played while the tool ran; the answer came after the tool's 1 s
    first_frame = call.frames_ms(1)[0]
    assert m.first_audio_out is not None
    assert (m.first_audio_out - call.session.t0) * 1000 - first_frame >= 1000


def test_a_prepared_reply_dropped_when_the_caller_goes_on_leaves_no_trace() -> None:
    async def main() -> Call:
        llm = ScriptedLLMDouble([["Noon."], ["Noon, the first."]], 0.05)
        call = await dial(llm, idle_prompt_s=None)
        await call.say(tone(1.0, 500))
        await call.quiet(0.5)  # prepared at 0.42 s into the pause (transcript ready)
        await call.say(tone(0.6, 700))
        await call.until(completed(call))
        await call.end()
        return call

    call = run_virtual(main())
    s = call.session
    assert len(call.llm.requests) == 2 and call.llm.closed_streams == 2
    assert s.prepared_dropped == 1 and len(s.turns) == 1
    (turn,) = s.turns
    assert turn.gen == 2 and turn.user_text == "What time is it? and the date?"
    assert {g for _, g, _ in call.out.frames} == {2}
    assert [e["gen"] for e in call.events("transcript.final")] == [2]
    assert all(e["gen"] == 2 for e in call.events("reply.delta"))
    assert [m["role"] for m in s.history] == ["system", "user", "assistant"]


def test_a_filler_plays_when_the_answer_is_late_never_the_same_twice() -> None:
    async def main() -> Call:
        llm = ScriptedLLMDouble([["Fine, ", "thanks."], ["Sure."]], token_delay_s=0.6)
        call = await dial(llm, filler_after_s=0.3, idle_prompt_s=None)
        call.session.send_text("How are you?")
        await call.until(completed(call))
        call.session.send_text("Can you help?")
        await call.until(completed(call, 2))
        await call.end()
        return call

    call = run_virtual(main())
    first, _second = call.session.turns
    fillers = call.events("filler")
    assert [e["gen"] for e in fillers] == [1, 2]
    assert fillers[0]["text"] != fillers[1]["text"]
    at, _ = first.fillers[0]
    assert first.decided is not None and at - first.decided == pytest.approx(0.3)
    assert first.first_audio_out is not None and first.first_audio_out > at
    assert first.heard_text == first.reply_text == "Fine, thanks."
    assert [m["content"] for m in call.session.history if m["role"] == "assistant"] == [
        "Fine, thanks.",
        "Sure.",
    ]
    assert all(fillers[0]["text"] not in str(m) for m in call.llm.requests[1])


def test_an_interrupted_filler_cancels_the_reply_and_no_answer_word_is_kept() -> None:
    async def main() -> Call:
        llm = ScriptedLLMDouble([["Slow ", "answer."]], token_delay_s=1.5)
        call = await dial(llm, filler_after_s=0.2, idle_prompt_s=None)
        call.session.send_text("Question?")
        await call.until(lambda: call.samples(1) > 0)
        call.session.interrupt()
        await call.until(lambda: bool(call.session.turns[0].status == "interrupted"))
        await call.end()
        return call

    call = run_virtual(main())
    m = call.session.turns[0]
    assert m.fillers and m.heard_text == ""
    assert [e["gen"] for e in call.events("clear")] == [1]
    # nothing of the answer was heard: nothing of it is remembered
    assert call.session.history[1:] == [{"role": "user", "content": "Question?"}]


def test_an_idle_caller_is_prompted_then_hears_goodbye_and_the_call_closes() -> None:
    async def main() -> Call:
        llm = ScriptedLLMDouble([])
        call = await dial(llm, filler_after_s=None, idle_prompt_s=5.0, idle_end_s=5.0)
        await call.until(lambda: call.task.done())
        await call.task
        return call

    call = run_virtual(main())
    s = call.session
    prompt, goodbye = s.turns
    assert [m.kind for m in s.turns] == ["idle_prompt", "goodbye"]
    assert prompt.decided == pytest.approx(s.t0 + 5.0)
    # "Are you still there?" is a cached clip of 0.21 s (11 frames), played from 5.0 s
    assert prompt.reply_done == pytest.approx(s.t0 + 5.0 + 11 * 0.02)
    assert goodbye.decided == pytest.approx(prompt.reply_done + 5.0)
    assert [e.get("purpose") for e in call.events("reply.start")] == ["idle_prompt", "goodbye"]
    assert [e["reason"] for e in call.events("session.ending")] == ["idle"]
    assert s.end_reason == "idle" and call.llm.requests == []
    assert [m["content"] for m in s.history if m["role"] == "assistant"] == [
        "Are you still there?",
        "It seems you have stepped away. Goodbye!",
    ]


LONG = ["One two three four five six seven eight nine ten. "] * 4


def test_a_call_ends_at_its_duration_limit_keeping_what_was_heard() -> None:
    async def main() -> Call:
        llm = ScriptedLLMDouble([LONG])
        cfg = SessionConfig(
            echo_guard=False, duplex=DuplexPolicy(idle_prompt_s=None), max_duration_s=1.0
        )
        call = await dial(llm, cfg)
        call.session.send_text("Count for me.")
        await call.until(lambda: call.task.done(), limit_s=10)
        await call.task
        return call

    call = run_virtual(main())
    s = call.session
    (ending,) = call.events("session.ending")
    assert ending["reason"] == "time_limit" and ending["t_ms"] == pytest.approx(1000, abs=1)
    assert s.end_reason == "time_limit"
    (m,) = s.turns
    assert m.status == "interrupted"
    last = call.frames_ms(m.gen)[-1]
    assert last < 1000  # no audio after the limit
    assert m.heard_text and LONG[0].startswith(m.heard_text.split(" ")[0])
    assert s.history[-1]["content"].startswith(m.heard_text)


def test_a_barge_in_pauses_at_onset_confirms_clears_and_keeps_the_heard_words() -> None:
    async def main() -> Call:
        llm = ScriptedLLMDouble([LONG, ["Sunny."]], 0.01)
        call = await dial(llm, idle_prompt_s=None)
        call.session.send_text("Count for me.")
        await call.until(lambda: call.samples(1) >= 16000 * 0.8)
        await call.say(tone(1.2, 600))
        await call.until(completed(call, 2))
        await call.end()
        return call

    call = run_virtual(main())
    s = call.session
    first, second = s.turns
    (paused,) = call.events("reply.paused")
    # speech from 0.9 s; the VAD confirms it after 60 ms, and the reply pauses at once:
    # the last frame of generation 1 is the one sent before that decision
    assert paused["onset_ms"] == 900.0 and paused["t_ms"] == 960.0
    assert max(call.frames_ms(1)) == 950.0
    (barge,) = call.events("barge_in")
    assert barge["text"] == WORDS[600]
    assert [e["gen"] for e in call.events("clear")] == [1]
    assert first.status == "interrupted"
    (i,) = first.interruptions
    assert i.outcome == "confirmed" and i.words == WORDS[600]
    assert i.last_sent == pytest.approx(s.t0 + 0.95)
    # the first check starts 0.2 s after the onset and takes 0.2 s: its words confirm
    assert i.resolved is not None and (i.resolved - i.onset) == pytest.approx(0.4)
    # 43 frames sent: the first sentence (25 frames, in two parts), then 18 of the
    # second's 25: 36 of its 50 characters, which end after "seven"
    assert call.samples(1) == 43 * 320
    assert first.heard_text == (
        "One two three four five six seven eight nine ten. One two three four five six seven"
    )
    assert s.history[2]["content"] == first.heard_text
    assert second.user_text == WORDS[600] and second.reply_text == "Sunny."


def test_a_false_start_is_forgotten_and_the_callers_words_are_one_message() -> None:
    # the agent began at a pause in the caller's sentence and was cut off after a word:
    # the LLM next reads the caller's words as one message, with no fragment between
    async def main() -> Call:
        llm = ScriptedLLMDouble([["You're right about that, and here is why."], ["Sunny."]])
        call = await dial(llm, idle_prompt_s=None)
        call.session.send_text("And so, my fellow Americans,")
        await call.until(lambda: call.samples(1) > 0)
        await call.say(tone(1.2, 600))
        await call.until(completed(call, 2))
        await call.end()
        return call

    call = run_virtual(main())
    s = call.session
    first, second = s.turns
    assert first.status == "interrupted" and first.heard_text == "You're"
    joined = f"And so, my fellow Americans, {WORDS[600]}"
    assert call.llm.requests[1][1:] == [{"role": "user", "content": joined}]
    assert s.history[1:] == [
        {"role": "user", "content": joined},
        {"role": "assistant", "content": "Sunny."},
    ]
    # the turns still say what happened
    assert (first.user_text, second.user_text) == ("And so, my fellow Americans,", WORDS[600])


def test_a_cough_pauses_the_reply_then_it_resumes_with_no_audio_lost() -> None:
    async def main() -> Call:
        llm = ScriptedLLMDouble([LONG[:2]], 0.01)
        call = await dial(llm, idle_prompt_s=None)
        call.session.send_text("Count for me.")
        await call.until(lambda: call.samples(1) >= 16000 * 0.4)
        await call.say(tone(0.3, 300))  # a cough: the STT double hears no words
        await call.until(completed(call))
        await call.end()
        return call

    call = run_virtual(main())
    m = call.session.turns[0]
    assert call.out.types().count("reply.paused") == 1
    assert call.out.types().count("reply.resumed") == 1
    assert not call.events("clear") and not call.events("barge_in")
    assert m.status == "completed" and m.interruptions[0].outcome == "recovered"
    # every sample of both sentences (49 characters + 1: 0.5 s, 25 frames each) reached
    # the caller, in order
    assert call.samples(1) == m.reply_samples == 2 * 25 * 320
    assert m.heard_text == m.reply_text


def test_speech_over_the_agent_is_heard_by_the_check_stt() -> None:
    """The main STT writes words into a backchannel (as Moonshine hears an "mm-hmm" as
    "Amend them."); the check STT hears none. Every pass over speech that began while
    the agent talked (the checks and the turn's final pass) goes to the check STT, so
    the reply resumes; the caller's next, typed turn is answered as usual."""
    from doubles import ScriptedSTTDouble

    async def main() -> Call:
        llm = ScriptedLLMDouble([LONG[:2]], 0.01)
        engine = double_engine(llm, WORDS | {650: "Amend them."})
        check = ScriptedSTTDouble({})  # hears no words in a backchannel
        engine.check_stt = check
        call = await dial(llm, engine=engine, idle_prompt_s=None)
        call.session.send_text("Count for me.")
        await call.until(lambda: call.samples(1) >= 16000 * 0.4)
        await call.say(tone(0.6, 650))
        await call.until(completed(call))
        await call.end()
        return call

    call = run_virtual(main())
    m = call.session.turns[0]
    assert not call.events("barge_in") and not call.events("clear")
    assert m.status == "completed" and m.interruptions[0].outcome == "recovered"
    assert call.samples(1) == m.reply_samples == 2 * 25 * 320
    check = call.session.engine.check_stt
    assert check is not None and check.calls >= 2  # a check, then the final pass
    assert call.session.engine.stt.calls == 0  # the main STT heard none of it


# -- cancellation at each await point of a reply ---------------------------------------


@dataclass
class Point:
    """A place a reply can be waiting, and how to get it there."""

    script: list[Any]
    reached: Callable[[Call], bool]
    config: dict[str, Any]
    engine: dict[str, Any]
    spoken: bool = False  # the caller speaks the turn (instead of typing it)
    tool_s: float | None = None
    hog_tts: bool = False  # another session holds the TTS worker


POINTS = {
    # the LLM has the request and has not answered
    "llm_first_token": Point([HANG], lambda c: len(c.llm.requests) == 1, {}, {}),
    # the first sentence plays while the LLM stalls mid-stream
    "llm_mid_stream": Point(
        ["First part is here. ", "And", HANG], lambda c: c.samples(1) >= 1600, {}, {}
    ),
    # a sentence is being synthesized (TTS takes 60 s here)
    "tts_running": Point(
        ["Hello there."], lambda c: c.engine.tts_worker.jobs_run == 1, {}, {"tts_s": 60.0}
    ),
    # the sentence waits for the TTS worker, which another session holds
    "tts_queued": Point(
        ["Hello there."], lambda c: c.engine.tts_worker.waiting_for(c.session.owner) == 1, {},
        {"tts_s": 5.0}, hog_tts=True,
    ),
    # the playout buffer (0.3 s) is full: the next sentence waits for room
    "playout_room": Point(
        [f"Sentence {n} goes on and on. " for n in range(6)],
        lambda c: c.samples(1) > 0 and not c.session.playout.has_room(),
        {"playout_capacity_s": 0.3}, {},
    ),
    # a prepared reply is ready and held for the end of the turn (2 s of silence here)
    "held_for_commit": Point(
        ["Noon."], lambda c: c.session.gate.held == 1 and c.session.playout.pending(1) > 0,
        {"min_silence_s": 2.0, "max_silence_s": 2.0}, {}, spoken=True,
    ),
    # everything is generated and synthesized; the audio is playing out
    "playing_out": Point(
        ["One two three four five six seven eight nine ten."],
        lambda c: c.llm.closed_streams == 1 and c.samples(1) > 0 and c.session.playout.pending(1) > 0,
        {}, {},
    ),
    # a tool is running (60 s)
    "tool_running": Point(
        [ToolCall("c1", "slow_tool", {})], lambda c: bool(c.session.turns) and c.session.turns[0].tool_calls != [], {}, {},
        tool_s=60.0,
    ),
}  # fmt: skip


async def reach(name: str, then: list[Any]) -> tuple[Call, asyncio.Task[Any] | None]:
    p = POINTS[name]
    llm = ScriptedLLMDouble([p.script, *then], 0.01)
    tools = None
    if p.tool_s is not None:

        async def slow(_: dict[str, Any]) -> str:
            await asyncio.sleep(p.tool_s or 0)
            return "done"

        tools = ToolRegistry([Tool("slow_tool", "A slow tool", {"type": "object"}, slow)])
    engine = double_engine(llm, WORDS, **p.engine)
    config = SessionConfig(echo_guard=False, duplex=DuplexPolicy(idle_prompt_s=None), **p.config)
    hog = None
    if p.hog_tts:
        hog = asyncio.create_task(engine.tts_worker.submit("other", lambda: 0))
        await asyncio.sleep(0)
    call = await dial(llm, config, tools=tools, engine=engine)
    if p.spoken:
        await call.say(tone(1.0, 500))
    else:
        call.session.send_text("What time is it?")
    await call.until(lambda: p.reached(call))
    return call, hog


def remembered(heard: str) -> list[dict[str, str]]:
    """The history's copy of a reply cut off after ``heard``: the words as they are, or
    nothing for a false start (under three words)."""
    return [{"role": "assistant", "content": heard}] if len(heard.split()) >= 3 else []


def no_trace_after(call: Call, gen: int, cut_ms: float) -> None:
    assert all(t <= cut_ms for t in call.frames_ms(gen)), "audio of the old generation after the cut"
    assert call.llm.closed_streams == len(call.llm.requests)  # every LLM stream was closed
    for worker in (call.engine.stt_worker, call.engine.partial_worker, call.engine.tts_worker):
        assert worker.waiting_for(call.session.owner) == 0


@pytest.mark.parametrize("point", list(POINTS))
def test_a_hangup_at_each_await_point_leaves_nothing_running(point: str) -> None:
    async def main() -> tuple[Call, float, int]:
        call, hog = await reach(point, [])
        cut = call.now_ms()
        tts_jobs = call.engine.tts_worker.jobs_run
        await call.end()
        if hog is not None:
            await hog
        return call, cut, tts_jobs

    call, cut, tts_jobs = run_virtual(main())
    no_trace_after(call, 1, cut)
    # no TTS job of the session started after the hangup (the hog's was already running)
    assert call.engine.tts_worker.jobs_run == tts_jobs
    s = call.session
    if point == "held_for_commit":  # the caller never heard the prepared reply
        assert s.turns == [] and s.prepared_dropped == 1 and not call.frames_ms(1)
        return
    (m,) = s.turns
    assert m.status == "interrupted"
    assert s.history[1:] == [{"role": "user", "content": m.user_text}, *remembered(m.heard_text)]
    assert call.events("reply.done")[-1]["status"] == "interrupted"


@pytest.mark.parametrize("point", list(POINTS))
def test_a_barge_in_at_each_await_point_cancels_the_reply_and_the_caller_is_answered(
    point: str,
) -> None:
    async def main() -> tuple[Call, float]:
        call, hog = await reach(point, [["Sunny."]])
        onset = call.now_ms()
        await call.say(tone(1.2, 600))
        # (a TTS job that is running cannot be aborted: with tts_running the answer waits
        # for the 60 s job to finish, then takes its own 60 s)
        await call.until(
            lambda: any("Stop," in m.user_text and m.reply_done for m in call.session.turns),
            limit_s=200,
        )
        await call.end()
        if hog is not None:
            await hog
        return call, onset

    call, onset = run_virtual(main())
    s = call.session
    # the reply stopped when the VAD confirmed the caller's speech (60 ms after its onset)
    no_trace_after(call, 1, onset + 60)
    answered = s.turns[-1]
    assert answered.reply_text == answered.heard_text == "Sunny."
    if point == "held_for_commit":  # the caller went on: the prepared reply was dropped
        assert s.prepared_dropped == 1 and len(s.turns) == 1
        assert answered.user_text == "What time is it? Stop, tell me a joke instead."
        return
    first = s.turns[0]
    assert first.status == "interrupted" and [e["gen"] for e in call.events("clear")] == [1]
    assert answered.user_text == WORDS[600]
    if len(first.heard_text.split()) >= 3:
        assert s.history[1:] == [
            {"role": "user", "content": first.user_text},
            {"role": "assistant", "content": first.heard_text},
            {"role": "user", "content": answered.user_text},
            {"role": "assistant", "content": "Sunny."},
        ]
    else:  # a false start: the caller's words are one message
        assert s.history[1:] == [
            {"role": "user", "content": f"{first.user_text} {answered.user_text}"},
            {"role": "assistant", "content": "Sunny."},
        ]


@pytest.mark.parametrize("point", ["llm_first_token", "tool_running", "playing_out"])
def test_a_server_drain_lets_a_reply_finish_or_ends_it_at_the_grace_period(point: str) -> None:
    from voice_agent.server import ServerConfig, ServerState

    async def main() -> tuple[Call, float, float]:
        call, _ = await reach(point, [])
        state = ServerState(ServerConfig(drain_grace_s=2.0), call.session.config)
        state.sessions["s1"] = call.session
        call.task.add_done_callback(lambda _: state.sessions.pop("s1", None))
        start = call.now_ms()
        drain = asyncio.create_task(state.drain())
        await call.until(lambda: call.task.done())
        await call.task
        await drain
        return call, start, call.now_ms()

    call, start, end = run_virtual(main())
    (m,) = call.session.turns
    no_trace_after(call, 1, end)
    if point == "playing_out":  # a reply that can finish does, then the session ends
        assert m.status == "completed" and m.heard_text == m.reply_text
        assert m.reply_done is not None and end - start < 2000
    else:  # a stuck one is cut at the grace period
        assert m.status == "interrupted" and 2000 <= end - start <= 2100


# -- one caller cannot starve another ----------------------------------------------------


def test_a_caller_flooding_the_models_cannot_starve_another_and_ends_at_once() -> None:
    """The abusive client of issue 9: speech 400 ms on, 300 ms off, for 45 s, sent at 10x
    real time. Every pause asks for a final transcript and the growing turn for partials
    (0.5 s of compute each here, so the workers are saturated). Another caller speaks one
    sentence meanwhile."""

    async def main() -> tuple[Call, Call, dict[str, int], float, float]:
        llm = ScriptedLLMDouble([], 0.01, default=["Okay."])
        engine = double_engine(llm, WORDS, stt_s=0.5, partial_s=0.5)
        a = await dial(llm, engine=engine, idle_prompt_s=None)
        b = await dial(llm, engine=engine, idle_prompt_s=None)
        most = {"stt": 0, "stt-partial": 0}
        loop = asyncio.get_running_loop()

        async def flood() -> None:
            cycle = np.concatenate([tone(0.4, 500), silence(0.3)])
            for _ in range(64):  # 45 s of audio in 4.5 s
                for k in range(0, len(cycle), CHUNK):
                    await asyncio.sleep(CHUNK / 16000 / 10)
                    a.session.feed(cycle[k : k + CHUNK])
                    for w in (engine.stt_worker, engine.partial_worker):
                        most[w.name] = max(most[w.name], w.waiting_for(a.session.owner))

        flooding = asyncio.create_task(flood())
        await b.quiet(1.0)
        await b.say(tone(1.0, 600))
        await b.until(completed(b))
        await flooding
        hung_up = loop.time()
        await a.end()
        ended = loop.time()
        await b.end()
        return a, b, most, hung_up, ended

    a, b, most, hung_up, ended = run_virtual(main())
    (turn,) = b.session.turns
    assert turn.user_text == WORDS[600] and turn.reply_text == "Okay."
    (stopped,) = b.events("speech.stopped")
    (final,) = b.events("transcript.final")
    assert stopped["t_ms"] == 2000.0
    # the VAD confirms the stop after 120 ms; the final pass waits at most for the job of
    # the flooding caller that is running (0.5 s), then takes its own 0.5 s
    assert final["t_ms"] - stopped["t_ms"] <= 120 + 500 + 500
    # the flood never had more than one job waiting on a worker: newer ones superseded it
    # (its partial previews mostly yield to the other caller's wait: none may be queued)
    assert most["stt"] == 1 and most["stt-partial"] <= 1
    assert a.engine.stt_worker.superseded > 20
    # the flooding session ended the moment it hung up: its queued work was dropped
    assert ended == hung_up
    for w in (a.engine.stt_worker, a.engine.partial_worker, a.engine.tts_worker):
        assert w.waiting_for(a.session.owner) == 0


def test_the_calls_system_prompt_ends_with_the_date_from_the_injected_wall_clock() -> None:
    from datetime import UTC, datetime

    from voice_agent.session.config import date_line

    when = datetime(2026, 11, 25, 16, 20, tzinfo=UTC)

    async def main() -> str:
        engine = double_engine(ScriptedLLMDouble([], 0.01), {})
        config = SessionConfig(wall_clock=lambda: when)
        s = Session(engine, CollectingOutput(), LoopClock(), config)
        return str(s.history[0]["content"])

    assert run_virtual(main()).endswith("\n" + date_line(when))


def two_spoken_turns(first: str, unsure: bool = False) -> Call:
    """A call of two spoken turns: ``first`` (heard as unsure words, with ``unsure``),
    then "What time is it?", which the LLM answers "It is noon."."""

    async def main() -> Call:
        llm = ScriptedLLMDouble([["It is noon."]], 0.05)
        engine = double_engine(
            llm, WORDS | {800: first}, unsure=frozenset({800}) if unsure else frozenset()
        )
        call = await dial(llm, engine=engine, idle_prompt_s=None)
        await call.quiet(0.5)
        await call.say(tone(1.0, 800))
        await call.until(completed(call))
        await call.quiet(0.5)
        await call.say(tone(1.0, 500))
        await call.until(completed(call, 2))
        await call.end()
        return call

    return run_virtual(main())


def test_an_unclear_turn_is_asked_again_without_the_llm() -> None:
    """Words whisper is unsure of (a low mean log-probability) are not answered: the agent
    says its fixed line, and the next, clear turn is answered with both in the history."""
    from voice_agent.core.enums import ReplyKind
    from voice_agent.session.engine import SAY_AGAIN

    call = two_spoken_turns("you're opening our month on may", unsure=True)
    first, second = call.session.turns
    assert (first.kind, first.user_text, first.reply_text) == (
        ReplyKind.SAY_AGAIN, "you're opening our month on may", SAY_AGAIN)
    assert second.kind is ReplyKind.REPLY and second.reply_text == "It is noon."
    assert len(call.llm.requests) == 1  # only the clear turn reached the LLM
    assert [m["role"] for m in call.llm.requests[0]] == ["system", "user", "assistant", "user"]
    assert call.llm.requests[0][2] == {"role": "assistant", "content": SAY_AGAIN}
    assert [e.get("purpose") for e in call.events("reply.start")] == ["say_again", None]
    # no full stop, so the turn ended after 1 s of silence; the line is a cached clip, so
    # it played at that very moment
    assert first.voice_to_voice == pytest.approx(1.0)


def test_an_answer_with_nothing_speakable_in_it_is_never_silence() -> None:
    """A reply of only a template slot (or an echo of the history's own mark, as a small
    model writes) has nothing to say aloud: the caller hears a request to rephrase, and the
    history keeps that, not the slot."""
    from voice_agent.session.reply import REPHRASE

    async def main() -> Call:
        llm = ScriptedLLMDouble([["[insert ", "the caller's name]"]], 0.05)
        call = await dial(llm, idle_prompt_s=None)
        await call.quiet(0.5)
        await call.say(tone(1.0, 500))
        await call.until(completed(call))
        await call.end()
        return call

    call = run_virtual(main())
    (turn,) = call.session.turns
    assert turn.reply_text == turn.heard_text == REPHRASE and turn.status == "completed"
    assert call.samples(1) == len(REPHRASE + " ") * 160  # the tone TTS: 10 ms a character
    assert call.session.history[-1] == {"role": "assistant", "content": REPHRASE}
    deltas = "".join(e["text"] for e in call.events("reply.delta"))
    assert deltas.endswith(REPHRASE)


def test_the_stt_says_whether_a_missing_full_stop_means_anything() -> None:
    async def main() -> list[bool]:
        seen = []
        for marks in (True, False):
            engine = double_engine(ScriptedLLMDouble([]), WORDS)
            engine.stt.marks_sentence_ends = marks  # type: ignore[misc]
            session = Session(engine, CollectingOutput(), LoopClock(), SessionConfig())
            seen.append(session.machine.endpoint.unmarked_abstains)
        return seen

    # whisper marks its sentence ends; Moonshine does not, so a missing one says nothing
    assert run_virtual(main()) == [False, True]


def test_a_question_it_cannot_know_gets_the_honest_line_without_the_llm() -> None:
    """A live fact (the weekend's weather) is answered with the fixed line, at once (a
    cached clip); the exchange enters the history, and the next question reaches the LLM
    with it."""
    from voice_agent.core.enums import ReplyKind
    from voice_agent.session.engine import CANNOT_CHECK_LIVE

    call = two_spoken_turns("What will the weather be like in Denver this weekend?")
    first, second = call.session.turns
    assert (first.kind, first.reply_text) == (ReplyKind.CANNOT_CHECK, CANNOT_CHECK_LIVE)
    assert second.kind is ReplyKind.REPLY and second.reply_text == "It is noon."
    assert len(call.llm.requests) == 1
    assert call.llm.requests[0][1:] == [
        {"role": "user", "content": "What will the weather be like in Denver this weekend?"},
        {"role": "assistant", "content": CANNOT_CHECK_LIVE},
        {"role": "user", "content": "What time is it?"},
    ]
    assert [e.get("purpose") for e in call.events("reply.start")] == ["cannot_check", None]
    # a finished sentence the policy ends at 0.6 s (no end-of-turn model here); the line
    # is a cached clip, so it plays at that very moment
    assert first.voice_to_voice == pytest.approx(0.6)


def test_with_tools_the_llm_answers_what_a_tool_may_check() -> None:
    from voice_agent.session.config import honest_line

    cfg = SessionConfig()
    question = "Is it going to rain tomorrow in Seattle?"
    assert honest_line(cfg, question, has_tools=False) == cfg.cannot_check_live
    assert honest_line(cfg, question, has_tools=True) is None
    assert honest_line(SessionConfig(honesty_guard=False), question, has_tools=False) is None
    assert honest_line(cfg, "Where is my order?", False) == cfg.cannot_see_personal
    assert honest_line(cfg, "What is the capital of France?", False) is None


def test_the_llm_reads_the_prompt_ahead_the_system_prompt_then_the_callers_words() -> None:
    """The call's start prefills the system prompt; the partial transcript (at 0.8 s of
    the turn, 0.2 s to compute) prefills the caller's words so far, once (the second
    partial heard the same words); the reply's prompt then starts with what was read."""
    call = one_spoken_turn(ScriptedLLMDouble([["It is noon."]], 0.05), 2.0)
    system = call.session.history[0]
    user = {"role": "user", "content": "What time is it?"}
    assert [e["text"] for e in call.events("transcript.partial")] == ["What time is it?"] * 2
    assert call.llm.prefills == [[system], [system, user]]
    assert call.llm.requests == [[system, user]]


def test_no_prefill_when_the_session_turns_it_off() -> None:
    call = one_spoken_turn(ScriptedLLMDouble([["It is noon."]], 0.05), 2.0, prefill=False)
    assert call.llm.prefills == []
    assert call.session.turns[0].reply_text == "It is noon."


def test_a_reply_that_starts_cancels_a_prefill_still_being_read() -> None:
    """The endpoint never finishes the prefill; the reply cancels it (closing its
    request) and plays, and nothing is left running."""
    llm = ScriptedLLMDouble([["It is noon."]], 0.05)
    llm.prefill_hangs = True
    call = one_spoken_turn(llm, 1.0)
    # the start's prefill never ended, so the partial's words were not sent
    assert call.llm.prefills == [[call.session.history[0]]]
    assert call.llm.prefills_cancelled == 1
    assert call.session.turns[0].heard_text == "It is noon."



def test_a_failover_before_the_first_token_is_silent_on_the_voice_path() -> None:
    """The LLM adapter moved on to its next endpoint: the caller hears the answer and
    nothing else (no status event, no filler, nothing in the history)."""
    from voice_agent.llm.base import Failover

    llm = ScriptedLLMDouble([[Failover("first", "HTTP 503"), "It is noon."]], 0.05)  # type: ignore[list-item]
    call = one_spoken_turn(llm, 1.0)
    turn = call.session.turns[0]
    assert turn.heard_text == turn.reply_text == "It is noon."
    assert "status" not in call.out.types() and "error" not in call.out.types()
    assert call.session.history[-1] == {"role": "assistant", "content": "It is noon."}


def test_one_reply_cannot_keep_the_llm_past_its_time_limit() -> None:
    async def main() -> Call:
        llm = ScriptedLLMDouble([[f"Word {k}. " for k in range(200)]], token_delay_s=0.1)
        cfg = SessionConfig(
            echo_guard=False, duplex=DuplexPolicy(idle_prompt_s=None), max_llm_turn_s=1.0
        )
        call = await dial(llm, cfg)
        call.session.send_text("Count to two hundred.")
        await call.until(completed(call), limit_s=30)
        await call.end()
        return call

    call = run_virtual(main())
    (m,) = call.session.turns
    assert m.limit == "llm_time" and m.status == "completed"
    said = m.reply_text.split(". ")
    assert 5 <= len(said) <= 11  # ~10 tokens in its 1 s (0.1 s each), all of them spoken
    assert m.heard_text == m.reply_text
    assert m.to_dict(call.session.t0)["limit"] == "llm_time"


def test_an_stt_failure_is_an_error_event_and_the_call_goes_on() -> None:
    class FailingOnceSTT(ScriptedSTTDouble):
        """Raises on the first turn's audio (level 900), as a broken model would."""

        def transcribe(self, pcm: Any) -> Any:
            if np.count_nonzero(np.abs(pcm.astype(np.int32) - 900) <= 72) >= 800:
                raise RuntimeError("onnxruntime failed at /opt/models/x.onnx")
            return super().transcribe(pcm)

    async def main() -> Call:
        llm = ScriptedLLMDouble([["It is noon."]])
        engine = double_engine(llm, WORDS)
        engine.stt = FailingOnceSTT(WORDS)
        call = await dial(llm, engine=engine, idle_prompt_s=None)
        await call.quiet(0.5)
        await call.say(tone(1.0, 900))  # the model fails on this turn
        await call.quiet(2.0)
        await call.say(tone(1.0, 500))  # "What time is it?"
        await call.until(completed(call))
        await call.end()
        return call

    call = run_virtual(main())
    errors = call.events("error")
    assert errors and {e["code"] for e in errors} == {"stt_error"}
    assert all("onnx" not in e["message"] and "/opt" not in e["message"] for e in errors)
    assert errors[0]["message"] == "speech recognition failed on that audio; please say it again"
    assert [m.user_text for m in call.session.turns] == ["What time is it?"]
    assert call.session.turns[0].reply_text == "It is noon."
    assert call.session.listener.stt_failures >= 1


# -- background work yields to a caller waiting for an answer ----------------------------


def test_partial_previews_and_prefills_wait_while_another_caller_waits_for_its_answer() -> None:
    """A stops talking at 1 s and waits for its answer (the LLM's first token takes 1 s);
    B talks on for 4 s. B's partial passes (a preview) do not run while A waits, and B's
    call-start prefill, asked while A waits, is not sent. B's own final pass is not held."""

    async def main() -> tuple[Call, Call, list[float], list[float]]:
        llm = ScriptedLLMDouble([["It is noon."]], 1.0, default=["Okay."])
        engine = double_engine(llm, WORDS)
        loop = asyncio.get_running_loop()
        starts: list[float] = []
        run = engine.partial_worker._runner

        def runner(fn: Any) -> Any:
            starts.append(loop.time())
            return run(fn)

        engine.partial_worker._runner = runner
        a = await dial(llm, engine=engine, idle_prompt_s=None)
        waiting: list[float] = []

        async def watch() -> None:
            while True:
                if a.session.waiting_for_answer():
                    waiting.append(loop.time())
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        await a.say(tone(1.0, 500))
        await a.quiet(0.2)
        b = await dial(llm, engine=engine, idle_prompt_s=None)  # while A waits
        b.fed = round((loop.time() - b.session.t0) * 16000)
        await asyncio.gather(a.until(completed(a)), b.say(tone(4.0, 600)))
        await b.until(completed(b))
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await a.end()
        await b.end()
        return a, b, starts, waiting

    a, b, starts, waiting = run_virtual(main())
    assert a.session.turns[0].reply_text == "It is noon."
    assert b.session.turns[0].user_text == WORDS[600]
    t0 = a.session.t0
    began, ended = waiting[0] - t0, waiting[-1] - t0
    assert 1.0 <= began <= 1.1 and ended >= 2.0  # A's wait: its pause, then the LLM's 1 s
    inside = [s - t0 for s in starts if waiting[0] <= s <= waiting[-1]]
    assert inside == []  # no partial pass ran while A waited
    assert any(s - t0 > ended for s in starts)  # B's previews came back after
    assert b.session.listener.partials_yielded > 0
    # B's call-start prefill was asked while A waited: not sent; A's was sent
    assert b.session.prefills_yielded >= 1
    assert ("prefill", a.session.owner) in a.llm.owners
    assert ("stream", a.session.owner) in a.llm.owners and ("stream", b.session.owner) in a.llm.owners


def test_a_slow_llm_has_its_words_spoken_before_the_sentence_ends_and_the_voice_never_stops(
) -> None:  # fmt: skip
    """The LLM writes a word every 0.2 s, one long sentence; the voice says a word in
    ~0.35 s. Waiting for the sentence's end would leave the caller in silence for
    seconds; with under 1 s of audio left, the words so far are spoken."""
    from doubles import ToneTTSDouble

    words = ["Well", " the", " first", " thing", " to", " know"] + [
        f" w{k}" for k in range(30)
    ] + [" end."]  # fmt: skip

    async def main() -> tuple[Call, list[str]]:
        llm = ScriptedLLMDouble([words], 0.2)
        engine = double_engine(llm, WORDS)
        voice = ToneTTSDouble(per_char_s=0.06)
        engine.tts = voice
        call = await dial(llm, engine=engine, idle_prompt_s=None)
        await call.say(tone(1.0, 500))
        await call.until(completed(call), limit_s=30)
        await call.end()
        return call, voice.texts

    call, texts = run_virtual(main())
    (m,) = call.session.turns
    assert m.reply_text == "".join(words) and m.status == "completed"
    spoken = [t for t in texts if t.startswith(("Well", "know", "w"))]
    assert spoken[0] == "Well the first thing to"  # the first chunk: 5 words
    assert len(spoken) >= 4 and all(len(t.split()) >= 3 for t in spoken[1:-1])
    assert " ".join(spoken) == "".join(words).strip()
    assert m.underruns == 0
    assert m.heard_text == m.reply_text


def test_the_first_chunk_is_three_words_while_another_caller_waits() -> None:
    async def main() -> tuple[Call, Call, list[str]]:
        llm = ScriptedLLMDouble(
            [["One two three four five six."], ["Seven eight nine ten eleven twelve."]], 0.05
        )
        engine = double_engine(llm, WORDS)
        a = await dial(llm, engine=engine, idle_prompt_s=None)
        b = await dial(llm, engine=engine, idle_prompt_s=None)
        await asyncio.gather(a.say(tone(1.0, 500)), b.say(tone(1.0, 600)))
        await asyncio.gather(a.until(completed(a)), b.until(completed(b)))
        await a.end()
        await b.end()
        return a, b, engine.tts.texts

    a, b, texts = run_virtual(main())
    # the first reply starts while the other caller waits for its final pass: 3 words;
    # the second once the first caller hears its answer, with no one waiting: 5
    assert texts[-4:] == [
        "One two three", "four five six.", "Seven eight nine ten eleven", "twelve."
    ]  # fmt: skip
    assert {a.session.turns[0].reply_text, b.session.turns[0].reply_text} == {
        "One two three four five six.", "Seven eight nine ten eleven twelve."
    }  # fmt: skip


def test_the_first_chunk_shortens_when_another_caller_begins_to_wait_mid_reply() -> None:
    """Callers who stop together stop a few hundred ms apart: the first asks the LLM
    while no one else waits yet. Once the other caller waits (its pause at 1.5 s), the
    first reply's first chunk is cut at 3 words, not 5."""

    async def main() -> tuple[Call, Call, list[str]]:
        llm = ScriptedLLMDouble(
            [["One", " two", " three", " four", " five", " six."], ["Seven eight."]], 0.2
        )
        engine = double_engine(llm, WORDS)
        a = await dial(llm, engine=engine, idle_prompt_s=None)
        b = await dial(llm, engine=engine, idle_prompt_s=None)

        async def a_asks() -> None:
            await a.say(tone(1.0, 500))
            await a.until(completed(a))

        async def b_asks() -> None:
            await b.quiet(1.0)
            await b.say(tone(1.0, 600))
            await b.until(completed(b))

        await asyncio.gather(a_asks(), b_asks())
        await a.end()
        await b.end()
        return a, b, engine.tts.texts

    a, b, texts = run_virtual(main())
    (m,) = a.session.turns
    # a asked at 1.34 s, when b was still talking: 5 words then; b's pause began at
    # 1.5 s, before a's second token (1.74 s)
    # a asked at 1.34 s, while b was still talking (5 words then); b stopped at 2.0 s
    # and its final pass answered at 2.34 s
    assert m.llm_request == pytest.approx(a.session.t0 + 1.34)
    assert b.session.turns[0].stt_final == pytest.approx(b.session.t0 + 2.34)
    # a's tokens come every 0.2 s from 1.54 s; b waits from its stop, so at " four"
    # (2.14 s) a's first chunk is cut at 3 words (5 words would have waited for " six.",
    # 2.54 s)
    assert m.first_sentence == pytest.approx(a.session.t0 + 2.14)
    assert texts[-3:] == ["One two three", "Seven eight.", "four five six."]
    assert m.reply_text == "One two three four five six."


LONG_FILLER = (
    "Let me think about that one for a moment, it is a good question and I want to get "
    "the answer right for you."
)


def test_the_first_words_go_to_the_voice_as_urgent_while_a_filler_plays() -> None:
    """A filler still playing is no runway: the first sentence is submitted with none
    (it goes ahead of other calls' later sentences, and cuts the filler short); the next
    sentence carries the answer audio queued before it."""
    runways: list[tuple[str, float | None]] = []

    async def main() -> Call:
        llm = ScriptedLLMDouble([["Fine, thanks. ", "And you?"]], token_delay_s=0.6)
        cfg = SessionConfig(
            echo_guard=False,
            duplex=DuplexPolicy(filler_after_s=0.3, idle_prompt_s=None),
            fillers=(LONG_FILLER,),
        )
        call = await dial(llm, cfg)
        run_tts = call.engine.run_tts

        async def spy(text: str, owner: Any = None, runway_s: float | None = None) -> Any:
            runways.append((text, runway_s))
            return await run_tts(text, owner, runway_s)

        call.engine.run_tts = spy  # type: ignore[method-assign]
        call.session.send_text("How are you?")
        await call.until(completed(call))
        await call.end()
        return call

    call = run_virtual(main())
    (m,) = call.session.turns
    assert [e["text"] for e in call.events("filler")] == [m.fillers[0][1]]
    # the filler (10 ms a character: 1.1 s) was due 0.3 s after the decision and queued
    # 0.1 s later (a line not among the engine's clips is voiced on first use); the
    # first sentence was whole at 1.2 s ("And you?" showed its end), the filler playing
    assert m.fillers[0][0] - m.decided == pytest.approx(0.4)
    assert m.first_sentence - m.decided == pytest.approx(1.2)
    said = [r for r in runways if r[0] != LONG_FILLER]  # (the filler's own first voicing)
    assert said[0] == ("Fine, thanks.", None)
    assert said[1][0] == "And you?" and said[1][1] is not None and said[1][1] > 0
    assert m.reply_text == m.heard_text == "Fine, thanks. And you?"


def test_an_ended_call_is_not_kept_alive_by_the_shared_engine() -> None:
    """The engine outlives its calls. Its workers remember whom they served last (for
    turn-taking) and the LLM's slots whom they last held; those keep the call's key, never
    the session, so an ended call's audio and state are let go (the soak found ~800 KB
    kept per ended call, 64 calls deep, before)."""
    import gc
    import weakref

    llm = ScriptedLLMDouble([["It is ", "noon."]], 0.05)
    engine = double_engine(llm, WORDS)

    async def main() -> weakref.ref[Session]:
        cfg = SessionConfig(echo_guard=False, duplex=DuplexPolicy(idle_prompt_s=None))
        call = await dial(llm, cfg, engine=engine)
        await call.quiet(0.5)
        await call.say(tone(1.0, 500))
        await call.until(completed(call))
        await call.end()
        assert call.session.turns[0].reply_text == "It is noon."
        assert engine.stt_worker.jobs_run >= 1 and engine.tts_worker.jobs_run >= 1
        return weakref.ref(call.session)

    ref = run_virtual(main())
    gc.collect()
    assert ref() is None
