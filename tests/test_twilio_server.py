"""The Twilio endpoints on a real uvicorn (127.0.0.1) with model doubles behind: the voice
webhook's TwiML and signatures, one-time stream tokens, and a call over the stream."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest_asyncio
import websockets
from conftest import start_server
from doubles import ScriptedLLMDouble, double_engine

from voice_agent.audio.g711 import ulaw_decode, ulaw_encode
from voice_agent.server import ServerConfig, create_app
from voice_agent.transports.telephony.twilio import request_signature

TOKEN = "test-auth-token"
FORM = {"CallSid": "CA1", "AccountSid": "AC1", "From": "+15550001", "To": "+15550002"}


@pytest_asyncio.fixture
async def server() -> AsyncIterator[str]:
    llm = ScriptedLLMDouble([], 0.01, default=["It is noon."])
    app = create_app(engine=double_engine(llm, {500: "What time is it?"}),
                     config=ServerConfig(twilio_auth_token=TOKEN))  # fmt: skip
    srv, addr, task = await start_server(app)
    yield addr  # type: ignore[misc]
    srv.should_exit = True  # type: ignore[attr-defined]
    await task  # type: ignore[misc]


def post(url: str, form: dict[str, str], signature: str | None) -> tuple[int, str]:
    data = "&".join(f"{k}={urllib.request.quote(v)}" for k, v in form.items()).encode()
    req = urllib.request.Request(url, data=data)
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    if signature is not None:
        req.add_header("X-Twilio-Signature", signature)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def webhook(addr: str, signed: bool = True, form: dict[str, str] = FORM) -> tuple[int, str]:
    url = f"http://{addr}/v1/telephony/twilio/voice"
    sig = request_signature(TOKEN, url, form) if signed else None
    return await asyncio.to_thread(post, url, form, sig)


def stream_of(twiml: str) -> tuple[str, dict[str, str]]:
    stream = ET.fromstring(twiml).find("Connect/Stream")
    assert stream is not None
    return str(stream.get("url")), {p.get("name", ""): p.get("value", "") for p in stream}


async def twilio_call(url: str, params: dict[str, str], seconds: float = 4.0) -> list[dict[str, Any]]:
    """Twilio's side: start, then 20 ms of μ-law every 20 ms (0.5 s quiet, 1 s of speech)."""
    sid = "MZ1"
    got: list[dict[str, Any]] = []
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(json.dumps({"event": "start", "streamSid": sid, "start": {
            "streamSid": sid, "callSid": "CA1", "accountSid": "AC1", "tracks": ["inbound"],
            "customParameters": params,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))  # fmt: skip
        mic = np.concatenate([np.zeros(4000), np.full(8000, 500), np.zeros(int(seconds * 8000))])
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def read() -> None:
            async for msg in ws:
                got.append(json.loads(msg))

        reader = asyncio.create_task(read())
        for k in range(int(seconds * 50)):
            chunk = mic[k * 160 : (k + 1) * 160].astype(np.int16)
            await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {
                "payload": base64.b64encode(ulaw_encode(chunk)).decode()}}))  # fmt: skip
            await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - loop.time()))
        await ws.send(json.dumps({"event": "stop", "streamSid": sid, "stop": {"callSid": "CA1"}}))
        await asyncio.wait_for(reader, 5)
    return got


async def test_the_webhook_refuses_unsigned_requests_and_answers_signed_ones(server: str) -> None:
    status, body = await webhook(server, signed=False)
    assert status == 403 and json.loads(body) == {"error": "missing or invalid X-Twilio-Signature"}
    status, body = await webhook(server)
    assert status == 200
    root = ET.fromstring(body)
    assert [c.tag for c in root] == ["Connect", "Hangup"]
    url, params = stream_of(body)
    assert url == f"ws://{server}/v1/telephony/twilio/stream"
    assert len(params["token"]) >= 24
    # the same signed request again (captured and replayed): refused
    status, body = await webhook(server)
    assert status == 403 and json.loads(body) == {
        "error": "a replayed request (signature already used)"}  # fmt: skip
    # a mis-signed one too
    url = f"http://{server}/v1/telephony/twilio/voice"
    bad = request_signature("another-token", url, FORM)
    assert (await asyncio.to_thread(post, url, FORM, bad))[0] == 403


async def test_a_signed_call_is_answered_over_the_stream_and_its_token_works_once(server: str) -> None:
    _, body = await webhook(server, form=FORM | {"CallSid": "CA2"})
    url, params = stream_of(body)
    got = await twilio_call(url, params)
    media = [m for m in got if m["event"] == "media"]
    assert media and {m["streamSid"] for m in got} == {"MZ1"}
    heard = ulaw_decode(b"".join(base64.b64decode(m["media"]["payload"]) for m in media))
    assert np.count_nonzero(np.abs(heard) > 500) > 800  # the reply (a 1000-level tone) played
    # the same token again (a replayed webhook answer): the stream is refused and closed
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"event": "start", "streamSid": "MZ2", "start": {
            "streamSid": "MZ2", "callSid": "CA2", "customParameters": params,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}}))  # fmt: skip
        try:
            async with asyncio.timeout(5):
                async for _ in ws:
                    pass
        except websockets.ConnectionClosed:
            pass
    assert (ws.close_code, ws.close_reason) == (
        1008, "no valid start, or not started by a signed webhook")


async def test_a_call_past_the_session_limit_hears_a_busy_signal_and_no_stream_starts() -> None:
    llm = ScriptedLLMDouble([], 0.01, default=["It is noon."])
    app = create_app(engine=double_engine(llm, {500: "What time is it?"}),
                     config=ServerConfig(twilio_auth_token=TOKEN, max_sessions=0))  # fmt: skip
    srv, addr, task = await start_server(app)
    try:
        status, body = await webhook(addr)  # type: ignore[arg-type]
        assert status == 200
        root = ET.fromstring(body)
        assert [(c.tag, c.attrib) for c in root] == [("Reject", {"reason": "busy"})]
        metrics = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
        )
        assert 'voice_agent_sessions_refused_total{reason="full"} 1.0' in metrics
    finally:
        srv.should_exit = True  # type: ignore[attr-defined]
        await task  # type: ignore[misc]
