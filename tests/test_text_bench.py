"""``bench --text``: one question's row, timed as the client sees it (LLM double)."""

from __future__ import annotations

import httpx
from doubles import ScriptedLLMDouble, double_engine

from benchmarks.harness import in_process_server
from benchmarks.text import one
from voice_agent.llm.base import ToolCall
from voice_agent.server import create_app


async def test_a_row_times_the_status_the_tool_and_the_first_token() -> None:
    call = ToolCall("call_0", "current_time", {"timezone": "Asia/Tokyo"})
    llm = ScriptedLLMDouble([["Rome."], [call], ["It is ", "nine."]], 0.05)
    app = create_app(engine=double_engine(llm))
    async with in_process_server(app) as addr:
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=30.0) as client:
            plain = await one(client, "What is the capital of Italy?")
            tooled = await one(client, "What time is it in Tokyo?")
    assert plain["reply"] == "Rome." and plain["tools"] == [] and plain["end"] == "done"
    assert plain["accepted_ms"] <= plain["first_status_ms"] < plain["first_token_ms"]
    assert plain["first_token_ms"] >= 50  # the double's first token comes after 50 ms
    assert plain["first_token_ms"] <= plain["total_ms"]
    assert set(plain["server_timings"]) == {
        "first_status_ms", "first_token_ms", "total_ms", "context_ms",
    }  # fmt: skip
    assert tooled["tools"] == ["current_time"] and tooled["reply"] == "It is nine."
    assert tooled["first_status_ms"] < tooled["tool_result_ms"] < tooled["first_token_ms"]
