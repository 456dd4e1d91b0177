"""A real Chromium caller: the page's own mic (a fake device fed from a WAV file), the
WebSocket, and the page's AudioWorklet playout cursor. Debian's chromium, driven by
playwright; a screenshot is saved under artifacts/."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voice_agent.audio.files import load_audio, write_wav
from voice_agent.audio.resample import resample
from voice_agent.session.config import SessionConfig

pytestmark = pytest.mark.models

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def chromium_args(wav: Path) -> list[str]:
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory: pytest.TempPathFactory, jfk_path: Path) -> Path:
    pcm, rate = load_audio(jfk_path)
    pcm = resample(pcm, rate, 48000)
    wav = tmp_path_factory.mktemp("mic") / "caller.wav"
    # 25 s of silence after the speech: when a %noloop file ends, Chromium's fake device
    # goes on with a steady tone (-25 dBFS) that a VAD hears as sound
    silence = np.zeros(48000 * 25, dtype=np.int16)
    write_wav(wav, np.concatenate([np.zeros(48000, dtype=np.int16), pcm, silence]), 48000)
    return wav


async def test_browser_page_hears_transcribes_and_plays_the_reply(
    real_server: str, mic_wav: Path
) -> None:
    if shutil.which(CHROMIUM) is None:
        pytest.fail("Debian's chromium is not installed: run scripts/install.sh")
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=chromium_args(mic_wav)
        )
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"http://{real_server}/?aec=0&transport=ws")
            assert await page.title() == "voice-agent"
            await page.click("#start")
            await page.wait_for_function("window.va.connected === true", timeout=15_000)
            # the caller's words appear as a final transcript on the page
            try:
                await page.wait_for_function(
                    "[...document.querySelectorAll('.line.user[data-final]')]"
                    ".some(e => e.textContent.toLowerCase().includes('your country'))",
                    timeout=45_000,
                )
            except Exception as exc:
                seen = await page.evaluate("JSON.stringify(window.va.events.slice(-30))")
                raise AssertionError(f"no final transcript on the page; events: {seen}") from exc
            # reply audio played: the playback worklet's own cursor counts samples played
            await page.wait_for_function(
                "Object.values(window.va.played).some(n => n >= 48000)", timeout=45_000
            )
            state: dict[str, Any] = await page.evaluate(
                "({played: window.va.played, acked: window.va.acked,"
                " types: window.va.events.map(e => e.type),"
                " agent: [...document.querySelectorAll('.line.agent .text')].map(e => e.textContent),"
                " bars: document.querySelectorAll('#bars .bar').length})"
            )
            await page.screenshot(path=str(ARTIFACTS / "browser.png"), full_page=True)
        finally:
            await browser.close()
    assert not errors, errors
    assert "session.started" in state["types"] and "transcript.final" in state["types"]
    assert any(text.strip() for text in state["agent"])
    assert max(state["played"].values()) >= 48000
    assert state["acked"], "the page reports its playout cursor to the server"


async def test_denied_microphone_shows_a_clear_error(real_server: str, mic_wav: Path) -> None:
    from playwright.async_api import async_playwright

    args = [a for a in chromium_args(mic_wav) if a != "--use-fake-ui-for-media-stream"]
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=[*args, "--deny-permission-prompts"]
        )
        try:
            page = await browser.new_page()
            await page.goto(f"http://{real_server}/?aec=0&transport=ws")
            await page.click("#start")
            await page.wait_for_selector("#error:not([hidden])", timeout=10_000)
            text = await page.inner_text("#error")
            connected = await page.evaluate("window.va.connected")
        finally:
            await browser.close()
    assert text.startswith("Microphone access was denied.")
    assert connected is False


async def test_dropped_connection_shows_an_error_and_reconnect_works(
    real_server: str, mic_wav: Path
) -> None:
    from conftest import APPS
    from playwright.async_api import async_playwright

    state = APPS[real_server].state.va  # type: ignore[attr-defined]
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=chromium_args(mic_wav)
        )
        try:
            page = await browser.new_page()
            await page.goto(f"http://{real_server}/?aec=0&transport=ws")
            await page.click("#start")
            # the page is "connected" when its socket opens, before the server has read
            # session.start and made the session: wait for the server's answer to it
            await page.wait_for_function(
                "window.va.events.some(e => e.type === 'session.started')", timeout=15_000
            )
            assert state.sessions
            for session in list(state.sessions.values()):
                session.hangup()  # the server ends the session under the page
            await page.wait_for_selector("#error:not([hidden])", timeout=10_000)
            error = await page.inner_text("#error")
            button = await page.inner_text("#start")
            await page.click("#start")
            await page.wait_for_function("window.va.connected === true", timeout=15_000)
            await page.fill("#text", "Say hello.")
            await page.click("#typed button")
            await page.wait_for_function(
                "window.va.events.some(e => e.type === 'reply.done')", timeout=30_000
            )
            closes = await page.evaluate("window.va.closes")
            hidden = await page.evaluate("document.getElementById('error').hidden")
        finally:
            await browser.close()
    assert error.startswith("Connection lost (1000: session ended)")
    assert button == "Reconnect"
    assert closes[0]["code"] == 1000
    assert hidden is True


async def test_browser_page_over_webrtc_in_a_loopback_only_namespace(
    mic_wav: Path, tmp_path: Path
) -> None:
    """The page's default transport is WebRTC. Chromium and the server run in a fresh
    network namespace holding only ``lo`` (tests/netns_webrtc_caller.py), so the call
    cannot use any address but 127.0.0.1."""
    import subprocess
    import sys

    unshare = shutil.which("unshare")
    assert unshare, "util-linux's unshare is missing"
    out = tmp_path / "seen.json"
    ARTIFACTS.mkdir(exist_ok=True)
    script = Path(__file__).with_name("netns_webrtc_caller.py")
    proc = await asyncio.create_subprocess_exec(
        unshare, "--net", sys.executable, str(script), "--mic", str(mic_wav),
        "--out", str(out), "--screenshot", str(ARTIFACTS / "browser-webrtc.png"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log, _ = await asyncio.wait_for(proc.communicate(), timeout=240)
    assert proc.returncode == 0, log.decode()[-3000:]
    seen = json.loads(out.read_text())
    page = seen["page"]
    assert seen["interfaces"] == ["lo"]
    assert "timeout" not in seen, (seen["timeout"], page["types"])
    assert not seen["page_errors"], seen["page_errors"]
    assert seen["default_transport"] == "webrtc" and page["transport"] == "webrtc"
    assert page["started"]["transport"] == "webrtc"
    # the call ran over loopback, on the pair ICE nominated
    assert page["pair"] == {"local": "127.0.0.1", "remote": "127.0.0.1"}
    # the caller's words reached the page as a final transcript
    finals = " ".join(page["finals"]).lower()
    # ("fellow America," is heard now and then: the final "s" is lost, as over a phone
    # line; the audio reaches the server through Opus and a real-time jitter buffer)
    assert "your country" in finals and "fellow america" in finals, finals
    assert page["user"] == page["finals"]
    # reply audio reached the browser: getStats() energy, and the page's own analyser
    inbound = page["inbound"]
    assert inbound["totalAudioEnergy"] > 0.01, inbound
    assert inbound["totalSamplesReceived"] >= 48000 * 5, inbound
    assert page["loudFrames"] >= 20 and page["meterPeak"] > 0.05, page
    # the reply text shown on the page is the server's, turn by turn
    report = seen["server_report"]
    replies = [t["reply_text"] for t in report["turns"] if t["status"] != "pending"]
    # the idle prompt may follow the answer if the call runs long: a fixed line, not a turn
    fixed = {SessionConfig().idle_prompt, SessionConfig().goodbye}
    shown = [a.strip() for a in page["agent"] if a.strip() and a.strip() not in fixed]
    assert shown == [r for r in replies if r]
    assert any(t["status"] == "completed" for t in report["turns"])
    # Stop sends session.end on the data channel: the peer is closed and the report kept
    # a server hangup shows on the page, and Reconnect starts a new WebRTC session
    assert "reconnect_timeout" not in seen, seen["reconnect_timeout"]
    assert seen["lost_error"].startswith("Connection lost (the call ended)")
    assert seen["lost_button"] == "Reconnect" and seen["error_hidden"] is True
    assert seen["reconnected_sid"] != page["started"]["session_id"]
    assert seen["peers_after_stop"] == 0
    assert seen["kept_report"]["transport"] == "webrtc"
    assert seen["kept_report"]["turns"][0]["user_text"] == "Say hello."
