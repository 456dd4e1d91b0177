"""``voice-agent bench``: voice-to-voice latency over real and synthetic utterances.

Each utterance runs in a fresh session, streamed in real time, so the
figures are what a caller would get. Voice-to-voice is measured from the
true end of speech in the file (found from the clean signal's energy, not
from the VAD) to the first agent audio sample sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import resource
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jiwer
import numpy as np

from voice_agent.audio.files import load_audio_16k
from voice_agent.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE, Pcm, rms_dbfs
from voice_agent.audio.resample import resample
from voice_agent.core.clock import LoopClock
from voice_agent.errors import VoiceAgentError
from voice_agent.llm.local import peak_rss_kb
from voice_agent.session.engine import Engine, EngineConfig

SHARED_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"

ESPEAK_LINES = [
    "What is the capital of France?",
    "Can you recommend a good book for a long flight?",
    "How many minutes are there in one day?",
]
PIPER_LINES = [
    "Tell me a fun fact about octopuses.",
    "What should I cook for dinner tonight?",
    "Is it going to rain tomorrow in Seattle?",
]


@dataclass
class Utterance:
    name: str
    source: str
    reference: str
    pcm: Pcm


def speech_end(pcm: Pcm, floor_db: float = 35.0) -> int:
    """Sample index where speech ends.

    That is the end of the last 20 ms frame within ``floor_db`` of the loudest frame.
    """
    n = len(pcm) // FRAME_SAMPLES
    levels = [rms_dbfs(pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]) for i in range(n)]
    if not levels:
        return 0
    peak = max(levels)
    last = max(i for i, lv in enumerate(levels) if lv >= peak - floor_db)
    return (last + 1) * FRAME_SAMPLES


def _espeak(text: str) -> Pcm:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise VoiceAgentError("espeak-ng is not installed", "apt-get install espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "u.wav"
        subprocess.run([exe, "-v", "en-us", "-s", "165", "-w", str(wav), text], check=True)
        return load_audio_16k(wav)


def utterances(engine: Engine) -> list[Utterance]:
    jfk = SHARED_AUDIO / "jfk.flac"
    jfk = jfk if jfk.exists() else SAMPLES / "jfk.flac"
    out = [
        Utterance(
            "jfk",
            "recorded",
            "And so my fellow Americans, ask not what your country can do for you, "
            "ask what you can do for your country.",
            load_audio_16k(jfk),
        )
    ]
    stereo = SHARED_AUDIO / "stereo_diarization.wav"
    if stereo.exists():
        out.append(
            Utterance(
                "diarization-left",
                "recorded",
                "He began a confused complaint against the wizard, "
                "who had vanished behind the curtain on the left.",
                load_audio_16k(stereo, channel=0),
            )
        )
        out.append(
            Utterance(
                "diarization-right",
                "recorded",
                "The horizon seems extremely distant.",
                load_audio_16k(stereo, channel=1),
            )
        )
    for i, line in enumerate(ESPEAK_LINES, 1):
        out.append(Utterance(f"espeak-{i}", "espeak-ng", line, _espeak(line)))
    for i, line in enumerate(PIPER_LINES, 1):
        out.append(Utterance(f"piper-{i}", "piper", line, engine.tts.synthesize(line)))
    return out


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def _norm(text: str) -> str:
    """Lower case, punctuation removed (apostrophes kept), single spaces."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


async def run_bench(args: argparse.Namespace, cfg: EngineConfig, log: Callable[[str], None]) -> int:
    import json

    from voice_agent.replay import replay
    from voice_agent.runtime import open_engine

    async with open_engine(cfg, log) as engine:
        items = utterances(engine)[: args.limit] if args.limit else utterances(engine)
        rows: list[dict[str, Any]] = []
        for u in items:
            lead = np.zeros(SAMPLE_RATE // 2, dtype=np.int16)
            pcm = np.concatenate([lead, u.pcm])
            end = speech_end(pcm)
            result = await replay(engine, pcm, LoopClock(), speech_end_samples=[end])
            turns = result.report["turns"]
            transcript = " ".join(t["user_text"] for t in turns)
            # the reply that answers the utterance is the last turn's (a long pause
            # inside the utterance can end an earlier turn, which is reported too)
            first = turns[-1] if turns else None
            row = {
                "name": u.name,
                "source": u.source,
                "seconds": round(len(u.pcm) / SAMPLE_RATE, 2),
                "reference": u.reference,
                "transcript": transcript,
                "wer": round(float(jiwer.wer(_norm(u.reference), _norm(transcript))), 3),
                "turns": len(turns),
                "reply": first["reply_text"] if first else "",
                "voice_to_voice_ms": first.get("voice_to_voice_true_ms") if first else None,
                "voice_to_voice_vad_ms": first["voice_to_voice_ms"] if first else None,
                "ttfb_ms": first["ttfb_ms"] if first else {},
                "answer_after_end_of_turn_ms": _answer_after(first),
                "filler": first["fillers"][0]["text"] if first and first["fillers"] else None,
            }
            rows.append(row)
            log(
                f"{u.name:<18} v2v {row['voice_to_voice_ms']} ms  WER {row['wer']:.2f}  "
                f"“{transcript}” → “{row['reply']}”"
            )
        llm_rss = peak_rss_kb(engine.info.get("llm_pid"))
    v2v = [r["voice_to_voice_ms"] for r in rows if r["voice_to_voice_ms"] is not None]
    stages: dict[str, dict[str, float | None]] = {}
    for key in rows[0]["ttfb_ms"] if rows and rows[0]["ttfb_ms"] else []:
        vals = [r["ttfb_ms"][key] for r in rows if r["ttfb_ms"].get(key) is not None]
        stages[key] = {"p50": _pct(vals, 50), "p95": _pct(vals, 95)}
    after = [r["answer_after_end_of_turn_ms"] for r in rows]
    after = [a for a in after if a is not None]
    refs = [_norm(r["reference"]) for r in rows]
    hyps = [_norm(r["transcript"]) for r in rows]
    summary = {
        "utterances": len(rows),
        "answered": len(v2v),
        "voice_to_voice_ms": {"p50": _pct(v2v, 50), "p95": _pct(v2v, 95),
                              "min": min(v2v, default=None), "max": max(v2v, default=None)},
        "ttfb_ms": stages,
        "answer_after_end_of_turn_ms": {"p50": _pct(after, 50), "p95": _pct(after, 95)},
        "fillers_played": sum(r["filler"] is not None for r in rows),
        "stt_wer": round(float(jiwer.wer(refs, hyps)), 3) if rows else None,
        "peak_rss_mb": {
            "voice_agent": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "llm_server": None if llm_rss is None else round(llm_rss / 1024, 1),
        },
        "machine": {
            "cores": os.cpu_count(),
            "cpu": _cpu_name(),
            "python": platform.python_version(),
        },
        "engine": engine.info | {"llm_pid": None},
    }  # fmt: skip
    report = {"summary": summary, "utterances": rows}
    args.json.write_text(json.dumps(report, indent=2))
    print(_format_summary(summary))
    log(f"figures written to {args.json}")
    return 0


@contextlib.asynccontextmanager
async def in_process_server(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port; yields "127.0.0.1:port"."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await serving


def _answer_after(turn: dict[str, Any] | None) -> float | None:
    """End of turn decided → first answer audio out (what the filler deadline is tuned on)."""
    if turn is None:
        return None
    t = turn["timeline_ms"]
    if t["first_audio_out"] is None or t["decided"] is None:
        return None
    return round(float(t["first_audio_out"]) - float(t["decided"]), 1)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _format_summary(s: dict[str, Any]) -> str:
    v = s["voice_to_voice_ms"]
    lines = [
        f"voice-agent bench: {s['answered']}/{s['utterances']} utterances answered "
        f"on {s['machine']['cores']} cores ({s['machine']['cpu']})",
        f"  voice-to-voice   p50 {v['p50']} ms   p95 {v['p95']} ms   "
        f"(min {v['min']}, max {v['max']})",
    ]
    for stage, q in s["ttfb_ms"].items():
        lines.append(f"  {stage:<18} p50 {q['p50']}   p95 {q['p95']}")
    a = s["answer_after_end_of_turn_ms"]
    lines.append(f"  answer after end of turn p50 {a['p50']}   p95 {a['p95']}   "
                 f"(fillers played: {s['fillers_played']})")  # fmt: skip
    rss = s["peak_rss_mb"]
    lines.append(f"  STT WER          {s['stt_wer']}")
    lines.append(f"  peak RSS         voice-agent {rss['voice_agent']} MB, "
                 f"llm server {rss['llm_server']} MB")  # fmt: skip
    return "\n".join(lines)


async def run_server_bench(args: argparse.Namespace, log: Callable[[str], None]) -> int:
    """The same utterances, streamed in real time to a running server over its WebSocket.

    Reports voice-to-voice as the client sees it (true end of speech → first agent audio
    frame received) beside the server's own figure (→ first frame sent by the session),
    so the transport's share is visible. Both run from the same true end of speech; the
    server's times are mapped onto the client's clock through ``session.started``.
    """
    import json
    from types import SimpleNamespace

    from voice_agent.tts.piper import PiperTTS

    url = args.server if "://" in args.server else f"ws://{args.server}"
    if not url.rstrip("/").endswith("/v1/voice/ws"):
        url = url.rstrip("/") + "/v1/voice/ws"
    items = utterances(SimpleNamespace(tts=PiperTTS()))  # type: ignore[arg-type]
    items = items[: args.limit] if args.limit else items
    rows: list[dict[str, Any]] = []
    for u in items:
        pcm = np.concatenate([np.zeros(SAMPLE_RATE // 2, dtype=np.int16), u.pcm])
        row = await _bench_one_over_ws(url, pcm, speech_end(pcm))
        row = {"name": u.name} | row
        rows.append(row)
        log(f"{u.name:<18} client {row.get('client_v2v_ms')} ms, "
            f"server {row.get('server_v2v_ms')} ms")  # fmt: skip
    summary: dict[str, Any] = {"server": url, "utterances": len(rows)}
    for key in ("client_v2v_ms", "server_v2v_ms", "transport_ms"):
        vals = [r[key] for r in rows if r.get(key) is not None]
        summary[key] = {"p50": _pct(vals, 50), "p95": _pct(vals, 95)}
    summary["machine"] = {"cores": os.cpu_count(), "cpu": _cpu_name()}
    args.json.write_text(json.dumps({"summary": summary, "utterances": rows}, indent=2))
    c, s_, t = summary["client_v2v_ms"], summary["server_v2v_ms"], summary["transport_ms"]
    print(
        f"voice-agent bench --server {url}: {len(rows)} utterances\n"
        f"  voice-to-voice seen by the client  p50 {c['p50']} ms   p95 {c['p95']} ms\n"
        f"  voice-to-voice inside the server   p50 {s_['p50']} ms   p95 {s_['p95']} ms\n"
        f"  transport (sent → received)        p50 {t['p50']} ms   p95 {t['p95']} ms"
    )
    log(f"figures written to {args.json}")
    return 0


async def _bench_one_over_ws(url: str, pcm: Pcm, end: int) -> dict[str, Any]:
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


async def measure_pacing(seconds: float) -> dict[str, float]:
    """Real-time pacing of the outbound WebRTC track: inter-frame send intervals."""
    from voice_agent.core.clock import LoopClock
    from voice_agent.transports.webrtc import PacedAudioTrack

    loop = asyncio.get_running_loop()
    track = PacedAudioTrack(LoopClock())
    times = []
    start = loop.time()
    while loop.time() - start < seconds:
        await track.recv()
        times.append(loop.time())
    gaps = np.diff(times) * 1000
    drift = (times[-1] - times[0]) * 1000 - (len(times) - 1) * 20.0
    return {
        "frames": len(times),
        "interval_p50_ms": round(float(np.percentile(gaps, 50)), 3),
        "jitter_p99_ms": round(float(np.percentile(np.abs(gaps - 20.0), 99)), 3),
        "max_interval_ms": round(float(gaps.max()), 3),
        "drift_ms": round(float(drift), 3),
    }


async def _bench_one_over_webrtc(base: str, pcm: Pcm, end: int) -> dict[str, Any]:
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


async def run_transport_bench(
    args: argparse.Namespace, cfg: EngineConfig, log: Callable[[str], None]
) -> int:
    """WebSocket and WebRTC side by side against an in-process server on 127.0.0.1, plus
    60 s of real-time pacing of the outbound WebRTC track."""
    import json

    from voice_agent.runtime import open_engine
    from voice_agent.server import create_app
    from voice_agent.transports.webrtc import restrict_ice_addresses

    # two local peers: never send a packet to any address but 127.0.0.1
    restrict_ice_addresses(["127.0.0.1"])
    log(f"measuring outbound pacing for {args.pacing_s:.0f} s…")
    pacing = await measure_pacing(args.pacing_s)
    log(f"pacing: {pacing}")
    async with (
        open_engine(cfg, log) as engine,
        in_process_server(create_app(engine=engine)) as base,
    ):
        items = utterances(engine)
        items = items[: args.limit] if args.limit else items
        rows: list[dict[str, Any]] = []
        for u in items:
            pcm = np.concatenate([np.zeros(SAMPLE_RATE // 2, dtype=np.int16), u.pcm])
            end = speech_end(pcm)
            ws_row = await _bench_one_over_ws(f"ws://{base}/v1/voice/ws", pcm, end)
            rtc_row = await _bench_one_over_webrtc(base, pcm, end)
            rows.append({"name": u.name, "websocket": ws_row, "webrtc": rtc_row})
            log(f"{u.name:<18} WS client {ws_row.get('client_v2v_ms')} ms, "
                f"WebRTC client {rtc_row.get('client_v2v_ms')} ms")  # fmt: skip
    summary: dict[str, Any] = {
        "pacing": pacing,
        "machine": {"cores": os.cpu_count(), "cpu": _cpu_name()},
    }
    for transport in ("websocket", "webrtc"):
        summary[transport] = {}
        for key in ("client_v2v_ms", "server_v2v_ms", "transport_ms"):
            vals = [r[transport][key] for r in rows if r[transport].get(key) is not None]
            summary[transport][key] = {"p50": _pct(vals, 50), "p95": _pct(vals, 95)}
    args.json.write_text(json.dumps({"summary": summary, "utterances": rows}, indent=2))
    lines = [f"voice-agent bench --transports: {len(rows)} utterances, in-process server on {base}"]
    for transport in ("websocket", "webrtc"):
        c, srv, tr = (
            summary[transport][k] for k in ("client_v2v_ms", "server_v2v_ms", "transport_ms")
        )
        lines.append(
            f"  {transport:<9} client v2v p50 {c['p50']} p95 {c['p95']}"
            f" | server p50 {srv['p50']} | transport p50 {tr['p50']} ms"
        )
    lines.append(
        f"  WebRTC outbound pacing over {pacing['frames']} frames: "
        f"jitter p99 {pacing['jitter_p99_ms']} ms, max interval {pacing['max_interval_ms']} ms, "
        f"drift {pacing['drift_ms']} ms"
    )
    print("\n".join(lines))
    log(f"figures written to {args.json}")
    return 0
