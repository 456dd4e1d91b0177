"""The conversation store on real databases: a SQLite file (the default) and a real
PostgreSQL server started by the tests. Its schema comes from the Alembic migrations;
conversations, voice sessions and their turns outlive the server process."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import websockets
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import start_server
from doubles import ScriptedLLMDouble, double_engine

from voice_agent.server import ServerConfig, create_app
from voice_agent.store import (
    ConversationStore,
    _make_engine,
    database_url,
    head_revision,
    migrate,
    open_store,
)
from voice_agent.store.tables import metadata


def test_database_urls() -> None:
    assert database_url("postgresql://u@h:5/db") == "postgresql+psycopg://u@h:5/db"
    assert database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert database_url("/tmp/x.db") == "sqlite:////tmp/x.db"
    assert database_url("sqlite:///rel.db") == "sqlite:///rel.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: Any, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    url: str = request.getfixturevalue("postgres_url")
    engine = sa.create_engine(database_url(url))
    with engine.begin() as conn:  # each test starts from an empty database
        conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    return url


def test_the_migrations_build_exactly_the_declared_schema_and_run_once(db: str) -> None:
    engine = _make_engine(database_url(db))
    try:
        assert migrate(engine) == head_revision() == "0002"
        assert migrate(engine) == "0002"  # a second start upgrades nothing
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), metadata)
            assert diffs == []
            assert set(sa.inspect(conn).get_table_names()) == {
                "alembic_version", "conversations", "messages", "tool_calls", "responses",
                "sessions",
            }  # fmt: skip
    finally:
        engine.dispose()


async def test_messages_tool_calls_and_flags_round_trip(db: str) -> None:
    store = await asyncio.to_thread(open_store, db)
    try:
        await store.create_conversation("c1")
        u = await store.add_message("c1", "user", "What time is it?", source="voice",
                                    session_id="s1")  # fmt: skip
        await store.add_message(
            "c1", "assistant", "It is ten", source="voice", session_id="s1",
            interrupted=True, timings={"v2v_ms": 900.0},
        )  # fmt: skip
        await store.add_message(
            "c1", "assistant", "Tokyo: 09:00", source="text", response_id="r1",
            incomplete=True,
            tools=[{"name": "current_time", "arguments": {"timezone": "Asia/Tokyo"},
                    "state": "finished", "duration_ms": 2.5, "result": "09:00"}],
        )  # fmt: skip
        conv = await store.conversation("c1")
        assert conv is not None
        assert conv["messages"] == [
            {"role": "user", "content": "What time is it?", "source": "voice", "session_id": "s1"},
            {"role": "assistant", "content": "It is ten", "source": "voice", "session_id": "s1",
             "timings": {"v2v_ms": 900.0}, "interrupted": True},
            {"role": "assistant", "content": "Tokyo: 09:00", "source": "text", "response_id": "r1",
             "incomplete": True,
             "tool_calls": [{"name": "current_time", "arguments": {"timezone": "Asia/Tokyo"},
                             "state": "finished", "duration_ms": 2.5, "result": "09:00"}]},
        ]  # fmt: skip
        assert await store.history("c1", u) == [("user", "What time is it?")]
        assert await store.last_message("c1") == (u + 2, "r1")
        assert await store.delete_reply("r1") == 1
        assert await store.conversation("nope") is None
        assert not await store.conversation_exists("nope")
    finally:
        await asyncio.to_thread(store.close)


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Any]:
    """Starts servers (each on the database it is given); stops them after."""
    running: list[tuple[Any, Any]] = []

    async def start(db: str, llm: ScriptedLLMDouble) -> tuple[str, Any]:
        app = create_app(engine=double_engine(llm), config=ServerConfig(db=db))
        srv, addr, task = await start_server(app)
        running.append((srv, task))
        return addr, app

    async def stop_all() -> None:
        while running:
            srv, task = running.pop()
            srv.should_exit = True
            await task

    start.stop_all = stop_all  # type: ignore[attr-defined]
    yield start
    await stop_all()


async def _voice_turn(addr: str, text: str, **start: Any) -> tuple[str, str, str]:
    """A WebSocket call with one typed turn: (session_id, conversation_id, reply)."""
    async with websockets.connect(f"ws://{addr}/v1/voice/ws") as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 16000, **start}))
        started = json.loads(await ws.recv())
        assert started["type"] == "session.started", started
        await ws.send(json.dumps({"type": "text", "text": text}))
        while True:
            msg = await asyncio.wait_for(ws.recv(), 20)
            if isinstance(msg, str) and (ev := json.loads(msg))["type"] == "reply.done":
                break
        await ws.send(json.dumps({"type": "session.end"}))
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 20)
    return started["session_id"], started["conversation_id"], ev["text"]


async def test_voice_and_text_turns_share_a_conversation_that_outlives_the_server(
    db: str, serve: Any
) -> None:
    llm = ScriptedLLMDouble([["Hello, caller."], ["You said hello."]], 0.01)
    addr, _app = await serve(db, llm)
    sid, cid, reply = await _voice_turn(addr, "Hello there")
    assert reply == "Hello, caller."
    for token in (sid, cid):  # unguessable: 128 random bits, URL-safe
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", token)
    async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=10) as client:
        r = await client.post("/v1/chat", json={"message": "What did I say?",
                                                "conversation_id": cid})  # fmt: skip
        assert r.status_code == 202, r.text
        rid = r.json()["response_id"]
        for _ in range(500):
            conv = (await client.get(f"/v1/conversations/{cid}")).json()
            if conv["running"] is None and len(conv["messages"]) == 4:
                break
            await asyncio.sleep(0.02)
    # the text reply read the call's turns
    assert [(m["role"], m["content"]) for m in llm.requests[1][1:]] == [
        ("user", "Hello there"), ("assistant", "Hello, caller."), ("user", "What did I say?"),
    ]  # fmt: skip
    await serve.stop_all()

    addr2, _ = await serve(db, ScriptedLLMDouble([], 0.01))  # a new process on the same store
    async with httpx.AsyncClient(base_url=f"http://{addr2}", timeout=10) as client:
        conv = (await client.get(f"/v1/conversations/{cid}")).json()
        assert [(m["role"], m["content"], m["source"]) for m in conv["messages"]] == [
            ("user", "Hello there", "voice"), ("assistant", "Hello, caller.", "voice"),
            ("user", "What did I say?", "text"), ("assistant", "You said hello.", "text"),
        ]  # fmt: skip
        voice_reply, text_reply = conv["messages"][1], conv["messages"][3]
        assert voice_reply["session_id"] == sid
        assert voice_reply["timings"]["reply_text"] == "Hello, caller."
        assert text_reply["response_id"] == rid and text_reply["timings"]["total_ms"] >= 0
        r = await client.get(f"/v1/sessions/{sid}")
        assert r.status_code == 200, r.text
        record = r.json()
        assert record["live"] is False and record["conversation_id"] == cid
        assert record["transport"] == "websocket"
        assert [t["user_text"] for t in record["turns"]] == ["Hello there"]
        assert record["history"][-1] == {"role": "assistant", "content": "Hello, caller."}
        r = await client.get("/v1/sessions/no-such-session")
        assert r.status_code == 404 and r.json() == {"error": "no such session"}


async def test_a_call_goes_on_with_a_stored_conversation(tmp_path: Path, serve: Any) -> None:
    db = str(tmp_path / "store.db")
    llm = ScriptedLLMDouble([["First."], ["Second."]], 0.01)
    addr, _ = await serve(db, llm)
    _, cid, _ = await _voice_turn(addr, "One")
    _, cid2, _ = await _voice_turn(addr, "Two", conversation_id=cid)
    assert cid2 == cid
    assert [(m["role"], m["content"]) for m in llm.requests[1][1:]] == [
        ("user", "One"), ("assistant", "First."), ("user", "Two"),
    ]  # fmt: skip
    # an unknown conversation is refused with a close code and a reason
    async with websockets.connect(f"ws://{addr}/v1/voice/ws") as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 16000,
                                  "conversation_id": "nope"}))  # fmt: skip
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4400 and "conversation_id" in closed.value.rcvd.reason


def test_a_store_is_a_store(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "x.db"))
    assert isinstance(store, ConversationStore) and store.kind == "sqlite"
    store.close()
