"""The event log of text-chat responses: what an SSE reader replays and follows.

Each response has its own log of events, numbered 1, 2, 3… (the SSE ``id``). A
reader asks for the events after the last id it saw (``Last-Event-ID``, or 0)
and gets exactly those, then every new one as it is appended, until the log is
closed: no gap and no duplicate, however often it reconnects. Generation writes
to the log whether or not anyone reads it; only a cancel stops it.

Bounds: a log keeps at most ``max_events`` events, the last place kept for
``done`` or ``error`` (a response that outgrows it fails with an ``error`` event
rather than drop what a reader may still need),
and a closed log is forgotten ``ttl_s`` after it closed, as is an open one that
nobody has appended to for that long. At most ``max_responses`` logs are kept;
the oldest closed ones go first.

:class:`MemoryEventStore` keeps the logs in this process (the default). The
store's interface is what a shared backend (Redis Streams) implements for
several processes.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from voice_agent.core.clock import Clock


@dataclass(frozen=True)
class ChatEvent:
    id: int
    event: str
    """``status``, ``tool``, ``token``, ``done`` or ``error``."""
    data: dict[str, Any]

    def json(self) -> str:
        return json.dumps(self.data, ensure_ascii=False, separators=(",", ":"))


CLOSING = ("done", "error")
"""The events that end a response."""


class UnknownResponse(KeyError):
    """No such response (never made, or forgotten after its TTL)."""


class BadLastEventId(ValueError):
    """A ``Last-Event-ID`` that is not a number, or one past the log's last event."""


class EventsUnavailable(Exception):
    """The shared event store (Redis) cannot be reached; the detail is in the log."""


class LogFull(Exception):
    """The response's event log reached its bound."""


class EventStore(Protocol):
    """Where responses' events go. ``append`` and ``close`` never wait (the writer is
    a generation task, one per response); ``create`` and ``open`` may."""

    async def create(self, response_id: str) -> None: ...

    def append(self, response_id: str, event: str, data: dict[str, Any]) -> ChatEvent: ...

    def close(self, response_id: str) -> None: ...

    async def open(self, response_id: str, after: int) -> AsyncIterator[ChatEvent]:
        """The events after id ``after``, then each new one until the response ends.
        Raises :class:`UnknownResponse` or :class:`BadLastEventId` at once."""
        ...

    async def aclose(self) -> None: ...


def parse_last_event_id(header: str | None) -> int:
    """The id an SSE reader saw last: 0 when it saw none."""
    if header is None or header.strip() == "":
        return 0
    text = header.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise BadLastEventId("Last-Event-ID must be the id of an event of this response")
    return int(text)


@dataclass
class _Log:
    events: list[ChatEvent] = field(default_factory=list)
    closed: bool = False
    touched: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryEventStore:
    def __init__(
        self, clock: Clock, max_events: int = 4096, ttl_s: float = 600.0, max_responses: int = 1000
    ) -> None:
        self.clock = clock
        self.max_events = max_events
        self.ttl_s = ttl_s
        self.max_responses = max_responses
        self._logs: OrderedDict[str, _Log] = OrderedDict()

    async def create(self, response_id: str) -> None:
        self.create_now(response_id)

    async def open(self, response_id: str, after: int) -> AsyncIterator[ChatEvent]:
        return self.read(response_id, after)

    async def aclose(self) -> None:
        return None

    def create_now(self, response_id: str) -> None:
        self._expire()
        while len(self._logs) >= self.max_responses:
            victim = next((k for k, v in self._logs.items() if v.closed), None)
            if victim is None:
                raise LogFull("too many responses in progress")
            self._drop(victim)
        self._logs[response_id] = _Log(touched=self.clock.now())

    def exists(self, response_id: str) -> bool:
        self._expire()
        return response_id in self._logs

    def append(self, response_id: str, event: str, data: dict[str, Any]) -> ChatEvent:
        # no expiry sweep here: append runs for every token (the sweep runs on create,
        # exists and read)
        log = self._logs.get(response_id)
        if log is None:
            raise UnknownResponse(response_id)
        if log.closed:
            raise ValueError(f"response {response_id} is closed")
        # the last place is kept for the closing event (done or error)
        room = self.max_events - (0 if event in CLOSING else 1)
        if len(log.events) >= room:
            raise LogFull(f"response {response_id} reached {self.max_events} events")
        ev = ChatEvent(len(log.events) + 1, event, data)
        log.events.append(ev)
        self._wake(log)
        return ev

    def close(self, response_id: str) -> None:
        log = self._logs.get(response_id)
        if log is not None and not log.closed:
            log.closed = True
            self._wake(log)

    def last_id(self, response_id: str) -> int:
        return len(self._get(response_id).events)

    def read(self, response_id: str, after: int) -> AsyncIterator[ChatEvent]:
        """The events after id ``after``, then each new one, until the log closes.
        Raises at once for an unknown response or an id past the last event."""
        log = self._get(response_id)
        if after > len(log.events):
            raise BadLastEventId("Last-Event-ID is past this response's last event")
        return self._follow(log, after)

    async def _follow(self, log: _Log, after: int) -> AsyncIterator[ChatEvent]:
        i = after
        while True:
            while i < len(log.events):
                yield log.events[i]
                i += 1
            if log.closed:
                return
            waiter = log.changed
            await waiter.wait()

    def _wake(self, log: _Log) -> None:
        log.touched = self.clock.now()
        log.changed.set()
        log.changed = asyncio.Event()  # readers waiting on the old one wake; new ones wait

    def _get(self, response_id: str) -> _Log:
        self._expire()
        log = self._logs.get(response_id)
        if log is None:
            raise UnknownResponse(response_id)
        return log

    def _expire(self) -> None:
        now = self.clock.now()
        for key in [k for k, v in self._logs.items() if now - v.touched > self.ttl_s]:
            self._drop(key)

    def _drop(self, key: str) -> None:
        log = self._logs.pop(key)
        log.closed = True
        log.changed.set()
