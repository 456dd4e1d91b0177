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
    write_wav(wav, np.concatenate([np.zeros(48000, dtype=np.int16), pcm]), 48000)
    return wav


async def test_browser_page_hears_transcribes_and_plays_the_reply(
    real_server: str, mic_wav: Path
) -> None:
    if not Path(CHROMIUM).exists():
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
            await page.wait_for_function(
                "[...document.querySelectorAll('.line.user[data-final]')]"
                ".some(e => e.textContent.toLowerCase().includes('your country'))",
                timeout=45_000,
            )
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
