"""Tools the agent can call, and recognising tool calls that a local model writes as text.

Small local models pick the right tool but write the call as JSON in their
content: bare, in a ```json fence, or inside ``<tools>``/``<tool_call>`` tags.
:class:`ContentToolCallParser` looks at the start of the content: if it could
be such a call it buffers, otherwise it streams the text through untouched.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from voice_agent.llm.base import LLMEvent, Message, TextDelta, ToolCall

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
    """Shown to a text reader (and said, when ``spoken`` is None) while the tool runs."""
    spoken: str | None = None
    """The short filler a caller hears while it runs (None: ``status``)."""
    checks_live: bool = True
    """It may reach live facts or the caller's own data (a web search, an order lookup).
    While such a tool is offered, the voice path's honesty guard leaves those questions
    to the LLM; the shipped tools (the time, the knowledge folder) say False."""
    intent: re.Pattern[str] | None = None
    """Words that plainly ask for this tool ("what time is it in…"). A voice turn that
    matches asks its first round with the tool-friendly prompt (see ToolRounds)."""

    @property
    def filler(self) -> str:
        return self.spoken or self.status

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

    def tools(self) -> list[Tool]:
        return list(self._tools.values())

    def intended(self, text: str) -> bool:
        """``text`` plainly asks for one of the tools (its ``intent`` matches)."""
        return any(t.intent is not None and t.intent.search(text) for t in self._tools.values())

    def checks_live(self) -> bool:
        """Any tool offered may reach live facts or the caller's data."""
        return any(t.checks_live for t in self._tools.values())

    def add(self, tool: Tool) -> Tool:
        self._tools[tool.name] = tool
        return tool

    async def run(self, call: ToolCall) -> str:
        """Run a call; errors and timeouts come back as a result text for the model."""
        return (await self.run_checked(call))[0]

    async def run_checked(self, call: ToolCall) -> tuple[str, bool]:
        """Run a call: (the result text for the model, whether the tool succeeded)."""
        tool = self._tools.get(call.name)
        if tool is None:
            return json.dumps({"error": f"unknown tool {call.name!r}"}), False
        try:
            async with asyncio.timeout(self.timeout_s):
                return await tool.handler(call.arguments), True
        except TimeoutError:
            timed_out = f"tool {call.name} timed out after {self.timeout_s}s"
            return json.dumps({"error": timed_out}), False
        except Exception as exc:  # a tool's bug must not kill the reply
            return json.dumps({"error": f"{type(exc).__name__}: {exc}"}), False

    async def run_all(
        self,
        calls: list[ToolCall],
        finished: Callable[[ToolCall, bool, float], None] | None,
        clock: Callable[[], float],
    ) -> list[str]:
        """Run one turn's calls side by side, each with its own timeout; the results in
        the calls' order. ``finished(call, ok, seconds)`` is called as each one ends."""

        async def one(call: ToolCall) -> str:
            t0 = clock()
            result, ok = await self.run_checked(call)
            if finished is not None:
                finished(call, ok, clock() - t0)
            return result

        return list(await asyncio.gather(*(one(c) for c in calls)))


def tools_note(registry: ToolRegistry) -> str:
    """A line for the system prompt when tools are offered: a prompt that says the agent
    cannot look anything up would otherwise keep a model from calling them."""
    names = "; ".join(
        f"{t.name} ({t.description.split('.')[0].strip().lower()})" for t in registry.tools()
    )
    return (
        f"You do have tools, and they are how you know things you otherwise could not: "
        f"{names}. Call one for any such question, then answer from its result in one "
        f"sentence."
    )


def tool_messages(calls: list[ToolCall], results: list[str]) -> list[Message]:
    """What the LLM reads back after a round of calls: its calls, then each result."""
    msgs: list[Message] = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                }
                for c in calls
            ],
        }
    ]
    for call, result in zip(calls, results, strict=True):
        msgs.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return msgs


class ToolRounds:
    """The rounds of one reply's tool calls, for the voice and text paths alike.

    :meth:`request` gives the next LLM request (messages, tool schemas); :meth:`run`
    runs a round's calls side by side and adds the standard tool messages. A small
    local model sometimes calls the same tool with the same arguments again instead
    of reading the result it was given (Qwen2.5-Coder-0.5B does, every time): a call
    already answered in this reply is not run again; the next request then carries
    the results written into the caller's message, with no tools, so the model
    answers from them. None from :meth:`request`: no more rounds."""

    def __init__(
        self,
        registry: ToolRegistry,
        messages: list[Message],
        max_rounds: int,
        first_system: str | None = None,
    ) -> None:
        self.registry = registry
        self.base = [dict(m) for m in messages]
        self.messages = [dict(m) for m in messages]
        self.left = max_rounds + 1
        self.answered: dict[str, tuple[ToolCall, str]] = {}
        self.folded = False
        self.first_system = first_system
        """The first request's system prompt instead of the messages' own (the rounds
        after it, which answer from the results, have the messages' own)."""

    def request(self) -> tuple[list[Message], list[dict[str, Any]] | None] | None:
        if self.left <= 0:
            return None
        self.left -= 1
        if self.folded:
            return self.messages, None
        first, self.first_system = self.first_system, None
        if first is not None and self.messages and self.messages[0].get("role") == "system":
            return [{"role": "system", "content": first}, *self.messages[1:]], (
                self.registry.schemas() or None
            )
        return self.messages, self.registry.schemas() or None

    async def run(
        self,
        calls: list[ToolCall],
        finished: Callable[[ToolCall, bool, float], None] | None,
        clock: Callable[[], float],
    ) -> list[ToolCall]:
        """Run the calls not answered yet; returns the ones that were run."""
        new = [c for c in calls if _key(c) not in self.answered]
        if not new:
            self._fold()
            return []
        results = await self.registry.run_all(new, finished, clock)
        for call, result in zip(new, results, strict=True):
            self.answered[_key(call)] = (call, result)
        self.messages += tool_messages(new, results)
        return new

    def was_answered(self, call: ToolCall) -> bool:
        return _key(call) in self.answered

    def result(self, call: ToolCall) -> str:
        return self.answered[_key(call)][1]

    def _fold(self) -> None:
        notes = "\n".join(
            f"({call.name} {json.dumps(call.arguments)} returned: {result})"
            for call, result in self.answered.values()
        )
        messages = [dict(m) for m in self.base]
        last = messages[-1]
        if last.get("role") == "user":
            last["content"] = f"{last['content']}\n\n{notes}"
        else:
            messages.append({"role": "user", "content": notes})
        self.messages, self.folded = messages, True


def _key(call: ToolCall) -> str:
    return f"{call.name}:{json.dumps(call.arguments, sort_keys=True)}"


_JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _schema_of(hint: Any) -> dict[str, Any]:
    """The JSON schema of one parameter's type hint (str, int, float, bool, a Literal of
    strings, ``X | None``, or ``Annotated[X, "description"]``)."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *extra = typing.get_args(hint)
        out = _schema_of(base)
        notes = [e for e in extra if isinstance(e, str)]
        if notes:
            out["description"] = " ".join(notes)
        return out
    if origin is typing.Literal:
        values = list(typing.get_args(hint))
        return {"type": _JSON_TYPES[type(values[0])], "enum": values}
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return _schema_of(args[0])
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    raise TypeError(f"a tool parameter cannot be of type {hint!r}")


def tool(
    status: str = "One moment.",
    spoken: str | None = None,
    name: str | None = None,
    checks_live: bool = True,
    intent: str | None = None,
) -> Callable[[Callable[..., Awaitable[str]]], Tool]:
    """Make a :class:`Tool` of an async function: its name, its docstring as the
    description, and its parameters' type hints as the JSON schema (a parameter with
    no default is required). ``status`` is shown to text readers while it runs,
    ``spoken`` said to callers (default: ``status``)::

        @tool(status="Looking up the time…", spoken="Let me check the time.")
        async def current_time(timezone: Annotated[str, "An IANA zone"] = "UTC") -> str:
            \"\"\"The current date and time in a timezone.\"\"\"
    """

    def make(fn: Callable[..., Awaitable[str]]) -> Tool:
        hints = typing.get_type_hints(fn, include_extras=True)
        props: dict[str, Any] = {}
        required: list[str] = []
        for p in inspect.signature(fn).parameters.values():
            props[p.name] = _schema_of(hints[p.name])
            if p.default is inspect.Parameter.empty:
                required.append(p.name)
        params: dict[str, Any] = {"type": "object", "properties": props, "required": required}
        allowed = set(props)

        async def handler(args: dict[str, Any]) -> str:
            unknown = set(args) - allowed
            if unknown:
                raise TypeError(f"unknown arguments: {', '.join(sorted(unknown))}")
            return await fn(**args)

        doc = inspect.getdoc(fn) or fn.__name__
        wants = re.compile(intent, re.IGNORECASE) if intent else None
        return Tool(name or fn.__name__, doc, params, handler, status, spoken, checks_live, wants)

    return make


def parse_tool_calls(text: str, known: set[str] | None = None) -> list[ToolCall] | None:
    """Tool calls written as text, or None when ``text`` is not (only) a tool call.

    A call of a tool that was not offered (``known``) still counts when it is written
    whole, with its arguments: the Qwen 0.5B model writes such calls (``{"name":
    "horizon", "arguments": {...}}``), and spoken they are gibberish; as a call, the
    registry answers it "unknown tool" and the model answers from that."""
    body = text.strip()
    if m := _FENCE.match(body):
        body = m.group(1)
    elif m := _TAG.match(body):
        body = m.group(2)
    if body.startswith("{{") and body.endswith("}}"):
        body = body[1:-1]  # template braces: the 1.5B model wrote {{"name": ...}} once
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # bad JSON, nested too deep, a huge number
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
            except (ValueError, RecursionError):
                return None
        if not isinstance(name, str) or not isinstance(args, dict):
            return None
        whole = "arguments" in item or "parameters" in item
        if known is not None and name not in known and not whole:
            return None  # {"name": "Paris"} is text; a call to a tool never offered is a call
        calls.append(ToolCall(id=f"call_{i}", name=name, arguments=args))
    return calls or None


def _first_json_value(text: str) -> Any:
    try:
        value, _end = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError):
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
        self._depth = 0
        """Brackets opened less closed so far (strings not told apart): JSON is parsed
        only when it may have closed, so a long or deep call is read once, not at
        every delta."""

    def feed(self, text: str) -> list[LLMEvent]:
        if self._mode == "text":
            return [TextDelta(text)] if text else []
        self._buf += text
        self._depth += text.count("{") + text.count("[") - text.count("}") - text.count("]")
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
            if self._depth > 0:
                return None  # not closed yet
            value = _first_json_value(head)
            if value is None:
                return None
            return parse_tool_calls(json.dumps(value), self.known)
        if head.startswith("```") and head.count("```") >= 2:
            return parse_tool_calls(head[: head.index("```", 3) + 3], self.known)
        if m := _TAG.match(head):
            return parse_tool_calls(m.group(0), self.known)
        return None
