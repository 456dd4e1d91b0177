"""The scale-out shape, on one machine: two `voice-agent serve` processes sharing a
real PostgreSQL and a real Redis, behind a real HAProxy. A text chat started through
one process resumes through the other, and a voice session's record is readable from
both. (The LLM is a scripted OpenAI-compatible endpoint double, so the streams are
long enough to be cut in the middle; STT and TTS are the embedded models.)"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import websockets
from doubles import OpenAIEndpointDouble
from httpx_sse import aconnect_sse

pytestmark = pytest.mark.models
ROOT = Path(__file__).resolve().parents[1]
WORDS = [f"word{i} " for i in range(40)] + ["end."]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _ready(base: str, proc: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(1800):
            if proc.returncode is not None:
                assert proc.stdout is not None
                out = (await proc.stdout.read()).decode(errors="replace")
                pytest.fail(f"voice-agent serve exited with {proc.returncode}:\n{out[-3000:]}")
            try:
                if (await client.get(f"{base}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail("voice-agent serve did not become ready")


async def _balanced(lb: str) -> None:
    """Until HAProxy's health checks have found both processes ready."""
    seen: set[str] = set()
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(600):
            try:
                r = await client.get(f"{lb}/readyz")
                if r.status_code == 200:
                    seen.add(r.headers["x-backend"])
            except httpx.TransportError:
                pass
            if seen == {"a", "b"}:
                return
            await asyncio.sleep(0.1)
    pytest.fail(f"HAProxy did not balance over both processes (saw {seen})")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def cluster(postgres_url: str, redis_url: str) -> AsyncIterator[dict[str, Any]]:
    """Two serve processes (A, B) and HAProxy round-robin in front of them."""
    endpoint = OpenAIEndpointDouble("words", WORDS, gap_s=0.05)
    llm_url = await endpoint.start()
    ports = [_port(), _port()]
    procs = []
    for port in ports:
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voice_agent.cli", "serve", "--port", str(port),
            "--llm-url", llm_url, "--llm-model", "double", "--db", postgres_url,
            "--redis-url", redis_url, "--sse-heartbeat", "1",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        ))  # fmt: skip
    lb_port = _port()
    workdir = Path(tempfile.mkdtemp(prefix="va-haproxy-"))
    # the README's HAProxy shape, with a header naming the backend that answered
    config = (ROOT / "docs" / "haproxy.cfg").read_text()
    config = config.replace("127.0.0.1:8080", f"127.0.0.1:{lb_port}")
    config = config.replace("127.0.0.1:8001", f"127.0.0.1:{ports[0]}")
    config = config.replace("127.0.0.1:8002", f"127.0.0.1:{ports[1]}")
    config = config.replace("    balance leastconn", "    balance roundrobin\n"
                            "    http-response set-header X-Backend %s")  # fmt: skip
    (workdir / "haproxy.cfg").write_text(config)
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    check = await asyncio.create_subprocess_exec(
        exe, "-c", "-f", str(workdir / "haproxy.cfg"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    said, _ = await check.communicate()
    assert check.returncode == 0, said.decode(errors="replace")
    lb = await asyncio.create_subprocess_exec(
        exe, "-db", "-f", str(workdir / "haproxy.cfg"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        bases = [f"http://127.0.0.1:{p}" for p in ports]
        await asyncio.gather(*(_ready(b, p) for b, p in zip(bases, procs, strict=True)))
        await _balanced(f"http://127.0.0.1:{lb_port}")
        yield {"a": bases[0], "b": bases[1], "lb": f"http://127.0.0.1:{lb_port}",
               "endpoint": endpoint}  # fmt: skip
    finally:
        lb.terminate()
        await asyncio.wait_for(lb.wait(), 10)
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 60)
        endpoint.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def _events(
    client: httpx.AsyncClient, url: str, last_id: str | None = None, limit: int | None = None
) -> tuple[list[tuple[str, str, dict[str, Any]]], str | None]:
    headers = {} if last_id is None else {"Last-Event-ID": last_id}
    got: list[tuple[str, str, dict[str, Any]]] = []
    async with aconnect_sse(client, "GET", url, headers=headers) as source:
        backend = source.response.headers.get("x-backend")
        async for sse in source.aiter_sse():
            if not sse.data:
                continue
            got.append((sse.id, sse.event, json.loads(sse.data)))
            if limit is not None and len(got) >= limit:
                break
    return got, backend


def _text(events: list[tuple[str, str, dict[str, Any]]]) -> str:
    return "".join(e[2]["text"] for e in events if e[1] == "token")


async def test_a_chat_started_on_one_process_resumes_on_the_other(
    cluster: dict[str, Any],
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(f"{cluster['a']}/v1/chat", json={"message": "Count for me."})
        assert r.status_code == 202, r.text
        ids = r.json()
        url = ids["events_url"]
        # read a few events from B while A is still writing, drop, resume on B, then A
        first, _ = await _events(client, cluster["b"] + url, limit=5)
        second, _ = await _events(client, cluster["b"] + url, last_id=first[-1][0], limit=10)
        third, _ = await _events(client, cluster["a"] + url, last_id=second[-1][0])
        ids_seen = [int(e[0]) for e in first + second + third]
        assert ids_seen == list(range(1, len(ids_seen) + 1))  # no gap, no duplicate
        assert third[-1][1] == "done"
        whole, _ = await _events(client, cluster["b"] + url)  # an uninterrupted read
        assert whole == first + second + third
        assert _text(whole) == "".join(WORDS).strip() or _text(whole) == "".join(WORDS)
        # the conversation is the same seen from either process
        for base in (cluster["a"], cluster["b"]):
            conv = (await client.get(f"{base}/v1/conversations/{ids['conversation_id']}")).json()
            assert [(m["role"], m["source"]) for m in conv["messages"]] == [
                ("user", "text"), ("assistant", "text")]  # fmt: skip
            assert conv["messages"][1]["content"] == "".join(WORDS).strip()


async def test_through_haproxy_a_dropped_chat_resumes_on_the_other_backend(
    cluster: dict[str, Any],
) -> None:
    lb = cluster["lb"]
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(f"{lb}/v1/chat", json={"message": "Count again."})
        assert r.status_code == 202, r.text
        url = lb + r.json()["events_url"]
        first, b1 = await _events(client, url, limit=4)
        rest, b2 = await _events(client, url, last_id=first[-1][0])
        assert {b1, b2} == {"a", "b"}  # round robin: the resume went to the other process
        assert [int(e[0]) for e in first + rest] == list(range(1, len(first + rest) + 1))
        assert rest[-1][1] == "done"
        assert _text(first + rest).strip() == "".join(WORDS).strip()


async def test_a_voice_sessions_record_is_readable_from_both_processes(
    cluster: dict[str, Any],
) -> None:
    ws_url = cluster["a"].replace("http://", "ws://") + "/v1/voice/ws"
    async with websockets.connect(ws_url) as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 16000}))
        started = json.loads(await ws.recv())
        sid, cid = started["session_id"], started["conversation_id"]
        await ws.send(json.dumps({"type": "text", "text": "Count please."}))
        while True:
            msg = await asyncio.wait_for(ws.recv(), 60)
            if isinstance(msg, str) and json.loads(msg)["type"] == "reply.done":
                break
        async with httpx.AsyncClient(timeout=10) as client:
            # live on A; B reads the stored record of a call it is not serving
            live_b = (await client.get(f"{cluster['b']}/v1/sessions/{sid}")).json()
            assert live_b["live"] is True and live_b["conversation_id"] == cid
            await ws.send(json.dumps({"type": "session.end"}))
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 30)
            for _ in range(100):
                rec_b = (await client.get(f"{cluster['b']}/v1/sessions/{sid}")).json()
                if not rec_b["live"]:
                    break
                await asyncio.sleep(0.05)
            rec_a = (await client.get(f"{cluster['a']}/v1/sessions/{sid}")).json()
            for rec in (rec_b, rec_a):
                assert rec["live"] is False and rec["conversation_id"] == cid
                assert [t["user_text"] for t in rec["turns"]] == ["Count please."]
            conv = (await client.get(f"{cluster['b']}/v1/conversations/{cid}")).json()
            assert [(m["role"], m["source"]) for m in conv["messages"]] == [
                ("user", "voice"), ("assistant", "voice")]  # fmt: skip
