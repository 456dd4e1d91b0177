from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from httpx_sse import aconnect_sse

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the checkout's benchmarks/

# every server the tests start (in this process or as a subprocess) keeps its
# conversation store in a file of this run's own, not in the user's cache
os.environ["VOICE_AGENT_DB"] = str(Path(tempfile.mkdtemp(prefix="va-db-")) / "test.db")

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
JFK_REFERENCE = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)


async def until(cond: Callable[[], bool], limit_s: float = 10.0, every_s: float = 0.02) -> None:
    """Poll ``cond`` (state owned by a server or another process) until it holds; raises
    TimeoutError after about ``limit_s``."""
    import asyncio

    for _ in range(max(1, round(limit_s / every_s))):
        if cond():
            return
        await asyncio.sleep(every_s)
    if not cond():
        raise TimeoutError(f"condition not met within {limit_s} s")


def http_json(url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    """GET ``url`` (or POST ``body``: bytes as they are, anything else as JSON) and return
    the status and the JSON answer, error statuses included."""
    import json
    import urllib.error
    import urllib.request

    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(json.loads(r.read()))
    except urllib.error.HTTPError as e:
        return e.code, dict(json.loads(e.read()))


@pytest.fixture(scope="session")
def jfk_path() -> Path:
    return SAMPLES / "jfk.flac"


@pytest.fixture(scope="session")
def stt_tts() -> Iterator[tuple[object, object]]:
    """The real embedded whisper tiny.en and piper voice, loaded once."""
    from voice_agent.stt.whisper import WhisperSTT
    from voice_agent.tts.piper import PiperTTS

    yield WhisperSTT("tiny-en"), PiperTTS("joe-medium")


@pytest_asyncio.fixture(scope="session")
async def real_engine() -> AsyncIterator[object]:
    """The whole embedded stack on the fast LLM profile (Qwen2.5-Coder-0.5B)."""
    from voice_agent.runtime import open_engine
    from voice_agent.session.engine import EngineConfig

    cfg = EngineConfig(llm_profile="fast", llm_max_tokens=80)
    async with open_engine(cfg, log=lambda _m: None) as engine:
        yield engine


async def start_server(app: object, sndbuf: int | None = None) -> tuple[object, str, object]:
    """Run ``app`` on uvicorn on a free 127.0.0.1 port; returns (server, host:port, task).

    ``sndbuf`` fixes the kernel send buffer of accepted connections (they inherit it from
    the listening socket), so a client that stops reading blocks the server in a second
    rather than after the kernel has buffered megabytes.
    """
    import asyncio
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    from voice_agent.httplimits import timed_h11

    cfg = app.state.va.config  # type: ignore[attr-defined]
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_level="warning", lifespan="on", ws_max_size=cfg.max_message_bytes,
        http=timed_h11(cfg.header_timeout_s),  # as `voice-agent serve` runs it
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await until(lambda: bool(server.started) or task.done(), limit_s=30)
    if not server.started:
        await task  # raises what stopped it
        raise RuntimeError("the test server exited at start-up")
    return server, f"127.0.0.1:{port}", task


APPS: dict[str, object] = {}


@pytest_asyncio.fixture(scope="session")
async def real_server(real_engine: object) -> AsyncIterator[str]:
    """A real server on 127.0.0.1 over the embedded models; yields host:port.

    The app is in ``APPS[host:port]`` for tests that reach into the server's state."""
    from voice_agent.server import create_app

    app = create_app(engine=real_engine)  # type: ignore[arg-type]
    server, addr, task = await start_server(app)
    APPS[addr] = app
    yield addr
    server.should_exit = True  # type: ignore[attr-defined]
    await task  # type: ignore[misc]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server (Debian's package) in a temporary data directory, on
    127.0.0.1, for this test run; stopped after."""
    import glob
    import os
    import shutil
    import subprocess

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not bins:
        raise RuntimeError("PostgreSQL is not installed: run scripts/install.sh")
    bindir = Path(bins[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="va-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "va", "--auth=trust", "-E", "UTF8")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60",
        "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -F", "start")  # fmt: skip
    try:
        yield f"postgresql://va@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real redis-server (Debian's package) on 127.0.0.1 for this test run."""
    import shutil
    import subprocess
    import time

    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed: run scripts/install.sh")
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="va-redis-")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    import socket

    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("redis-server did not start")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


class Chat:
    def __init__(self, client: Any, llm: Any, state: Any) -> None:
        self.client, self.llm, self.state = client, llm, state

    async def start(self, message: str, **body: Any) -> dict[str, Any]:
        r = await self.client.post("/v1/chat", json={"message": message, **body})
        assert r.status_code == 202, r.text
        out: dict[str, Any] = r.json()
        return out

    async def events(
        self, rid: str, last_id: str | None = None, limit: int | None = None
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """(id, event, data) of each event, from after ``last_id``; at most ``limit``
        (then the connection is dropped)."""
        headers = {} if last_id is None else {"Last-Event-ID": last_id}
        got: list[tuple[str, str, dict[str, Any]]] = []
        async with aconnect_sse(
            self.client, "GET", f"/v1/chat/{rid}/events", headers=headers
        ) as source:
            assert source.response.headers["cache-control"] == "no-cache"
            assert source.response.headers["x-accel-buffering"] == "no"
            async for sse in source.aiter_sse():
                if not sse.data:  # httpx-sse reads a heartbeat after an id as an empty event
                    continue
                got.append((sse.id, sse.event, json.loads(sse.data)))
                if limit is not None and len(got) >= limit:
                    break
        return got

    async def conversation(self, cid: str) -> dict[str, Any]:
        r = await self.client.get(f"/v1/conversations/{cid}")
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out


@pytest.fixture
async def chat_server() -> AsyncIterator[Any]:
    """Makes servers (an LLM double each) and closes them and their clients after."""
    from conftest import start_server

    opened: list[tuple[Any, Any, httpx.AsyncClient]] = []

    async def make(
        llm: Any, heartbeat_s: float = 15.0, tools: list[Any] | None = None,
        knowledge: Path | None = None,
    ) -> Chat:
        from doubles import double_engine

        from voice_agent.llm.tools import ToolRegistry
        from voice_agent.server import ServerConfig, create_app

        engine = double_engine(llm)
        engine.tools = ToolRegistry(tools or [])
        config = ServerConfig(sse_heartbeat_s=heartbeat_s, knowledge_dir=knowledge)
        app = create_app(engine=engine, config=config)
        srv, addr, task = await start_server(app)
        client = httpx.AsyncClient(base_url=f"http://{addr}", timeout=10.0)
        opened.append((srv, task, client))
        return Chat(client, llm, app.state.va)

    yield make
    for srv, task, client in opened:
        await client.aclose()
        srv.should_exit = True
        await task
