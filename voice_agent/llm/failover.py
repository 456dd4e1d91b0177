"""LLM failover: an ordered list of OpenAI-compatible endpoints behind one :class:`LLM`.

A request goes to the first endpoint whose circuit is closed. If it fails before
its first token with an error another endpoint may not have (it could not be
reached, timed out, answered 429 or 5xx), the next endpoint is asked, and a
:class:`Failover` event says so (the text chat shows a status line; the voice
path says nothing extra). After the first token a failure is the reply's own: it
is raised (a mid-stream error, with what was written kept by the caller).

Circuit breaker, per endpoint: a failure opens it for ``cooldown_s`` (doubling
with each failure in a row, up to ``max_cooldown_s``), during which requests skip
it; the first request after that probes it (half-open): a success closes it, a
failure opens it again. When every circuit is open, the endpoints are asked in
order anyway (better a late answer than none). The clock is injected.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from voice_agent.core.clock import Clock
from voice_agent.errors import LLMError
from voice_agent.llm.base import LLM, Failover, LLMEvent, Message

log = logging.getLogger("voice_agent.llm")


@dataclass
class Circuit:
    failures: int = 0
    open_until: float = 0.0


class FailoverLLM:
    def __init__(
        self,
        endpoints: Sequence[LLM],
        clock: Clock,
        cooldown_s: float = 10.0,
        max_cooldown_s: float = 300.0,
    ) -> None:
        if not endpoints:
            raise ValueError("FailoverLLM needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.clock = clock
        self.on_failover: Callable[[], None] | None = None
        """Told each time a request moves on to the next endpoint (the metrics)."""
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.circuits = [Circuit() for _ in endpoints]
        self.name = " | ".join(e.name for e in endpoints)
        self.failovers = 0

    def order(self) -> list[int]:
        """Endpoints to ask, in order: the closed (or due for a probe) ones first."""
        now = self.clock.now()
        ready = [i for i, c in enumerate(self.circuits) if c.open_until <= now]
        return ready or list(range(len(self.endpoints)))

    async def stream(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        owner: Hashable = None,
    ) -> AsyncGenerator[LLMEvent, None]:
        order = self.order()
        for n, i in enumerate(order):
            endpoint, started = self.endpoints[i], False
            try:
                async with contextlib.aclosing(endpoint.stream(messages, tools, owner)) as events:
                    async for event in events:
                        if not started:
                            started = True
                            self._succeeded(i)
                        yield event
                if not started:
                    self._succeeded(i)  # an empty reply is still an answer
                return
            except LLMError as exc:
                if started or not exc.retryable:
                    raise
                self._failed(i)
                if n == len(order) - 1:
                    raise
                self.failovers += 1
                log.warning("LLM %s failed before its first token: %s", endpoint.name, exc)
                if self.on_failover is not None:
                    self.on_failover()
                yield Failover(endpoint.name, exc.message)

    async def prefill(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        owner: Hashable = None,
    ) -> bool:
        return await self.endpoints[self.order()[0]].prefill(messages, tools, owner)

    async def close(self) -> None:
        for e in self.endpoints:
            close = getattr(e, "close", None)
            if close is not None:
                await close()

    def _succeeded(self, i: int) -> None:
        self.circuits[i] = Circuit()

    def _failed(self, i: int) -> None:
        c = self.circuits[i]
        c.failures += 1
        wait = min(self.cooldown_s * 2 ** (c.failures - 1), self.max_cooldown_s)
        c.open_until = self.clock.now() + wait
