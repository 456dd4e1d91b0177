"""The soak, short: 8 WebSocket callers for 2 minutes against an in-process server with
the real STT, VAD, end-of-turn model and TTS, and an LLM double (``bench --soak`` runs
20 for 5 minutes). Asserts what was lost and left, never a latency."""

from __future__ import annotations

from benchmarks.soak import run_soak
from voice_agent.session.engine import EngineConfig


async def test_eight_callers_for_two_minutes_lose_nothing_and_leave_nothing() -> None:
    result = await run_soak(EngineConfig(), sessions=8, seconds=120, log=lambda _m: None)
    assert result["caller_errors"] == []
    assert result["questions"] >= 8 * 10  # every caller asked again and again
    assert result["lost_transcripts"] == 0
    assert result["replies_neither"] == []
    assert result["replies_interrupted"] >= 8  # each caller talked over an answer
    assert result["tasks_left"] == [] and result["tasks_after"] <= result["tasks_before"]
    made = result["barge_ins_made"]
    assert made >= 8 and sum(result["barge_in_outcomes"].values()) >= 8
    assert result["barge_in_outcomes"].get("confirmed", 0) >= 4  # stopped for the caller
    # a generous bound (`bench --soak`, 20 callers: see the README); a leak per turn
    # would be far above it
    assert abs(result["rss_slope_mb_per_min"]) < 100
