"""Test doubles. Never used by the product."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from voice_agent.errors import LLMError
from voice_agent.llm.base import LLMEvent, Message, TextDelta, ToolCall

Step = str | ToolCall | LLMError


class ScriptedLLMDouble:
    """Plays back scripted replies, one per request, token by token.

    Each reply is a list of steps: text tokens, ToolCall events, or an
    LLMError to raise at that point (an endpoint dying mid-reply). Every
    request's messages are recorded in ``requests``.
    """

    name = "scripted-llm-double"

    def __init__(
        self,
        replies: list[list[Step]],
        token_delay_s: float = 0.01,
        default: list[Step] | None = None,
    ) -> None:
        self.replies = list(replies)
        self.default = default or ["(no more scripted replies)"]
        self.token_delay_s = token_delay_s
        self.requests: list[list[Message]] = []
        self.closed_streams = 0

    async def stream(
        self, messages: list[Message], tools: list[dict[str, Any]] | None = None
    ) -> AsyncIterator[LLMEvent]:
        self.requests.append([dict(m) for m in messages])
        steps = self.replies.pop(0) if self.replies else self.default
        try:
            for step in steps:
                await asyncio.sleep(self.token_delay_s)
                if isinstance(step, LLMError):
                    raise step
                yield TextDelta(step) if isinstance(step, str) else step
        finally:
            self.closed_streams += 1


class CollectingOutput:
    """An Output that keeps every frame and event, stamped with the loop time."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, int, int]] = []  # (t, gen, samples)
        self.audio: list[Any] = []
        self.events: list[dict[str, Any]] = []

    async def send_audio(self, gen: int, pcm: Any) -> None:
        self.frames.append((asyncio.get_running_loop().time(), gen, len(pcm)))
        self.audio.append(pcm)

    async def send_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


class AutoAdvanceClockDouble:
    """A fake clock for one consumer: ``sleep_until`` jumps time to the deadline.

    Time only moves when something sleeps, so a 10-minute stream runs in
    milliseconds and every timestamp is exact.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self.sleeps = 0

    def now(self) -> float:
        return self.t

    async def sleep_until(self, deadline: float) -> None:
        self.sleeps += 1
        if deadline > self.t:
            self.t = deadline
        await asyncio.sleep(0)

    def stall(self, seconds: float) -> None:
        """The consumer was busy elsewhere: time passed without a sleep."""
        self.t += seconds
