"""``voice-agent bench --barge-in``: interruptions over the WebSocket transport, real models.

An in-process server on 127.0.0.1 and a simulated caller (:mod:`voice_agent.caller`) that
plays the agent's audio in real time and reports its playout, as the browser page does.
Each scenario is a fresh call: the caller asks for a long story, and once the story is
playing it talks over it at a chosen offset.

- **Interjections** (real speech and espeak-ng voices, several offsets): barge-in
  latency from the caller's true speech onset (energy) to the moment the agent's audio
  stopped at the caller's speaker (client-confirmed stop), plus the server-side figures;
  and how well the history's truncated reply matches what the caller heard (whisper on
  the audio the caller actually played, counted in words).
- **Backchannels and noise** ("uh-huh", "yeah", "mm-hmm", "right", coughs, a breath):
  the false barge-in rate: how often one of them cancelled the reply.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.corpus import backchannels, interjections, onset
from benchmarks.harness import in_process_server
from benchmarks.stats import cpu_name, pct
from voice_agent.audio.pcm import SAMPLE_RATE, Pcm
from voice_agent.caller import WsCaller
from voice_agent.session.driver import SessionConfig
from voice_agent.session.engine import Engine, EngineConfig
from voice_agent.session.turns import DuplexPolicy

PROMPT = "Tell me a long story about a lighthouse keeper and a storm, in about ten sentences."
OFFSETS_S = (0.6, 1.4, 2.2, 3.0)
NOISE_OFFSETS_S = (0.8, 2.0, 3.2)


async def _scenario(
    url: str, clip: Pcm, offset_s: float, confirm_wait_s: float
) -> tuple[WsCaller, int | None, float | None]:
    """One call: ask for the story, and ``offset_s`` after its audio starts play ``clip``.
    Returns the caller, the mic sample of the clip's onset, and its clock time."""
    caller = WsCaller(url, np.zeros(SAMPLE_RATE, dtype=np.int16))
    caller.say(PROMPT)
    state: dict[str, Any] = {"stop": False}
    task = asyncio.create_task(caller.run(90.0, stop=lambda: state["stop"]))
    loop = asyncio.get_running_loop()
    at_sample: int | None = None
    try:
        async with asyncio.timeout(60):
            while not any(g == 1 for _, g in caller.log.played):
                if task.done():
                    break
                await asyncio.sleep(0.01)
        at = caller.position + int(offset_s * SAMPLE_RATE)
        caller.insert(clip, at)
        at_sample = at + onset(clip)
        clip_end = caller.mic_time(at) + len(clip) / SAMPLE_RATE
        deadline = clip_end + confirm_wait_s
        while loop.time() < deadline and not task.done():
            kinds = [e["type"] for _, e in caller.log.events]
            if "barge_in" in kinds and loop.time() > clip_end + 0.5:
                break
            await asyncio.sleep(0.05)
    finally:
        state["stop"] = True
        await task
    return caller, at_sample, caller.mic_time(at_sample) if at_sample is not None else None


def _session_report(app: Any, caller: WsCaller) -> dict[str, Any] | None:
    started = [e for _, e in caller.log.of_type("session.started")]
    if not started:
        return None
    report: dict[str, Any] | None = app.state.va.reports.get(started[0]["session_id"])
    return report


async def run_barge_bench(
    args: argparse.Namespace, cfg: EngineConfig, log: Callable[[str], None]
) -> int:
    from voice_agent.runtime import open_engine
    from voice_agent.server import create_app

    cfg.llm_max_tokens = max(cfg.llm_max_tokens, 220)
    policy = DuplexPolicy()
    if args.barge_min_ms is not None:
        policy = dataclasses.replace(policy, barge_in_min_s=args.barge_min_ms / 1000)
    async with open_engine(cfg, log) as engine:
        app = create_app(engine=engine, session_config=SessionConfig(duplex=policy))
        async with in_process_server(app) as base:
            url = f"ws://{base}/v1/voice/ws"
            rows = await _interjection_rows(app, engine, url, args, log)
            noise = await _noise_rows(app, url, args, log)
    summary = _summarize(rows, noise, cfg, engine, policy)
    args.json.write_text(json.dumps({"summary": summary, "interjections": rows, "noise": noise},
                                    indent=2))  # fmt: skip
    print(_format(summary))
    log(f"figures written to {args.json}")
    return 0


async def _interjection_rows(
    app: Any, engine: Engine, url: str, args: argparse.Namespace, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    clips = interjections()
    for name, clip in clips:
        for offset in OFFSETS_S:
            if args.limit and len(rows) >= args.limit:
                return rows
            caller, _at, onset_t = await _scenario(url, clip, offset, confirm_wait_s=2.0)
            rows.append(await _interjection_row(app, engine, caller, name, offset, onset_t))
            log(f"interjection {len(rows):2d}: {json.dumps(rows[-1])[:200]}")
    return rows


async def _interjection_row(
    app: Any, engine: Engine, caller: WsCaller, name: str, offset: float, onset_t: float | None
) -> dict[str, Any]:
    row: dict[str, Any] = {"clip": name, "offset_s": offset}
    rlog = caller.log
    done = [e for _, e in rlog.of_type("reply.done") if e["gen"] == 1]
    ended_before = [t for t, e in rlog.of_type("reply.audio.end") if e["gen"] == 1]
    if onset_t is None or (ended_before and ended_before[0] < onset_t):
        row["valid"] = False  # the story was over before the caller spoke
        return row
    row["valid"] = True
    row["confirmed"] = any(e["gen"] == 1 for _, e in rlog.of_type("barge_in"))
    stopped = rlog.last_played(1)
    if row["confirmed"] and stopped is not None:
        if stopped <= onset_t:  # between sentences: the agent was not sounding at the onset
            row["agent_silent_at_onset"] = True
        else:
            row["client_stop_ms"] = round((stopped - onset_t) * 1000, 1)
    report = _session_report(app, caller)
    turn = report["turns"][0] if report and report["turns"] else None
    if turn is not None:
        b = [x for x in turn["barge_in"] if x["outcome"] == "confirmed"]
        if b:
            if not row.get("agent_silent_at_onset"):
                row["server_stop_ms"] = b[-1]["stop_latency_ms"]
            row["ack_stop_ms"] = b[-1]["client_stop_latency_ms"]
            row["confirmed_after_ms"] = b[-1]["decided_after_ms"]
            row["pauses"] = len(turn["barge_in"])
        row["heard_text"] = turn["heard_text"]
        row["heard_source"] = turn["heard_source"]
        played = rlog.audio(1)
        row["filler_played"] = bool(turn["fillers"])
        # the words heard are compared with whisper on the played audio; a filler's words
        # would be in that audio but never in the reply, so those calls are left out
        if row["confirmed"] and not row["filler_played"] and len(played) > SAMPLE_RATE // 4:
            padded = np.concatenate([played, np.zeros(SAMPLE_RATE // 2, dtype=np.int16)])
            asr = (await asyncio.to_thread(engine.stt.transcribe, padded)).text
            row["asr_of_played"] = asr
            row["truncation_error_words"] = abs(len(turn["heard_text"].split()) - len(asr.split()))
    if done:
        row["status"] = done[0]["status"]
    return row


async def _noise_rows(
    app: Any, url: str, args: argparse.Namespace, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, clip in backchannels():
        for offset in NOISE_OFFSETS_S:
            if args.limit and len(rows) >= args.limit:
                return rows
            caller, _at, onset_t = await _scenario(url, clip, offset, confirm_wait_s=2.5)
            rlog = caller.log
            ended = [t for t, e in rlog.of_type("reply.audio.end") if e["gen"] == 1]
            row: dict[str, Any] = {"clip": name, "offset_s": offset}
            row["valid"] = onset_t is not None and not (ended and ended[0] < onset_t)
            row["false_barge_in"] = any(e["gen"] == 1 for _, e in rlog.of_type("barge_in"))
            paused = [t for t, e in rlog.of_type("reply.paused") if e["gen"] == 1]
            resumed = [t for t, e in rlog.of_type("reply.resumed") if e["gen"] == 1]
            row["paused"] = bool(paused)
            if paused and resumed:
                row["paused_for_ms"] = round((resumed[-1] - paused[0]) * 1000, 1)
            rows.append(row)
            log(f"noise {len(rows):2d}: {json.dumps(row)}")
    return rows


def _summarize(
    rows: list[dict[str, Any]],
    noise: list[dict[str, Any]],
    cfg: EngineConfig,
    engine: Engine,
    policy: DuplexPolicy,
) -> dict[str, Any]:
    valid = [r for r in rows if r.get("valid")]
    confirmed = [r for r in valid if r.get("confirmed")]
    stops = [r["client_stop_ms"] for r in confirmed if "client_stop_ms" in r]
    server = [r["server_stop_ms"] for r in confirmed if r.get("server_stop_ms") is not None]
    acks = [r["ack_stop_ms"] for r in confirmed if r.get("ack_stop_ms") is not None]
    decided = [r["confirmed_after_ms"] for r in confirmed if "confirmed_after_ms" in r]
    errs = [r["truncation_error_words"] for r in confirmed if "truncation_error_words" in r]
    nvalid = [r for r in noise if r["valid"]]
    false = [r for r in nvalid if r["false_barge_in"]]
    pauses = [r["paused_for_ms"] for r in nvalid if "paused_for_ms" in r]
    return {
        "machine": f"{os.cpu_count()} cores ({cpu_name()}), {platform.system()}",
        "llm": engine.info.get("llm"),
        "stt": cfg.stt_model,
        "vad": cfg.vad,
        "barge_in_min_ms": round(policy.barge_in_min_s * 1000),
        "interjections": len(valid),
        "interjections_confirmed": len(confirmed),
        "agent_silent_at_onset": sum(bool(r.get("agent_silent_at_onset")) for r in confirmed),
        "client_stop_ms_p50": pct(stops, 50),
        "client_stop_ms_p95": pct(stops, 95),
        "server_stop_ms_p50": pct(server, 50),
        "server_stop_ms_p95": pct(server, 95),
        "ack_stop_ms_p50": pct(acks, 50),
        "confirmed_after_ms_p50": pct(decided, 50),
        "confirmed_after_ms_p95": pct(decided, 95),
        "truncation_checked": len(errs),
        "truncation_error_words_mean": round(float(np.mean(errs)), 2) if errs else None,
        "truncation_within_1_word": round(sum(e <= 1 for e in errs) / len(errs), 3)
        if errs
        else None,
        "noise_trials": len(nvalid),
        "false_barge_ins": len(false),
        "false_barge_in_rate": round(len(false) / len(nvalid), 3) if nvalid else None,
        "noise_paused_for_ms_p50": pct(pauses, 50),
    }


def _format(s: dict[str, Any]) -> str:
    lines = [
        f"barge-in bench on {s['machine']} — LLM {s['llm']}, STT {s['stt']}, VAD {s['vad']},"
        f" first words check {s['barge_in_min_ms']} ms after the onset",
        f"interjections: {s['interjections_confirmed']}/{s['interjections']} confirmed"
        f" ({s['agent_silent_at_onset']} fell in a pause between the agent's sentences)",
        f"  stop at the caller's speaker (client-confirmed): p50 {s['client_stop_ms_p50']} ms,"
        f" p95 {s['client_stop_ms_p95']} ms",
        f"  last agent frame sent: p50 {s['server_stop_ms_p50']} ms,"
        f" p95 {s['server_stop_ms_p95']} ms; playout report at rest p50 {s['ack_stop_ms_p50']} ms",
        f"  confirmed (words) after: p50 {s['confirmed_after_ms_p50']} ms,"
        f" p95 {s['confirmed_after_ms_p95']} ms",
        f"  truncation ({s['truncation_checked']} calls with no filler): mean error"
        f" {s['truncation_error_words_mean']} words, within 1 word {s['truncation_within_1_word']}",
        f"backchannels and noise: {s['false_barge_ins']}/{s['noise_trials']} false barge-ins"
        f" (rate {s['false_barge_in_rate']}); paused for p50 {s['noise_paused_for_ms_p50']} ms",
    ]
    return "\n".join(lines)
