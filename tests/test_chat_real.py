"""The text chat with the real local model: Qwen2.5-Coder-1.5B (the default profile),
greedy so that it answers the same way every run, calls the shipped time tool and
answers with the hour the tool returned. (The 0.5B model of the fast profile answers
"What time is it in Tokyo?" from the prompt's local time instead: see README.)"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from doubles import double_engine
from httpx_sse import aconnect_sse

pytestmark = pytest.mark.models


@pytest_asyncio.fixture(scope="module")
async def quality_chat() -> AsyncIterator[str]:
    """A server whose LLM is the local 1.5B model at temperature 0 (the chat needs
    nothing else); yields host:port."""
    from conftest import start_server

    from voice_agent.llm.builtin_tools import time_tool
    from voice_agent.llm.local import LocalLlamaServer
    from voice_agent.llm.openai_compat import OpenAICompatLLM
    from voice_agent.llm.tools import ToolRegistry
    from voice_agent.server import create_app

    server = LocalLlamaServer("quality", threads=2)
    base_url = await server.start()
    llm = OpenAICompatLLM(
        base_url, server.model, temperature=0.0, max_tokens=120, prompt_cache=True
    )
    try:
        engine = double_engine(llm)
        engine.tools = ToolRegistry([time_tool()])  # as `voice-agent serve` offers by default
        app = create_app(engine=engine)
        srv, addr, task = await start_server(app)
        yield addr
        srv.should_exit = True  # type: ignore[attr-defined]
        await task  # type: ignore[misc]
    finally:
        await llm.close()
        await server.stop()


async def ask(addr: str, message: str) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=180.0) as client:
        r = await client.post("/v1/chat", json={"message": message})
        assert r.status_code == 202, r.text
        ids = r.json()
        events: list[tuple[str, dict[str, Any]]] = []
        async with aconnect_sse(client, "GET", ids["events_url"]) as source:
            async for sse in source.aiter_sse():
                if not sse.data:  # httpx-sse reads a heartbeat after an id as an empty event
                    continue
                events.append((sse.event, json.loads(sse.data)))
        conv = (await client.get(f"/v1/conversations/{ids['conversation_id']}")).json()
    return events, conv


async def test_the_local_model_calls_the_time_tool_and_tells_the_hour(quality_chat: str) -> None:
    events, conv = await ask(quality_chat, "What time is it in Tokyo?")
    kinds = [e for e, _ in events]
    assert kinds[-1] == "done", events
    tools = [(d["name"], d["state"]) for e, d in events if e == "tool"]
    assert tools == [("current_time", "started"), ("current_time", "finished")], events
    assert kinds.index("tool") < kinds.index("token")
    # the hour the tool gave (the conversation keeps its result) is the one in the answer
    answer = "".join(d["text"] for e, d in events if e == "token")
    reply = conv["messages"][-1]
    assert reply["content"] == answer.strip()
    (call,) = reply["tool_calls"]
    assert call["name"] == "current_time" and call["arguments"] == {"timezone": "Asia/Tokyo"}
    result = json.loads(call["result"])
    hours = {result["time_12h"].split(":")[0], result["time_24h"].split(":")[0].lstrip("0")}
    said = set(re.findall(r"\b0?(\d{1,2}):\d{2}\b", answer))
    assert hours & said, (answer, result)


async def test_general_knowledge_needs_no_tool(quality_chat: str) -> None:
    events, conv = await ask(quality_chat, "What is the capital of Japan?")
    assert [e for e, _ in events if e == "tool"] == []
    assert "Tokyo" in conv["messages"][-1]["content"]


HOUR_WORDS = ["twelve", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
              "ten", "eleven"]  # fmt: skip


async def test_a_caller_asking_the_time_in_tokyo_hears_the_hour_the_tool_gave(
    quality_chat: str,
) -> None:
    """The voice path (a typed turn over the WebSocket, answered out loud): the spoken
    filler while the tool runs, then the hour it returned, said as a person says it."""
    import websockets

    async with websockets.connect(f"ws://{quality_chat}/v1/voice/ws") as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 16000}))
        started = json.loads(await ws.recv())
        assert started["type"] == "session.started"
        await ws.send(json.dumps({"type": "text", "text": "What time is it in Tokyo?"}))
        events = []
        while True:
            msg = await asyncio.wait_for(ws.recv(), 180)
            if isinstance(msg, str):
                events.append(json.loads(msg))
                if events[-1]["type"] == "reply.done":
                    break
        await ws.send(json.dumps({"type": "session.end"}))
    kinds = [e["type"] for e in events]
    status = [e["text"] for e in events if e["type"] == "status"]
    assert "Looking up the time…" in status, json.dumps([e for e in events if e["type"] != "reply.delta"])
    fillers = [e["text"] for e in events if e["type"] == "filler"]
    assert "Let me check the time." in fillers
    assert kinds.index("filler") < kinds.index("reply.delta")
    answer = events[-1]["text"]
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    now = datetime.now(ZoneInfo("Asia/Tokyo"))
    # the hour now, or the next one if the minute turned while it answered
    hours = {now.hour % 12 or 12, (now + timedelta(minutes=3)).hour % 12 or 12}
    words = {HOUR_WORDS[h % 12] for h in hours}
    digits = set(re.findall(r"\b0?(\d{1,2})(?::\d{2})?\s*(?:a\.?m|p\.?m|o'clock|in the)",
                            answer, re.IGNORECASE))  # fmt: skip
    said = {int(d) % 12 or 12 for d in digits}
    spoken = {w for w in HOUR_WORDS if re.search(rf"\b{w}\b", answer, re.IGNORECASE)}
    assert (hours & said) or (words & spoken), answer
