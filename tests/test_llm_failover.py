"""LLM failover across real socket endpoints (OpenAI-compatible streaming over HTTP):
which failures move on to the next endpoint, the circuit breaker on a fake clock, and
the text chat's status line when it happens."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest
from doubles import AutoAdvanceClockDouble, double_engine
from doubles import OpenAIEndpointDouble as Endpoint
from httpx_sse import aconnect_sse

from voice_agent.errors import LLMError
from voice_agent.llm.base import Failover, LLMEvent, TextDelta
from voice_agent.llm.failover import FailoverLLM
from voice_agent.llm.openai_compat import OpenAICompatLLM


def closed_port() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return f"http://127.0.0.1:{port}/v1"


def adapter(urls: list[str], clock: AutoAdvanceClockDouble) -> FailoverLLM:
    return FailoverLLM(
        [OpenAICompatLLM(u, "m", connect_timeout=2.0, first_token_timeout=5.0) for u in urls],
        clock,
    )


async def collect(llm: FailoverLLM) -> list[LLMEvent]:
    return [e async for e in llm.stream([{"role": "user", "content": "Hi"}])]


@pytest.mark.parametrize("failure", ["503", "429", "refused"])
async def test_a_failure_before_the_first_token_moves_on_to_the_next_endpoint(
    failure: str,
) -> None:
    first, second = Endpoint(failure), Endpoint("ok")
    url1 = closed_port() if failure == "refused" else await first.start()
    url2 = await second.start()
    clock = AutoAdvanceClockDouble(0.0)
    llm = adapter([url1, url2], clock)
    try:
        events = await collect(llm)
        assert isinstance(events[0], Failover) and events[0].failed.endswith(url1)
        assert events[1:] == [TextDelta("Hello"), TextDelta(" there.")]
        assert llm.failovers == 1 and second.requests == 1
        # the failed endpoint's circuit is open: the next request goes straight on
        events = await collect(llm)
        assert events == [TextDelta("Hello"), TextDelta(" there.")]
        asked = first.requests
        assert asked == (0 if failure == "refused" else 1)
        # after its cooldown (10 s) it is probed again: it fails again, and now waits 20 s
        clock.t = 10.0
        assert isinstance((await collect(llm))[0], Failover)
        assert llm.circuits[0].open_until == pytest.approx(30.0)
        clock.t = 29.0
        assert not isinstance((await collect(llm))[0], Failover)
    finally:
        await llm.close()
        for e in (first, second):
            if e.server is not None:
                e.stop()


async def test_a_request_the_endpoint_rejects_is_not_sent_elsewhere() -> None:
    first, second = Endpoint("401"), Endpoint("ok")
    llm = adapter([await first.start(), await second.start()], AutoAdvanceClockDouble(0.0))
    try:
        with pytest.raises(LLMError, match="HTTP 401") as caught:
            await collect(llm)
        assert caught.value.retryable is False
        assert second.requests == 0 and llm.failovers == 0
    finally:
        await llm.close()
        first.stop()
        second.stop()


async def test_a_failure_after_the_first_token_is_the_replys_own() -> None:
    first, second = Endpoint("dies"), Endpoint("ok")
    llm = adapter([await first.start(), await second.start()], AutoAdvanceClockDouble(0.0))
    got: list[LLMEvent] = []
    try:
        with pytest.raises(LLMError):
            async for e in llm.stream([{"role": "user", "content": "Hi"}]):
                got.append(e)
        assert got == [TextDelta("Hello")]
        assert second.requests == 0 and llm.failovers == 0
    finally:
        await llm.close()
        first.stop()
        second.stop()


async def test_when_every_endpoint_is_down_the_last_error_is_raised() -> None:
    llm = adapter([closed_port(), closed_port()], AutoAdvanceClockDouble(0.0))
    try:
        with pytest.raises(LLMError, match="cannot reach"):
            await collect(llm)
        # both circuits open: they are asked in order anyway
        assert llm.order() == [0, 1]
    finally:
        await llm.close()


async def test_the_text_chat_says_so_when_it_fails_over() -> None:
    from conftest import start_server

    from voice_agent.server import create_app

    first, second = Endpoint("503"), Endpoint("ok")
    llm = adapter([await first.start(), await second.start()], AutoAdvanceClockDouble(0.0))
    app = create_app(engine=double_engine(llm))
    srv, addr, task = await start_server(app)
    try:
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=10.0) as client:
            r = await client.post("/v1/chat", json={"message": "Hi"})
            events: list[tuple[str, dict[str, Any]]] = []
            async with aconnect_sse(client, "GET", r.json()["events_url"]) as source:
                async for sse in source.aiter_sse():
                    if not sse.data:  # httpx-sse reads a heartbeat after an id as an empty event
                        continue
                    events.append((sse.event, json.loads(sse.data)))
            metrics = (await client.get("/metrics")).text
    finally:
        srv.should_exit = True
        await task
        await llm.close()
        first.stop()
        second.stop()
    shown = [(e, d.get("phase") or d.get("text")) for e, d in events]
    assert shown == [
        ("status", "thinking"), ("status", "failover"), ("status", "writing"),
        ("token", "Hello"), ("token", " there."), ("done", None),
    ]  # fmt: skip
    assert "\nvoice_agent_llm_failovers_total 1.0\n" in metrics
    # nothing of the endpoint (its address, its error) reaches the reader
    assert "127.0.0.1" not in json.dumps(events) and "503" not in json.dumps(events)
