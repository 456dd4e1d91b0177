"""``OpenAICompatLLM.prefill`` against a real socket server: what it sends, and when it
sends nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from voice_agent.llm.base import TextDelta
from voice_agent.llm.openai_compat import OpenAICompatLLM

COMPLETION = json.dumps({
    "id": "1", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "finish_reason": "length",
                 "message": {"role": "assistant", "content": "The"}}],
}).encode()  # fmt: skip
CHUNK = (
    b'data: {"id":"1","object":"chat.completion.chunk","created":0,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"Hello."},"finish_reason":null}]}\n\n'
)


class Endpoint:
    """Records each request's JSON body. A streamed request sends one chunk, then waits
    for ``release`` before it ends; any other gets ``status`` and a one-token completion."""

    def __init__(
        self, status: str = "200 OK", hold_completions: bool = False, drop_first: bool = False
    ) -> None:
        self.status = status
        self.drop_first = drop_first
        """The first connection is closed as soon as it opens (a stale keep-alive one)."""
        self.connections = 0
        self.hold_completions = hold_completions
        """A request that is not streamed gets no answer until its client closes it."""
        self.received = asyncio.Event()
        self.closed_unanswered = asyncio.Event()
        self.bodies: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.drop_first and self.connections == 1:
            writer.close()
            return
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        body = json.loads(await reader.readexactly(length))
        self.bodies.append(body)
        self.received.set()
        if body.get("stream"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Connection: close\r\n\r\n" + CHUNK)  # fmt: skip
            await writer.drain()
            await self.release.wait()
            writer.write(b"data: [DONE]\n\n")
        elif self.hold_completions:
            await reader.read()  # until the client closes the connection
            self.closed_unanswered.set()
        else:
            writer.write(
                f"HTTP/1.1 {self.status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(COMPLETION)}\r\nConnection: close\r\n\r\n".encode()
                + COMPLETION
            )
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


MESSAGES = [
    {"role": "system", "content": "You are a voice assistant."},
    {"role": "user", "content": "What is the capital"},
]


async def prefills(
    endpoint: Endpoint, times: int = 1, prompt_cache: bool = True
) -> tuple[list[bool], OpenAICompatLLM]:
    """Send ``times`` prefills to ``endpoint`` one after another: (their results, the LLM)."""
    async with endpoint as url:
        llm = OpenAICompatLLM(url, "m", prompt_cache=prompt_cache)
        try:
            return [await llm.prefill(MESSAGES) for _ in range(times)], llm
        finally:
            await llm.close()


async def test_a_prefill_asks_for_one_token_of_the_prompt_so_far() -> None:
    endpoint = Endpoint()
    results, llm = await prefills(endpoint)
    assert results == [True] and llm.prefills == 1
    [body] = endpoint.bodies
    assert body["messages"] == MESSAGES
    assert body["max_tokens"] == 1 and body["temperature"] == 0.0
    assert not body.get("stream")


async def test_a_prefill_on_a_connection_dropped_before_it_was_sent_goes_once_more() -> None:
    endpoint = Endpoint(drop_first=True)
    results, _ = await prefills(endpoint)
    assert results == [True]
    assert endpoint.connections == 2 and len(endpoint.bodies) == 1


async def test_an_endpoint_without_a_prompt_cache_gets_no_prefill() -> None:
    endpoint = Endpoint()
    # a hosted API: a prefill would only be billed
    results, llm = await prefills(endpoint, prompt_cache=False)
    assert results == [False]
    assert endpoint.bodies == [] and llm.prefills == 0


async def test_a_prefill_never_queues_behind_a_reply_in_flight() -> None:
    endpoint = Endpoint()
    async with endpoint as url:
        llm = OpenAICompatLLM(url, "m", prompt_cache=True)
        try:
            stream = llm.stream(MESSAGES)
            assert await anext(stream) == TextDelta("Hello.")
            assert await llm.prefill(MESSAGES) is False  # the reply is still streaming
            endpoint.release.set()
            assert [e async for e in stream] == []
            assert await llm.prefill(MESSAGES) is True  # and once it is over, it goes
        finally:
            await llm.close()
    assert [bool(b.get("stream")) for b in endpoint.bodies] == [True, False]


async def test_a_failed_prefill_is_only_a_lost_head_start() -> None:
    endpoint = Endpoint("503 Service Unavailable")
    results, llm = await prefills(endpoint, times=2)
    assert results == [False, False]  # and nothing was left in flight by the first
    assert len(endpoint.bodies) == 2 and llm.prefills == 0


@contextlib.asynccontextmanager
async def prefill_being_read() -> AsyncIterator[tuple[Endpoint, OpenAICompatLLM, Any]]:
    """A prefill the endpoint has received and never answers: (endpoint, llm, its task)."""
    endpoint = Endpoint(hold_completions=True)
    async with endpoint as url:
        llm = OpenAICompatLLM(url, "m", prompt_cache=True)
        try:
            prefill = asyncio.create_task(llm.prefill(MESSAGES))
            await asyncio.wait_for(endpoint.received.wait(), 5)
            yield endpoint, llm, prefill
        finally:
            await llm.close()


async def test_a_reply_that_starts_closes_a_prefill_still_being_read() -> None:
    """The endpoint is still reading the prefill (it never answers it) when a reply
    starts: the prefill's request is closed at once and it reports that it did not
    finish; the reply streams."""
    async with prefill_being_read() as (endpoint, llm, prefill):
        stream = llm.stream(MESSAGES)
        assert await anext(stream) == TextDelta("Hello.")
        assert await asyncio.wait_for(prefill, 5) is False
        endpoint.release.set()
        assert [e async for e in stream] == []
        await asyncio.wait_for(endpoint.closed_unanswered.wait(), 5)
    assert llm.prefills == 0


async def test_cancelling_a_prefill_cancels_its_caller_not_only_the_request() -> None:
    async with prefill_being_read() as (endpoint, _, prefill):
        prefill.cancel()
        with pytest.raises(asyncio.CancelledError):
            await prefill
        await asyncio.wait_for(endpoint.closed_unanswered.wait(), 5)  # its request too
