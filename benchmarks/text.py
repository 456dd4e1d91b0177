"""``voice-agent bench --text``: time to first byte of the text chat over SSE.

An in-process server on 127.0.0.1 over the embedded stack; each question is a new
conversation: ``POST /v1/chat``, then its event stream read with httpx-sse, timed from
the POST as the client sees it. Figures, p50 and p95:
- to the first ``status`` event (goal ≤ 50 ms);
- to the first ``token`` (goal ≤ 600 ms on the default profile), over the turns that
  call no tool;
- for the turns that call a tool: to the tool's result (its ``tool`` finished event),
  and to the first token after it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from benchmarks.harness import in_process_server
from benchmarks.stats import machine, p50_p95
from voice_agent.session.engine import EngineConfig

QUESTIONS = [
    "What is the capital of Italy?",
    "Give me three tips for sleeping better.",
    "How many legs does a spider have?",
    "Explain what a prime number is.",
    "Write a haiku about the sea.",
    "What does HTTP stand for?",
    "Who wrote Pride and Prejudice?",
    "How do I boil an egg?",
    "What time is it in Tokyo?",
    "What's the time in Paris right now?",
]


async def one(client: Any, question: str) -> dict[str, Any]:
    from httpx_sse import aconnect_sse

    t0 = time.perf_counter()

    def ms() -> float:
        return round((time.perf_counter() - t0) * 1000, 1)

    r = await client.post("/v1/chat", json={"message": question})
    r.raise_for_status()
    row: dict[str, Any] = {"question": question, "accepted_ms": ms(), "first_status_ms": None,
                           "first_token_ms": None, "tool_result_ms": None, "tools": []}  # fmt: skip
    text: list[str] = []
    async with aconnect_sse(client, "GET", r.json()["events_url"]) as source:
        async for sse in source.aiter_sse():
            if not sse.data:  # httpx-sse reads a heartbeat after an id as an empty event
                continue
            data = json.loads(sse.data)
            if sse.event == "status" and row["first_status_ms"] is None:
                row["first_status_ms"] = ms()
            elif sse.event == "tool" and data["state"] != "started":
                row["tools"].append(data["name"])
                row["tool_result_ms"] = row["tool_result_ms"] or ms()
            elif sse.event == "token":
                row["first_token_ms"] = row["first_token_ms"] or ms()
                text.append(data["text"])
            elif sse.event in ("done", "error"):
                row["end"] = sse.event
                row["total_ms"] = ms()
                row["server_timings"] = data.get("timings")
    row["reply"] = "".join(text).strip()
    return row


async def run_text_bench(
    args: argparse.Namespace, cfg: EngineConfig, log: Callable[[str], None]
) -> int:
    import httpx

    from voice_agent.runtime import open_engine
    from voice_agent.server import create_app

    rows: list[dict[str, Any]] = []
    async with open_engine(cfg, log) as engine:
        app = create_app(engine=engine)
        async with in_process_server(app) as addr:
            await app.state.va.chat_service().warm()  # as `voice-agent serve` does at load
            # a new connection per request: reusing a kept-alive one, httpx saw each
            # POST answered and each stream's first event ~40 ms late (a raw socket on a
            # new connection gets the first event in under 1 ms; see README)
            fresh = httpx.Limits(max_keepalive_connections=0)
            async with httpx.AsyncClient(
                base_url=f"http://{addr}", timeout=300.0, limits=fresh
            ) as client:
                qs = QUESTIONS[: args.limit] if args.limit else QUESTIONS
                for q in qs:
                    row = await one(client, q)
                    rows.append(row)
                    at = row["tool_result_ms"]
                    tools = f" tools {row['tools']} at {at} ms" if row["tools"] else ""
                    log(
                        f"{q[:40]:<40} status {row['first_status_ms']} ms, first token "
                        f"{row['first_token_ms']} ms{tools} → {row['reply'][:70]}"
                    )
        model = engine.info.get("llm")
    plain = [r for r in rows if not r["tools"]]
    tooled = [r for r in rows if r["tools"]]

    def figures(rs: list[dict[str, Any]], key: str) -> dict[str, float | None]:
        return p50_p95([r[key] for r in rs if r[key] is not None])

    summary = {
        "llm": model,
        "machine": machine(),
        "questions": len(rows),
        "first_status_ms": figures(rows, "first_status_ms"),
        "first_token_ms": figures(plain, "first_token_ms"),
        "tool_turns": len(tooled),
        "tool_result_ms": figures(tooled, "tool_result_ms"),
        "tool_turn_first_token_ms": figures(tooled, "first_token_ms"),
        "errors": sum(r.get("end") != "done" for r in rows),
    }
    args.json.write_text(json.dumps({"summary": summary, "turns": rows}, indent=2))
    s = summary
    print(f"voice-agent bench --text ({model}): {len(rows)} questions over SSE")
    def line(key: str) -> str:
        return f"p50 {s[key]['p50']} / p95 {s[key]['p95']} ms"

    print(f"  first status  {line('first_status_ms')}")
    print(f"  first token   {line('first_token_ms')} ({len(plain)} turns without a tool)")
    print(
        f"  tool result   {line('tool_result_ms')} ({len(tooled)} turns with a tool); "
        f"their first token {line('tool_turn_first_token_ms')}"
    )
    log(f"figures written to {args.json}")
    return 0
