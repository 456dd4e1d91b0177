"""The conversation store: conversations, their messages (text and voice turns alike,
with interrupted and incomplete flags), tool calls, per-turn timings, text responses and
voice sessions, in a real database that outlives the process.

One implementation on SQLAlchemy Core serves both databases:

- SQLite, the embedded default: a file (``--db PATH``, default
  ``<cache>/voice-agent.db``), one writer thread;
- PostgreSQL (``--db postgresql://…``), shared by several server processes on
  several hosts.

The schema is made and upgraded by versioned Alembic migrations
(``migrations/versions``), run by :func:`open_store` at startup.

The database calls are blocking; they run on the store's own small thread pool,
never on the event loop, and at most ``max_pending`` wait at once (the bound on its
queue). The public methods are coroutines.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from voice_agent.store.tables import conversations, messages, responses, sessions, tool_calls

MIGRATIONS = Path(__file__).parent / "migrations"
T = TypeVar("T")


def default_db() -> str:
    """``VOICE_AGENT_DB``, else ``voice-agent.db`` in the cache dir."""
    import os

    from voice_agent.models import cache_dir

    return os.environ.get("VOICE_AGENT_DB") or str(cache_dir() / "voice-agent.db")


def database_url(db: str) -> str:
    """``--db``'s value as a SQLAlchemy URL: a PostgreSQL URL as it is (with the
    psycopg driver), anything else a SQLite file path."""
    if db.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + db.split("://", 1)[1]
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def _alembic(connection: sa.Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None
    return head


MIGRATION_LOCK = 0x7661_6462  # "vadb": PostgreSQL's advisory lock key for migrations


def migrate(engine: sa.Engine) -> str:
    """Bring the schema up to the newest migration; the revision it is at. Processes
    starting together take turns (PostgreSQL: an advisory lock; SQLite: a lock file
    beside the database), so each sees the schema whole."""
    with _migration_lock(engine), engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        command.upgrade(_alembic(conn), "head")
    with engine.connect() as conn:
        rev = MigrationContext.configure(conn).get_current_revision()
    assert rev is not None
    return rev


@contextlib.contextmanager
def _migration_lock(engine: sa.Engine) -> Iterator[None]:
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:":
        yield
        return
    with open(f"{path}.migrate-lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _make_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=0)


class StoreError(Exception):
    """The database failed (its detail goes to the log, never to a client)."""


class ConversationStore:
    def __init__(
        self, engine: sa.Engine, wall: Callable[[], float] = time.time, max_pending: int = 256
    ) -> None:
        self.engine = engine
        self.wall = wall
        threads = 1 if engine.dialect.name == "sqlite" else 4
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="voice-agent-db")
        self._pending = asyncio.Semaphore(max_pending)

    @property
    def kind(self) -> str:
        return str(self.engine.dialect.name)

    async def _run(self, fn: Callable[[sa.Connection], T]) -> T:
        def work() -> T:
            with self.engine.begin() as conn:
                return fn(conn)

        async with self._pending:
            try:
                return await asyncio.get_running_loop().run_in_executor(self._pool, work)
            except sa.exc.SQLAlchemyError as exc:
                raise StoreError(type(exc).__name__) from exc

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.engine.dispose()

    # -- conversations -------------------------------------------------------------

    async def create_conversation(self, cid: str, owner: str | None = None) -> None:
        """``owner``: who started it (:attr:`voice_agent.auth.Caller.owner`)."""
        now = self.wall()

        def q(c: sa.Connection) -> None:
            c.execute(
                conversations.insert().values(id=cid, created_at=now, updated_at=now, owner=owner)
            )

        await self._run(q)

    async def conversation_exists(self, cid: str) -> bool:
        return (await self.conversation_owner(cid))[0]

    async def conversation_owner(self, cid: str) -> tuple[bool, str | None]:
        """Whether the conversation exists, and who owns it (None: no owner kept)."""

        def q(c: sa.Connection) -> tuple[bool, str | None]:
            row = c.execute(
                sa.select(conversations.c.owner).where(conversations.c.id == cid)
            ).first()
            return (False, None) if row is None else (True, row.owner)

        return await self._run(q)

    async def conversation(self, cid: str, limit: int = 1000) -> dict[str, Any] | None:
        """The conversation's newest ``limit`` messages, oldest first, each with its tool
        calls; None if there is no such conversation."""

        def q(c: sa.Connection) -> dict[str, Any] | None:
            conv = c.execute(sa.select(conversations).where(conversations.c.id == cid)).first()
            if conv is None:
                return None
            rows = list(
                c.execute(
                    sa.select(messages)
                    .where(messages.c.conversation_id == cid)
                    .order_by(messages.c.id.desc())
                    .limit(limit)
                ).all()
            )
            rows.reverse()
            calls: dict[int, list[dict[str, Any]]] = {}
            if rows:
                for t in c.execute(
                    sa.select(tool_calls)
                    .where(tool_calls.c.message_id.in_([r.id for r in rows]))
                    .order_by(tool_calls.c.id)
                ):
                    calls.setdefault(t.message_id, []).append(
                        {"name": t.name, "arguments": t.arguments, "state": t.state,
                         "duration_ms": t.duration_ms, "result": t.result}
                    )  # fmt: skip
            return {
                "conversation_id": cid,
                "owner": conv.owner,
                "created_at": conv.created_at,
                "messages": [_message(r, calls.get(r.id, [])) for r in rows],
            }

        return await self._run(q)

    async def add_message(
        self,
        cid: str,
        role: str,
        content: str,
        *,
        source: str,
        session_id: str | None = None,
        response_id: str | None = None,
        incomplete: bool = False,
        interrupted: bool = False,
        timings: dict[str, Any] | None = None,
        tools: Iterable[dict[str, Any]] = (),
    ) -> int:
        """Append a message (and the tool calls it made); its id."""
        now = self.wall()
        calls = list(tools)

        def q(c: sa.Connection) -> int:
            key = c.execute(
                messages.insert().values(
                    conversation_id=cid, role=role, content=content, source=source,
                    session_id=session_id, response_id=response_id, incomplete=incomplete,
                    interrupted=interrupted, timings=timings, created_at=now,
                )
            ).inserted_primary_key  # fmt: skip
            assert key is not None
            mid = key[0]
            if calls:
                c.execute(
                    tool_calls.insert(),
                    [{"message_id": mid, "name": t["name"], "arguments": t.get("arguments", {}),
                      "state": t["state"], "duration_ms": t.get("duration_ms"),
                      "result": t.get("result")} for t in calls],
                )  # fmt: skip
            c.execute(
                conversations.update().where(conversations.c.id == cid).values(updated_at=now)
            )
            return int(mid)

        return await self._run(q)

    async def history(self, cid: str, upto_id: int, limit: int = 200) -> list[tuple[str, str]]:
        """(role, content) of the conversation's messages up to message ``upto_id``, the
        newest ``limit`` of them, oldest first: what the LLM reads."""

        def q(c: sa.Connection) -> list[tuple[str, str]]:
            rows = c.execute(
                sa.select(messages.c.role, messages.c.content)
                .where(messages.c.conversation_id == cid, messages.c.id <= upto_id)
                .order_by(messages.c.id.desc())
                .limit(limit)
            ).all()
            return [(r.role, r.content) for r in reversed(rows)]

        return await self._run(q)

    async def last_message(self, cid: str) -> tuple[int, str | None] | None:
        """The id and response id of the conversation's newest message."""

        def q(c: sa.Connection) -> tuple[int, str | None] | None:
            row = c.execute(
                sa.select(messages.c.id, messages.c.response_id)
                .where(messages.c.conversation_id == cid)
                .order_by(messages.c.id.desc())
                .limit(1)
            ).first()
            return None if row is None else (int(row.id), row.response_id)

        return await self._run(q)

    async def delete_reply(self, response_id: str) -> int:
        """Take a response's (partial) reply out of its conversation; how many rows went."""

        def q(c: sa.Connection) -> int:
            r = c.execute(messages.delete().where(messages.c.response_id == response_id))
            return int(r.rowcount)

        return await self._run(q)

    # -- text responses -------------------------------------------------------------

    async def put_response(self, rid: str, cid: str, user_message_id: int) -> None:
        now = self.wall()

        def q(c: sa.Connection) -> None:
            c.execute(
                responses.insert().values(
                    id=rid, conversation_id=cid, user_message_id=user_message_id,
                    state="running", created_at=now,
                )
            )  # fmt: skip

        await self._run(q)

    async def set_response_state(self, rid: str, state: str, only_if: str | None = None) -> bool:
        """Set a response's state (with ``only_if``: only from that state); True if set."""

        def q(c: sa.Connection) -> bool:
            stmt = responses.update().where(responses.c.id == rid)
            if only_if is not None:
                stmt = stmt.where(responses.c.state == only_if)
            return bool(c.execute(stmt.values(state=state)).rowcount)

        return await self._run(q)

    async def response(self, rid: str) -> dict[str, Any] | None:
        def q(c: sa.Connection) -> dict[str, Any] | None:
            row = c.execute(sa.select(responses).where(responses.c.id == rid)).first()
            return None if row is None else dict(row._mapping)

        return await self._run(q)

    # -- voice sessions ---------------------------------------------------------------

    async def put_session(self, sid: str, cid: str, transport: str) -> None:
        now = self.wall()

        def q(c: sa.Connection) -> None:
            c.execute(
                sessions.insert().values(
                    id=sid, conversation_id=cid, transport=transport, started_at=now
                )
            )

        await self._run(q)

    async def end_session(self, sid: str, report: dict[str, Any]) -> None:
        now = self.wall()

        def q(c: sa.Connection) -> None:
            c.execute(
                sessions.update().where(sessions.c.id == sid).values(ended_at=now, report=report)
            )

        await self._run(q)

    async def session(self, sid: str) -> dict[str, Any] | None:
        """The call's row, with ``owner``: its conversation's."""

        def q(c: sa.Connection) -> dict[str, Any] | None:
            row = c.execute(
                sa.select(sessions, conversations.c.owner)
                .join(conversations, conversations.c.id == sessions.c.conversation_id)
                .where(sessions.c.id == sid)
            ).first()
            return None if row is None else dict(row._mapping)

        return await self._run(q)


def _message(r: Any, calls: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": r.role, "content": r.content, "source": r.source}
    for key in ("response_id", "session_id", "timings"):
        if getattr(r, key) is not None:
            out[key] = getattr(r, key)
    if calls:
        out["tool_calls"] = calls
    if r.incomplete:
        out["incomplete"] = True
    if r.interrupted:
        out["interrupted"] = True
    return out


def open_store(db: str, wall: Callable[[], float] = time.time) -> ConversationStore:
    """Connect to ``db`` (a SQLite path or a PostgreSQL URL) and migrate it to the newest
    schema (blocking: call it at startup, off the event loop)."""
    engine = _make_engine(database_url(db))
    migrate(engine)
    return ConversationStore(engine, wall)
