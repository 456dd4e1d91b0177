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


async def raw_call(addr: str, *frames: bytes, end: bool = False) -> bytes:
    """Send frames (``end``: then end the connection's sending side), then read what the
    server sends until it closes."""
    host, _, port = addr.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    for f in frames:
        writer.write(f)
    if end:
        writer.write_eof()
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
    answer = await raw_call(addr, frame(KIND_UUID, CALL[::-1]), slin, b"\x10\x01", end=True)
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


async def test_voice_agent_call_records_what_was_said_and_heard(
    line: tuple[str, Any], tmp_path: Any
) -> None:
    import json
    import sys

    from voice_agent.audio.files import load_audio, write_wav

    addr, state = line
    said = tmp_path / "said.wav"
    write_wav(said, np.concatenate([silence(0.5), tone(1.0, 500)]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voice_agent.cli", "call", "--protocol", "audiosocket", addr,
        str(said), "--out", str(tmp_path / "heard.wav"), "--report", str(tmp_path / "r.json"),
        "--linger", "1.5", "--dtmf", "3.0:7",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    report = json.loads((tmp_path / "r.json").read_text())
    assert json.loads(out) == report
    assert report["protocol"] == "audiosocket" and report["errors"] == []
    # the words were answered once the caller stopped, and then the key press
    (reply,) = report["replies"]
    assert reply["caller_end_s"] == 1.5 and reply["voice_to_voice_ms"] > 0
    await until(lambda: len(state.reports) == 1)
    (server,) = state.reports.values()
    assert [t["user_text"] for t in server["turns"]] == ["What time is it?", "7"]
    left, rate = load_audio(tmp_path / "heard.wav", channel=0)
    right, _ = load_audio(tmp_path / "heard.wav", channel=1)
    assert rate == 16000 and len(left) == len(right)
    assert abs(len(left) / rate - report["seconds"]) < 0.05  # time-aligned, the whole call
    assert np.count_nonzero(np.abs(left[8000:24000] - 500) < 40) > 15000  # the caller's tone
    # the agent, heard: "It is noon." twice from the tone TTS double (10 ms a character,
    # whole 20 ms frames)
    assert 2 * 11 * 160 <= np.count_nonzero(np.abs(right) > 500) <= 2 * 12 * 160 + 640


async def test_voice_agent_call_says_clearly_when_nobody_answers(tmp_path: Any) -> None:
    import sys

    from voice_agent.audio.files import write_wav

    said = tmp_path / "said.wav"
    write_wav(said, silence(0.5))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voice_agent.cli", "call", "--protocol", "twilio",
        f"ws://127.0.0.1:{free_port()}/v1/telephony/twilio/stream", str(said),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 2
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("voice-agent: error: could not call ws://127.0.0.1:")
