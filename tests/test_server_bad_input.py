"""Bad input over the WebSocket: a documented close code or error event, and the server
keeps serving other sessions. Real server on 127.0.0.1, scripted LLM double, real piper."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import websockets
from conftest import start_server
from doubles import ScriptedLLMDouble

from voice_agent.server import ServerConfig, create_app
from voice_agent.session.engine import Engine
from voice_agent.vad.webrtc import WebRtcVad

pytestmark = pytest.mark.models

LIMIT = 16 * 1024
LONG_REPLY = ["This is a long reply that goes on and on. "] * 40


LLM = ScriptedLLMDouble([], token_delay_s=0.005, default=["Okay, got it."])


@pytest_asyncio.fixture(scope="module")
async def addr(stt_tts: Any) -> AsyncIterator[str]:
    stt, tts = stt_tts
    engine = Engine(stt=stt, tts=tts, llm=LLM, new_vad=WebRtcVad)
    cfg = ServerConfig(
        max_message_bytes=LIMIT, send_queue=32, send_timeout_s=1.0, start_timeout_s=2.0
    )
    app = create_app(engine=engine, config=cfg)
    server, address, task = await start_server(app, sndbuf=8192)
    yield address
    server.should_exit = True  # type: ignore[attr-defined]
    await task  # type: ignore[misc]


async def start(addr: str, **fields: Any) -> Any:
    ws = await websockets.connect(f"ws://{addr}/v1/voice/ws", max_size=None)
    await ws.send(json.dumps({"type": "session.start", "sample_rate": 16000} | fields))
    return ws


async def next_event(ws: Any, kind: str, limit_s: float = 20.0) -> dict[str, Any]:
    async with asyncio.timeout(limit_s):
        while True:
            msg = await ws.recv()
            if isinstance(msg, str) and (event := json.loads(msg))["type"] == kind:
                return event


async def closed_with(ws: Any, limit_s: float = 10.0) -> tuple[int | None, str]:
    async with asyncio.timeout(limit_s):
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed:
            pass
    return ws.close_code, ws.close_reason


async def still_serving(addr: str) -> None:
    """Another session works end to end: typed text in, reply audio and reply.done out."""
    ws = await start(addr)
    try:
        await ws.send(json.dumps({"type": "text", "text": "hello"}))
        got_audio = False
        async with asyncio.timeout(20):
            while True:
                msg = await ws.recv()
                if isinstance(msg, bytes):
                    got_audio = True
                elif json.loads(msg)["type"] == "reply.done":
                    break
        assert got_audio
    finally:
        await ws.close()


async def test_binary_before_session_start(addr: str) -> None:
    async with websockets.connect(f"ws://{addr}/v1/voice/ws") as ws:
        await ws.send(b"\x00\x00" * 160)
        code, reason = await closed_with(ws)
    assert (code, reason) == (4400, "binary audio before session.start")
    await still_serving(addr)


@pytest.mark.parametrize(
    ("start_msg", "code", "reason_part"),
    [
        ("{not json", 4400, "session.start is not valid JSON"),
        ('{"type": "hello"}', 4400, "first message must be a session.start"),
        ('{"type": "session.start", "sample_rate": 12345}', 4415, "unsupported sample_rate 12345"),
        (
            '{"type": "session.start", "sample_rate": 16000, "output_sample_rate": 7}',
            4415,
            "unsupported output_sample_rate 7",
        ),
        (
            '{"type": "session.start", "sample_rate": 16000, "encoding": "opus"}',
            4400,
            "unsupported encoding 'opus'",
        ),
    ],
)
async def test_bad_session_start(addr: str, start_msg: str, code: int, reason_part: str) -> None:
    async with websockets.connect(f"ws://{addr}/v1/voice/ws") as ws:
        await ws.send(start_msg)
        got_code, reason = await closed_with(ws)
    assert got_code == code and reason_part in reason


async def test_no_session_start_times_out(addr: str) -> None:
    async with websockets.connect(f"ws://{addr}/v1/voice/ws") as ws:
        code, reason = await closed_with(ws, limit_s=6)
    assert code == 4400 and "no session.start" in reason


async def test_odd_length_pcm_and_invalid_json_are_errors_not_the_end(addr: str) -> None:
    ws = await start(addr)
    try:
        await next_event(ws, "session.started")
        await ws.send(b"\x01\x02\x03")
        err = await next_event(ws, "error")
        assert err["code"] == "bad_audio" and "even byte count, got 3" in err["message"]
        await ws.send("{this is not json")
        err = await next_event(ws, "error")
        assert err["code"] == "bad_message" and err["message"].startswith("not valid JSON")
        await ws.send(json.dumps({"type": "playout", "gen": "x"}))
        err = await next_event(ws, "error")
        assert err["message"] == "playout needs integer 'gen' and 'samples'"
        await ws.send(json.dumps({"type": "dance"}))
        err = await next_event(ws, "error")
        assert err["message"] == "unknown message type 'dance'"
        # the session is still alive
        await ws.send(json.dumps({"type": "text", "text": "hi"}))
        done = await next_event(ws, "reply.done")
        assert done["status"] == "completed" and done["text"] == "Okay, got it."
    finally:
        await ws.close()


async def test_oversized_message_closes_1009(addr: str) -> None:
    ws = await start(addr)
    try:
        await next_event(ws, "session.started")
        await ws.send(b"\x00" * (LIMIT + 2))
        code, _ = await closed_with(ws)
    finally:
        await ws.close()
    assert code == 1009
    await still_serving(addr)


async def test_client_that_stops_reading_is_closed_4408(addr: str) -> None:
    LLM.replies.append(LONG_REPLY)
    # a small receive buffer so the client's socket fills fast; the client never reads
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = addr.split(":")
    sock.connect((host, int(port)))
    ws = await websockets.connect(f"ws://{addr}/v1/voice/ws", sock=sock, max_queue=1, max_size=None)
    try:
        await ws.send(
            json.dumps(
                {
                    "type": "session.start",
                    "sample_rate": 16000,
                    "output_sample_rate": 48000,
                }
            )
        )
        sid = json.loads(await ws.recv())["session_id"]  # the server's own id
        await ws.send(json.dumps({"type": "text", "text": "talk for a long time"}))
        for _ in range(40):
            await asyncio.sleep(0.5)
            status = await asyncio.to_thread(_report, addr, sid)
            if status.get("live") is False:
                break
        report = await asyncio.to_thread(_report, addr, sid)
    finally:
        await ws.close()
    assert report["live"] is False
    assert report["close_code"] == 4408 and "client" in report["close_reason"]
    await still_serving(addr)


def _report(addr: str, sid: str) -> dict[str, Any]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{addr}/v1/sessions/{sid}", timeout=5) as r:
            return dict(json.loads(r.read()))
    except urllib.error.HTTPError:
        return {}


async def test_interrupt_stops_the_reply_and_clears_it(addr: str) -> None:
    LLM.replies.append(LONG_REPLY)
    ws = await start(addr)
    try:
        await next_event(ws, "session.started")
        await ws.send(json.dumps({"type": "text", "text": "talk for a long time"}))
        started = await next_event(ws, "reply.audio.start")
        await ws.send(json.dumps({"type": "interrupt"}))
        done = await next_event(ws, "reply.done")
        clear = await next_event(ws, "clear")
        # nothing of that generation arrives after the clear
        late = []
        try:
            async with asyncio.timeout(0.5):
                while True:
                    msg = await ws.recv()
                    if isinstance(msg, bytes) and int.from_bytes(msg[:4], "little") == clear["gen"]:
                        late.append(msg)
        except TimeoutError:
            pass
    finally:
        await ws.close()
    assert done["gen"] == started["gen"] == clear["gen"]
    assert done["status"] == "interrupted"
    assert late == []


async def test_a_client_that_stops_sending_mid_turn_still_gets_its_turn_ended(
    addr: str, jfk_path: Any
) -> None:
    """Speech, then nothing at all (no trailing silence): the server counts the stall as
    silence, so the turn ends and is answered."""
    from voice_agent.audio.files import load_audio_16k

    pcm = load_audio_16k(jfk_path)
    ws = await start(addr)
    try:
        await next_event(ws, "session.started")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for k in range(0, len(pcm), 320):
            await ws.send(pcm[k : k + 320].tobytes())
            await asyncio.sleep(max(0.0, t0 + (k // 320 + 1) * 0.02 - loop.time()))
        stopped_at = loop.time()
        # jfk pauses a second mid-sentence, so it may be answered as two turns: the first
        # reply is interrupted by the caller's second part, or (a short one) completes before
        # it. Wait for the reply that completes after the whole sentence has been heard.
        finals: list[str] = []
        seen: list[str] = []  # what happened, for the message if it fails
        async with asyncio.timeout(40):
            while True:
                try:
                    msg = await ws.recv()
                except websockets.ConnectionClosed:
                    raise AssertionError(seen) from None
                if not isinstance(msg, str):
                    continue
                event = json.loads(msg)
                what = event.get("text", event.get("status", ""))
                seen.append(f"{event['type']} {event.get('t_ms', '')} {what}")
                if event["type"] == "transcript.final":
                    finals.append(event["text"])
                heard_all = "for your country" in " ".join(finals).lower()
                if event["type"] == "reply.done" and event["status"] == "completed" and heard_all:
                    break
    finally:
        await ws.close()
    said = " ".join(finals).lower()
    assert "ask not what your country" in said and "for your country" in said, finals
    assert loop.time() - stopped_at < 40
