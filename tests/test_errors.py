"""Bad input ends with one line that says what to do; nothing hangs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from voice_agent.cli import main
from voice_agent.errors import LLMError
from voice_agent.llm.openai_compat import OpenAICompatLLM


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "audio file not found"),
        (b"", "audio file is empty"),
        (b"ID3\x03\x00 not really an mp3" * 20, "use a WAV or FLAC file"),
    ],
)
def test_replay_bad_files_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, expected: str
) -> None:
    path = tmp_path / "input.mp3"
    if content is not None:
        path.write_bytes(content)
    assert main(["replay", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("voice-agent: error: ") and expected in err
    assert "\n" not in err


async def _http_server(status: str, body: bytes) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_endpoint_that_refuses_is_an_llm_error() -> None:
    server, port = await _http_server("401 Unauthorized", b'{"error": {"message": "bad key"}}')
    llm = OpenAICompatLLM(f"http://127.0.0.1:{port}/v1", "m", first_token_timeout=5)
    try:
        with pytest.raises(LLMError, match="refused the request: HTTP 401") as err:
            async for _ in llm.stream([{"role": "user", "content": "hi"}]):
                pass
        assert "VOICE_AGENT_LLM_API_KEY" in str(err.value)
    finally:
        await llm.close()
        server.close()


async def test_endpoint_that_never_answers_times_out() -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    llm = OpenAICompatLLM(f"http://127.0.0.1:{port}/v1", "m", first_token_timeout=0.5)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        with pytest.raises(LLMError, match="did not answer within|cannot reach"):
            async for _ in llm.stream([{"role": "user", "content": "hi"}]):
                pass
        assert loop.time() - t0 < 3.0
    finally:
        await llm.close()
        server.close()


async def test_a_connection_dropped_before_the_request_is_tried_once_more() -> None:
    """The first connection is closed as soon as it opens (as a server closes a pooled
    keep-alive connection); the request goes again at once and its stream is read."""
    from voice_agent.llm.base import TextDelta

    chunk = b'data: {"id":"1","object":"chat.completion.chunk","created":0,"model":"m",' \
        b'"choices":[{"index":0,"delta":{"content":"Hello there."},"finish_reason":null}]}'
    sse = chunk + b"\n\ndata: [DONE]\n\n"
    connections = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        if len(connections) == 1:
            writer.close()  # dropped before the request is read
            return
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            + f"Content-Length: {len(sse)}\r\nConnection: close\r\n\r\n".encode() + sse
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    llm = OpenAICompatLLM(f"http://127.0.0.1:{port}/v1", "m", first_token_timeout=5)
    try:
        events = [e async for e in llm.stream([{"role": "user", "content": "hi"}])]
        assert events == [TextDelta("Hello there.")]
        assert len(connections) == 2
    finally:
        await llm.close()
        server.close()


async def test_a_server_that_is_down_fails_after_the_second_try() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    llm = OpenAICompatLLM(f"http://127.0.0.1:{port}/v1", "m", first_token_timeout=5)
    try:
        with pytest.raises(LLMError, match="cannot reach the LLM"):
            async for _ in llm.stream([{"role": "user", "content": "hi"}]):
                pass
    finally:
        await llm.close()
