"""Tools the agent can call, and recognising tool calls that a local model writes as text.

Small local models pick the right tool but write the call as JSON in their
content: bare, in a ```json fence, or inside ``<tools>``/``<tool_call>`` tags.
:class:`ContentToolCallParser` looks at the start of the content: if it could
be such a call it buffers, otherwise it streams the text through untouched.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from voice_agent.llm.base import LLMEvent, TextDelta, ToolCall

_OPENERS = ("{", "[", "```", "<tool", "<function")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*(.*?)\s*```", re.S)
_TAG = re.compile(r"^<(tools?|tool_call|function_call|functions?)>\s*(.*?)\s*</\1>", re.S)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    handler: Callable[[dict[str, Any]], Awaitable[str]]
    status: str = "One moment."
    """Said or shown while the tool runs."""

    def schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


class ToolRegistry:
    def __init__(self, tools: list[Tool] | None = None, timeout_s: float = 10.0) -> None:
        self._tools = {t.name: t for t in tools or []}
        self.timeout_s = timeout_s

    def __bool__(self) -> bool:
        return bool(self._tools)

    def names(self) -> set[str]:
        return set(self._tools)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def schemas(self) -> list[dict[str, Any]]:
        return [t.schema() for t in self._tools.values()]

    async def run(self, call: ToolCall) -> str:
        """Run a call; errors and timeouts come back as a result text for the model."""
        tool = self._tools.get(call.name)
        if tool is None:
            return json.dumps({"error": f"unknown tool {call.name!r}"})
        try:
            async with asyncio.timeout(self.timeout_s):
                return await tool.handler(call.arguments)
        except TimeoutError:
            return json.dumps({"error": f"tool {call.name} timed out after {self.timeout_s}s"})
        except Exception as exc:  # a tool's bug must not kill the reply
            return json.dumps({"error": f"{type(exc).__name__}: {exc}"})


def parse_tool_calls(text: str, known: set[str] | None = None) -> list[ToolCall] | None:
    """Tool calls written as text, or None when ``text`` is not (only) a tool call."""
    body = text.strip()
    if m := _FENCE.match(body):
        body = m.group(1)
    elif m := _TAG.match(body):
        body = m.group(2)
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        data = _first_json_value(body)
        if data is None:
            return None
    items = data if isinstance(data, list) else [data]
    calls: list[ToolCall] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            return None
        if "function" in item and isinstance(item["function"], dict):
            item = item["function"]
        name = item.get("name")
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                return None
        if not isinstance(name, str) or not isinstance(args, dict):
            return None
        if known is not None and name not in known:
            return None
        calls.append(ToolCall(id=f"call_{i}", name=name, arguments=args))
    return calls or None


def _first_json_value(text: str) -> Any:
    try:
        value, _end = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError:
        return None
    return value


class ContentToolCallParser:
    """Incremental: :meth:`feed` content deltas, then :meth:`finish`.

    Returns :class:`TextDelta` events for ordinary text as soon as the start of
    the content rules out a tool call, and :class:`ToolCall` events once a
    buffered call is complete. ``done`` becomes True after a complete call, so
    the caller can stop reading a model that rambles on after its JSON.
    """

    def __init__(self, known: set[str] | None) -> None:
        self.known = known
        self._buf = ""
        self._mode = "undecided" if known else "text"
        self.done = False

    def feed(self, text: str) -> list[LLMEvent]:
        if self._mode == "text":
            return [TextDelta(text)] if text else []
        self._buf += text
        if self._mode == "undecided":
            head = self._buf.lstrip()
            if not head:
                return []
            if any(head.startswith(o) for o in _OPENERS):
                self._mode = "call"
            elif any(o.startswith(head) for o in _OPENERS):
                return []  # could still become an opener: wait for more
            else:
                self._mode = "text"
                out, self._buf = self._buf, ""
                return [TextDelta(out)]
        calls = self._complete_calls()
        if calls:
            self.done = True
            return list(calls)
        return []

    def finish(self) -> list[LLMEvent]:
        if self.done or not self._buf:
            return []
        out, self._buf = self._buf, ""
        calls = parse_tool_calls(out, self.known)
        if calls:
            self.done = True
            return list(calls)
        return [TextDelta(out)]

    def _complete_calls(self) -> list[ToolCall] | None:
        head = self._buf.lstrip()
        if head.startswith(("{", "[")):
            value = _first_json_value(head)
            if value is None:
                return None
            return parse_tool_calls(json.dumps(value), self.known)
        if head.startswith("```") and head.count("```") >= 2:
            return parse_tool_calls(head[: head.index("```", 3) + 3], self.known)
        if m := _TAG.match(head):
            return parse_tool_calls(m.group(0), self.known)
        return None
