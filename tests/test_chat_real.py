"""The text chat with the real local model: Qwen2.5-Coder-1.5B (the default profile),
greedy so that it answers the same way every run, calls the shipped time tool and
answers with the hour the tool returned. (The 0.5B model of the fast profile answers
"What time is it in Tokyo?" from the prompt's local time instead: see README.)"""

from __future__ import annotations

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

    from voice_agent.llm.local import LocalLlamaServer
    from voice_agent.llm.openai_compat import OpenAICompatLLM
    from voice_agent.server import create_app

    server = LocalLlamaServer("quality", threads=2)
    base_url = await server.start()
    llm = OpenAICompatLLM(
        base_url, server.model, temperature=0.0, max_tokens=120, prompt_cache=True
    )
    try:
        app = create_app(engine=double_engine(llm))
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
