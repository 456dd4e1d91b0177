"""Text-chat event streams in Redis Streams, against a real redis-server the tests
start: resume with Last-Event-ID, the bounds, and several processes sharing one
stream."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from voice_agent.chat.events import BadLastEventId, LogFull, UnknownResponse
from voice_agent.chat.redis_events import RedisEventStore
from voice_agent.core.ids import new_id


async def _drain(stream: Any, limit: int | None = None) -> list[tuple[int, str, Any]]:
    got = []
    async for ev in stream:
        got.append((ev.id, ev.event, ev.data))
        if limit is not None and len(got) >= limit:
            break
    return got


async def test_a_second_store_on_the_same_redis_replays_and_follows_exactly(
    redis_url: str,
) -> None:
    writer, reader = RedisEventStore(redis_url), RedisEventStore(redis_url, block_ms=200)
    rid = new_id()
    try:
        await writer.create(rid)
        for i in range(3):
            writer.append(rid, "token", {"text": f"w{i} "})
        # a reader on another "process" sees the first events, drops, resumes after 2
        first = await _drain(await _until_open(reader, rid, 0), limit=2)
        assert first == [(1, "token", {"text": "w0 "}), (2, "token", {"text": "w1 "})]
        follow = asyncio.create_task(_drain(await reader.open(rid, 2)))
        await asyncio.sleep(0.3)  # it waits on Redis for what is not written yet
        assert not follow.done()
        writer.append(rid, "token", {"text": "w3 "})
        writer.append(rid, "done", {"finish_reason": "stop"})
        writer.close(rid)
        rest = await asyncio.wait_for(follow, 10)
        assert rest == [(3, "token", {"text": "w2 "}), (4, "token", {"text": "w3 "}),
                        (5, "done", {"finish_reason": "stop"})]  # fmt: skip
        # the whole log, from the start, after it closed
        assert [e[0] for e in await _drain(await reader.open(rid, 0))] == [1, 2, 3, 4, 5]
        assert await _drain(await reader.open(rid, 5)) == []
        with pytest.raises(BadLastEventId):
            await reader.open(rid, 6)
        with pytest.raises(UnknownResponse):
            await reader.open(new_id(), 0)
    finally:
        await writer.aclose()
        await reader.aclose()


async def _until_open(store: RedisEventStore, rid: str, after: int) -> Any:
    """Open once the writer's queue has reached Redis (it flushes in the background)."""
    for _ in range(200):
        try:
            return await store.open(rid, after)
        except BadLastEventId:
            await asyncio.sleep(0.01)
    return await store.open(rid, after)


async def test_a_log_is_bounded_and_expires(redis_url: str) -> None:
    store = RedisEventStore(redis_url, max_events=4, ttl_s=1)
    rid = new_id()
    try:
        await store.create(rid)
        for i in range(3):
            store.append(rid, "token", {"text": str(i)})
        with pytest.raises(LogFull):
            store.append(rid, "token", {"text": "one too many"})
        store.append(rid, "error", {"code": "too_long"})  # the last place is the closing one
        store.close(rid)
        await store.aclose()  # flushes
        other = RedisEventStore(redis_url)
        try:
            ttl = await other.redis.pttl(store.key(rid))
            assert 0 < ttl <= 1000
            await asyncio.sleep(1.3)
            with pytest.raises(UnknownResponse):
                await other.open(rid, 0)
        finally:
            await other.aclose()
    finally:
        await store.aclose()


async def test_an_unreachable_redis_is_a_503_without_detail() -> None:
    import socket

    import httpx
    from conftest import start_server
    from doubles import ScriptedLLMDouble, double_engine

    from voice_agent.server import ServerConfig, create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    app = create_app(
        engine=double_engine(ScriptedLLMDouble([["Hi."]], 0.01)),
        config=ServerConfig(redis_url=f"redis://127.0.0.1:{port}/0"),
    )
    srv, addr, task = await start_server(app)
    try:
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as client:
            r = await client.post("/v1/chat", json={"message": "Hello"})
            assert r.status_code == 503
            assert r.json() == {"error": "the conversation store is unavailable; try again"}
            assert str(port) not in r.text
            r = await client.get("/v1/chat/abc/events")
            assert r.status_code == 503 and str(port) not in r.text
            assert (await client.get("/healthz")).status_code == 200  # still serving
    finally:
        srv.should_exit = True  # type: ignore[attr-defined]
        await task  # type: ignore[misc]
