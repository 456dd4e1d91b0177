"""A llama.cpp ``llama-server`` that voice-agent starts, waits for, and stops itself."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from voice_agent.errors import LLMError, ModelError
from voice_agent.llm.base import Message
from voice_agent.llm.openai_compat import OpenAICompatLLM
from voice_agent.models import cache_dir, gguf_path, llama_server_binary, verify

PROFILES = {"quality": "qwen2.5-coder-1.5b", "fast": "qwen2.5-coder-0.5b"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalLlamaServer:
    """Owns one llama-server child process on 127.0.0.1.

    ``start()`` launches it, checks the GGUF's SHA-256 while it loads, and
    returns once it answers; ``stop()`` terminates it (kill after a grace
    period). Use as ``async with``.
    """

    def __init__(
        self, model: str, threads: int = 2, ctx: int = 4096, parallel: int = 1
    ) -> None:
        self.model = PROFILES.get(model, model)
        self.threads = threads
        self.ctx = ctx
        """Context of each slot, in tokens."""
        self.parallel = max(1, parallel)
        """Slots: replies decoded together in one batch (continuous batching)."""
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.log_path = cache_dir() / "logs" / "llama-server.log"
        self.slot_dir = cache_dir() / "slots"
        self.restarts = 0
        """Times the supervisor has brought the server back after it died."""
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self, within_s: float = 180.0) -> str:
        binary = llama_server_binary()
        path, sha = await asyncio.to_thread(gguf_path, self.model)
        self.port = self.port or _free_port()  # a restart keeps its address
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.slot_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        args = [
            str(binary), "-m", str(path), "--host", "127.0.0.1", "--port", str(self.port),
            "--jinja", "-t", str(self.threads), "--no-webui", "--alias", self.model,
            # one KV pool shared by the slots: a slot may use up to ``ctx`` of it
            "-np", str(self.parallel), "-kvu", "-c", str(self.ctx * self.parallel),
            "-cb", "--slot-save-path", str(self.slot_dir),
            # keep each idle slot's cache: with one KV pool, the default clears idle slots
            # on every new task, and the slots filled by ``fill_slots`` would read the
            # system prompt again (3-5 s each with 4 calls at once, measured)
            "--no-cache-idle-slots",
        ]  # fmt: skip
        self.proc = await asyncio.create_subprocess_exec(
            *args,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent,
        )
        log.close()
        check = asyncio.create_task(asyncio.to_thread(verify, path, sha) if sha else _noop())
        probe = OpenAICompatLLM(self.base_url, self.model)
        try:
            ready = asyncio.create_task(probe.wait_ready(within_s))
            died = asyncio.create_task(self.proc.wait())
            done, _ = await asyncio.wait({ready, died}, return_when=asyncio.FIRST_COMPLETED)
            if died in done:
                ready.cancel()
                raise LLMError(
                    f"llama-server exited with code {self.proc.returncode} "
                    f"while loading {path.name}",
                    f"see {self.log_path}",
                )
            died.cancel()
            await ready
            await check
        except TimeoutError as exc:
            await self._terminate(5.0)
            raise LLMError(
                f"llama-server did not become ready in {within_s:.0f}s", f"see {self.log_path}"
            ) from exc
        except (LLMError, ModelError, asyncio.CancelledError):
            check.cancel()
            await self._terminate(5.0)
            raise
        finally:
            await probe.close()
        return self.base_url

    async def fill_slots(self, messages: list[Message]) -> int:
        """Read ``messages`` (the system prompt) into every slot's cache: slot 0 reads it,
        the others get a copy of its cache (a few ms each), so the first calls at once
        do not each read the whole prompt. Returns the slots filled."""
        import httpx

        base = f"http://127.0.0.1:{self.port}"
        name = f"prompt-{self.port}.bin"
        async with httpx.AsyncClient(timeout=120.0) as client:
            body = {"messages": messages, "max_tokens": 1, "temperature": 0.0, "id_slot": 0}
            r = await client.post(f"{base}/v1/chat/completions", json=body)
            r.raise_for_status()
            if self.parallel == 1:
                return 1
            r = await client.post(f"{base}/slots/0?action=save", json={"filename": name})
            r.raise_for_status()
            try:
                for slot in range(1, self.parallel):
                    r = await client.post(
                        f"{base}/slots/{slot}?action=restore", json={"filename": name}
                    )
                    r.raise_for_status()
            finally:
                (self.slot_dir / name).unlink(missing_ok=True)
        return self.parallel

    def supervise(
        self,
        warm: Callable[[], Awaitable[object]] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        """Watch the server: when it dies (killed, crashed), start it again on the same
        port, then ``warm()`` it (the system prompt into its slots). A reply in flight
        when it died fails at once (the connection drops); the next one works."""
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._watch(warm, log))

    async def _watch(
        self, warm: Callable[[], Awaitable[object]] | None, log: Callable[[str], None]
    ) -> None:
        backoff = 0.5
        while not self._stopping:
            proc = self.proc
            if proc is None:
                return
            code = await proc.wait()
            if self._stopping or self.proc is not proc:
                return
            log(f"llama-server exited with code {code}; restarting it")
            while not self._stopping:
                self.proc = None
                try:
                    await self.start()
                    if warm is not None:
                        await warm()
                except Exception as exc:  # keep trying: the LLM is the call's voice
                    log(f"llama-server restart failed: {exc}; trying again in {backoff:.0f} s")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                self.restarts += 1
                backoff = 0.5
                log("llama-server is back")
                break

    async def stop(self, grace: float = 5.0) -> None:
        self._stopping = True
        if self._supervisor is not None and self._supervisor is not asyncio.current_task():
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        await self._terminate(grace)

    async def _terminate(self, grace: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(grace):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def __aenter__(self) -> LocalLlamaServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when voice-agent dies, so a
    killed voice-agent never leaves a llama-server behind. (SIGKILL, not SIGTERM:
    llama-server's graceful shutdown was seen to hang with a client connection open.)"""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


async def _noop() -> None:
    return None


def peak_rss_kb(pid: int | None) -> int | None:
    """The peak resident set (VmHWM) of a live process, in KiB."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
