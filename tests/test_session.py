"""The session driver with a scripted LLM double and the real piper voice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from doubles import CollectingOutput, ScriptedLLMDouble

from voice_agent.core.clock import LoopClock
from voice_agent.errors import LLMError
from voice_agent.llm.base import ToolCall
from voice_agent.llm.tools import Tool, ToolRegistry
from voice_agent.session.driver import Session
from voice_agent.session.engine import FILLERS, Engine
from voice_agent.vad.webrtc import WebRtcVad

pytestmark = pytest.mark.models


def make_session(
    stt_tts: Any, llm: ScriptedLLMDouble, tools: ToolRegistry | None = None
) -> tuple[Session, CollectingOutput]:
    stt, tts = stt_tts
    engine = Engine(stt=stt, tts=tts, llm=llm, new_vad=WebRtcVad, tools=tools or ToolRegistry())
    out = CollectingOutput()
    return Session(engine, out, LoopClock()), out


async def until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def test_reply_audio_is_paced_at_20ms_per_frame(stt_tts: Any) -> None:
    llm = ScriptedLLMDouble([["Hello there, ", "this is a paced reply ", "for the test."]])
    session, out = make_session(stt_tts, llm)
    task = asyncio.create_task(session.run())
    session.send_text("hi")
    await until(lambda: bool(session.turns) and session.turns[0].status == "completed")
    session.hangup()
    await task
    times = [t for t, _, _ in out.frames]
    assert len(times) > 50
    # sent by sample count against the clock: frame k leaves at t0 + 20 ms * k
    # (one anchor per sentence: the playout re-anchors when the buffer runs dry)
    gaps = np.diff(times)
    assert np.median(gaps) == pytest.approx(0.020, abs=0.002)
    assert float(np.max(gaps)) < 0.5
    span = times[-1] - times[0]
    assert span >= (len(times) - 1) * 0.020 * 0.98  # never faster than real time
    m = session.turns[0]
    assert m.reply_samples == sum(n for _, _, n in out.frames)
    assert session.history[-1] == {"role": "assistant", "content": m.reply_text}
    types = out.types()
    assert types.index("reply.start") < types.index("reply.delta") < types.index("reply.done")


async def test_llm_dying_mid_reply_keeps_the_partial_reply(stt_tts: Any) -> None:
    boom = LLMError("LLM stream from http://x broke: connection reset", "check the server")
    llm = ScriptedLLMDouble([["The answer is ", "forty two. ", "And also", boom]])
    session, out = make_session(stt_tts, llm)
    task = asyncio.create_task(session.run())
    session.send_text("What is the answer?")
    await until(lambda: bool(session.turns) and session.turns[0].reply_done is not None)
    session.hangup()
    await task
    m = session.turns[0]
    assert m.status == "llm_error"
    assert m.reply_text == "The answer is forty two. And also"
    assert session.history[-1] == {
        "role": "assistant",
        "content": "The answer is forty two. And also",
    }
    assert m.reply_samples > 16000 * 0.8  # both pieces were spoken
    assert [e["message"] for e in out.events if e["type"] == "error"] == [str(boom)]


async def test_new_turn_cancels_reply_and_history_keeps_only_what_was_heard(stt_tts: Any) -> None:
    long_reply = [
        f"This is sentence number {w}. "
        for w in ("one", "two", "three", "four", "five", "six", "seven", "eight")
    ]
    llm = ScriptedLLMDouble([long_reply, ["Okay."]])
    session, out = make_session(stt_tts, llm)
    task = asyncio.create_task(session.run())
    session.send_text("Tell me a long story.")
    # let about 1.5 s of the reply play, then the caller says something else
    await until(lambda: session.playout.played_samples(1) >= 24000)
    session.send_text("Stop.")
    await until(lambda: len(session.turns) == 2 and session.turns[1].status == "completed")
    session.hangup()
    await task
    first = session.turns[0]
    assert first.status == "interrupted"
    heard = first.heard_text
    assert heard and first.reply_text.startswith(heard.rsplit(" ", 1)[0])
    assert len(heard) < len(first.reply_text)
    assert session.history[2] == {
        "role": "assistant",
        "content": f"{heard} [interrupted by the caller]",
    }
    # the second request saw the truncated reply, not the full one
    assert llm.requests[1][2]["content"].startswith(heard)
    # nothing of generation 1 was sent after its clear event
    clear_at = next(e["t_ms"] for e in out.events if e["type"] == "clear")
    t0 = session.t0
    assert all((t - t0) * 1000 <= clear_at + 1 for t, g, _ in out.frames if g == 1)
    assert llm.closed_streams == 2


async def test_tool_call_runs_tool_and_reports_status(stt_tts: Any) -> None:
    seen: list[dict[str, Any]] = []

    async def lookup(args: dict[str, Any]) -> str:
        seen.append(args)
        return '{"status": "shipped"}'

    tools = ToolRegistry(
        [
            Tool(
                "lookup_order",
                "Look up an order",
                {"type": "object"},
                lookup,
                status="Looking up your order…",
            )
        ]
    )
    llm = ScriptedLLMDouble([[ToolCall("c1", "lookup_order", {"id": 7})], ["It has shipped."]])
    session, out = make_session(stt_tts, llm, tools)
    task = asyncio.create_task(session.run())
    session.send_text("Where is order 7?")
    await until(lambda: bool(session.turns) and session.turns[0].status == "completed")
    session.hangup()
    await task
    assert seen == [{"id": 7}]
    assert [e["text"] for e in out.events if e["type"] == "status"] == ["Looking up your order…"]
    second = llm.requests[1]
    assert second[-2]["tool_calls"][0]["function"]["name"] == "lookup_order"
    assert second[-1] == {"role": "tool", "tool_call_id": "c1", "content": '{"status": "shipped"}'}
    assert session.turns[0].reply_text == "It has shipped."
    assert session.turns[0].tool_calls == ["lookup_order"]
    # the caller heard the tool's status as a filler, which never enters the history
    assert [e["text"] for e in out.events if e["type"] == "filler"] == ["Looking up your order…"]
    assert [text for _, text in session.turns[0].fillers] == ["Looking up your order…"]
    assert session.history[-1] == {"role": "assistant", "content": "It has shipped."}


async def test_preemptive_reply_dropped_at_a_mid_sentence_pause_leaves_no_trace(
    stt_tts: Any, jfk_path: Any
) -> None:
    """jfk.flac pauses ~0.5 s after "…can do for you": a reply is prepared there and dropped."""
    from voice_agent.audio.files import load_audio_16k
    from voice_agent.replay import replay

    llm = ScriptedLLMDouble([[f"Reply {i}."] for i in range(1, 6)])
    stt, tts = stt_tts
    engine = Engine(stt=stt, tts=tts, llm=llm, new_vad=WebRtcVad)
    result = await replay(engine, load_audio_16k(jfk_path), LoopClock(), fast=True)
    session = result.session
    assert len(session.turns) == 1
    (turn,) = session.turns
    assert turn.status == "completed" and "ask what you can do" in turn.user_text
    # one or more replies were prepared and dropped at pauses before the one that played
    assert len(llm.requests) >= 2 and llm.closed_streams == len(llm.requests)
    assert session.prepared_dropped == len(llm.requests) - 1
    assert turn.reply_text == f"Reply {len(llm.requests)}."
    assert [m["role"] for m in session.history] == ["system", "user", "assistant"]
    played = {gen for _, gen, _ in result.recorder.frames}
    assert played == {turn.gen}
    finals = [e for e in result.recorder.events if e["type"] == "transcript.final"]
    assert [e["gen"] for e in finals] == [turn.gen]
    assert not [
        e for e in result.recorder.events if e["type"] == "reply.delta" and e["gen"] != turn.gen
    ]


def duplex_session(
    stt_tts: Any, llm: ScriptedLLMDouble, **policy: Any
) -> tuple[Session, CollectingOutput]:
    from voice_agent.session.driver import SessionConfig
    from voice_agent.session.turns import DuplexPolicy

    stt, tts = stt_tts
    engine = Engine(stt=stt, tts=tts, llm=llm, new_vad=WebRtcVad)
    out = CollectingOutput()
    cfg = SessionConfig(duplex=DuplexPolicy(**policy))
    return Session(engine, out, LoopClock(), cfg), out


async def test_filler_plays_when_the_answer_is_late_never_twice_in_a_row(stt_tts: Any) -> None:
    # a slow LLM: 0.6 s to each token, so no answer audio 0.3 s after the end of turn
    llm = ScriptedLLMDouble([["Fine, ", "thanks."], ["Sure."]], token_delay_s=0.6)
    session, out = duplex_session(stt_tts, llm, filler_after_s=0.3, idle_prompt_s=None)
    for line in FILLERS:  # synthesized at start-up, as open_engine's warm-up does
        await session.engine.clip(line)
    task = asyncio.create_task(session.run())
    session.send_text("How are you?")
    await until(lambda: len(session.turns) == 1 and session.turns[0].status == "completed")
    session.send_text("Can you help?")
    await until(lambda: len(session.turns) == 2 and session.turns[1].status == "completed")
    session.hangup()
    await task
    first, _second = session.turns
    fillers = [e for e in out.events if e["type"] == "filler"]
    assert [e["gen"] for e in fillers] == [1, 2]
    assert fillers[0]["text"] != fillers[1]["text"]  # never the same filler back to back
    # 0.3 s after the end of turn, before the answer's first audio
    at, _text = first.fillers[0]
    assert at - first.decided == pytest.approx(0.3, abs=0.03)
    assert first.first_audio_out is not None and first.first_audio_out > at
    # the answer follows the filler; the filler is in no context and no heard text
    assert first.heard_text == first.reply_text == "Fine, thanks."
    assert [m["content"] for m in session.history if m["role"] == "assistant"] == [
        "Fine, thanks.",
        "Sure.",
    ]
    assert all(fillers[0]["text"] not in str(m) for m in llm.requests[1])


async def test_an_interrupted_filler_cancels_the_reply(stt_tts: Any) -> None:
    llm = ScriptedLLMDouble([["Slow ", "answer."]], token_delay_s=1.5)
    session, out = duplex_session(stt_tts, llm, filler_after_s=0.2, idle_prompt_s=None)
    task = asyncio.create_task(session.run())
    session.send_text("Question?")
    await until(lambda: any(e["type"] == "filler" for e in out.events))
    await until(lambda: any(g == 1 for _, g, _ in out.frames))
    session.interrupt()
    await until(lambda: bool(session.turns) and session.turns[0].status == "interrupted")
    session.hangup()
    await task
    assert session.turns[0].fillers and session.turns[0].heard_text == ""
    assert [e["gen"] for e in out.events if e["type"] == "clear"] == [1]
    # the filler is not in the history: the agent said nothing of its answer
    assert [m for m in session.history if m["role"] == "assistant"] == [
        {"role": "assistant", "content": "[interrupted by the caller]"}
    ]


async def test_idle_caller_is_prompted_once_then_the_agent_says_goodbye_and_closes(
    stt_tts: Any,
) -> None:
    llm = ScriptedLLMDouble([])
    session, out = duplex_session(
        stt_tts, llm, filler_after_s=None, idle_prompt_s=0.5, idle_end_s=0.5
    )
    async with asyncio.timeout(20):
        await session.run()  # ends by itself: nobody speaks
    kinds = [m.kind for m in session.turns]
    assert kinds == ["idle_prompt", "goodbye"]
    assert [m["content"] for m in session.history if m["role"] == "assistant"] == [
        "Are you still there?",
        "It seems you have stepped away. Goodbye!",
    ]
    starts = [e.get("purpose") for e in out.events if e["type"] == "reply.start"]
    assert starts == ["idle_prompt", "goodbye"]
    ending = [e for e in out.events if e["type"] == "session.ending"]
    assert ending == [ending[0]] and ending[0]["reason"] == "idle"
    assert session.end_reason == "idle"
    # the prompt came 0.5 s after the start, the goodbye 0.5 s after the prompt finished
    prompt, goodbye = session.turns
    assert prompt.decided is not None and prompt.decided - session.t0 == pytest.approx(0.5, abs=0.1)
    assert prompt.reply_done is not None and goodbye.decided is not None
    assert goodbye.decided - prompt.reply_done == pytest.approx(0.5, abs=0.1)
    assert llm.requests == []  # fixed lines: no LLM call
