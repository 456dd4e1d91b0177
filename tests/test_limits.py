"""The session and peer limits hold when many callers start at once (a slot is held
from the accept, or the offer's check, until the call is registered)."""

from __future__ import annotations

import asyncio
import json

import httpx
import websockets
from conftest import start_server
from doubles import ScriptedLLMDouble, double_engine

from voice_agent.server import ServerConfig, create_app


async def test_sockets_opened_first_and_started_after_cannot_pass_the_session_limit() -> None:
    app = create_app(engine=double_engine(ScriptedLLMDouble([], 0.01)),
                     config=ServerConfig(max_sessions=2))  # fmt: skip
    srv, addr, task = await start_server(app)
    sockets = []
    try:
        for _ in range(6):  # all open before any starts
            sockets.append(await websockets.connect(f"ws://{addr}/v1/voice/ws"))
        await asyncio.gather(*(ws.send(json.dumps({"type": "session.start", "sample_rate": 16000}))
                               for ws in sockets), return_exceptions=True)  # fmt: skip
        outcomes = []
        for ws in sockets:
            try:
                first = json.loads(await asyncio.wait_for(ws.recv(), 10))
                outcomes.append(first["type"])
            except websockets.ConnectionClosed as exc:
                assert exc.rcvd is not None
                outcomes.append(exc.rcvd.code)
        assert outcomes.count("session.started") == 2, outcomes
        assert outcomes.count(1013) == 4, outcomes
        assert len(app.state.va.sessions) == 2 and app.state.va.reserved == 0
    finally:
        for ws in sockets:
            await ws.close()
        srv.should_exit = True  # type: ignore[attr-defined]
        await task  # type: ignore[misc]


async def test_offers_at_once_cannot_pass_the_peer_limit() -> None:
    from aiortc import RTCPeerConnection

    app = create_app(engine=double_engine(ScriptedLLMDouble([], 0.01)),
                     config=ServerConfig(max_peers=3))  # fmt: skip
    srv, addr, task = await start_server(app)
    pcs = [RTCPeerConnection() for _ in range(10)]
    try:
        offers = []
        for pc in pcs:
            pc.createDataChannel("events")
            pc.addTransceiver("audio", direction="sendrecv")
            await pc.setLocalDescription(await pc.createOffer())
            offers.append({"sdp": pc.localDescription.sdp, "type": "offer"})
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as c:
            answers = await asyncio.gather(
                *(c.post("/v1/voice/webrtc/offer", json=o) for o in offers)
            )
        codes = sorted(r.status_code for r in answers)
        assert codes == [200] * 3 + [429] * 7, codes
        assert all("limit 3" in r.json()["error"] for r in answers if r.status_code == 429)
        assert len(app.state.va.peers) == 3 and app.state.va.peers_reserved == 0
    finally:
        for pc in pcs:
            await pc.close()
        srv.should_exit = True  # type: ignore[attr-defined]
        await task  # type: ignore[misc]


def test_the_default_session_limit_is_the_measured_capacity_and_sizes_the_llm_slots() -> None:
    from voice_agent.capacity import default_max_sessions, llm_slots
    from voice_agent.session.engine import EngineConfig

    assert default_max_sessions(EngineConfig(llm_profile="fast"), cores=2) == 4
    assert default_max_sessions(EngineConfig(llm_profile="quality"), cores=2) == 1
    assert default_max_sessions(EngineConfig(llm_profile="fast"), cores=8) == 16
    assert default_max_sessions(EngineConfig(llm_base_url="http://x/v1"), cores=2) == 4
    assert default_max_sessions(EngineConfig(llm_profile="quality"), cores=1) == 1
    assert [llm_slots(n) for n in (1, 4, 40)] == [1, 4, 16]
