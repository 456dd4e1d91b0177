"""HTTP limits on a real uvicorn (127.0.0.1): body size (413) and time (408), the time to
send a request's headers, and the WebRTC offer's own SDP limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest_asyncio
from conftest import start_server
from doubles import ScriptedLLMDouble, double_engine

from voice_agent.server import ServerConfig, create_app


@pytest_asyncio.fixture
async def server() -> AsyncIterator[tuple[str, int]]:
    llm = ScriptedLLMDouble([], 0.01, default=["Hello."])
    config = ServerConfig(max_body_bytes=64 * 1024, body_timeout_s=1.0, header_timeout_s=1.0)
    app = create_app(engine=double_engine(llm, {}), config=config)
    srv, addr, task = await start_server(app)
    host, port = str(addr).split(":")
    yield host, int(port)
    srv.should_exit = True  # type: ignore[attr-defined]
    await task  # type: ignore[misc]


async def exchange(addr: tuple[str, int], parts: list[bytes], gap_s: float = 0.0,
                   limit_s: float = 15.0) -> bytes:  # fmt: skip
    """Send ``parts`` (``gap_s`` apart) while reading, until the server closes; what it
    sent before it closed (a reset after its answer included)."""
    reader, writer = await asyncio.open_connection(*addr)
    got = bytearray()

    async def read() -> None:
        while chunk := await reader.read(65536):
            got.extend(chunk)

    reading = asyncio.create_task(read())
    try:
        async with asyncio.timeout(limit_s):
            for part in parts:
                if reading.done():
                    break
                writer.write(part)
                try:
                    await writer.drain()
                except ConnectionError:
                    break
                await asyncio.sleep(gap_s)
            try:
                await reading
            except ConnectionError:
                pass
        return bytes(got)
    finally:
        reading.cancel()
        writer.close()


def offer_request(body: bytes, length: int | None = None) -> bytes:
    head = (
        "POST /v1/voice/webrtc/offer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\n"
        + (f"Content-Length: {length if length is not None else len(body)}\r\n")
        + "Connection: close\r\n\r\n"
    )
    return head.encode() + body


async def test_a_body_over_the_limit_gets_413_without_being_read(server: tuple[str, int]) -> None:
    # announced: 50 MB, refused from the headers alone
    got = await exchange(server, [offer_request(b"", length=50_000_000)])
    assert got.startswith(b"HTTP/1.1 413 ")
    assert json.loads(got.split(b"\r\n\r\n", 1)[1]) == {"error": "the body is over 65536 bytes"}
    # sent chunked (no length): counted as it arrives
    head = (b"POST /v1/voice/webrtc/offer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")  # fmt: skip
    chunk = b"%x\r\n%s\r\n" % (40_000, b"x" * 40_000)
    got = await exchange(server, [head + chunk + chunk])  # 80 KB, and the stream stays open
    assert got.startswith(b"HTTP/1.1 413 ")


async def test_an_sdp_with_a_thousand_media_sections_is_refused(server: tuple[str, int]) -> None:
    sdp = "v=0\r\n" + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" * 1000
    got = await exchange(server, [offer_request(json.dumps({"sdp": sdp, "type": "offer"}).encode())])
    assert got.startswith(b"HTTP/1.1 400 ")
    assert b"more than 8 media sections" in got


async def test_a_half_sent_request_line_is_closed_after_the_header_timeout(
    server: tuple[str, int],
) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    got = await exchange(server, [b"GET /healthz HT"])
    assert got == b""  # closed with no answer
    assert loop.time() - t0 < 10.0  # the 1 s deadline (not the 15 s test limit)
    # one header every 0.4 s: the headers are never all in within 1 s
    got = await exchange(server, [b"GET /healthz HTTP/1.1\r\n"] + [b"X-A: b\r\n"] * 30, gap_s=0.4)
    assert got == b""


async def test_a_body_that_trickles_in_gets_408(server: tuple[str, int]) -> None:
    body = json.dumps({"sdp": "v=0\r\n", "type": "offer"}).encode()
    parts = [offer_request(b"", length=len(body))] + [body[i : i + 2] for i in range(0, len(body), 2)]
    got = await exchange(server, parts, gap_s=0.3)
    assert got.startswith(b"HTTP/1.1 408 ")


async def test_a_keep_alive_connection_answers_requests_sent_in_time(server: tuple[str, int]) -> None:
    req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    got = await exchange(server, [req, req, last], gap_s=0.5)
    assert got.count(b"HTTP/1.1 200 ") == 3


async def test_a_websocket_outlives_the_header_timeout(server: tuple[str, int]) -> None:
    """The deadline is for the upgrade request's headers: the call goes on past it."""
    import websockets

    host, port = server
    async with websockets.connect(f"ws://{host}:{port}/v1/voice/ws") as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 16000}))
        assert json.loads(await ws.recv())["type"] == "session.started"
        await asyncio.sleep(2.5)  # past the 1 s header timeout
        await ws.send(json.dumps({"type": "text", "text": "Hello?"}))
        kinds = set()
        async with asyncio.timeout(10):
            while "reply.done" not in kinds:
                msg = await ws.recv()
                if isinstance(msg, str):
                    kinds.add(json.loads(msg)["type"])
