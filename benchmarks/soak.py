"""``voice-agent bench --soak``: many WebSocket callers for minutes against an in-process
server, with real speech, real STT, VAD, end-of-turn model and TTS, and an LLM double
(an OpenAI-compatible endpoint double on 127.0.0.1 that streams a scripted answer,
read through the product's own OpenAI client).

Each caller asks a question, hears the answer, and asks again; every third turn it talks
over the answer (barge-in). At the end:

- lost transcripts: questions the server never turned into a turn with words;
- replies: each either completed, or interrupted where the caller talked over it;
- RSS of the process, sampled every 5 s, and its slope (MB per minute, least squares);
- asyncio tasks after the calls end, against before they began.

The LLM is a double so that the soak measures the server (its sessions, queues, memory
and tasks) for its whole length, not the 2-core box's LLM capacity (``--callers`` does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.corpus import sample, speech_end
from benchmarks.harness import in_process_server
from benchmarks.stats import machine, p50_p95
from voice_agent.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE, Pcm
from voice_agent.session.engine import EngineConfig

if TYPE_CHECKING:
    from voice_agent.server import ServerState

ANSWER = "It is a fine day. The sun is out, and the wind is calm. Anything else?"


@contextlib.asynccontextmanager
async def llm_endpoint_double(
    answer: str = ANSWER, gap_s: float = 0.03
) -> AsyncIterator[str]:
    """A test double of an OpenAI-compatible server: every chat completion streams
    ``answer`` a word per ``gap_s``. Yields its base URL."""

    handlers: set[asyncio.Task[Any]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            handlers.add(task)
        writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                body = json.loads(await reader.readexactly(length))
                if not body.get("stream"):  # a prefill or a models probe: one token
                    data = json.dumps({"id": "1", "object": "chat.completion", "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "It"},
                         "finish_reason": "length"}]}).encode()  # fmt: skip
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))  # fmt: skip
                    await writer.drain()
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
                for word in answer.split(" "):
                    chunk = {"id": "1", "object": "chat.completion.chunk", "choices": [
                        {"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
                    writer.write(_http_chunk(f"data: {json.dumps(chunk)}\n\n".encode()))
                    await writer.drain()
                    await asyncio.sleep(gap_s)
                writer.write(_http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, IndexError, ValueError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        # the client's idle keep-alive connections: closed, so their handlers read the
        # end and return (a cancelled handler makes Python 3.11's asyncio.streams log
        # its CancelledError as an unhandled exception)
        for writer in writers:
            writer.close()
        pending = {t for t in handlers if not t.done()}
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=5.0)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        await server.wait_closed()


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass
class CallerLog:
    session_id: str = ""
    asked: int = 0
    barged: list[int] = field(default_factory=list)
    """The turns (0-based) the caller talked over."""
    error: str | None = None


async def soak_caller(
    url: str, question: Pcm, interjection: Pcm, until: float, call_s: float
) -> list[CallerLog]:
    """Call, and call again when a call has lasted ``call_s``, until ``until`` (loop
    time); one log per call."""
    loop = asyncio.get_running_loop()
    logs: list[CallerLog] = []
    while loop.time() < until:
        log = await soak_call(url, question, interjection, min(until, loop.time() + call_s))
        logs.append(log)
        if log.error:
            break
    return logs


async def soak_call(url: str, question: Pcm, interjection: Pcm, until: float) -> CallerLog:
    """One call: ask, hear the answer, ask again, until ``until`` (loop time); talk over
    every third answer; then hang up."""
    import websockets

    loop = asyncio.get_running_loop()
    log = CallerLog()
    speech: asyncio.Queue[Pcm] = asyncio.Queue()
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    quiet = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    async with websockets.connect(url, max_size=None, open_timeout=30) as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": SAMPLE_RATE}))
        log.session_id = json.loads(await ws.recv())["session_id"]

        async def send() -> None:
            t0, k = loop.time(), 0
            current: Pcm | None = None
            pos = 0
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    if current is None and not speech.empty():
                        current, pos = speech.get_nowait(), 0
                    if current is not None:
                        frame = current[pos : pos + FRAME_SAMPLES]
                        pos += FRAME_SAMPLES
                        if pos >= len(current):
                            current = None
                    else:
                        frame = quiet
                    await ws.send(frame.tobytes())
                    k += 1
                    await asyncio.sleep(
                        max(0.0, t0 + k * FRAME_SAMPLES / SAMPLE_RATE - loop.time())
                    )

        async def read() -> None:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for msg in ws:
                    if isinstance(msg, str):
                        await events.put(json.loads(msg))

        async def next_event(kind: str) -> dict[str, Any]:
            async with asyncio.timeout(120):
                while (ev := await events.get())["type"] != kind:
                    pass
            return ev

        sender, reader = asyncio.create_task(send()), asyncio.create_task(read())
        try:
            k = 0
            while loop.time() < until:
                await speech.put(question)
                log.asked += 1
                if k % 3 == 2:  # talk over the answer
                    await next_event("reply.audio.start")
                    await asyncio.sleep(0.4)
                    await speech.put(interjection)
                    log.asked += 1
                    log.barged.append(k)
                    await next_event("metrics")  # the answer talked over
                await next_event("metrics")
                k += 1
                await asyncio.sleep(0.5)
        except (TimeoutError, OSError) as exc:
            log.error = f"{type(exc).__name__}: {exc}"
        finally:
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(json.dumps({"type": "session.end"}))
            await asyncio.sleep(0.5)
            sender.cancel()
            reader.cancel()
            await asyncio.gather(sender, reader, return_exceptions=True)
    return log


async def kept_reports(state: ServerState, logs: list[CallerLog]) -> dict[str, dict[str, Any]]:
    """Each call's report: kept in memory, else from the conversation store."""
    reports = dict(state.reports)
    for log in logs:
        if log.session_id and log.session_id not in reports and state.store is not None:
            row = await state.store.session(log.session_id)
            if row is not None and row["report"]:
                reports[log.session_id] = row["report"]
    return reports


def server_tasks() -> list[str]:
    """The event loop's tasks (their coroutines' names), less the LLM double's own (its
    keep-alive connections)."""
    names = [getattr(task.get_coro(), "__qualname__", "?") for task in asyncio.all_tasks()]
    return sorted(n for n in names if "llm_endpoint_double" not in n)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    if len(samples) < 2:
        return 0.0
    t = np.array([s[0] for s in samples]) / 60.0
    y = np.array([s[1] for s in samples])
    return round(float(np.polyfit(t, y, 1)[0]), 3)


def check(reports: dict[str, dict[str, Any]], logs: list[CallerLog]) -> dict[str, Any]:
    """What the server kept of each call, against what each caller did."""
    lost = 0
    bad_replies: list[str] = []
    completed = interrupted = 0
    outcomes: dict[str, int] = {}
    stops: list[float] = []
    for log in logs:
        report = reports.get(log.session_id)
        if report is None:
            lost += log.asked
            continue
        turns = report["turns"]
        heard = [t for t in turns if t["user_text"].strip()]
        lost += max(0, log.asked - len(heard))
        for t in turns:
            for b in t["barge_in"]:
                outcomes[str(b["outcome"])] = outcomes.get(str(b["outcome"]), 0) + 1
                if b["stop_latency_ms"] is not None and b["outcome"] == "confirmed":
                    stops.append(b["stop_latency_ms"])
            # the caller spoke over it (a confirmed barge-in, or speech first taken for a
            # backchannel that then became the caller's next turn)
            talked_over = bool(t["barge_in"])
            if t["status"] == "completed":
                completed += 1
            elif t["status"] == "interrupted" and (talked_over or t is turns[-1]):
                interrupted += 1  # truly: the caller talked over it, or hung up on it
            else:
                bad_replies.append(f"{log.session_id}: {t['status']} {t['reply_text'][:40]!r}")
    return {
        "questions": sum(log.asked for log in logs),
        "lost_transcripts": lost,
        "replies_completed": completed,
        "replies_interrupted": interrupted,
        "replies_neither": bad_replies,
        "caller_errors": [log.error for log in logs if log.error],
        "barge_ins_made": sum(len(log.barged) for log in logs),
        "barge_in_outcomes": outcomes,
        "barge_in_stop_ms": p50_p95(stops),
    }


async def run_soak(
    cfg: EngineConfig,
    sessions: int,
    seconds: float,
    log: Callable[[str], None],
    stagger_s: float = 0.25,
    call_s: float = 60.0,
) -> dict[str, Any]:
    """``sessions`` callers for ``seconds``, each hanging up after ``call_s`` and calling
    again (the server's memory is then measured across calls that come and go, as a
    server's are, and a call's own records, which grow with its turns, are let go)."""
    from voice_agent.runtime import open_engine
    from voice_agent.server import ServerConfig, create_app

    question = np.concatenate([sample("stereo_diarization.wav", 1), np.zeros(8000, np.int16)])
    question = question[: speech_end(question) + 4000]
    interjection = sample("jfk.flac")[: int(2.5 * SAMPLE_RATE)]
    loop = asyncio.get_running_loop()
    async with llm_endpoint_double() as llm_url:
        cfg.llm_base_url, cfg.llm_model = llm_url, "soak-double"
        async with open_engine(cfg, log) as engine:
            # a call just hung up may still be ending as its caller calls again; the
            # server keeps as many ended calls' reports as there are callers (the rest
            # are read back from the store)
            config = ServerConfig(max_sessions=2 * sessions, kept_reports=sessions)
            app = create_app(engine=engine, config=config)
            async with in_process_server(app) as base:
                state = app.state.va
                await asyncio.sleep(1.0)
                tasks_before = server_tasks()
                rss: list[tuple[float, float]] = []
                t0 = time.monotonic()

                async def sample_rss() -> None:
                    while True:
                        rss.append((time.monotonic() - t0, rss_mb()))
                        await asyncio.sleep(5.0)

                sampler = asyncio.create_task(sample_rss())
                until = loop.time() + seconds
                url = f"ws://{base}/v1/voice/ws"

                async def caller(k: int) -> list[CallerLog]:
                    await asyncio.sleep(k * stagger_s)
                    return await soak_caller(url, question, interjection, until, call_s)

                calls = await asyncio.gather(*(caller(k) for k in range(sessions)))
                logs = [log for each in calls for log in each]
                async with asyncio.timeout(60):
                    while state.sessions:  # noqa: ASYNC110 (the server's own state)
                        await asyncio.sleep(0.1)
                await asyncio.sleep(2.0)
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
                tasks_after = server_tasks()
                rss.append((time.monotonic() - t0, rss_mb()))
                result = check(await kept_reports(state, logs), logs)
    return result | {
        "sessions": sessions,
        "seconds": seconds,
        "call_s": call_s,
        "calls": len(logs),
        "rss_mb": {"start": round(rss[0][1], 1), "end": round(rss[-1][1], 1),
                   "max": round(max(v for _, v in rss), 1)},
        "rss_slope_mb_per_min": slope_mb_per_min(rss[len(rss) // 3 :]),  # after warm-up
        "rss_samples": [[round(t, 1), round(mb, 1)] for t, mb in rss],
        "tasks_before": len(tasks_before),
        "tasks_after": len(tasks_after),
        "tasks_left": sorted(set(tasks_after) - set(tasks_before)),
        "llm": "an OpenAI-compatible endpoint double (scripted answer)",
        "machine": machine(),
        "pid": os.getpid(),
    }


async def run_soak_bench(
    args: argparse.Namespace, cfg: EngineConfig, log: Callable[[str], None]
) -> int:
    result = await run_soak(
        cfg, args.soak_sessions, args.soak_seconds, log, call_s=args.soak_call_seconds
    )
    args.json.write_text(json.dumps(result, indent=2))
    print(
        f"voice-agent bench --soak: {result['sessions']} callers for {result['seconds']:.0f} s, "
        f"{result['calls']} calls of up to {result['call_s']:.0f} s (LLM double)\n"
        f"  questions {result['questions']}, lost transcripts {result['lost_transcripts']}\n"
        f"  replies completed {result['replies_completed']}, interrupted "
        f"{result['replies_interrupted']}, neither {len(result['replies_neither'])}\n"
        f"  barge-ins made {result['barge_ins_made']}, outcomes "
        f"{result['barge_in_outcomes']}, stop p50/p95 {result['barge_in_stop_ms']} ms\n"
        f"  RSS {result['rss_mb']} MB, slope {result['rss_slope_mb_per_min']} MB/min\n"
        f"  asyncio tasks {result['tasks_before']} before, {result['tasks_after']} after\n"
        f"  caller errors {len(result['caller_errors'])}"
    )
    log(f"figures written to {args.json}")
    return 0
