"""WebRTC against a real server on 127.0.0.1: an aiortc client peer plays jfk.flac and
hears the reply; bad offers get a 4xx with a message."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from conftest import http_json, until
from test_pipeline import read_back, read_back_overlap

from voice_agent.audio.files import load_audio
from voice_agent.audio.pcm import rms_dbfs
from voice_agent.audio.resample import resample
from voice_agent.core.clock import LoopClock
from voice_agent.transports.webrtc import PacedAudioTrack, inbound_audio

pytestmark = pytest.mark.models


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep ICE on 127.0.0.1 (aioice leaves loopback out of its host candidates)."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    yield


async def test_aiortc_peer_speaks_jfk_and_hears_the_reply(
    real_server: str, real_engine: Any, jfk_path: Path
) -> None:
    pcm, rate = load_audio(jfk_path)
    pcm = np.concatenate([resample(pcm, rate, 48000), np.zeros(48000 * 20, dtype=np.int16)])
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel = pc.createDataChannel("events")
    events: list[dict[str, Any]] = []
    received: list[np.ndarray] = []
    pulls: list[asyncio.Future[None]] = []
    pc.addTrack(PacedAudioTrack.from_pcm(LoopClock(), pcm))

    @pc.on("track")
    def on_track(track: Any) -> None:
        pulls.append(asyncio.ensure_future(inbound_audio(track, received.append)))

    @channel.on("message")
    def on_message(message: str) -> None:
        events.append(json.loads(message))

    await pc.setLocalDescription(await pc.createOffer())
    status, answer = await asyncio.to_thread(
        http_json, f"http://{real_server}/v1/voice/webrtc/offer",
        {"sdp": pc.localDescription.sdp, "type": "offer"}, 15,
    )  # fmt: skip
    assert status == 200, answer
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    try:
        async with asyncio.timeout(60):
            while True:
                finals = [e for e in events if e["type"] == "transcript.final"]
                done = [
                    e for e in events if e["type"] == "reply.done" and e["status"] == "completed"
                ]
                if (
                    finals
                    and "your country" in finals[-1]["text"].lower()
                    and done
                    and (done[-1]["gen"] == finals[-1]["gen"])
                ):
                    break
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # the last frames in flight
        sid = answer["session_id"]
        channel.send(json.dumps({"type": "session.end"}))
        await asyncio.sleep(0.3)
    finally:
        await pc.close()
    assert events[0]["type"] == "session.started" and events[0]["session_id"] == sid
    # the playout position of a WebRTC caller is what the paced track sent
    async with asyncio.timeout(10):
        while True:
            _, report = await asyncio.to_thread(
                http_json, f"http://{real_server}/v1/sessions/{sid}"
            )
            if report.get("live") is False:
                break
            await asyncio.sleep(0.2)
    turn = next(t for t in report["turns"] if t["gen"] == done[-1]["gen"])
    assert turn["client_played_ms"] == pytest.approx(turn["reply_audio_ms"], abs=200)
    # ... and the client hears it on the data channel: a playout event every 200 ms of audio
    positions = [e for e in events if e["type"] == "playout" and e["gen"] == turn["gen"]]
    samples = [e["samples"] for e in positions]
    assert samples == sorted(samples) and all(e["sample_rate"] == 48000 for e in positions)
    assert all(b - a >= 9600 for a, b in itertools.pairwise(samples))
    assert samples[-1] / 48 == pytest.approx(turn["client_played_ms"], abs=200)
    reply = done[-1]["text"]
    audio = np.concatenate(received)
    # keep the agent's speech: the track sends silence between replies
    voiced = audio[np.abs(audio) > 0]
    assert len(voiced) > 16000 * 0.5 and rms_dbfs(voiced) > -35
    from voice_agent.stt.whisper import WhisperSTT

    stt = WhisperSTT("tiny-en", window="full")
    # the reply that completed is the last speech heard: read back the tail of what was
    # received (tiny.en mishears a word or two of speech that went through Opus)
    heard = read_back(stt, audio[-(16000 * 28) :])
    assert read_back_overlap(reply, heard) >= 0.6, (reply, heard)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"not json", 400, "the body is not valid JSON"),
        ({"sdp": "hello", "type": "offer"}, 400, "malformed SDP"),
        (
            {
                "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"
                "garbage line\r\n",
                "type": "offer",
            },
            400,
            "malformed SDP",
        ),
        ({"sdp": "v=0\r\n", "type": "answer"}, 400, "expected type 'offer'"),
    ],
)
async def test_bad_offers_get_400(real_server: str, body: Any, status: int, message: str) -> None:
    code, reply = await asyncio.to_thread(
        http_json, f"http://{real_server}/v1/voice/webrtc/offer", body
    )
    assert code == status and message in reply["error"]


async def _offer(with_audio: bool, codec_rewrite: bool = False) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("events")
    if with_audio:
        pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    if codec_rewrite:  # only a codec the server does not speak
        lines = []
        for line in sdp.split("\r\n"):
            if line.startswith("m=audio"):
                parts = line.split(" ")
                line = " ".join([*parts[:3], "96"])
            elif line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")) and not line.startswith(
                ("a=rtpmap:96", "a=fmtp:96", "a=rtcp-fb:96")
            ):
                continue
            elif line.startswith("a=rtpmap:96"):
                line = "a=rtpmap:96 AMR/8000"
            lines.append(line)
        sdp = "\r\n".join(lines)
    return sdp


async def test_offer_without_audio_and_unsupported_codec(real_server: str) -> None:
    url = f"http://{real_server}/v1/voice/webrtc/offer"
    code, reply = await asyncio.to_thread(
        http_json, url, {"sdp": await _offer(False), "type": "offer"}
    )
    assert code == 400 and reply["error"].startswith("the offer has no audio")
    sdp = await _offer(True, codec_rewrite=True)
    code, reply = await asyncio.to_thread(http_json, url, {"sdp": sdp, "type": "offer"})
    assert code == 400 and reply["error"].startswith("unsupported codec"), reply


async def test_too_many_peers_get_429(real_server: str) -> None:
    from conftest import APPS

    state = APPS[real_server].state.va  # type: ignore[attr-defined]
    limit = state.config.max_peers
    state.config.max_peers = len(state.peers)  # no room for one more
    try:
        code, reply = await asyncio.to_thread(
            http_json, f"http://{real_server}/v1/voice/webrtc/offer",
            {"sdp": await _offer(True), "type": "offer"},
        )  # fmt: skip
    finally:
        state.config.max_peers = limit
    assert code == 429 and reply["error"].startswith("too many peer connections")


async def _call(addr: str) -> tuple[Any, list[dict[str, Any]], str]:
    """An aiortc caller that sends silence: (peer, events seen, session id)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel = pc.createDataChannel("events")
    events: list[dict[str, Any]] = []
    channel.on("message", lambda m: events.append(json.loads(m)))
    pc.addTrack(PacedAudioTrack(LoopClock()))  # silence
    await pc.setLocalDescription(await pc.createOffer())
    status, answer = await asyncio.to_thread(
        http_json,
        f"http://{addr}/v1/voice/webrtc/offer",
        {"sdp": pc.localDescription.sdp, "type": "offer"},
    )
    assert status == 200, answer
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    await until(lambda: any(e["type"] == "session.started" for e in events), limit_s=10)
    return pc, events, answer["session_id"]


async def test_a_vanished_caller_is_hung_up_when_ice_consent_expires(
    real_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller's sockets go dead without a goodbye (a phone losing signal): the server's
    ICE consent checks (RFC 7675) fail, the peer connection fails, the session is hung up
    and the peer cleaned up. aioice checks consent every 5 s and gives up after 6 misses;
    the interval is shortened here so the test takes seconds, not half a minute."""
    import aioice.ice
    from conftest import APPS

    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    state = APPS[real_server].state.va  # type: ignore[attr-defined]
    pc, _events, sid = await _call(real_server)
    assert sid in state.peers and sid in state.sessions
    ice = pc.getTransceivers()[0].sender.transport.transport._connection
    for protocol in ice._protocols:  # the caller vanishes: no DTLS close, no more STUN
        protocol.transport.close()
    t0 = asyncio.get_running_loop().time()
    await until(lambda: sid not in state.peers, limit_s=20, every_s=0.05)
    waited = asyncio.get_running_loop().time() - t0
    await pc.close()
    assert sid not in state.sessions
    assert state.reports[sid]["transport"] == "webrtc"
    assert 0.5 < waited < 15, waited  # 6 missed checks, 0.2 s apart plus a 0.5 s timeout each


async def test_server_shutdown_closes_live_peer_connections(real_engine: Any) -> None:
    from conftest import start_server

    from voice_agent.server import create_app

    app = create_app(engine=real_engine)
    server, addr, task = await start_server(app)
    state = app.state.va
    pc, _events, sid = await _call(addr)
    closed = asyncio.Event()
    pc.on("connectionstatechange", lambda: closed.set() if pc.connectionState == "closed" else None)
    assert list(state.peers) == [sid]
    server.should_exit = True  # type: ignore[attr-defined]
    async with asyncio.timeout(15):
        await task  # type: ignore[misc]
    assert state.peers == {} and state.sessions == {}
    assert state.reports[sid]["transport"] == "webrtc"
    # the server said goodbye (DTLS close_notify): the caller's side closes too
    async with asyncio.timeout(10):
        await closed.wait()
    await pc.close()
