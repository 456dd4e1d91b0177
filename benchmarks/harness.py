"""The bench harness: an in-process server, and callers that time one utterance over the
WebSocket or WebRTC transport, as a client sees it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from voice_agent.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE, Pcm
from voice_agent.audio.resample import resample
from voice_agent.errors import VoiceAgentError


@contextlib.asynccontextmanager
async def in_process_server(app: Any, start_timeout_s: float = 30.0) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port; yields "127.0.0.1:port"."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(start_timeout_s):
            while not server.started:
                if serving.done():
                    break
                await asyncio.sleep(0.01)
    except TimeoutError:
        server.should_exit = True
        await serving
        raise VoiceAgentError(f"bench server not started in {start_timeout_s:.0f} s") from None
    if not server.started:
        await serving  # raises what stopped it
        raise VoiceAgentError("the bench server exited at start-up")
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await serving


def answer_after(turn: dict[str, Any] | None) -> float | None:
    """End of turn decided → first answer audio out (what the filler deadline is tuned on)."""
    if turn is None:
        return None
    t = turn["timeline_ms"]
    if t["first_audio_out"] is None or t["decided"] is None:
        return None
    return round(float(t["first_audio_out"]) - float(t["decided"]), 1)


async def one_over_ws(url: str, pcm: Pcm, end: int) -> dict[str, Any]:
    """Stream one utterance in real time; time the reply that completes."""
    import json

    import websockets

    loop = asyncio.get_running_loop()
    frames = [pcm[i : i + FRAME_SAMPLES] for i in range(0, len(pcm), FRAME_SAMPLES)]
    tail = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    events: list[dict[str, Any]] = []
    first_audio: dict[int, float] = {}
    done = asyncio.Event()
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": SAMPLE_RATE}))
        started = json.loads(await ws.recv())
        offset = loop.time() - started["t_ms"] / 1000  # server session time 0 on our clock
        t0 = loop.time()

        async def send() -> None:
            k = 0
            while not done.is_set() and k < len(frames) + 3000:  # ≤ 60 s of trailing silence
                await ws.send((frames[k] if k < len(frames) else tail).tobytes())
                k += 1
                await asyncio.sleep(max(0.0, t0 + k * FRAME_SAMPLES / SAMPLE_RATE - loop.time()))

        sender = asyncio.create_task(send())
        try:
            async with asyncio.timeout(90):
                async for msg in ws:
                    if isinstance(msg, bytes):
                        first_audio.setdefault(int.from_bytes(msg[:4], "little"), loop.time())
                        continue
                    event = json.loads(msg)
                    events.append(event)
                    if event["type"] == "metrics" and event["turn"]["status"] == "completed":
                        break
        finally:
            done.set()
            await sender
        await ws.send(json.dumps({"type": "session.end"}))
    metrics = [e["turn"] for e in events if e["type"] == "metrics"]
    turn = metrics[-1] if metrics else None
    row: dict[str, Any] = {"transcript": turn["user_text"] if turn else ""}
    if turn and turn["timeline_ms"]["first_audio_out"] is not None:
        true_end = t0 + end / SAMPLE_RATE
        sent = offset + turn["timeline_ms"]["first_audio_out"] / 1000
        received = first_audio.get(turn["gen"])
        row["server_v2v_ms"] = round((sent - true_end) * 1000, 1)
        if received is not None:
            row["client_v2v_ms"] = round((received - true_end) * 1000, 1)
            row["transport_ms"] = round((received - sent) * 1000, 1)
    return row


async def one_over_webrtc(base: str, pcm: Pcm, end: int) -> dict[str, Any]:
    """One utterance through an aiortc client peer; v2v to the first agent sound received."""
    import json
    import urllib.request

    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from voice_agent.core.clock import LoopClock
    from voice_agent.transports.webrtc import PacedAudioTrack, inbound_audio

    loop = asyncio.get_running_loop()
    pcm48 = resample(pcm, SAMPLE_RATE, 48000)
    source = PacedAudioTrack.from_pcm(LoopClock(), pcm48)

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel = pc.createDataChannel("events")
    events: list[tuple[float, dict[str, Any]]] = []
    sound: list[float] = []  # arrival times of received frames with agent speech
    pulls: list[asyncio.Future[None]] = []
    pc.addTrack(source)

    def on_audio(pcm16: Pcm) -> None:
        if pcm16.size and np.abs(pcm16).max() > 300:
            sound.append(loop.time())

    @pc.on("track")
    def on_track(track: Any) -> None:
        pulls.append(asyncio.ensure_future(inbound_audio(track, on_audio)))

    @channel.on("message")
    def on_message(message: str) -> None:
        events.append((loop.time(), json.loads(message)))

    await pc.setLocalDescription(await pc.createOffer())
    body = json.dumps({"sdp": pc.localDescription.sdp, "type": "offer"}).encode()
    req = urllib.request.Request(
        f"http://{base}/v1/voice/webrtc/offer",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    answer = json.loads(
        await asyncio.to_thread(lambda: urllib.request.urlopen(req, timeout=15).read())
    )
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    turn: dict[str, Any] | None = None
    try:
        async with asyncio.timeout(90):
            while turn is None:
                done = [e["turn"] for _, e in events if e["type"] == "metrics"
                        and e["turn"]["status"] == "completed"]  # fmt: skip
                turn = done[-1] if done else None
                await asyncio.sleep(0.05)
        channel.send(json.dumps({"type": "session.end"}))
        await asyncio.sleep(0.2)
    finally:
        await pc.close()
        for p in pulls:
            p.cancel()
        if pulls:
            await asyncio.wait(pulls)
    started_at, started = next((t, e) for t, e in events if e["type"] == "session.started")
    offset = started_at - started["t_ms"] / 1000
    assert source.started_at is not None
    t0 = source.started_at
    true_end = t0 + end / SAMPLE_RATE
    row: dict[str, Any] = {"transcript": turn["user_text"]}
    if turn["timeline_ms"]["first_audio_out"] is not None:
        sent = offset + turn["timeline_ms"]["first_audio_out"] / 1000
        heard = [t for t in sound if t >= sent - 0.005]
        row["server_v2v_ms"] = round((sent - true_end) * 1000, 1)
        if heard:
            row["client_v2v_ms"] = round((heard[0] - true_end) * 1000, 1)
            row["transport_ms"] = round((heard[0] - sent) * 1000, 1)
    return row
