"""Prometheus metrics for an operator (``GET /metrics``), with prometheus-client.

Every name starts ``voice_agent_``; the README lists each. Each app has its own
registry (so several apps in one process, as in the tests, count apart). Turn
latencies are observed when a turn the caller heard an answer to ends; sessions are
counted as they start, end and are refused; gauges are read when scraped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from voice_agent.session.metrics import TurnMetrics

# seconds: from 50 ms (a barge-in stop) to 10 s (a slow answer)
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

TURN_STAGES = (
    ("voice_to_voice", "End of the caller's speech to the first agent audio out"),
    ("endpoint", "End of the caller's speech to the end of turn decided"),
    ("stt_final", "Compute time of the turn's final transcript"),
    ("llm_first_token", "LLM request to its first token"),
    ("tts_first_audio", "First sentence to its first synthesized audio"),
)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.turn = {
            name: Histogram(
                f"voice_agent_{name}_seconds", doc, registry=r, buckets=LATENCY_BUCKETS
            )
            for name, doc in TURN_STAGES
        }
        self.barge_in_stop = Histogram(
            "voice_agent_barge_in_stop_seconds",
            "Caller speech onset to the agent's audio stopped (the last frame sent)",
            registry=r, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.sessions_started = Counter(
            "voice_agent_sessions_started", "Calls started", ["transport"], registry=r
        )
        self.sessions_ended = Counter(
            "voice_agent_sessions_ended", "Calls ended", ["transport", "close_code"], registry=r
        )
        self.sessions_refused = Counter(
            "voice_agent_sessions_refused", "Calls refused", ["reason"], registry=r
        )
        self.requests_refused = Counter(
            "voice_agent_requests_refused",
            "Requests refused before the app: no credential (auth), a foreign origin",
            ["reason"], registry=r,
        )  # fmt: skip
        self.barge_ins = Counter(
            "voice_agent_barge_ins",
            "Caller speech over the agent, by what it turned out to be",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.fillers = Counter("voice_agent_fillers", "Fillers played", registry=r)
        self.limits_hit = Counter(
            "voice_agent_limits_hit",
            "Limits that cut a call or a turn short: duration, text_length, llm_time",
            ["limit"], registry=r,
        )  # fmt: skip
        self.underruns = Counter(
            "voice_agent_underruns",
            "Gaps beyond real time (over 60 ms) in an answer's audio once it began to play",
            registry=r,
        )
        self.underrun_seconds = Counter(
            "voice_agent_underrun_seconds", "The length of those gaps", registry=r
        )
        self.turns = Counter(
            "voice_agent_turns", "Turns answered, by how the reply ended", ["status"], registry=r
        )
        self.llm_errors = Counter(
            "voice_agent_llm_errors", "Replies the LLM failed", ["path"], registry=r
        )
        self.llm_failovers = Counter(
            "voice_agent_llm_failovers", "Requests moved on to the next LLM endpoint", registry=r
        )
        self.chat_responses = Counter(
            "voice_agent_chat_responses", "Text-chat responses, by how they ended", ["state"],
            registry=r,
        )  # fmt: skip
        self.active_sessions = Gauge(
            "voice_agent_active_sessions", "Calls in progress", registry=r
        )
        self.queue_depth = Gauge(
            "voice_agent_queue_depth", "Model jobs waiting, per stage", ["stage"], registry=r
        )

    def watch(self, sessions: Callable[[], int], queues: dict[str, Callable[[], int]]) -> None:
        """Gauges read when scraped."""
        self.active_sessions.set_function(lambda: float(sessions()))
        for stage, depth in queues.items():
            self.queue_depth.labels(stage).set_function(
                lambda depth=depth: float(depth())  # type: ignore[misc]
            )

    def observe_turn(self, m: TurnMetrics) -> None:
        """A turn the caller heard an answer to (or began to) has ended."""
        ttfb = m.ttfb()
        values: dict[str, float | None] = {
            "voice_to_voice": m.voice_to_voice,
            "endpoint": _s(ttfb["endpoint_ms"]),
            "stt_final": _s(ttfb["stt_final_ms"]),
            "llm_first_token": _s(ttfb["llm_first_token_ms"]),
            "tts_first_audio": _s(ttfb["tts_first_audio_ms"]),
        }
        for name, value in values.items():
            if value is not None and value >= 0:
                self.turn[name].observe(value)
        self.turns.labels(str(m.status)).inc()
        if m.error is not None:
            self.llm_errors.labels("voice").inc()
        self.fillers.inc(len(m.fillers))
        self.underruns.inc(m.underruns)
        if m.limit is not None:
            self.limits_hit.labels(m.limit).inc()
        self.underrun_seconds.inc(m.underrun_s)
        for i in m.interruptions:
            self.barge_ins.labels(str(i.outcome)).inc()
            if i.last_sent is not None:
                self.barge_in_stop.observe(max(0.0, i.last_sent - i.onset))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _s(ms: Any) -> float | None:
    return None if ms is None else float(ms) / 1000.0
