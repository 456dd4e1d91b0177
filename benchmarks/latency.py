"""``voice-agent bench``: voice-to-voice latency over the bench corpus.

Each utterance is replayed in real time through the exact session core the server
uses; voice-to-voice is measured from the true end of speech (energy, not the VAD) to
the first agent audio sample sent. ``--server`` streams the same utterances to a running
server over its WebSocket and times what the client receives.
"""

from __future__ import annotations

import argparse
import json
import resource
from collections.abc import Callable
from typing import Any

from benchmarks.corpus import speech_end, utterances
from benchmarks.harness import answer_after, one_over_ws
from benchmarks.stats import machine, p50_p95, wer
from voice_agent.core.clock import LoopClock
from voice_agent.llm.local import peak_rss_kb
from voice_agent.session.config import SessionConfig
from voice_agent.session.engine import EngineConfig


async def run_bench(args: argparse.Namespace, cfg: EngineConfig, log: Callable[[str], None]) -> int:
    from voice_agent.replay import replay
    from voice_agent.runtime import open_engine

    session = SessionConfig()
    if getattr(args, "first_chunk_words", None) is not None:
        session.first_chunk_words = args.first_chunk_words
    if getattr(args, "no_prefill", False):
        session.prefill = False
    async with open_engine(cfg, log) as engine:
        rows: list[dict[str, Any]] = []
        for u in utterances(engine.tts, args.limit):
            pcm = u.with_lead()
            end = speech_end(pcm)
            result = await replay(
                engine, pcm, LoopClock(), config=session, speech_end_samples=[end]
            )
            turns = result.report["turns"]
            transcript = " ".join(t["user_text"] for t in turns)
            # the reply that answers the utterance is the last turn's (a long pause
            # inside the utterance can end an earlier turn, which is reported too)
            last = turns[-1] if turns else None
            row = {
                "name": u.name,
                "source": u.source,
                "seconds": round(len(u.pcm) / 16000, 2),
                "reference": u.reference,
                "transcript": transcript,
                "wer": wer(u.reference, transcript),
                "turns": len(turns),
                "reply": last["reply_text"] if last else "",
                "voice_to_voice_ms": last.get("voice_to_voice_true_ms") if last else None,
                "voice_to_voice_vad_ms": last["voice_to_voice_ms"] if last else None,
                "ttfb_ms": last["ttfb_ms"] if last else {},
                "timeline_ms": last["timeline_ms"] if last else {},
                "end_of_turn": last["end_of_turn"] if last else {},
                "answer_after_end_of_turn_ms": answer_after(last),
                "filler": last["fillers"][0]["text"] if last and last["fillers"] else None,
            }
            rows.append(row)
            log(
                f"{u.name:<18} v2v {row['voice_to_voice_ms']} ms  WER {row['wer']:.2f}  "
                f"“{transcript}” → “{row['reply']}”"
            )
        llm_rss = peak_rss_kb(engine.info.get("llm_pid"))
        prefills = getattr(engine.llm, "prefills", None)
    v2v = [r["voice_to_voice_ms"] for r in rows if r["voice_to_voice_ms"] is not None]
    stages: dict[str, dict[str, float | None]] = {}
    for key in rows[0]["ttfb_ms"] if rows and rows[0]["ttfb_ms"] else []:
        vals = [r["ttfb_ms"][key] for r in rows if r["ttfb_ms"].get(key) is not None]
        stages[key] = p50_p95(vals)
    after = [r["answer_after_end_of_turn_ms"] for r in rows]
    summary = {
        "utterances": len(rows),
        "first_chunk_words": session.first_chunk_words,
        "prefill": session.prefill,
        "llm_prefills": prefills,
        "answered": len(v2v),
        "voice_to_voice_ms": p50_p95(v2v) | {"min": min(v2v, default=None),
                                             "max": max(v2v, default=None)},
        "ttfb_ms": stages,
        "answer_after_end_of_turn_ms": p50_p95([a for a in after if a is not None]),
        "fillers_played": sum(r["filler"] is not None for r in rows),
        "stt_wer": wer([r["reference"] for r in rows], [r["transcript"] for r in rows])
        if rows else None,
        "peak_rss_mb": {
            "voice_agent": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "llm_server": None if llm_rss is None else round(llm_rss / 1024, 1),
        },
        "machine": machine(),
        "engine": engine.info | {"llm_pid": None},
    }  # fmt: skip
    args.json.write_text(json.dumps({"summary": summary, "utterances": rows}, indent=2))
    print(_format_summary(summary))
    log(f"figures written to {args.json}")
    return 0


def _format_summary(s: dict[str, Any]) -> str:
    v = s["voice_to_voice_ms"]
    lines = [
        f"voice-agent bench: {s['answered']}/{s['utterances']} utterances answered "
        f"on {s['machine']['cores']} cores ({s['machine']['cpu']})",
        f"  voice-to-voice   p50 {v['p50']} ms   p95 {v['p95']} ms   "
        f"(min {v['min']}, max {v['max']})",
    ]
    for stage, q in s["ttfb_ms"].items():
        lines.append(f"  {stage:<18} p50 {q['p50']}   p95 {q['p95']}")
    a = s["answer_after_end_of_turn_ms"]
    lines.append(f"  answer after end of turn p50 {a['p50']}   p95 {a['p95']}   "
                 f"(fillers played: {s['fillers_played']})")  # fmt: skip
    rss = s["peak_rss_mb"]
    lines.append(f"  STT WER          {s['stt_wer']}")
    lines.append(f"  peak RSS         voice-agent {rss['voice_agent']} MB, "
                 f"llm server {rss['llm_server']} MB")  # fmt: skip
    return "\n".join(lines)


async def run_server_bench(args: argparse.Namespace, log: Callable[[str], None]) -> int:
    """The same utterances, streamed in real time to a running server over its WebSocket.

    Reports voice-to-voice as the client sees it (true end of speech → first agent audio
    frame received) beside the server's own figure (→ first frame sent by the session),
    so the transport's share is visible. Both run from the same true end of speech; the
    server's times are mapped onto the client's clock through ``session.started``.
    """
    from voice_agent.tts.piper import PiperTTS

    url = args.server if "://" in args.server else f"ws://{args.server}"
    if not url.rstrip("/").endswith("/v1/voice/ws"):
        url = url.rstrip("/") + "/v1/voice/ws"
    rows: list[dict[str, Any]] = []
    for u in utterances(PiperTTS(), args.limit):
        pcm = u.with_lead()
        row = {"name": u.name} | await one_over_ws(url, pcm, speech_end(pcm))
        rows.append(row)
        log(f"{u.name:<18} client {row.get('client_v2v_ms')} ms, "
            f"server {row.get('server_v2v_ms')} ms")  # fmt: skip
    summary: dict[str, Any] = {"server": url, "utterances": len(rows)}
    for key in ("client_v2v_ms", "server_v2v_ms", "transport_ms"):
        summary[key] = p50_p95([r[key] for r in rows if r.get(key) is not None])
    summary["machine"] = machine()
    args.json.write_text(json.dumps({"summary": summary, "utterances": rows}, indent=2))
    c, s_, t = summary["client_v2v_ms"], summary["server_v2v_ms"], summary["transport_ms"]
    print(
        f"voice-agent bench --server {url}: {len(rows)} utterances\n"
        f"  voice-to-voice seen by the client  p50 {c['p50']} ms   p95 {c['p95']} ms\n"
        f"  voice-to-voice inside the server   p50 {s_['p50']} ms   p95 {s_['p95']} ms\n"
        f"  transport (sent → received)        p50 {t['p50']} ms   p95 {t['p95']} ms"
    )
    log(f"figures written to {args.json}")
    return 0
