"""A real Chromium caller over WebRTC, run by tests/test_browser.py inside a network
namespace that holds nothing but loopback (``unshare --net``), so every ICE candidate,
STUN check and RTP packet of the call is on 127.0.0.1 by construction.

It starts the server on the embedded models (fast profile), opens the page with the
fake mic fed from ``--mic``, waits for the transcript and for the reply audio, and
writes what it saw to ``--out`` as JSON; the test asserts on that.

Usage: unshare --net python tests/netns_webrtc_caller.py --mic caller.wav --out seen.json
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
IFREQ = "16sH14x"


def loopback_up() -> list[str]:
    """Bring ``lo`` up in this fresh namespace; returns the interfaces it holds."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        got = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack(IFREQ, b"lo", 0))
        flags = struct.unpack(IFREQ, got)[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP))
    return [name for _, name in socket.if_nameindex()]


PAGE_STATE = """async () => ({
  transport: window.va.transport,
  rtcState: window.va.rtc.state,
  meterPeak: window.va.rtc.energy,
  loudFrames: window.va.rtc.loudFrames,
  inbound: await window.va.inboundAudio(),
  types: window.va.events.map(e => e.type),
  started: window.va.events.find(e => e.type === 'session.started') || null,
  finals: window.va.events.filter(e => e.type === 'transcript.final').map(e => e.text),
  agent: [...document.querySelectorAll('.line.agent .text')].map(e => e.textContent),
  user: [...document.querySelectorAll('.line.user[data-final] .text')].map(e => e.textContent),
  pair: await (async () => {
    const stats = [...(await window.va.stats()).values()];
    const byId = Object.fromEntries(stats.map(s => [s.id, s]));
    const pair = stats.find(s => s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded');
    if (!pair) return null;
    return {local: byId[pair.localCandidateId].address, remote: byId[pair.remoteCandidateId].address};
  })(),
})"""


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mic", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--screenshot", type=Path, default=None)
    args = ap.parse_args()
    seen: dict[str, Any] = {"interfaces": loopback_up()}

    from conftest import start_server
    from playwright.async_api import async_playwright
    from test_browser import CHROMIUM, chromium_args

    from voice_agent.runtime import open_engine
    from voice_agent.server import ServerConfig, create_app
    from voice_agent.session.engine import EngineConfig

    cfg = EngineConfig(llm_profile="fast", llm_max_tokens=80)
    async with open_engine(cfg, log=lambda _m: None) as engine:
        app = create_app(engine=engine, config=ServerConfig(ice_addresses=["127.0.0.1"]))
        server, addr, task = await start_server(app)
        errors: list[str] = []
        try:
            async with async_playwright() as p:
                browser = await p.chromium.launch(
                    executable_path=CHROMIUM,
                    headless=True,
                    # Chromium leaves loopback out of its ICE candidates unless told
                    args=[*chromium_args(args.mic), "--allow-loopback-in-peer-connection"],
                )
                page = await browser.new_page()
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"http://{addr}/?aec=0")
                seen["default_transport"] = await page.input_value("#transport")
                t0 = time.monotonic()
                await page.click("#start")
                await page.wait_for_function("window.va.connected === true", timeout=20_000)
                seen["connect_s"] = round(time.monotonic() - t0, 2)
                try:
                    await page.wait_for_function(
                        "[...document.querySelectorAll('.line.user[data-final]')]"
                        ".some(e => e.textContent.toLowerCase().includes('your country'))",
                        timeout=45_000,
                    )
                    # reply audio arrives: 1 s of it above -40 dBFS on the page's analyser
                    await page.wait_for_function("window.va.rtc.loudFrames >= 20", timeout=45_000)
                    await page.wait_for_function(
                        "window.va.events.some(e => e.type === 'reply.done'"
                        " && e.status === 'completed')",
                        timeout=60_000,
                    )
                except Exception as exc:
                    seen["timeout"] = str(exc).splitlines()[0]
                seen["page"] = await page.evaluate(PAGE_STATE)
                if args.screenshot:
                    await page.screenshot(path=str(args.screenshot), full_page=True)
                sid = (seen["page"]["started"] or {}).get("session_id")
                live = app.state.va.sessions.get(sid)
                seen["server_report"] = live.report() if live else None
                # the server hangs up under the page: it says so, and Reconnect opens a new call
                live.hangup() if live else None
                try:
                    await page.wait_for_selector("#error:not([hidden])", timeout=10_000)
                    seen["lost_error"] = await page.inner_text("#error")
                    seen["lost_button"] = await page.inner_text("#start")
                    await page.click("#start")
                    await page.wait_for_function("window.va.connected === true", timeout=20_000)
                    await page.fill("#text", "Say hello.")
                    await page.click("#typed button")
                    await page.wait_for_function(
                        "window.va.events.filter(e => e.type === 'session.started').length === 2"
                        " && window.va.events.at(-1).type !== 'session.started'"
                        " && window.va.events.some((e, i) => i > window.va.events.findLastIndex("
                        "x => x.type === 'session.started') && e.type === 'reply.done')",
                        timeout=30_000,
                    )
                except Exception as exc:
                    seen["reconnect_timeout"] = str(exc).splitlines()[0]
                seen["reconnected_sid"] = await page.evaluate("window.va.sessionId")
                seen["error_hidden"] = await page.evaluate(
                    "document.getElementById('error').hidden"
                )
                sid = seen["reconnected_sid"]
                await page.click("#start")  # Stop: session.end on the data channel
                for _ in range(200):  # up to 10 s
                    if not app.state.va.peers:
                        break
                    await asyncio.sleep(0.05)
                seen["peers_after_stop"] = len(app.state.va.peers)
                seen["kept_report"] = app.state.va.reports.get(sid)
                await browser.close()
        finally:
            seen["page_errors"] = errors
            server.should_exit = True
            await task
    args.out.write_text(json.dumps(seen, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
