"""Responses' event logs in Redis Streams, shared by every server process on the same
Redis (``--redis-url``): a reader that reconnects through another process behind the
load balancer resumes the stream this process is still writing.

One stream per response, ``va:chat:<response id>``. Event *n* is the entry with the
explicit id ``n-0``, so ``Last-Event-ID: n`` is an ``XREAD`` from ``n-0``: exactly the
events after it, with no gap and no duplicate. ``0-1`` marks the response's creation and
``n-1`` its end (after its last event), and neither is an event.

The generation task never waits on Redis: :meth:`RedisEventStore.append` numbers the
event and queues it (bounded), and one flusher task writes the queue in pipelines. The
stream's expiry (``ttl_s``) is renewed on every write; ``max_events`` bounds a
response as in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from voice_agent.chat.events import (
    CLOSING,
    BadLastEventId,
    ChatEvent,
    EventsUnavailable,
    LogFull,
    UnknownResponse,
)

log = logging.getLogger("voice_agent.chat")
PREFIX = "va:chat:"
END = "_end"
CREATED = "_created"


class RedisEventStore:
    def __init__(
        self,
        url: str,
        max_events: int = 4096,
        ttl_s: float = 600.0,
        max_queue: int = 65536,
        block_ms: int = 5000,
        max_connections: int = 256,
    ) -> None:
        self.max_events = max_events
        self.ttl_s = ttl_s
        self.block_ms = block_ms
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=30, decode_responses=True
        )
        self.redis: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self._counts: dict[str, int] = {}
        """Events appended so far, per response this process writes (open ones)."""
        self._queue: asyncio.Queue[tuple[str, str, dict[str, str]]] = asyncio.Queue(max_queue)
        self._flusher: asyncio.Task[None] | None = None

    @staticmethod
    def key(response_id: str) -> str:
        return PREFIX + response_id

    async def create(self, response_id: str) -> None:
        key = self.key(response_id)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(key, {"event": CREATED}, id="0-1")
                pipe.expire(key, int(self.ttl_s))
                await pipe.execute()
        except RedisError as exc:
            log.error("Redis: a response's stream could not be made: %s", exc)
            raise EventsUnavailable from None
        self._counts[response_id] = 0
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    def append(self, response_id: str, event: str, data: dict[str, Any]) -> ChatEvent:
        n = self._counts.get(response_id)
        if n is None:
            raise UnknownResponse(response_id)
        room = self.max_events - (0 if event in CLOSING else 1)
        if n >= room:
            raise LogFull(f"response {response_id} reached {self.max_events} events")
        ev = ChatEvent(n + 1, event, data)
        self._put(response_id, f"{ev.id}-0", {"event": event, "data": ev.json()})
        self._counts[response_id] = ev.id
        return ev

    def close(self, response_id: str) -> None:
        n = self._counts.pop(response_id, None)
        if n is not None:
            self._put(response_id, f"{n}-1", {"event": END})

    def _put(self, response_id: str, entry_id: str, fields: dict[str, str]) -> None:
        try:
            self._queue.put_nowait((self.key(response_id), entry_id, fields))
        except asyncio.QueueFull:
            raise LogFull("the event queue to Redis is full") from None

    async def _flush_forever(self) -> None:
        """Write queued events in order, a pipeline at a time; on a Redis error, retry
        the same batch (nothing is dropped or reordered) after a pause."""
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 512:
                batch.append(self._queue.get_nowait())
            pause = 0.05
            while True:
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for key, entry_id, fields in batch:
                            pipe.xadd(key, fields, id=entry_id)  # type: ignore[arg-type]
                        for key in {k for k, _, _ in batch}:
                            pipe.expire(key, int(self.ttl_s))
                        await pipe.execute(raise_on_error=False)
                    for _ in batch:
                        self._queue.task_done()
                    break
                except RedisError as exc:  # (an entry Redis refuses is skipped above)
                    log.error("writing chat events to Redis failed: %s; retrying", exc)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 2.0)

    async def open(self, response_id: str, after: int) -> AsyncIterator[ChatEvent]:
        key = self.key(response_id)
        try:
            last: Any = await self.redis.xrevrange(key, "+", "-", count=1)
        except RedisError as exc:
            log.error("Redis: a response's stream could not be read: %s", exc)
            raise EventsUnavailable from None
        if not last:
            raise UnknownResponse(response_id)
        last_n = int(str(last[0][0]).split("-")[0])
        if after > last_n:
            # (the writer may be a little ahead of Redis: its queue is not flushed yet)
            raise BadLastEventId("Last-Event-ID is past this response's last event")
        return self._follow(key, after)

    async def _follow(self, key: str, after: int) -> AsyncIterator[ChatEvent]:
        cursor = f"{after}-0" if after else "0-1"
        while True:
            got: Any = await self.redis.xread({key: cursor}, count=512, block=self.block_ms)
            if not got:
                if not await self.redis.exists(key):
                    return  # expired
                continue
            for entry_id, fields in got[0][1]:
                cursor = entry_id
                if fields["event"] == END:
                    return
                yield ChatEvent(
                    int(entry_id.split("-")[0]), fields["event"], json.loads(fields["data"])
                )

    async def aclose(self) -> None:
        """Write what is queued (for a few seconds at most), then disconnect."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._queue.join()
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.wait({self._flusher})  # (a cancel of aclose itself still raises)
        await self.redis.aclose()
