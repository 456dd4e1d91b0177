"""Faults on a real uvicorn (127.0.0.1) with model doubles: a client that vanishes in the
middle of a reply (no close frame, the TCP connection dropped)."""

from __future__ import annotations

import asyncio
import json

import websockets
from conftest import start_server, until
from doubles import ScriptedLLMDouble, double_engine

from voice_agent.server import ServerConfig, create_app


async def test_a_client_vanishing_mid_reply_ends_its_session_cleanly_leaking_nothing() -> None:
    words = [f"Word number {k} is here. " for k in range(60)]
    llm = ScriptedLLMDouble([words] * 3, 0.05)
    app = create_app(engine=double_engine(llm), config=ServerConfig())
    srv, addr, task = await start_server(app)
    state = app.state.va
    try:
        await asyncio.sleep(0.2)
        baseline = len(asyncio.all_tasks())
        for _ in range(3):  # three times: a leak would grow
            ws = await websockets.connect(f"ws://{addr}/v1/voice/ws")
            await ws.send(json.dumps({"type": "session.start", "sample_rate": 16000}))
            sid = json.loads(await ws.recv())["session_id"]
            await ws.send(json.dumps({"type": "text", "text": "Count for me."}))
            frames = 0
            async with asyncio.timeout(10):
                async for msg in ws:
                    frames += isinstance(msg, bytes)
                    if frames == 25:  # half a second of the reply has reached it
                        break
            ws.transport.abort()  # gone: no close frame, no FIN
            # the send timeout is 5 s
            await until(lambda s=sid: s not in state.sessions and s in state.reports, 15)
            report = state.reports[sid]
            assert report["close_code"] == 1001 and report["close_reason"] == "client went away"
            (turn,) = report["turns"]
            assert turn["status"] == "interrupted"  # the reply stopped with its caller
            assert turn["user_text"] == "Count for me."
            assert report["history"][-2:] == [
                {"role": "user", "content": "Count for me."},
                {"role": "assistant", "content": report["history"][-1]["content"]},
            ]
            heard = report["history"][-1]["content"]
            assert heard.startswith("Word number 0") and heard == turn["heard_text"]
        await until(lambda: len(asyncio.all_tasks()) <= baseline, 10)
        assert not state.sessions and state.reserved == 0 and not state.calls_by_key.counts
    finally:
        srv.should_exit = True  # type: ignore[attr-defined]
        await task  # type: ignore[misc]
