"""``voice-agent bench --transports``: WebSocket and WebRTC side by side against an
in-process server on 127.0.0.1, and the real-time pacing of the outbound WebRTC track."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.corpus import speech_end, utterances
from benchmarks.harness import in_process_server, one_over_webrtc, one_over_ws
from benchmarks.stats import machine, p50_p95
from voice_agent.session.engine import EngineConfig


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
    # from the track's own start (the first recv() returns after the first frame's setup)
    assert track.started_at is not None
    drift = (times[-1] - track.started_at) * 1000 - (len(times) - 1) * 20.0
    return {
        "frames": len(times),
        "interval_p50_ms": round(float(np.percentile(gaps, 50)), 3),
        "jitter_p99_ms": round(float(np.percentile(np.abs(gaps - 20.0), 99)), 3),
        "max_interval_ms": round(float(gaps.max()), 3),
        "drift_ms": round(float(drift), 3),
    }


async def run_transport_bench(
    args: argparse.Namespace, cfg: EngineConfig, log: Callable[[str], None]
) -> int:
    """WebSocket and WebRTC side by side against an in-process server on 127.0.0.1, plus
    60 s of real-time pacing of the outbound WebRTC track."""
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
        rows: list[dict[str, Any]] = []
        for u in utterances(engine.tts, args.limit):
            pcm = u.with_lead()
            end = speech_end(pcm)
            ws_row = await one_over_ws(f"ws://{base}/v1/voice/ws", pcm, end)
            rtc_row = await one_over_webrtc(base, pcm, end)
            rows.append({"name": u.name, "websocket": ws_row, "webrtc": rtc_row})
            log(f"{u.name:<18} WS client {ws_row.get('client_v2v_ms')} ms, "
                f"WebRTC client {rtc_row.get('client_v2v_ms')} ms")  # fmt: skip
    summary: dict[str, Any] = {"pacing": pacing, "machine": machine()}
    for transport in ("websocket", "webrtc"):
        summary[transport] = {}
        for key in ("client_v2v_ms", "server_v2v_ms", "transport_ms"):
            vals = [r[transport][key] for r in rows if r[transport].get(key) is not None]
            summary[transport][key] = p50_p95(vals)
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
