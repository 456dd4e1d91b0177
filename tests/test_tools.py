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
    ["Paris is sunny.", '{"name": "unknown_tool", "arguments": {}}', "{not json", '{"foo": 1}'],
)
def test_not_a_call(text: str) -> None:
    assert parse_tool_calls(text, KNOWN) is None


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
