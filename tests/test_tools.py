"""Tool calls written as text by small local models, recognised at the start of the reply."""

import pytest

from voice_agent.llm.base import TextDelta, ToolCall
from voice_agent.llm.tools import ContentToolCallParser, parse_tool_calls

KNOWN = {"get_weather", "lookup_order"}


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        '<tools>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tools>',
        '<tool_call>{"name": "get_weather", "parameters": {"city": "Paris"}}</tool_call>',
        '{"type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}',
        '[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
    ],
)
def test_parse_variants(text: str) -> None:
    assert parse_tool_calls(text, KNOWN) == [ToolCall("call_0", "get_weather", {"city": "Paris"})]


@pytest.mark.parametrize(
    "text",
    ["Paris is sunny.", '{"name": "unknown_tool"}', "{not json", '{"foo": 1}'],
)
def test_not_a_call(text: str) -> None:
    assert parse_tool_calls(text, KNOWN) is None


def test_a_whole_call_of_a_tool_never_offered_is_a_call_not_speech() -> None:
    (call,) = parse_tool_calls('{"name": "horizon", "arguments": {"far": true}}', KNOWN) or []
    assert (call.name, call.arguments) == ("horizon", {"far": True})


def test_a_call_in_template_braces_is_a_call() -> None:
    text = '{{"name": "current_time", "arguments": {"timezone": "Europe/Paris"}}}'
    (call,) = parse_tool_calls(text, KNOWN | {"current_time"}) or []
    assert (call.name, call.arguments) == ("current_time", {"timezone": "Europe/Paris"})
    events = feed_all([text[:10], text[10:]], known=KNOWN | {"current_time"})
    assert [type(e).__name__ for e in events] == ["ToolCall"]


def feed_all(parts: list[str], known: set[str] | None = KNOWN) -> list[object]:
    p = ContentToolCallParser(known)
    out: list[object] = []
    for part in parts:
        out += p.feed(part)
        if p.done:
            break
    return out + p.finish()


def test_plain_text_streams_through_at_once() -> None:
    p = ContentToolCallParser(KNOWN)
    assert p.feed("Sure") == [TextDelta("Sure")]
    assert p.feed(", it is.") == [TextDelta(", it is.")]
    assert p.finish() == []


def test_streamed_json_call_completes_before_stream_end() -> None:
    parts = ['{"name": "lookup_', 'order", "arguments": {"id": 42}}', " and then some rambling"]
    assert feed_all(parts) == [ToolCall("call_0", "lookup_order", {"id": 42})]


def test_fenced_call_streamed() -> None:
    parts = ["``", "`json\n", '{"name": "get_weather", "arguments": {}}', "\n``", "`"]
    assert feed_all(parts) == [ToolCall("call_0", "get_weather", {})]


def test_brace_that_is_not_a_call_comes_back_as_text() -> None:
    assert feed_all(["{curly} ", "text"]) == [TextDelta("{curly} text")]


def test_no_tools_means_no_sniffing() -> None:
    assert feed_all(['{"name": "x"}'], known=None) == [TextDelta('{"name": "x"}')]


# -- the tool API: schemas from type hints, calls side by side, the shipped tools ---------


def test_a_decorated_function_is_a_tool_with_a_schema_from_its_hints() -> None:
    from typing import Annotated, Literal

    from voice_agent.llm.tools import tool

    @tool(status="Looking up the order…", spoken="Let me look.")
    async def lookup_order(
        order_id: Annotated[str, "The order number"],
        detail: Literal["status", "items"] = "status",
        max_items: int | None = None,
    ) -> str:
        """Look up one of the caller's orders."""
        return f"{order_id}:{detail}:{max_items}"

    assert lookup_order.name == "lookup_order"
    assert lookup_order.schema() == {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Look up one of the caller's orders.",
            "parameters": {
                "type": "object",
                "properties": {
                    "order_id": {"type": "string", "description": "The order number"},
                    "detail": {"type": "string", "enum": ["status", "items"]},
                    "max_items": {"type": "integer"},
                },
                "required": ["order_id"],
            },
        },
    }
    assert (lookup_order.status, lookup_order.filler) == ("Looking up the order…", "Let me look.")


def test_calls_run_side_by_side_each_with_its_timeout_and_failures_are_results() -> None:
    import asyncio
    import json

    from doubles import run_virtual

    from voice_agent.llm.tools import ToolRegistry, tool, tool_messages

    @tool()
    async def slow(seconds: float) -> str:
        """Sleep."""
        await asyncio.sleep(seconds)
        return f"slept {seconds}"

    @tool()
    async def broken() -> str:
        """Fail."""
        raise RuntimeError("the disk is on fire")

    registry = ToolRegistry([slow, broken], timeout_s=1.0)
    calls = [
        ToolCall("a", "slow", {"seconds": 0.5}),
        ToolCall("b", "slow", {"seconds": 0.8}),
        ToolCall("c", "slow", {"seconds": 5.0}),
        ToolCall("d", "broken", {}),
        ToolCall("e", "slow", {"seconds": 0.1, "extra": 1}),
    ]
    ended: list[tuple[str, bool, float]] = []

    async def main() -> tuple[list[str], float]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        results = await registry.run_all(
            calls, lambda c, ok, s: ended.append((c.id, ok, round(s, 3))), loop.time
        )
        return results, loop.time() - t0

    results, took = run_virtual(main())
    assert took == pytest.approx(1.0)  # side by side: the longest wait, the timeout
    assert results[:2] == ["slept 0.5", "slept 0.8"]
    assert json.loads(results[2]) == {"error": "tool slow timed out after 1.0s"}
    assert json.loads(results[3]) == {"error": "RuntimeError: the disk is on fire"}
    assert "unknown arguments: extra" in json.loads(results[4])["error"]
    assert ended == [("d", False, 0.0), ("e", False, 0.0), ("a", True, 0.5), ("b", True, 0.8),
                     ("c", False, 1.0)]  # fmt: skip
    msgs = tool_messages(calls[:1], results[:1])
    assert msgs[0]["tool_calls"][0]["function"] == {"name": "slow", "arguments": '{"seconds": 0.5}'}
    assert msgs[1] == {"role": "tool", "tool_call_id": "a", "content": "slept 0.5"}


def test_the_time_tool_tells_the_time_in_a_timezone() -> None:
    import asyncio
    import json
    from datetime import UTC, datetime

    from voice_agent.llm.builtin_tools import time_tool

    t = time_tool(lambda: datetime(2026, 12, 3, 12, 5, tzinfo=UTC))
    tokyo = json.loads(asyncio.run(t.handler({"timezone": "Asia/Tokyo"})))
    assert tokyo == {
        "timezone": "Asia/Tokyo",
        "date": "Thursday, December 3, 2026",
        "time_24h": "21:05",
        "time_12h": "9:05 PM",
        "utc_offset": "+09:00",
    }
    ny = json.loads(asyncio.run(t.handler({"timezone": "America/New_York"})))
    assert (ny["time_12h"], ny["utc_offset"]) == ("7:05 AM", "-05:00")
    # no zone: the server's own local time
    local = datetime(2026, 12, 3, 12, 5, tzinfo=UTC).astimezone()
    assert json.loads(asyncio.run(t.handler({})))["time_24h"] == f"{local:%H:%M}"
    assert json.loads(asyncio.run(t.handler({"timezone": "local"})))["time_24h"] == f"{local:%H:%M}"
    with pytest.raises(ValueError, match="unknown timezone"):
        asyncio.run(t.handler({"timezone": "Mars/Olympus_Mons"}))
    assert t.schema()["function"]["parameters"]["required"] == []


def test_a_turn_that_asks_for_a_tool_has_its_first_round_asked_with_the_tool_prompt() -> None:
    from voice_agent.llm.builtin_tools import time_tool
    from voice_agent.llm.tools import ToolRegistry, ToolRounds

    registry = ToolRegistry([time_tool()])
    assert registry.intended("What time is it in Tokyo?")
    assert registry.intended("what's the date today")
    assert not registry.intended("What time does the bakery close?")
    assert not registry.intended("How many minutes are there in a day?")
    assert not registry.checks_live()  # the shipped tools leave the honesty guard on
    messages = [{"role": "system", "content": "spoken style"}, {"role": "user", "content": "Hi"}]
    rounds = ToolRounds(registry, messages, 2, first_system="tool style")
    first = rounds.request()
    assert first is not None
    assert first[0][0] == {"role": "system", "content": "tool style"}
    assert first[0][1:] == messages[1:] and first[1] == registry.schemas()
    second = rounds.request()  # the answer's round: the call's own prompt
    assert second is not None and second[0][0] == {"role": "system", "content": "spoken style"}
    assert ToolRounds(registry, messages, 2).request() == (messages, registry.schemas())


def test_a_user_tool_that_may_check_live_facts_turns_the_guard_off() -> None:
    from voice_agent.llm.tools import ToolRegistry, tool
    from voice_agent.session.config import SessionConfig, honest_line

    @tool(status="Checking the weather…")
    async def weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    registry = ToolRegistry([weather])
    assert registry.checks_live()
    q = "What's the weather in Denver this weekend?"
    assert honest_line(SessionConfig(), q, registry.checks_live()) is None
    assert honest_line(SessionConfig(), q, False) is not None
