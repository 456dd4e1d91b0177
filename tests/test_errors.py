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
