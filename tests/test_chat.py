"""Text chat over SSE: a real server on 127.0.0.1 with a scripted LLM (double), read
with httpx and httpx-sse as a browser's EventSource would."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
import pytest
from conftest import Chat
from doubles import HANG, AutoAdvanceClockDouble, ScriptedLLMDouble, double_engine

from voice_agent.chat.events import (
    BadLastEventId,
    LogFull,
    MemoryEventStore,
    UnknownResponse,
    parse_last_event_id,
)
from voice_agent.errors import LLMError
from voice_agent.llm.base import ToolCall
from voice_agent.llm.tools import tool
from voice_agent.server import ServerConfig, create_app

JSON_TYPE = {"content-type": "application/json"}
STORY = [f"Word{i} " for i in range(20)]


async def test_a_reply_streams_status_then_tokens_then_done(chat_server: Any) -> None:
    chat = await chat_server(ScriptedLLMDouble([["Paris ", "is the ", "capital."]], 0.01))
    ids = await chat.start("What is the capital of France?")
    assert len(ids["response_id"]) >= 22 and len(ids["conversation_id"]) >= 22  # 128 bits
    assert ids["events_url"] == f"/v1/chat/{ids['response_id']}/events"
    events = await chat.events(ids["response_id"])
    assert [e[0] for e in events] == [str(i) for i in range(1, 7)]
    assert [(e[1], e[2].get("phase")) for e in events] == [
        ("status", "thinking"), ("status", "writing"),
        ("token", None), ("token", None), ("token", None), ("done", None),
    ]  # fmt: skip
    assert "".join(e[2]["text"] for e in events if e[1] == "token") == "Paris is the capital."
    done = events[-1][2]
    assert done["finish_reason"] == "stop"
    assert done["usage"] == {"token_events": 3, "characters": 21}
    t = done["timings"]
    assert 0 <= t["first_status_ms"] <= t["first_token_ms"] <= t["total_ms"]
    assert t["context_ms"] >= 0
    conv = await chat.conversation(ids["conversation_id"])
    assert conv["running"] is None
    user_msg, reply = conv["messages"]
    assert user_msg == {"role": "user", "content": "What is the capital of France?", "source": "text"}
    assert reply == {
        "role": "assistant", "content": "Paris is the capital.", "source": "text",
        "response_id": ids["response_id"], "timings": t,
    }  # fmt: skip
    # the LLM saw the text chat's own system prompt, then the message
    system, user = chat.llm.requests[0]
    assert system["role"] == "system" and "text chat" in system["content"]
    assert user == {"role": "user", "content": "What is the capital of France?"}


async def test_the_conversation_goes_on_with_its_history(chat_server: Any) -> None:
    chat = await chat_server(ScriptedLLMDouble([["Hello."], ["Rome."]], 0.01))
    first = await chat.start("Hi")
    await chat.events(first["response_id"])
    second = await chat.start("And Italy?", conversation_id=first["conversation_id"])
    assert second["conversation_id"] == first["conversation_id"]
    await chat.events(second["response_id"])
    assert [m["role"] + ":" + m["content"] for m in chat.llm.requests[1][1:]] == [
        "user:Hi", "assistant:Hello.", "user:And Italy?",
    ]  # fmt: skip


async def test_a_dropped_reader_resumes_with_exactly_the_missed_events(chat_server: Any) -> None:
    """The reader drops after 5 events; generation goes on without it. Reconnecting with
    Last-Event-ID 5 gives events 6.. to the end: together, the same events as a reader
    that never dropped, with the same text, byte for byte."""
    chat = await chat_server(ScriptedLLMDouble([STORY], 0.02))
    ids = await chat.start("Tell me a story.")
    rid = ids["response_id"]
    head = await chat.events(rid, limit=5)
    assert [e[0] for e in head] == ["1", "2", "3", "4", "5"]
    await asyncio.sleep(0.15)  # away for a while: the reply goes on being written
    tail = await chat.events(rid, last_id="5")
    whole = await chat.events(rid)
    assert head + tail == whole
    assert [int(e[0]) for e in whole] == list(range(1, len(STORY) + 4))
    text = "".join(e[2]["text"] for e in head + tail if e[1] == "token")
    assert text.encode() == "".join(STORY).encode()
    assert whole[-1][1] == "done"
    # a reader that reconnects after the end gets nothing more, and the stream ends
    assert await chat.events(rid, last_id=whole[-1][0]) == []


async def test_generation_goes_on_with_no_reader_at_all(chat_server: Any) -> None:
    chat = await chat_server(ScriptedLLMDouble([["One ", "two."]], 0.01))
    ids = await chat.start("Count.")
    for _ in range(200):
        conv = await chat.conversation(ids["conversation_id"])
        if conv["running"] is None:
            break
        await asyncio.sleep(0.02)
    assert conv["messages"][-1]["content"] == "One two."
    events = await chat.events(ids["response_id"])
    assert [e[1] for e in events] == ["status", "status", "token", "token", "done"]


async def test_a_heartbeat_comment_keeps_a_slow_stream_alive(chat_server: Any) -> None:
    chat = await chat_server(ScriptedLLMDouble([["Late."]], 0.7), heartbeat_s=0.2)
    ids = await chat.start("Take your time.")
    lines: list[str] = []
    async with chat.client.stream("GET", f"/v1/chat/{ids['response_id']}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            lines.append(line)
            if line.startswith("event: done"):
                break
    first_token = lines.index("event: token")
    pings = [i for i, line in enumerate(lines) if line.startswith(": ping")]
    assert pings and pings[0] < first_token  # during the 0.7 s before the first token


async def test_heartbeats_between_events_are_not_events(chat_server: Any) -> None:
    """Pings every 50 ms between tokens 200 ms apart: a reader gets exactly the events
    (httpx-sse reports a comment after an id as an empty event; the helpers skip it)."""
    chat = await chat_server(ScriptedLLMDouble([["One ", "two."]], 0.2), heartbeat_s=0.05)
    ids = await chat.start("Count slowly.")
    events = await chat.events(ids["response_id"])
    assert [(e[0], e[1]) for e in events] == [
        ("1", "status"), ("2", "status"), ("3", "token"), ("4", "token"), ("5", "done"),
    ]  # fmt: skip


async def test_an_llm_dying_mid_reply_sends_an_error_and_keeps_the_partial(
    chat_server: Any,
) -> None:
    secret = "connection refused by http://10.1.2.3:8080 (pid 4242)"
    llm = ScriptedLLMDouble([["Hello ", "there, ", LLMError(secret)], ["Hello again."]], 0.01)
    chat = await chat_server(llm)
    ids = await chat.start("Hi")
    events = await chat.events(ids["response_id"])
    assert [e[1] for e in events] == ["status", "status", "token", "token", "error"]
    err = events[-1][2]
    assert err["code"] == "llm_failed" and err["partial_kept"] is True
    assert "10.1.2.3" not in json.dumps(err) and "4242" not in json.dumps(err)
    conv = await chat.conversation(ids["conversation_id"])
    kept = conv["messages"][-1]
    assert kept.pop("timings")["first_token_ms"] >= 0
    assert kept == {
        "role": "assistant", "content": "Hello there,", "response_id": ids["response_id"],
        "source": "text", "incomplete": True,
    }  # fmt: skip
    # regenerate: the same message answered again; the partial leaves the conversation
    r = await chat.client.post(f"/v1/chat/{ids['response_id']}/regenerate")
    assert r.status_code == 202, r.text
    again = r.json()
    assert again["conversation_id"] == ids["conversation_id"]
    assert again["response_id"] != ids["response_id"]
    events = await chat.events(again["response_id"])
    assert events[-1][1] == "done"
    conv = await chat.conversation(ids["conversation_id"])
    assert [(m["role"], m["content"]) for m in conv["messages"]] == [
        ("user", "Hi"), ("assistant", "Hello again."),
    ]  # fmt: skip
    assert llm.requests[1] == llm.requests[0]
    # a response that succeeded is not regenerated
    r = await chat.client.post(f"/v1/chat/{again['response_id']}/regenerate")
    assert r.status_code == 409 and "done" in r.json()["error"]


async def test_cancel_stops_a_reply_and_keeps_what_was_written(chat_server: Any) -> None:
    chat = await chat_server(ScriptedLLMDouble([["Once ", "upon ", HANG]], 0.01))
    ids = await chat.start("Tell me a story.")
    rid = ids["response_id"]
    head = await chat.events(rid, limit=4)  # thinking, writing, two tokens
    assert [e[1] for e in head] == ["status", "status", "token", "token"]
    # a second message while the first is being written is refused
    r = await chat.client.post(
        "/v1/chat", json={"message": "Hello?", "conversation_id": ids["conversation_id"]}
    )
    assert r.status_code == 409
    r = await chat.client.post(f"/v1/chat/{rid}/cancel")
    assert r.status_code == 202 and r.json() == {"cancelled": True}
    tail = await chat.events(rid, last_id="4")
    assert [e[1] for e in tail] == ["done"] and tail[0][2]["finish_reason"] == "cancelled"
    assert chat.llm.closed_streams == 1
    conv = await chat.conversation(ids["conversation_id"])
    assert conv["messages"][-1]["content"] == "Once upon"
    assert conv["messages"][-1]["interrupted"] is True
    r = await chat.client.post(f"/v1/chat/{rid}/cancel")
    assert r.status_code == 409


async def test_bad_requests_get_a_4xx_with_a_message(chat_server: Any) -> None:
    chat = await chat_server(ScriptedLLMDouble([["Fine."]], 0.01))
    c = chat.client
    cases: list[tuple[httpx.Response, int, str]] = [
        (await c.post("/v1/chat", content=b"", headers=JSON_TYPE), 400, "empty"),
        (await c.post("/v1/chat", content=b"{not json", headers=JSON_TYPE), 400, "not valid JSON"),
        # a cross-site form or text/plain POST cannot be one
        (await c.post("/v1/chat", content=b'{"message": "hi"}', headers={"content-type": "text/plain"}), 415, "application/json"),
        (await c.post("/v1/chat", json=["message"]), 400, "JSON object"),
        (await c.post("/v1/chat", json={"text": "hi"}), 400, '"message"'),
        (await c.post("/v1/chat", json={"message": 7}), 400, '"message"'),
        (await c.post("/v1/chat", json={"message": "   "}), 400, "empty"),
        (await c.post("/v1/chat", json={"message": "x" * 70_000}), 413, "over"),
        (await c.post("/v1/chat", json={"message": "x" * 9000}), 413, "characters"),
        (await c.post("/v1/chat", json={"message": "hi", "conversation_id": 5}), 400, "string"),
        (await c.post("/v1/chat", json={"message": "hi", "conversation_id": "nope"}), 404, "no such"),
        (await c.get("/v1/chat/nope/events"), 404, "no such response"),
        (await c.post("/v1/chat/nope/cancel"), 404, "no such response"),
        (await c.post("/v1/chat/nope/regenerate"), 404, "no such response"),
        (await c.get("/v1/conversations/nope"), 404, "no such conversation"),
    ]  # fmt: skip
    ids = await chat.start("Hi")
    await chat.events(ids["response_id"])  # 4 events: thinking, writing, token, done
    url = f"/v1/chat/{ids['response_id']}/events"
    cases += [
        (await c.get(url, headers={"Last-Event-ID": "abc"}), 400, "Last-Event-ID"),
        (await c.get(url, headers={"Last-Event-ID": "-1"}), 400, "Last-Event-ID"),
        (await c.get(url, headers={"Last-Event-ID": "5"}), 400, "past"),
    ]
    for r, status, words in cases:
        assert r.status_code == status, (r.request.url, r.text)
        assert words in r.json()["error"], r.text
    # the server is still answering
    assert (await c.get("/healthz")).status_code == 200


async def test_a_tool_turn_streams_status_tool_events_then_the_answer(chat_server: Any) -> None:
    """The LLM calls the time tool (shipped) and a slow one side by side; the reader sees
    the tool phase, both tools start, the slow one's wait kept alive by heartbeats, both
    finish, then the answer."""

    @tool(status="Checking the tide tables…")
    async def tide(port: str) -> str:
        """High tide at a port."""
        await asyncio.sleep(0.6)
        return f"High tide at {port} is at 14:10."

    calls = [
        ToolCall("call_0", "current_time", {"timezone": "Asia/Tokyo"}),
        ToolCall("call_1", "tide", {"port": "Brest"}),
    ]
    llm = ScriptedLLMDouble([calls, ["It is ", "nine."]], 0.01)
    chat = await chat_server(llm, heartbeat_s=0.2, tools=[tide])
    ids = await chat.start("What time is it in Tokyo, and when is high tide in Brest?")
    lines: list[str] = []
    async with chat.client.stream("GET", f"/v1/chat/{ids['response_id']}/events") as r:
        async for line in r.aiter_lines():
            lines.append(line)
            if line.startswith("event: done"):
                break
    events = await chat.events(ids["response_id"])
    shown = [
        (e, d.get("phase") or d.get("name"), d.get("state") or d.get("text"))
        for _, e, d in events
    ]
    assert shown == [
        ("status", "thinking", "Thinking…"),
        ("status", "tool", "Looking up the time…"),
        ("tool", "current_time", "started"),
        ("status", "tool", "Checking the tide tables…"),
        ("tool", "tide", "started"),
        ("tool", "current_time", "finished"),
        ("tool", "tide", "finished"),
        ("status", "writing", "Writing…"),
        ("token", None, "It is "),
        ("token", None, "nine."),
        ("done", None, None),
    ]
    durations = {d["name"]: d["duration_ms"] for _, e, d in events if d.get("state") == "finished"}
    assert durations["tide"] >= 600 and durations["current_time"] < 600
    # a heartbeat went out while the slow tool ran
    started = lines.index('data: {"name":"tide","state":"started"}')
    finished = next(i for i, x in enumerate(lines) if x.startswith('data: {"name":"tide","state":"f'))
    assert any(x.startswith(": ping") for x in lines[started:finished])
    # the LLM read both results back, in the calls' order
    results = [m for m in llm.requests[1] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in results] == ["call_0", "call_1"]
    assert json.loads(results[0]["content"])["timezone"] == "Asia/Tokyo"
    assert results[1]["content"] == "High tide at Brest is at 14:10."


async def test_a_failing_tool_is_a_result_for_the_llm_not_the_end_of_the_reply(
    chat_server: Any,
) -> None:
    calls = [ToolCall("call_0", "current_time", {"timezone": "Mars/Olympus_Mons"})]
    llm = ScriptedLLMDouble([calls, ["I don't know that place."]], 0.01)
    chat = await chat_server(llm)
    ids = await chat.start("What time is it on Mars?")
    events = await chat.events(ids["response_id"])
    failed = [d for _, e, d in events if e == "tool" and d["state"] != "started"]
    assert [(d["name"], d["state"]) for d in failed] == [("current_time", "failed")]
    assert events[-1][1] == "done"
    (result,) = [m for m in llm.requests[1] if m["role"] == "tool"]
    assert "unknown timezone" in json.loads(result["content"])["error"]
    # the conversation names the failed call but not its error (the tool's own words)
    conv = await chat.conversation(ids["conversation_id"])
    assert conv["messages"][-1]["tool_calls"] == [
        {"name": "current_time", "arguments": {"timezone": "Mars/Olympus_Mons"},
         "state": "failed", "duration_ms": failed[0]["duration_ms"]},
    ]  # fmt: skip


async def test_a_model_that_calls_the_same_tool_again_is_given_the_result_in_words(
    chat_server: Any,
) -> None:
    """Qwen2.5-Coder-0.5B calls the tool again instead of reading its result: the call
    is not run twice, and the next request has the result written into the message."""
    call = ToolCall("call_0", "current_time", {"timezone": "Asia/Tokyo"})
    again = ToolCall("call_0", "current_time", {"timezone": "Asia/Tokyo"})
    llm = ScriptedLLMDouble([[call], [again], ["It is nine."]], 0.01)
    chat = await chat_server(llm)
    ids = await chat.start("What time is it in Tokyo?")
    events = await chat.events(ids["response_id"])
    assert [(d["name"], d["state"]) for _, e, d in events if e == "tool"] == [
        ("current_time", "started"), ("current_time", "finished"),
    ]  # fmt: skip
    assert events[-1][1] == "done"
    assert len(llm.requests) == 3
    assert [m["role"] for m in llm.requests[1]] == ["system", "user", "assistant", "tool"]
    folded = llm.requests[2]
    assert [m["role"] for m in folded] == ["system", "user"]
    note = folded[1]["content"]
    assert note.startswith("What time is it in Tokyo?\n\n(current_time ")
    assert '"timezone": "Asia/Tokyo"' in note and "returned:" in note
    conv = await chat.conversation(ids["conversation_id"])
    assert len(conv["messages"][-1]["tool_calls"]) == 1


async def test_the_chat_prompt_is_read_ahead_once_the_models_are_loaded(chat_server: Any) -> None:
    chat = await chat_server(ScriptedLLMDouble([["Hi."]], 0.01))
    assert await chat.state.chat_service().warm() is True
    ((system,),) = chat.llm.prefills
    assert system["role"] == "system" and "current_time" in system["content"]
    ids = await chat.start("Hello")
    await chat.events(ids["response_id"])
    assert chat.llm.requests[0][0] == system  # the same bytes: the cache serves it


async def test_a_reader_that_stops_reading_is_cut_off_and_loses_nothing() -> None:
    """A reader that never reads (4 KiB socket buffers on both sides) while a 400 KB reply
    is written: the reply is written to its end all the same, the server holds no more
    than the response's bounded log, the stalled reader is disconnected after the send
    timeout (0.5 s), and a reader that resumes from event 0 gets the whole reply."""
    import socket

    from conftest import start_server

    big = ["x" * 199 + " " for _ in range(2000)]
    llm = ScriptedLLMDouble([big], 0.0)
    app = create_app(
        engine=double_engine(llm), config=ServerConfig(sse_send_timeout_s=0.5)
    )
    srv, addr, task = await start_server(app, sndbuf=4096)
    host, port = addr.split(":")
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=30.0) as client:
            chat = Chat(client, llm, app.state.va)
            ids = await chat.start("Write a lot.")
            stalled.connect((host, int(port)))
            stalled.sendall(f"GET {ids['events_url']} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            service = app.state.va.chat_service()
            log = service.events._logs[ids["response_id"]]
            for _ in range(500):
                if log.closed:
                    break
                await asyncio.sleep(0.02)
            assert service.responses[ids["response_id"]].state == "done" and log.closed
            assert len(log.events) == 2003 <= service.events.max_events
            await asyncio.sleep(1.0)  # past the send timeout: the server gave up on it
            stalled.setblocking(False)
            got = b""
            with contextlib.suppress(BlockingIOError):
                while chunk := stalled.recv(65536):
                    got += chunk
            assert b"event: status" in got and b"event: done" not in got
            assert len(got) < 100_000  # what the socket buffers held, not the reply
            whole = await chat.events(ids["response_id"])
            assert len(whole) == 2003 and whole[-1][1] == "done"
            assert "".join(d["text"] for _, e, d in whole if e == "token") == "".join(big)
            assert (await client.get("/healthz")).status_code == 200
    finally:
        stalled.close()
        srv.should_exit = True
        await task


# -- the event log, on its own ------------------------------------------------------


def test_last_event_id_parsing() -> None:
    assert parse_last_event_id(None) == 0 and parse_last_event_id(" 12 ") == 12
    for bad in ("x", "1.5", "-3", "9" * 30):
        with pytest.raises(BadLastEventId):
            parse_last_event_id(bad)


async def test_the_log_is_bounded_and_keeps_its_last_place_for_the_closing_event() -> None:
    store = MemoryEventStore(AutoAdvanceClockDouble(100.0), max_events=4)
    store.create_now("r")
    for i in range(3):
        store.append("r", "token", {"text": str(i)})
    with pytest.raises(LogFull):
        store.append("r", "token", {"text": "3"})
    assert store.append("r", "error", {"code": "too_long"}).id == 4
    store.close("r")
    assert [e.id async for e in store.read("r", 0)] == [1, 2, 3, 4]


async def test_a_response_that_outgrows_its_log_ends_with_an_error(chat_server: Any) -> None:
    chat = await chat_server(ScriptedLLMDouble([STORY], 0.0))
    chat.state.chat_service().events.max_events = 8
    ids = await chat.start("Go on.")
    events = await chat.events(ids["response_id"])
    assert [e[1] for e in events] == ["status", "status"] + ["token"] * 5 + ["error"]
    assert events[-1][2]["partial_kept"] is True


async def test_logs_expire_after_their_ttl() -> None:
    clock = AutoAdvanceClockDouble(100.0)
    store = MemoryEventStore(clock, ttl_s=60.0)
    store.create_now("done")
    store.append("done", "done", {})
    store.close("done")
    store.create_now("live")
    clock.t += 30
    store.append("live", "token", {"text": "a"})
    clock.t += 40  # "done" was last touched 70 s ago, "live" 40 s ago
    assert not store.exists("done") and store.exists("live")
    with pytest.raises(UnknownResponse):
        store.read("done", 0)


def test_the_chat_prompt_states_the_date_not_the_minute_and_names_its_tools_last() -> None:
    """Read again at each reply, it must stay the same bytes all day, or the LLM reads
    again all that follows the line that changed (the tool definitions)."""
    from datetime import datetime

    from voice_agent.session.config import SessionConfig, chat_system_message

    cfg = SessionConfig(wall_clock=lambda: datetime(2026, 12, 3, 8, 31))
    text = chat_system_message(cfg, "You do have tools: x.")
    assert text.endswith("\nToday is Thursday, December 3, 2026.\nYou do have tools: x.")
    cfg.wall_clock = lambda: datetime(2026, 12, 3, 17, 59)
    assert chat_system_message(cfg, "You do have tools: x.") == text
    assert "voice" not in text and "text chat" in text
