"""LLM interface: a stream of text deltas and tool calls."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

Message = dict[str, Any]


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failover:
    """The endpoint that was asked failed before its first token; the next one is being
    asked (a text reader is told; a caller hears nothing extra)."""

    failed: str
    """The failed endpoint's name (for logs; never sent to a client)."""
    reason: str


LLMEvent = TextDelta | ToolCall | Failover


class LLM(Protocol):
    name: str

    def stream(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        owner: Hashable = None,
    ) -> AsyncGenerator[LLMEvent, None]:
        """Stream a reply to ``messages``. Raises :class:`~voice_agent.errors.LLMError`.

        ``owner`` (a call or a conversation) keeps its requests together where the
        endpoint has several prompt caches (a local llama-server's slots).

        Closing the iterator (or cancelling the task iterating it) closes the request.
        """
        ...

    async def prefill(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        owner: Hashable = None,
    ) -> bool:
        """Have the endpoint read ``messages`` into its prompt cache, ahead of a request
        that starts with them (the call's system prompt at its start; the caller's words
        so far while they still talk), so that request reads only what is new.

        Returns whether it was sent: an endpoint without a prompt cache of its own, or
        one already busy with a request, skips it. Never raises for the endpoint's
        failures (a prefill is only ever a head start)."""
        ...
