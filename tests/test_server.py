"""The WebSocket protocol against a real server on 127.0.0.1 with the embedded models."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websockets
from conftest import http_json
from test_pipeline import read_back, read_back_overlap

from voice_agent.audio.files import load_audio
from voice_agent.audio.pcm import rms_dbfs
from voice_agent.audio.resample import resample
from voice_agent.transports.websocket import parse_audio

pytestmark = pytest.mark.models


class AudioMsg(tuple):  # type: ignore[type-arg]
    """("audio", gen) that also carries its samples; compares equal to ("audio", gen)."""

    def __new__(cls, gen: int, pcm: np.ndarray) -> AudioMsg:
        obj = super().__new__(cls, ("audio", gen))
        obj.pcm = pcm  # type: ignore[attr-defined]
        return obj


async def collect(
    ws: Any,
    until: str,
    limit_s: float = 60.0,
    status: str | None = None,
    after: str | None = None,
) -> tuple[list[Any], np.ndarray]:
    """Messages in order (events as dicts, audio as ("audio", gen)) until an event of type
    ``until`` (with that ``status``, if given; only once a transcript.final containing
    ``after`` has been seen, if given)."""
    heard_after = after is None
    log: list[Any] = []
    audio: list[np.ndarray] = []
    async with asyncio.timeout(limit_s):
        async for msg in ws:
            if isinstance(msg, bytes):
                gen, _seq, pcm = parse_audio(msg)
                log.append(AudioMsg(gen, pcm))
                audio.append(pcm)
                continue
            event = json.loads(msg)
            log.append(event)
            if event["type"] == "transcript.final" and after and after in event["text"].lower():
                heard_after = True
            if event["type"] == until and status in (None, event.get("status")) and heard_after:
                break
    return log, (np.concatenate(audio) if audio else np.zeros(0, dtype=np.int16))


def _audio_of(log: list[Any]) -> list[np.ndarray]:
    return [m.pcm if isinstance(m, AudioMsg) else np.zeros(0, dtype=np.int16) for m in log]


def types(log: list[Any]) -> list[str]:
    return [m["type"] if isinstance(m, dict) else "audio" for m in log]


async def test_health_and_ready(real_server: str) -> None:
    status, body = await asyncio.to_thread(http_json, f"http://{real_server}/readyz")
    assert status == 200 and body["ready"] is True and body["models"]["stt"] == "moonshine-base"
    status, body = await asyncio.to_thread(http_json, f"http://{real_server}/healthz")
    assert status == 200 and body == {"status": "ok", "ready": True, "stage": "ready"}


async def test_speak_jfk_get_transcript_reply_and_audio_in_order(
    real_server: str, jfk_path: Path
) -> None:
    pcm, rate = load_audio(jfk_path)
    pcm = resample(pcm, rate, 48000)
    async with websockets.connect(f"ws://{real_server}/v1/voice/ws") as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "session.start",
                    "sample_rate": 48000,
                    "encoding": "pcm16",
                    "output_sample_rate": 24000,
                    "session_id": "jfk-test",
                }
            )
        )
        started = json.loads(await ws.recv())
        assert started["type"] == "session.started" and started["session_id"] != "jfk-test"
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", started["session_id"])  # minted: 128 bits
        assert started["output_sample_rate"] == 24000

        async def speak() -> None:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            frames = [pcm[i : i + 960] for i in range(0, len(pcm), 960)]
            frames += [np.zeros(960, dtype=np.int16)] * 400  # 8 s of silence after
            for k, frame in enumerate(frames):
                await ws.send(frame.tobytes())
                await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - loop.time()))

        sender = asyncio.create_task(speak())
        try:
            # jfk pauses ~0.6 s mid-sentence: that may end a first turn, whose reply the
            # rest of the sentence then interrupts; wait for the reply that completes
            log, _ = await collect(
                ws, until="reply.done", status="completed", after="for your country"
            )
        finally:
            sender.cancel()
        kinds = types(log)
        finals = [m for m in log if isinstance(m, dict) and m["type"] == "transcript.final"]
        done = log[-1]
        said = " ".join(f["text"] for f in finals).lower()
        story = [
            (m["type"], m.get("gen"), m.get("text", m.get("status")))
            for m in log
            if isinstance(m, dict) and m["type"] not in ("transcript.partial", "reply.delta")
        ]  # what happened, should this fail
        assert "fellow americans" in said, story
        assert "ask what you can do for your country" in said, story
        assert done["status"] == "completed" and done["gen"] == finals[-1]["gen"]
        gen = done["gen"]
        audio = np.concatenate(
            [a for m, a in zip(log, _audio_of(log), strict=True) if m == ("audio", gen)]
        )
        i_final = log.index(finals[-1])
        i_delta = next(
            i
            for i, m in enumerate(log)
            if isinstance(m, dict) and m["type"] == "reply.delta" and m["gen"] == gen
        )
        i_audio = log.index(("audio", gen))
        assert i_final < i_delta < i_audio < len(log) - 1
        assert "speech.started" in kinds and "speech.stopped" in kinds
        assert "transcript.partial" in kinds
        assert len(audio) > 24000 * 0.5 and rms_dbfs(audio) > -35
        # a playout acknowledgement is accepted and shows in the session's report
        await ws.send(json.dumps({"type": "playout", "gen": gen, "samples": 24000}))
        log2, _ = await collect(ws, until="metrics")
        assert not [m for m in log2 if isinstance(m, dict) and m["type"] == "error"]
        await ws.send(json.dumps({"type": "session.end"}))
        with pytest.raises(websockets.ConnectionClosedOK):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1000
    status, report = await asyncio.to_thread(
        http_json, f"http://{real_server}/v1/sessions/{started['session_id']}"
    )
    assert status == 200 and report["live"] is False
    turn = next(t for t in report["turns"] if t["gen"] == gen)
    assert turn["client_played_ms"] == pytest.approx(1000.0)
    assert report["close_code"] == 1000


async def test_typed_text_gets_a_spoken_reply(real_server: str, real_engine: Any) -> None:
    async with websockets.connect(f"ws://{real_server}/v1/voice/ws") as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 16000}))
        assert json.loads(await ws.recv())["type"] == "session.started"
        await ws.send(json.dumps({"type": "text", "text": "Tell me about Paris in two sentences."}))
        log, audio = await collect(ws, until="reply.done")
        kinds = types(log)
        assert kinds.index("transcript.final") < kinds.index("reply.delta") < kinds.index("audio")
        done = log[-1]
        assert done["status"] == "completed" and "paris" in done["text"].lower()
        assert rms_dbfs(audio) > -35
        # the audio says the text: its first sentence at least, and a good part of the rest
        # (tiny.en mishears a word or two of a short clip)
        heard = read_back(real_engine.stt, audio)
        first = re.split(r"(?<=[.!?])\s+", done["text"].strip())[0]
        assert read_back_overlap(first, heard) >= 0.7, (done["text"], heard)
        assert len(heard.split()) >= 0.3 * len(done["text"].split()), (done["text"], heard)
