"""The LLM context's bound: the newest turns that fit, the system prompt always."""

from __future__ import annotations

from voice_agent.llm.context import fit_context


def turns(n: int, size: int = 100) -> list[dict[str, str]]:
    out = [{"role": "system", "content": "S" * 50}]
    for i in range(n):
        out.append({"role": "user", "content": f"u{i}".ljust(size, ".")})
        out.append({"role": "assistant", "content": f"a{i}".ljust(size, ".")})
    return out


def test_a_history_within_the_budget_is_untouched() -> None:
    history = turns(5)
    assert fit_context(history, 1000) is history


def test_old_turns_go_first_down_to_three_quarters_and_a_user_turn_leads() -> None:
    history = turns(20)  # 4000 characters of history
    fitted = fit_context(history, 1000)
    assert fitted[0] == history[0]
    assert sum(len(m["content"]) for m in fitted[1:]) <= 750
    assert fitted[1]["role"] == "user"
    assert fitted[-1] == history[-1] and fitted[1:] == history[-len(fitted) + 1:]
    # the next turn or two still fit without a slide: the kept prefix holds
    grown = [*fitted, {"role": "user", "content": "x" * 100}]
    assert fit_context(grown, 1000) is grown


def test_a_message_over_the_budget_alone_is_cut_to_it() -> None:
    huge = [{"role": "system", "content": "S"}, {"role": "user", "content": "a" * 50_000 + "END"}]
    fitted = fit_context(huge, 1000)
    assert [m["role"] for m in fitted] == ["system", "user"]
    assert len(fitted[1]["content"]) == 1000 and fitted[1]["content"].endswith("END")


async def test_a_typed_text_over_the_limit_is_an_error_and_the_call_goes_on() -> None:
    import asyncio
    import json

    import websockets
    from conftest import start_server
    from doubles import ScriptedLLMDouble, double_engine

    from voice_agent.server import create_app

    llm = ScriptedLLMDouble([["Fine."]], 0.01)
    app = create_app(engine=double_engine(llm))
    srv, addr, task = await start_server(app)
    try:
        async with websockets.connect(f"ws://{addr}/v1/voice/ws") as ws:
            await ws.send(json.dumps({"type": "session.start", "sample_rate": 16000}))
            assert json.loads(await ws.recv())["type"] == "session.started"
            await ws.send(json.dumps({"type": "text", "text": "x" * 2001}))
            while not isinstance(msg := await asyncio.wait_for(ws.recv(), 10), str):
                pass  # the agent's audio (its idle line, say) comes as binary frames
            err = json.loads(msg)
            assert err["type"] == "error" and err["code"] == "bad_message"
            assert err["message"] == "text is over 2000 characters"
            await ws.send(json.dumps({"type": "text", "text": "Hello"}))
            while True:
                msg = await asyncio.wait_for(ws.recv(), 20)
                if isinstance(msg, str) and (ev := json.loads(msg))["type"] == "reply.done":
                    break
            assert ev["text"] == "Fine." and len(llm.requests) == 1
    finally:
        srv.should_exit = True  # type: ignore[attr-defined]
        await task  # type: ignore[misc]


def test_a_long_calls_report_keeps_the_history_once_and_each_turns_context_as_slices() -> None:
    """40 turns of 2000-character messages: each turn's context is the whole history so
    far (up to the budget); the report holds the history once, so it grows with the
    turns, not with their square, and every turn's request can still be read back."""
    import json

    from voice_agent.session.metrics import TurnMetrics
    from voice_agent.session.record import CallRecord, context_messages

    rec = CallRecord("You are helpful.", 0.0)
    contexts = []
    for k in range(40):
        m = TurnMetrics(gen=k + 1, user_text=f"{k} " + "u" * 2000)
        m.context = fit_context(
            [*rec.history, {"role": "user", "content": m.user_text}], 8000
        )
        contexts.append(m.context)
        rec.track(m)
        rec.commit(m)
        m.reply_text = f"{k} " + "a" * 2000
        rec.ended(m, {"role": "assistant", "content": m.reply_text})
    report = rec.report(0)
    assert len(json.dumps(report["history"])) > 160_000
    # a copy per turn would be ~8000 characters each (the budget); slices are ~30
    assert sum(len(json.dumps(t["context"])) for t in report["turns"]) < 40 * 40
    for turn, expected in zip(report["turns"], contexts, strict=True):
        assert context_messages(report, turn) == expected
    assert report["turns"][-1]["context"] == {"slices": [[0, 1], [79, 80]]}
    # a request the history does not hold (a cut message) is kept whole
    rec.turns[0].context = [{"role": "system", "content": "other"}]
    assert rec.report(0)["turns"][0]["context"] == {
        "messages": [{"role": "system", "content": "other"}]
    }
