"""`voice-agent serve` as a real process: health while loading, and a SIGTERM drain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import websockets
from conftest import http_json, until

pytestmark = pytest.mark.models
ROOT = Path(__file__).resolve().parents[1]


async def test_sigterm_refuses_new_sessions_and_lets_the_live_reply_finish() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"127.0.0.1:{port}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voice_agent.cli", "serve", "--port", str(port),
        "--llm-profile", "fast", "--drain-grace", "30",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    try:
        # /healthz answers while the models load; /readyz says 503 until they are loaded
        seen_loading = health_while_loading = False
        async with asyncio.timeout(120):
            while True:
                if proc.returncode is not None:
                    assert proc.stdout is not None
                    output = (await proc.stdout.read()).decode(errors="replace")
                    pytest.fail(
                        f"voice-agent serve exited with {proc.returncode}:\n{output[-2000:]}"
                    )
                try:
                    status, body = await asyncio.to_thread(http_json, f"http://{base}/readyz")
                except (urllib.error.URLError, ConnectionError):
                    await asyncio.sleep(0.1)
                    continue
                if status == 503:
                    seen_loading = True
                    assert body["ready"] is False and body["stage"]
                    # (the models may finish loading between the two requests)
                    hstatus, health = await asyncio.to_thread(http_json, f"http://{base}/healthz")
                    assert hstatus == 200 and health["status"] == "ok"
                    health_while_loading |= health["ready"] is False
                if status == 200:
                    break
                await asyncio.sleep(0.1)
        assert seen_loading and health_while_loading
        ws = await websockets.connect(f"ws://{base}/v1/voice/ws")
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 16000}))
        await ws.send(
            json.dumps({"type": "text", "text": "Say hello to me in one short sentence."})
        )
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(60):
            while not any(e["type"] == "reply.audio.start" for e in events):
                msg = await ws.recv()
                if isinstance(msg, str):
                    events.append(json.loads(msg))
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        status, body = await asyncio.to_thread(http_json, f"http://{base}/readyz")
        assert status == 503 and body["draining"] is True
        async with websockets.connect(f"ws://{base}/v1/voice/ws") as late:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(late.recv(), 5)
            assert (late.close_code, late.close_reason) == (1013, "server is shutting down")
        # the live session finishes its reply, then the server says goodbye
        async with asyncio.timeout(60):
            try:
                while True:
                    msg = await ws.recv()
                    if isinstance(msg, str):
                        events.append(json.loads(msg))
            except websockets.ConnectionClosed:
                pass
        done = [e for e in events if e["type"] == "reply.done"]
        assert done and done[0]["status"] == "completed"
        assert ws.close_code == 1001 and ws.close_reason == "server is shutting down"
        async with asyncio.timeout(30):
            code = await proc.wait()
        assert code == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_killed_server_leaves_no_llama_server_behind() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voice_agent.cli", "serve", "--port", str(port),
        "--llm-profile", "fast", cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(120):
            while True:
                try:
                    status, body = await asyncio.to_thread(
                        http_json, f"http://127.0.0.1:{port}/readyz"
                    )
                except (urllib.error.URLError, ConnectionError):
                    status = 0
                if status == 200:
                    break
                assert proc.returncode is None, "voice-agent serve exited"
                await asyncio.sleep(0.2)
        assert "llm_pid" not in body["models"] and "llm_base_url" not in body["models"]
        (llm_pid,) = _children(proc.pid, "llama-server")
        assert _alive(llm_pid)
        proc.kill()  # no chance to clean up
        await proc.wait()
        await until(lambda: not _alive(llm_pid), limit_s=10, every_s=0.1)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _children(pid: int, name: str) -> list[int]:
    """Child processes of ``pid`` whose command is ``name`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :]
        if comm == name[:15] and int(rest.split()[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False
