"""``voice-agent bench --callers N``: N WebSocket callers at once, each asking one
question, against an in-process server (or ``--server``).

Each caller streams a question in real time (real recordings, espeak-ng and piper
voices in turn), then silence, until its answer has played. Per caller:

- answer: the true end of its speech (energy, not the VAD) → the answer's first
  audio received (a filler is not an answer);
- first audible: the same end → the first agent audio of that turn received, a
  filler included;
- underruns: the answer's audio as a client plays it (from its first frame, each
  frame as it arrives or when the one before ends): gaps over 60 ms;
- the transcript's WER.

``--stagger S`` starts caller k at k·S seconds (default: all at once); ``--rounds R``
repeats each N. CPU (this process and the local llama-server) and their peak RSS
are read from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.corpus import Utterance, speech_end, utterances
from benchmarks.harness import in_process_server
from benchmarks.stats import machine, p50_p95, wer
from voice_agent.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE
from voice_agent.core.work import FairWorker
from voice_agent.session.engine import EngineConfig

UNDERRUN_S = 0.06
"""As the server counts them (voice_agent.session.record): a client's jitter buffer."""
GOAL_ANSWER_P95_MS = 1500.0


@dataclass
class CallerResult:
    name: str
    reference: str
    transcript: str = ""
    answer_ms: float | None = None
    first_audible_ms: float | None = None
    underruns: int = 0
    underrun_ms: float = 0.0
    server_underruns: int = 0
    refused: str | None = None
    """The close reason when the server refused the call."""
    reply: str = ""
    status: str | None = None
    ttfb_ms: dict[str, Any] = field(default_factory=dict)
    """The server's own time to first byte of each stage, for this turn."""
    from_end_ms: dict[str, float] = field(default_factory=dict)
    """Each event of the turn's server timeline, in ms from the true end of speech (which
    stage each caller waited on)."""
    frames: list[tuple[float, int, int]] = field(default_factory=list, repr=False)

    def row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "transcript": self.transcript,
            "wer": wer(self.reference, self.transcript) if self.transcript else None,
            "answer_ms": self.answer_ms,
            "first_audible_ms": self.first_audible_ms,
            "underruns": self.underruns,
            "underrun_ms": round(self.underrun_ms, 1),
            "server_underruns": self.server_underruns,
            "refused": self.refused,
            "status": self.status,
            "reply": self.reply,
            "ttfb_ms": self.ttfb_ms,
            "from_end_ms": self.from_end_ms,
        }


def client_underruns(arrivals: list[tuple[float, int]]) -> tuple[int, float]:
    """Gaps in playback when each frame plays as it arrives or when the one before it
    ends: (how many over :data:`UNDERRUN_S`, their total ms). ``arrivals``: (time,
    samples) of the answer's frames, in order."""
    count, total = 0, 0.0
    due: float | None = None
    for t, samples in arrivals:
        if due is not None and t - due > UNDERRUN_S:
            count += 1
            total += (t - due) * 1000
        due = max(due if due is not None else t, t) + samples / SAMPLE_RATE
    return count, total


async def one_caller(
    url: str, u: Utterance, delay_s: float, timeout_s: float = 90.0
) -> CallerResult:
    """One caller: wait ``delay_s``, ask ``u``, stay on the line until the answer ends."""
    import websockets

    from voice_agent.transports.websocket import AUDIO_HEADER

    await asyncio.sleep(delay_s)
    loop = asyncio.get_running_loop()
    pcm = u.with_lead()
    end = speech_end(pcm)
    res = CallerResult(u.name, u.reference)
    frames = [pcm[i : i + FRAME_SAMPLES] for i in range(0, len(pcm), FRAME_SAMPLES)]
    tail = np.zeros(FRAME_SAMPLES, dtype=np.int16).tobytes()
    done = asyncio.Event()
    turn: dict[str, Any] | None = None
    async with websockets.connect(url, max_size=None, open_timeout=30) as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": SAMPLE_RATE}))
        try:
            started = json.loads(await ws.recv())
        except websockets.ConnectionClosed as exc:
            res.refused = f"{exc.rcvd.code} {exc.rcvd.reason}" if exc.rcvd else "closed"
            return res
        if started.get("type") != "session.started":
            res.refused = str(started.get("code") or started.get("type"))
            return res
        offset = loop.time() - started["t_ms"] / 1000  # server session time 0, our clock
        t0 = loop.time()
        true_end = t0 + end / SAMPLE_RATE

        async def send() -> None:
            k = 0
            while not done.is_set() and k < len(frames) + 3000:
                await ws.send(frames[k].tobytes() if k < len(frames) else tail)
                k += 1
                await asyncio.sleep(max(0.0, t0 + k * FRAME_SAMPLES / SAMPLE_RATE - loop.time()))

        sender = asyncio.create_task(send())
        try:
            async with asyncio.timeout(timeout_s):
                async for msg in ws:
                    if isinstance(msg, bytes):
                        gen, _ = AUDIO_HEADER.unpack_from(msg)
                        samples = (len(msg) - AUDIO_HEADER.size) // 2
                        res.frames.append((loop.time(), gen, samples))
                        continue
                    event = json.loads(msg)
                    if event["type"] != "metrics" or event["turn"]["status"] == "pending":
                        continue
                    turn = event["turn"]
                    heard_end = turn["timeline_ms"]["speech_end"]
                    # the turn that ends with the question (a pause inside it can end
                    # an earlier one)
                    if heard_end is None or offset + heard_end / 1000 >= true_end - 0.3:
                        break
        except TimeoutError:
            res.status = "timeout"
        finally:
            done.set()
            await sender
        await ws.send(json.dumps({"type": "session.end"}))
    if turn is None:
        return res
    res.transcript = turn["user_text"]
    res.reply = turn["reply_text"]
    res.status = turn["status"]
    res.ttfb_ms = turn["ttfb_ms"] | {"voice_to_voice": turn["voice_to_voice_ms"]}
    res.server_underruns = turn["underruns"]["count"]
    res.from_end_ms = {
        k: round((offset + v / 1000 - true_end) * 1000, 1)
        for k, v in turn["timeline_ms"].items()
        if v is not None
    }
    gen_frames = [(t, n) for t, g, n in res.frames if g == turn["gen"]]
    if gen_frames:
        res.first_audible_ms = round((gen_frames[0][0] - true_end) * 1000, 1)
    first_out = turn["timeline_ms"]["first_audio_out"]
    if first_out is not None:
        sent = offset + first_out / 1000
        answer = [(t, n) for t, n in gen_frames if t >= sent - 0.005]
        if answer:
            res.answer_ms = round((answer[0][0] - true_end) * 1000, 1)
            res.underruns, res.underrun_ms = client_underruns(answer)
    return res


class CpuMeter:
    """CPU seconds and peak RSS of some processes, from /proc."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.tick = os.sysconf("SC_CLK_TCK")
        self.peak_rss_mb: dict[int, float] = {p: 0.0 for p in pids}
        self._t0 = 0.0
        self._cpu0 = 0.0
        self._task: asyncio.Task[None] | None = None

    def _cpu(self) -> float:
        total = 0.0
        for pid in self.pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / self.tick
            except (OSError, IndexError):
                pass
        return total

    def _rss(self) -> None:
        for pid in self.pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        mb = int(line.split()[1]) / 1024
                        self.peak_rss_mb[pid] = max(self.peak_rss_mb[pid], mb)
            except OSError:
                pass

    async def _sample(self) -> None:
        while True:
            self._rss()
            await asyncio.sleep(0.25)

    def start(self) -> None:
        self._t0, self._cpu0 = time.monotonic(), self._cpu()
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> dict[str, Any]:
        cpu, wall = self._cpu() - self._cpu0, time.monotonic() - self._t0
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return {
            "cpu_percent": round(100 * cpu / wall, 1) if wall else None,
            "peak_rss_mb": {str(p): round(v, 1) for p, v in self.peak_rss_mb.items()},
        }


def summarize(n: int, results: list[CallerResult], usage: dict[str, Any]) -> dict[str, Any]:
    answers = [r.answer_ms for r in results if r.answer_ms is not None]
    audible = [r.first_audible_ms for r in results if r.first_audible_ms is not None]
    answered = [r for r in results if r.transcript]
    p = p50_p95(answers)
    return {
        "callers": n,
        "calls": len(results),
        "answered": len(answers),
        "refused": sum(1 for r in results if r.refused),
        "answer_ms": p | {"max": max(answers) if answers else None},
        "first_audible_ms": p50_p95(audible),
        "underruns": sum(r.underruns for r in results),
        "underrun_ms_max": max((r.underrun_ms for r in results), default=0.0),
        "server_underruns": sum(r.server_underruns for r in results),
        "wer": wer([r.reference for r in answered], [r.transcript for r in answered])
        if answered
        else None,
        "goal_met": bool(answers)
        and len(answers) == len(results)
        and (p["p95"] or 0) <= GOAL_ANSWER_P95_MS
        and sum(r.underruns for r in results) == 0,
        **usage,
    }


async def run_callers_round(
    url: str, corpus: list[Utterance], n: int, stagger_s: float, first: int
) -> list[CallerResult]:
    jobs = [
        one_caller(url, corpus[(first + k) % len(corpus)], k * stagger_s) for k in range(n)
    ]
    return list(await asyncio.gather(*jobs))


async def run_callers_bench(
    args: argparse.Namespace, cfg: EngineConfig, log: Callable[[str], None]
) -> int:
    from voice_agent.runtime import open_engine
    from voice_agent.server import ServerConfig, create_app

    counts = sorted({int(c) for c in str(args.callers).split(",")})
    if cfg.llm_parallel == 1:
        cfg.llm_parallel = max(counts)  # as `serve --max-sessions max(N)` sizes it
    summaries: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []

    async def run_all(
        url: str, corpus: list[Utterance], pids: list[int], workers: list[FairWorker]
    ) -> None:
        for n in counts:
            meter = CpuMeter(pids)
            meter.start()
            busy0 = {w.name: w.busy_s for w in workers}
            results: list[CallerResult] = []
            for r in range(args.rounds):
                results += await run_callers_round(url, corpus, n, args.stagger, r * n)
                await asyncio.sleep(1.0)  # the sessions end between rounds
            usage = await meter.stop()
            if workers:  # seconds each model worker's thread ran, over this N's rounds
                usage["worker_busy_s"] = {
                    w.name: round(w.busy_s - busy0[w.name], 1) for w in workers
                }
            summary = summarize(n, results, usage)
            summaries.append(summary)
            rows.extend({"callers": n} | r.row() for r in results)
            a = summary["answer_ms"]
            log(
                f"{n} callers: answer p50 {a['p50']} p95 {a['p95']} max {a['max']} ms, "
                f"first audible p50 {summary['first_audible_ms']['p50']} ms, "
                f"underruns {summary['underruns']} (server {summary['server_underruns']}), "
                f"WER {summary['wer']}, CPU {summary['cpu_percent']}%, "
                f"refused {summary['refused']}, worker busy {usage.get('worker_busy_s')}"
            )

    if args.server:
        from voice_agent.runtime import load_tts

        server = args.server if "://" in args.server else f"ws://{args.server}"
        url = server if server.endswith("/v1/voice/ws") else server.rstrip("/") + "/v1/voice/ws"
        tts: Any = await asyncio.to_thread(load_tts, cfg)
        await run_all(url, utterances(tts), [], [])
    else:
        async with open_engine(cfg, log) as engine:
            app = create_app(engine=engine, config=ServerConfig(max_sessions=max(counts)))
            async with in_process_server(app) as base:
                llm_pid = engine.info.get("llm_pid")
                pids = [os.getpid()] + ([llm_pid] if llm_pid else [])
                workers = [engine.stt_worker, engine.partial_worker, engine.tts_worker,
                           engine.turn_worker]  # fmt: skip
                await run_all(f"ws://{base}/v1/voice/ws", utterances(engine.tts), pids, workers)
    holds = [s["callers"] for s in summaries if s["goal_met"]]
    out = {
        "summary": summaries,
        "largest_n_meeting_goal": max(holds) if holds else None,
        "goal": {"answer_p95_ms": GOAL_ANSWER_P95_MS, "underruns": 0},
        "stagger_s": args.stagger,
        "rounds": args.rounds,
        "profile": cfg.llm_base_url or cfg.llm_profile,
        "llm_parallel": cfg.llm_parallel,
        "machine": machine(),
        "callers": rows,
    }
    args.json.write_text(json.dumps(out, indent=2))
    print(f"voice-agent bench --callers ({out['profile']}, {args.rounds} rounds, "
          f"stagger {args.stagger} s, {cfg.llm_parallel} LLM slots)")  # fmt: skip
    print("| callers | answer p50 | answer p95 | first audible p50 | underruns | WER | CPU |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for s in summaries:
        a = s["answer_ms"]
        print(
            f"| {s['callers']} | {a['p50']} ms | {a['p95']} ms | "
            f"{s['first_audible_ms']['p50']} ms | {s['underruns']} | {s['wer']} | "
            f"{s['cpu_percent']}% |"
        )
    print(f"largest N meeting answer p95 <= {GOAL_ANSWER_P95_MS:.0f} ms with 0 underruns: "
          f"{out['largest_n_meeting_goal']}")  # fmt: skip
    log(f"figures written to {args.json}")
    return 0
