"""The AudioSocket TCP listener on a real server (127.0.0.1) with model doubles behind: a
call over TCP, bad frames hanging up one call while another goes on, and a refused call."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest_asyncio
from conftest import start_server, until
from doubles import ScriptedLLMDouble, double_engine, silence, tone

from voice_agent.server import ServerConfig, create_app
from voice_agent.transports.telephony.audiosocket import KIND_SLIN, KIND_UUID, frame
from voice_agent.transports.telephony.phone import dial

CALL = bytes(range(16))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_asyncio.fixture
async def line() -> AsyncIterator[tuple[str, Any]]:
    llm = ScriptedLLMDouble([], 0.01, default=["It is noon."])
    tcp = free_port()
    config = ServerConfig(audiosocket=("127.0.0.1", tcp), max_sessions=2)
    app = create_app(engine=double_engine(llm, {500: "What time is it?"}), config=config)
    srv, _addr, task = await start_server(app)
    yield f"127.0.0.1:{tcp}", app.state.va  # type: ignore[misc]
    srv.should_exit = True  # type: ignore[attr-defined]
    await task  # type: ignore[misc]


async def raw_call(addr: str, *frames: bytes) -> bytes:
    """Send frames, then read what the server sends until it closes."""
    host, _, port = addr.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    for f in frames:
        writer.write(f)
    await writer.drain()
    try:
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


async def test_a_call_over_tcp_is_answered_and_reported(line: tuple[str, Any]) -> None:
    addr, state = line
    mic = np.concatenate([silence(0.5), tone(1.0, 500)])
    call = await dial("audiosocket", addr, mic, linger_s=1.5, max_s=10)
    assert call.errors == [] and len(call.report()["replies"]) == 1
    await until(lambda: len(state.reports) == 1)
    (report,) = state.reports.values()
    assert report["transport"] == "audiosocket" and report["errors"] == []
    (turn,) = report["turns"]
    assert (turn["user_text"], turn["reply_text"]) == ("What time is it?", "It is noon.")


async def test_bad_frames_hang_up_that_call_and_another_goes_on(line: tuple[str, Any]) -> None:
    addr, state = line
    mic = np.concatenate([silence(0.5), tone(1.0, 500)])
    good = asyncio.create_task(dial("audiosocket", addr, mic, linger_s=1.5, max_s=10))
    await asyncio.sleep(0.3)
    slin = frame(KIND_SLIN, b"\x00" * 320)
    oversized = b"\x10\xff\xff"  # 64 KiB announced: the framing cannot be trusted
    unknown = frame(0x42, b"hi")
    # an unknown type is skipped; an oversized length hangs up with a hang-up frame
    answer = await raw_call(addr, frame(KIND_UUID, CALL), slin, unknown, slin, oversized)
    assert answer.endswith(b"\x00\x00\x00")
    # a connection that ends inside a header: the server hangs up too
    answer = await raw_call(addr, frame(KIND_UUID, CALL[::-1]), slin, b"\x10\x01")
    assert answer.endswith(b"\x00\x00\x00")
    call = await good
    assert call.errors == [] and len(call.report()["replies"]) == 1
    await until(lambda: len(state.reports) == 3)
    errors = sorted(e for r in state.reports.values() for e in r["errors"])
    assert errors == [
        "audiosocket: a frame of unknown type 0x42 was skipped",
        "audiosocket: an oversized frame length (65535 bytes)",
        "audiosocket: the connection ended inside a frame header",
    ]


async def test_a_call_over_the_limit_is_refused_with_a_hang_up(line: tuple[str, Any]) -> None:
    addr, state = line
    held = [asyncio.create_task(dial("audiosocket", addr, silence(1.5), linger_s=0.5))
            for _ in range(2)]  # fmt: skip
    await until(lambda: len(state.sessions) == 2)
    assert await raw_call(addr, frame(KIND_UUID, CALL)) == b"\x00\x00\x00"
    await asyncio.gather(*held)
