"""GET /metrics: Prometheus text from a real server after real calls and chats (doubles
for the models), read back with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets
from conftest import start_server
from doubles import ScriptedLLMDouble, double_engine
from prometheus_client.parser import text_string_to_metric_families

from voice_agent.server import ServerConfig, create_app


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_calls_chats_and_refusals_are_counted() -> None:
    llm = ScriptedLLMDouble([["Hello there."], ["Hi in text."]], 0.01)
    app = create_app(engine=double_engine(llm), config=ServerConfig(max_sessions=1))
    srv, addr, task = await start_server(app)
    try:
        async with websockets.connect(f"ws://{addr}/v1/voice/ws") as ws:
            await ws.send(json.dumps({"type": "session.start", "sample_rate": 16000}))
            assert json.loads(await ws.recv())["type"] == "session.started"
            # a second caller while the first is live: refused, and counted
            async with websockets.connect(f"ws://{addr}/v1/voice/ws") as late:
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(late.recv(), 10)
            async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
                live = samples((await client.get("/metrics")).text)
            assert live[("voice_agent_active_sessions", ())] == 1
            await ws.send(json.dumps({"type": "text", "text": "Hello"}))
            while True:
                msg = await asyncio.wait_for(ws.recv(), 20)
                if isinstance(msg, str) and json.loads(msg)["type"] == "reply.done":
                    break
            await ws.send(json.dumps({"type": "session.end"}))
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 20)
        async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
            r = await client.post("/v1/chat", json={"message": "Hi"})
            rid = r.json()["response_id"]
            async with client.stream("GET", f"/v1/chat/{rid}/events") as events:
                async for _ in events.aiter_lines():
                    pass
            r = await client.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        got: dict[Any, float] = samples(r.text)
        assert got[("voice_agent_sessions_started_total", (("transport", "websocket"),))] == 1
        assert got[("voice_agent_sessions_ended_total",
                    (("close_code", "1000"), ("transport", "websocket")))] == 1  # fmt: skip
        assert got[("voice_agent_sessions_refused_total", (("reason", "full"),))] == 1
        assert got[("voice_agent_active_sessions", ())] == 0
        assert got[("voice_agent_turns_total", (("status", "completed"),))] == 1
        # a typed turn has no end of speech: no voice-to-voice, but the LLM and TTS times
        assert got[("voice_agent_voice_to_voice_seconds_count", ())] == 0
        assert got[("voice_agent_llm_first_token_seconds_count", ())] == 1
        assert got[("voice_agent_tts_first_audio_seconds_count", ())] == 1
        assert 0 < got[("voice_agent_llm_first_token_seconds_sum", ())] < 5
        assert got[("voice_agent_chat_responses_total", (("state", "done"),))] == 1
        for stage in ("stt", "stt_partial", "tts", "end_of_turn"):
            assert got[("voice_agent_queue_depth", (("stage", stage),))] == 0
        names = {name for name, _ in got}
        assert all(n.startswith("voice_agent_") for n in names), names
    finally:
        srv.should_exit = True  # type: ignore[attr-defined]
        await task  # type: ignore[misc]


def test_a_spoken_turn_with_a_barge_in_is_observed() -> None:
    from voice_agent.core.enums import BargeOutcome, ReplyStatus
    from voice_agent.session.metrics import Interruption, TurnMetrics
    from voice_agent.telemetry import ServerMetrics

    m = TurnMetrics(gen=1, user_text="hi", speech_end=10.0, decided=10.3)
    m.llm_request, m.llm_first_token = 10.3, 10.6
    m.first_sentence, m.tts_first_audio, m.first_audio_out = 10.7, 10.85, 10.9
    m.status = ReplyStatus.INTERRUPTED
    m.fillers.append((10.5, "Hmm."))
    m.interruptions.append(Interruption(onset=11.0, paused=11.02, last_sent=11.06,
                                        outcome=BargeOutcome.CONFIRMED))  # fmt: skip
    metrics = ServerMetrics()
    metrics.observe_turn(m)
    got = samples(metrics.render().decode())
    assert got[("voice_agent_voice_to_voice_seconds_sum", ())] == pytest.approx(0.9)
    assert got[("voice_agent_endpoint_seconds_sum", ())] == pytest.approx(0.3)
    assert got[("voice_agent_llm_first_token_seconds_sum", ())] == pytest.approx(0.3)
    assert got[("voice_agent_tts_first_audio_seconds_sum", ())] == pytest.approx(0.15)
    assert got[("voice_agent_barge_in_stop_seconds_sum", ())] == pytest.approx(0.06)
    assert got[("voice_agent_barge_in_stop_seconds_bucket", (("le", "0.1"),))] == 1
    assert got[("voice_agent_barge_ins_total", (("outcome", "confirmed"),))] == 1
    assert got[("voice_agent_fillers_total", ())] == 1
    assert got[("voice_agent_turns_total", (("status", "interrupted"),))] == 1
