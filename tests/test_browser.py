"""A real Chromium caller: the page's own mic (a fake device fed from a WAV file), the
WebSocket, and the page's AudioWorklet playout cursor. Debian's chromium, driven by
playwright; a screenshot is saved under artifacts/."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voice_agent.audio.files import load_audio, write_wav
from voice_agent.audio.resample import resample

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
            await page.goto(f"http://{real_server}/?aec=0")
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
            await page.goto(f"http://{real_server}/?aec=0")
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
            await page.goto(f"http://{real_server}/?aec=0")
            await page.click("#start")
            await page.wait_for_function("window.va.connected === true", timeout=15_000)
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
