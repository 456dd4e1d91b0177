"""The ASGI app: health, the browser page, and the WebSocket voice endpoint.

One app per process; models load once in the background while the server
already answers ``/healthz`` and ``/readyz``. Each WebSocket is one
:class:`~voice_agent.session.driver.Session`; the transport only frames,
resamples and enforces limits (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from voice_agent.auth import OPEN, Auth, Caller, Guard, KeyHolds, request_key
from voice_agent.chat.events import EventStore, MemoryEventStore
from voice_agent.chat.routes import chat_routes
from voice_agent.chat.service import ChatService
from voice_agent.core.clock import LoopClock
from voice_agent.core.ids import new_id
from voice_agent.errors import leaves
from voice_agent.httplimits import BodyLimit
from voice_agent.llm.builtin_tools import time_tool
from voice_agent.llm.failover import FailoverLLM
from voice_agent.llm.knowledge import KnowledgeBase
from voice_agent.llm.tools import ToolRegistry
from voice_agent.session.config import chat_system_message
from voice_agent.session.driver import Session, SessionConfig
from voice_agent.session.engine import Engine, EngineConfig
from voice_agent.store import ConversationStore, StoreError, default_db, open_store
from voice_agent.store.recorder import SessionRecorder
from voice_agent.telemetry import ServerMetrics
from voice_agent.transports.websocket import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL,
    CLOSE_SLOW_CLIENT,
    CLOSE_TRY_LATER,
    InboundAudio,
    ProtocolError,
    SlowClient,
    WebSocketOutput,
    parse_client_message,
    parse_start,
)

WEB_CLIENT = Path(str(importlib.resources.files("voice_agent") / "web_client"))
"""The browser page, shipped as package data."""
log = logging.getLogger("voice_agent.server")
STALL_S = 1.0  # no audio from a WebSocket client for this long counts as silence


@dataclass
class ServerConfig:
    max_message_bytes: int = 64 * 1024
    max_sessions: int = 16
    max_peers: int = 8
    """Concurrent WebRTC peer connections."""
    ice_servers: list[str] = field(default_factory=list)
    """STUN/TURN URLs for WebRTC; none by default, so no outside server is contacted."""
    ice_addresses: list[str] = field(default_factory=list)
    """Local addresses for WebRTC host candidates (process-wide); empty: every interface."""
    start_timeout_s: float = 10.0
    drain_grace_s: float = 20.0
    send_queue: int = 1000
    send_timeout_s: float = 5.0
    kept_reports: int = 200
    release_memory_s: float | None = 10.0
    """Give memory freed inside malloc's heaps back to the system this often (None: never;
    see ``core/memory.release_free_memory_every``)."""
    public_url: str | None = None
    """The server's public base URL (https://host) for telephony webhooks; default: the
    request's own host."""
    twilio_auth_token: str | None = None
    """Set: Twilio webhooks must be signed with it, and streams must come from one."""
    audiosocket: tuple[str, int] | None = None
    """(host, port) of an Asterisk AudioSocket TCP listener beside the HTTP server."""
    sse_heartbeat_s: float = 15.0
    """A ``: ping`` comment on every text-chat event stream this often."""
    sse_send_timeout_s: float = 30.0
    """A text-chat reader that takes no event for this long is disconnected (its
    response goes on; it can resume with ``Last-Event-ID``)."""
    redis_url: str | None = None
    """Set: text-chat event logs go to Redis Streams, shared by every process on it (a
    reader may resume through any of them); None: in this process's memory."""
    knowledge_dir: Path | None = None
    """A folder of markdown files: the knowledge-search tool, and its best passages read
    ahead of each text reply."""
    api_keys: list[str] = field(default_factory=list)
    """Set: every endpoint but health, readiness and the page needs a key or a token
    (voice_agent.auth)."""
    allowed_origins: list[str] = field(default_factory=list)
    """Set: a browser request (a WebSocket, a POST) from another Origin is refused."""
    token_ttl_s: float = 600.0
    """How long a token from ``POST /v1/tokens`` is good for."""
    max_sessions_per_key: int | None = None
    """Calls at once for one API key (its tokens included); None: only ``max_sessions``."""
    max_body_bytes: int = 256 * 1024
    """A request body over this gets 413 (an offer is 2-6 KB, a chat message 2000
    characters at most)."""
    body_timeout_s: float = 30.0
    """A request body that takes longer to arrive gets 408."""
    header_timeout_s: float = 10.0
    """A connection whose request headers are not all in by then is closed (``serve``)."""
    db: str | None = None
    """The conversation store: a SQLite file path or a PostgreSQL URL; None: the
    default file (``VOICE_AGENT_DB``, else ``voice-agent.db`` in the cache dir)."""


@dataclass
class ServerState:
    config: ServerConfig
    session_config: SessionConfig
    engine: Engine | None = None
    stage: str = "starting"
    error: str | None = None
    draining: bool = False
    sessions: dict[str, Session] = field(default_factory=dict)
    peers: dict[str, Any] = field(default_factory=dict)
    reports: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    chat: ChatService | None = None
    """The text chat, made once the models are loaded."""
    store: ConversationStore | None = None
    """The conversation store, opened (and migrated) at startup."""
    knowledge: KnowledgeBase | None = None
    """The knowledge folder's index, built at startup (``knowledge_dir``)."""
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    transports: dict[str, str] = field(default_factory=dict)
    reserved: int = 0
    """Calls accepted but not started yet: they count against ``max_sessions``."""
    peers_reserved: int = 0
    """WebRTC offers being answered: they count against ``max_peers``."""
    """The transport of each live session (for the metrics' labels)."""
    calls_by_key: KeyHolds = field(default_factory=KeyHolds)
    """Calls held (live or starting) per API key ("anonymous" with no keys)."""
    recorders: dict[str, SessionRecorder] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    """Who started each live session (:attr:`Caller.owner`); its kept report says it."""
    recording: set[asyncio.Task[None]] = field(default_factory=set)

    def chat_service(self) -> ChatService | None:
        if self.chat is None and self.engine is not None and self.store is not None:
            cfg = self.session_config
            # the agent's tools (the voice path's too), and the time tool in any case
            tools = ToolRegistry([time_tool(), *self.engine.tools.tools()])
            prefetch = self.knowledge.prefetch if self.knowledge is not None else None
            events: EventStore = MemoryEventStore(LoopClock())
            if self.config.redis_url:
                from voice_agent.chat.redis_events import RedisEventStore

                events = RedisEventStore(self.config.redis_url)
            self.chat = ChatService(
                self.engine.llm,
                events,
                self.store,
                LoopClock(),
                lambda tools_line: chat_system_message(cfg, tools_line),
                tools=tools,
                prefetch=prefetch,
                # a key's text responses in progress, counted apart from its calls
                max_running_per_key=self.config.max_sessions_per_key,
            )
            self.chat.on_end = self._chat_ended
            self.chat.on_refused = lambda why: self.metrics.sessions_refused.labels(why).inc()
        return self.chat

    def _chat_ended(self, state: str) -> None:
        self.metrics.chat_responses.labels(state).inc()
        if state == "failed":
            self.metrics.llm_errors.labels("text").inc()

    def hold_for(self, principal: str) -> str | None:
        """Count a call for ``principal``, or say why its key may not have another (counted
        in the metrics). Each hold ends with :meth:`release_for`."""
        limit = self.config.max_sessions_per_key
        if not self.calls_by_key.take(principal, limit):
            self.metrics.sessions_refused.labels("per_key").inc()
            return f"too many calls for this key (limit {limit})"
        return None

    def release_for(self, principal: str) -> None:
        self.calls_by_key.release(principal)

    def use_engine(self, engine: Engine) -> None:
        """The models are loaded: the knowledge search joins the agent's tools (offered
        to callers and text chat alike)."""
        self.engine = engine
        self.metrics.watch(
            lambda: len(self.sessions),
            {"stt": lambda: engine.stt_worker.waiting,
             "stt_partial": lambda: engine.partial_worker.waiting,
             "tts": lambda: engine.tts_worker.waiting,
             "end_of_turn": lambda: engine.turn_worker.waiting},
        )  # fmt: skip
        if isinstance(engine.llm, FailoverLLM):
            engine.llm.on_failover = self.metrics.llm_failovers.inc
        if self.knowledge is not None:
            engine.tools.add(self.knowledge.tool())

    def add_session(
        self,
        sid: str,
        session: Session,
        transport: str,
        conversation_id: str | None = None,
        caller: Caller = OPEN,
    ) -> None:
        """A call starts: it counts among the live sessions, and its messages and report
        go to the conversation store (in a conversation of its own unless one is named).
        It is ``caller``'s: only they read its record."""
        self.sessions[sid] = session
        self.transports[sid] = transport
        self.owners[sid] = caller.owner
        self.metrics.sessions_started.labels(transport).inc()
        session.record.observer = self.metrics.observe_turn
        session.on_limit = lambda name: self.metrics.limits_hit.labels(name).inc()
        if self.store is None:
            return
        rec = SessionRecorder(
            self.store, sid, conversation_id or new_id(), transport, conversation_id is None,
            owner=caller.owner,
        )  # fmt: skip
        session.record.sink = rec.message
        self.recorders[sid] = rec
        task = asyncio.get_running_loop().create_task(rec.run(), name=f"record-{sid}")
        self.recording.add(task)
        task.add_done_callback(self.recording.discard)

    def conversation_of(self, sid: str) -> str | None:
        rec = self.recorders.get(sid)
        return None if rec is None else rec.conversation_id

    def progress(self, message: str) -> None:
        self.stage = message
        print(f"[voice-agent] {message}", flush=True)

    def keep_report(self, sid: str, report: dict[str, Any]) -> None:
        transport = self.transports.pop(sid, report.get("transport", "unknown"))
        report = report | {"owner": self.owners.pop(sid, None)}
        code = report.get("close_code")
        self.metrics.sessions_ended.labels(transport, "" if code is None else str(code)).inc()
        rec = self.recorders.pop(sid, None)
        if rec is not None:
            report = report | {"conversation_id": rec.conversation_id}
            rec.end(report)
        self.reports[sid] = report
        while len(self.reports) > self.config.kept_reports:
            self.reports.popitem(last=False)

    async def drain(self) -> None:
        """Refuse new sessions; let live ones finish their current reply, up to the grace period."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_grace_s
        while self.sessions and loop.time() < deadline:
            for session in list(self.sessions.values()):
                if session.idle and not session.closing:
                    session.hangup()
            await asyncio.sleep(0.05)
        for session in list(self.sessions.values()):
            if not session.closing:
                session.hangup()


EngineOpener = Callable[
    [EngineConfig, Callable[[str], None]], contextlib.AbstractAsyncContextManager[Engine]
]


def create_app(
    engine_config: EngineConfig | None = None,
    config: ServerConfig | None = None,
    session_config: SessionConfig | None = None,
    engine: Engine | None = None,
    opener: EngineOpener | None = None,
) -> Starlette:
    """The app. Pass ``engine`` to serve already-loaded models (tests); otherwise the models
    named by ``engine_config`` load in the background at startup."""
    state = ServerState(config or ServerConfig(), session_config or SessionConfig())
    auth = Auth(state.config.api_keys, state.config.token_ttl_s)
    if state.config.ice_addresses:
        from voice_agent.transports.webrtc import restrict_ice_addresses

        restrict_ice_addresses(state.config.ice_addresses)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with (
            _conversation_store(state), _audiosocket(state), _memory_release(state),
            serving(app),
        ):  # fmt: skip
            yield

    @contextlib.asynccontextmanager
    async def serving(app: Starlette) -> AsyncIterator[None]:
        if engine is not None:
            state.use_engine(engine)
            state.stage = "ready"
            try:
                yield
            finally:
                await _close_chat(state)
                await _close_peers(state)
            return
        from voice_agent.runtime import open_engine

        stop = asyncio.Event()

        async def load() -> None:
            try:
                async with (opener or open_engine)(
                    engine_config or EngineConfig(), state.progress
                ) as e:
                    state.use_engine(e)
                    chat = state.chat_service()
                    if chat is not None:  # the first chat message finds its prompt read
                        await chat.warm()
                    await stop.wait()
            except Exception as exc:  # reported on /readyz; the process stays up for /healthz
                state.error = str(exc)
                state.progress(f"error: {exc}")

        task = asyncio.create_task(load())
        try:
            yield
        finally:
            await state.drain()
            await _close_chat(state)
            await _close_peers(state)
            stop.set()
            await task

    async def healthz(request: Request) -> Response:
        return JSONResponse(
            {"status": "ok", "ready": state.engine is not None, "stage": state.stage}
        )

    async def readyz(request: Request) -> Response:
        ready = state.engine is not None and not state.draining
        if not request.state.authenticated:  # only ready or not, to a stranger
            return JSONResponse({"ready": ready}, status_code=200 if ready else 503)
        body = {
            "ready": ready,
            "stage": state.stage,
            "error": state.error,
            "draining": state.draining,
            "sessions": len(state.sessions),
            "models": _public(state.engine.info) if state.engine else None,
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    async def tokens(request: Request) -> Response:
        """A short-lived token for the browser page, minted for a caller with a key."""
        if not auth.enabled:
            return JSONResponse({"error": "tokens are off: the server has no API keys"},
                                status_code=404)  # fmt: skip
        key = request_key(request.scope, auth)
        if key is None:
            return JSONResponse({"error": "a token is minted only for an API key"},
                                status_code=401)  # fmt: skip
        return JSONResponse(auth.mint(key), status_code=201)

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def index(request: Request) -> Response:
        return FileResponse(WEB_CLIENT / "index.html")

    async def session_report(request: Request) -> Response:
        """A live session of this process, else its record in the conversation store
        (written by whichever process served it, and kept across restarts)."""
        sid = request.path_params["sid"]
        caller = Caller.of(request.scope)
        # the failure details (an LLM endpoint's address, the fix) are the operator's:
        # for an API key, or with authentication off; a page's token reads them redacted
        shown = _redacted if auth.enabled and request.state.credential != "key" else _whole
        if sid in state.sessions:
            if not caller.may_read(state.owners.get(sid)):
                return _no_such_session()
            cid = {"conversation_id": state.conversation_of(sid)}
            return JSONResponse(shown({"live": True} | cid | state.sessions[sid].report()))
        if sid in state.reports:
            if not caller.may_read(state.reports[sid].get("owner")):
                return _no_such_session()
            return JSONResponse(shown({"live": False} | state.reports[sid]))
        row = None
        if state.store is not None:
            try:
                row = await state.store.session(sid)
            except StoreError as exc:
                log.error("session lookup failed: %s", exc)
                return JSONResponse({"error": "the store is unavailable"}, status_code=503)
        if row is None or not caller.may_read(row["owner"]):
            return _no_such_session()
        body = {"live": row["ended_at"] is None, "conversation_id": row["conversation_id"],
                "transport": row["transport"]}  # fmt: skip
        return JSONResponse(shown(body | (row["report"] or {})))

    async def webrtc_config(request: Request) -> Response:
        """What the browser page needs to build its RTCPeerConnection."""
        return JSONResponse({"ice_servers": [{"urls": u} for u in state.config.ice_servers]})

    async def voice_ws(ws: WebSocket) -> None:
        await ws.accept()
        refusal = _refusal(state)
        if refusal:
            await ws.close(CLOSE_TRY_LATER, refusal)
            return
        caller = Caller.of(ws.scope)
        principal = caller.principal
        over = state.hold_for(principal)
        if over:
            await ws.close(CLOSE_TRY_LATER, over)
            return
        # the slot is held from the accept, not the start: 40 sockets opened first and
        # started after could otherwise all pass a limit of 16
        state.reserved += 1
        held = True

        def release() -> None:
            nonlocal held
            if held:
                state.reserved -= 1
                held = False

        try:
            try:
                async with asyncio.timeout(state.config.start_timeout_s):
                    first = await ws.receive()
            except TimeoutError:
                await ws.close(CLOSE_PROTOCOL, "no session.start within the start timeout")
                return
            if first["type"] == "websocket.disconnect":
                return
            if first.get("text") is None:
                await ws.close(CLOSE_PROTOCOL, "binary audio before session.start")
                return
            try:
                opts = parse_start(first["text"])
            except ProtocolError as exc:
                await ws.close(exc.code, exc.reason)
                return
            assert state.engine is not None
            # minted here, never the client's: 128 random bits, never reused (a client's
            # "session_id" is not taken: a guessable or reused id would expose a record)
            sid = new_id()
            history: list[tuple[str, str]] = []
            if opts.conversation_id is not None:
                found = await _conversation_history(state, opts.conversation_id, caller)
                if found is None:
                    await ws.close(CLOSE_PROTOCOL, "no such conversation_id")
                    return
                history = found
            output = WebSocketOutput(
                ws.send_text,
                ws.send_bytes,
                opts.output_sample_rate,
                max_queue=state.config.send_queue,
                send_timeout_s=state.config.send_timeout_s,
            )
            session = Session(state.engine, output, LoopClock(), state.session_config)
            session.history.extend({"role": r, "content": c} for r, c in history)
            state.add_session(sid, session, "websocket", opts.conversation_id, caller)
            release()  # the session counts itself now
            code, reason = CLOSE_NORMAL, "session ended"
            try:
                async with asyncio.TaskGroup() as tg:
                    writer = tg.create_task(output.writer())
                    run = tg.create_task(session.run())
                    await session.emit(
                        "session.started",
                        session_id=sid,
                        conversation_id=state.conversation_of(sid),
                        sample_rate=opts.sample_rate,
                        output_sample_rate=opts.output_sample_rate,
                        max_message_bytes=state.config.max_message_bytes,
                    )
                    reader = tg.create_task(
                        _read_client(ws, session, output, InboundAudio(opts.sample_rate), opts)
                    )
                    await asyncio.wait({reader, run}, return_when=asyncio.FIRST_COMPLETED)
                    if state.draining and run.done():
                        code, reason = CLOSE_GOING_AWAY, "server is shutting down"
                    session.hangup()
                    await run
                    reader.cancel()
                    await output.flush()
                    writer.cancel()
            except* SlowClient as group:
                code, reason = CLOSE_SLOW_CLIENT, str(leaves(group)[0])
            except* WebSocketDisconnect:
                code, reason = CLOSE_GOING_AWAY, "client went away"
            except* Exception as group:  # the detail goes to the log, never to the client
                log.error("session %s failed", sid, exc_info=leaves(group)[0])
                code, reason = CLOSE_INTERNAL, "internal error"
            finally:
                state.sessions.pop(sid, None)
                closing = {"close_code": code, "close_reason": reason}
                state.keep_report(sid, session.report() | closing)
                if ws.application_state != WebSocketState.DISCONNECTED and (
                    ws.client_state != WebSocketState.DISCONNECTED
                ):
                    with contextlib.suppress(Exception):
                        await ws.close(code, reason)
        finally:
            release()
            state.release_for(principal)


    async def webrtc_offer(request: Request) -> Response:
        from voice_agent.transports.webrtc import OfferError

        try:
            answer = await _answer_offer(state, request)
        except OfferError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        return JSONResponse(answer)

    routes = [
        Route("/healthz", healthz),
        Route("/v1/voice/webrtc/offer", webrtc_offer, methods=["POST"]),
        Route("/v1/voice/webrtc/config", webrtc_config),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/v1/tokens", tokens, methods=["POST"]),
        Route("/", index),
        Route("/v1/sessions/{sid}", session_report),
        WebSocketRoute("/v1/voice/ws", voice_ws),
        *chat_routes(
            state.chat_service,
            state.config.sse_heartbeat_s,
            state.config.max_message_bytes,
            state.config.sse_send_timeout_s,
        ),
    ]
    from voice_agent.transports.telephony.routes import telephony_routes

    routes += telephony_routes(state, lambda: _refusal(state))
    if WEB_CLIENT.is_dir():
        routes.append(Mount("/static", StaticFiles(directory=WEB_CLIENT), name="static"))
    twilio_signed = state.config.twilio_auth_token is not None
    guard = Middleware(
        Guard, auth=auth, allowed_origins=state.config.allowed_origins,
        # Twilio's own signatures guard its webhook and streams when its token is set
        exempt=lambda path: twilio_signed and path.startswith("/v1/telephony/twilio/"),
        on_refused=lambda why: state.metrics.requests_refused.labels(why).inc(),
    )  # fmt: skip
    limit = Middleware(
        BodyLimit, max_bytes=state.config.max_body_bytes, timeout_s=state.config.body_timeout_s,
        on_refused=lambda why: state.metrics.requests_refused.labels(why).inc(),
    )  # fmt: skip
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[limit, guard])
    app.state.va = state
    return app


@contextlib.asynccontextmanager
async def _audiosocket(state: ServerState) -> AsyncIterator[None]:
    """The AudioSocket listener while the app runs (when configured); its calls are hung
    up by the drain like any session."""
    if state.config.audiosocket is None:
        yield
        return
    from voice_agent.transports.telephony.routes import serve_audiosocket

    host, port = state.config.audiosocket
    listener = await serve_audiosocket(state, host, port, lambda: _refusal(state))
    state.progress(f"AudioSocket listening on {host}:{port}")
    try:
        yield
    finally:
        listener.close()


@contextlib.asynccontextmanager
async def _memory_release(state: ServerState) -> AsyncIterator[None]:
    """Freed memory goes back to the system every ``release_memory_s`` while the app runs:
    without it a server's RSS climbed through calls that came and went (the soak)."""
    every = state.config.release_memory_s
    if every is None:
        yield
        return
    from voice_agent.core.memory import release_free_memory_every

    task = asyncio.create_task(release_free_memory_every(every))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait({task})  # let it finish cancelling (nothing is swallowed)


def _no_such_session() -> Response:
    """Also the answer for another caller's session: its existence is not told."""
    return JSONResponse({"error": "no such session"}, status_code=404)


def _whole(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "owner"}  # who, is the operator's


REDACTED = "a failure (its detail is in the server's log and the operator's report)"


def _redacted(report: dict[str, Any]) -> dict[str, Any]:
    """A session report without its failure details (endpoint addresses, fixes)."""
    out = _whole(report)
    if out.get("errors"):
        out["errors"] = [REDACTED for _ in out["errors"]]
    if "turns" in out:
        out["turns"] = [t | {"error": REDACTED} if t.get("error") else t for t in out["turns"]]
    return out


def _public(info: dict[str, Any]) -> dict[str, Any]:
    """What the models are, without the local LLM's internal URL or process id."""
    return {k: v for k, v in info.items() if k not in ("llm_base_url", "llm_pid")}


def _refusal(state: ServerState) -> str | None:
    """Why a new call is refused now (counted), or None."""
    reason, why = None, ""
    if state.draining:
        reason, why = "draining", "server is shutting down"
    elif state.engine is None:
        reason, why = "loading", f"models are not loaded yet ({state.error or state.stage})"
    elif len(state.sessions) + state.reserved >= state.config.max_sessions:
        reason, why = "full", f"too many sessions (limit {state.config.max_sessions})"
    if reason is None:
        return None
    state.metrics.sessions_refused.labels(reason).inc()
    return why


async def _read_client(
    ws: WebSocket, session: Session, output: WebSocketOutput, inbound: InboundAudio, opts: Any
) -> None:
    """Client messages → session. Returns when the client ends the session or goes away.

    Audio is real time: when none arrives for ``STALL_S`` (a stalled or muted client),
    that much silence is fed instead, so a turn that was being spoken can still end.
    """
    while True:
        try:
            async with asyncio.timeout(STALL_S):
                msg = await ws.receive()
        except TimeoutError:
            session.feed(np.zeros(int(STALL_S * 16000), dtype=np.int16))
            continue
        if msg["type"] == "websocket.disconnect":
            return
        data = msg.get("bytes")
        if data is not None:
            try:
                session.feed(inbound.convert(data))
            except ValueError as exc:
                await output.send_event(
                    {
                        "type": "error",
                        "code": "bad_audio",
                        "message": f"{exc}; the frame was dropped",
                    }
                )
            continue
        try:
            ctl = parse_client_message(msg.get("text") or "")
        except ValueError as exc:
            await output.send_event({"type": "error", "code": "bad_message", "message": str(exc)})
            continue
        if not await _dispatch(session, output, ctl, opts.output_sample_rate):
            return


async def _dispatch(session: Session, output: Any, ctl: dict[str, Any], out_rate: int) -> bool:
    """Carry out one client control message; False when the client ends the session."""
    accepted = True
    match ctl["type"]:
        case "playout":
            session.playout_ack(ctl["gen"], ctl["samples"] * 16000 // out_rate)
        case "text":
            limit = session.config.max_text_chars
            if len(ctl["text"]) > limit:
                if session.on_limit is not None:
                    session.on_limit("text_length")
                await output.send_event(
                    {"type": "error", "code": "bad_message",
                     "message": f"text is over {limit} characters"}
                )  # fmt: skip
                return True
            accepted = session.send_text(ctl["text"])
        case "interrupt":
            accepted = session.interrupt()
        case "session.end":
            return False
    if not accepted:
        await output.send_event(
            {"type": "error", "code": "busy",
             "message": f"too many messages at once; {ctl['type']} was dropped"}
        )  # fmt: skip
    return True


async def _answer_offer(state: ServerState, request: Request) -> dict[str, Any]:
    """WebRTC signaling: an SDP offer in, an SDP answer out, a session started."""
    from voice_agent.transports.webrtc import OfferError

    refusal = _refusal(state)
    if refusal:
        raise OfferError(503, refusal)
    if len(state.peers) + state.peers_reserved >= state.config.max_peers:
        raise OfferError(429, f"too many peer connections (limit {state.config.max_peers})")
    caller = Caller.of(request.scope)
    principal = caller.principal
    over = state.hold_for(principal)
    if over:
        raise OfferError(429, over)
    # held from the check until the peer and its session are registered: 20 offers at
    # once could otherwise all pass a limit of 8 across the awaits between
    state.peers_reserved += 1
    state.reserved += 1
    answered = False
    try:
        answer = await _answer_reserved(state, request, caller)
        answered = True
        return answer
    finally:
        state.peers_reserved -= 1
        state.reserved -= 1
        if not answered:  # else the call holds it until it ends
            state.release_for(principal)


async def _answer_reserved(
    state: ServerState, request: Request, caller: Caller
) -> dict[str, Any]:
    from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

    from voice_agent.transports.webrtc import (
        RTC_RATE,
        OfferError,
        PacedAudioTrack,
        WebRtcOutput,
        check_offer,
        inbound_audio,
    )

    try:
        body = await request.json()
    except Exception as exc:
        raise OfferError(400, "the body is not valid JSON") from exc
    sdp = check_offer(body)
    assert state.engine is not None
    sid = new_id()
    ice = [RTCIceServer(urls=url) for url in state.config.ice_servers]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
    clock = LoopClock()
    track = PacedAudioTrack(clock)
    output = WebRtcOutput(track)
    session = Session(state.engine, output, clock, state.session_config)

    # the playout position of a WebRTC caller: what the paced track actually sent
    def on_sent(gen: int, n: int) -> None:
        session.playout_ack(gen, n * 16000 // RTC_RATE)
        output.sent(gen, n)

    track.on_sent = on_sent
    tasks: set[asyncio.Task[Any]] = set()

    def spawn(coro: Any) -> None:  # the peer's own tasks, pruned as they finish
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    @pc.on("datachannel")
    def on_datachannel(channel: Any) -> None:
        output.attach(channel)

        @channel.on("message")  # type: ignore[untyped-decorator]
        def on_message(message: Any) -> None:
            spawn(_on_channel_message(session, output, message))

    @pc.on("track")
    def on_track(remote: Any) -> None:
        if remote.kind == "audio":
            spawn(inbound_audio(remote, session.feed))

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            session.hangup()

    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    except Exception as exc:
        await pc.close()
        text = str(exc) or type(exc).__name__
        if "send parameters" in text:
            raise OfferError(400, "unsupported codec: offer Opus (or PCMU/PCMA) audio") from exc
        log.info("offer refused: %s", text)  # the parser's words stay in the log
        raise OfferError(400, "malformed SDP: the offer could not be parsed") from exc
    pc.addTrack(track)
    await pc.setLocalDescription(await pc.createAnswer())

    async def run() -> None:
        reason = "session ended"
        try:
            await session.emit(
                "session.started", session_id=sid, sample_rate=RTC_RATE,
                output_sample_rate=RTC_RATE, transport="webrtc",
                conversation_id=state.conversation_of(sid),
            )  # fmt: skip
            await session.run()
        except* SlowClient as group:
            reason = str(leaves(group)[0])
        except* Exception as group:
            log.error("WebRTC session %s failed", sid, exc_info=leaves(group)[0])
            reason = "internal error"
        finally:
            pending = list(tasks)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
            track.stop()
            await pc.close()
            state.peers.pop(sid, None)
            state.sessions.pop(sid, None)
            state.release_for(caller.principal)
            report = session.report() | {"transport": "webrtc", "close_reason": reason}
            state.keep_report(sid, report)

    state.add_session(sid, session, "webrtc", caller=caller)
    state.peers[sid] = (pc, asyncio.create_task(run(), name=f"webrtc-{sid}"))
    local = pc.localDescription
    return {"sdp": local.sdp, "type": local.type, "session_id": sid}


async def _on_channel_message(session: Session, output: Any, message: Any) -> None:
    if not isinstance(message, str):
        await output.send_event(
            {"type": "error", "code": "bad_message", "message": "send audio on the media track"}
        )
        return
    try:
        ctl = parse_client_message(message)
    except ValueError as exc:
        await output.send_event({"type": "error", "code": "bad_message", "message": str(exc)})
        return
    from voice_agent.transports.webrtc import RTC_RATE

    if not await _dispatch(session, output, ctl, RTC_RATE):
        session.hangup()


async def _close_chat(state: ServerState) -> None:
    if state.chat is not None:
        await state.chat.aclose()
        await state.chat.events.aclose()


@contextlib.asynccontextmanager
async def _conversation_store(state: ServerState) -> AsyncIterator[None]:
    """Open (and migrate) the conversation store for the app's life; at the end, wait
    for the calls' records to be written, then close it."""
    db = state.config.db or default_db()
    state.store = await asyncio.to_thread(open_store, db)
    state.progress(f"conversation store: {state.store.kind}")
    if state.config.knowledge_dir is not None:
        state.knowledge = await asyncio.to_thread(KnowledgeBase.load, state.config.knowledge_dir)
        state.progress(
            f"knowledge: {len(state.knowledge.passages)} passages from "
            f"{len(state.knowledge.files)} files"
        )
    try:
        yield
    finally:
        if state.recording:
            await asyncio.wait(state.recording, timeout=10)
        await asyncio.to_thread(state.store.close)


async def _conversation_history(
    state: ServerState, cid: str, caller: Caller
) -> list[tuple[str, str]] | None:
    """The messages of a stored conversation a call goes on with; None: no such one (or
    not the caller's)."""
    if state.store is None:
        return None
    try:
        conv = await state.store.conversation(cid, limit=200)
    except StoreError as exc:
        log.error("conversation lookup failed: %s", exc)
        return None
    if conv is None or not caller.may_read(conv["owner"]):
        return None
    return [(m["role"], m["content"]) for m in conv["messages"]]


async def _close_peers(state: ServerState) -> None:
    """Hang up every WebRTC session and wait for its peer connection to close."""
    for sid, (_pc, task) in list(state.peers.items()):
        session = state.sessions.get(sid)
        if session is not None:
            session.hangup()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await task


class DrainingServer(uvicorn.Server):
    """uvicorn, with a graceful first SIGTERM/SIGINT: refuse new sessions, let live replies
    finish (up to the grace period), then exit. A second signal exits at once."""

    def __init__(self, config: Any, state: ServerState) -> None:
        super().__init__(config)
        self.va_state = state
        self._draining = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._draining:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self.va_state.draining = True
        self.va_state.progress("draining: new sessions are refused")
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        await self.va_state.drain()
        self.should_exit = True
