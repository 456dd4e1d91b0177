"""HTTP and WebSocket endpoints of the telephony bridges.

- ``POST /v1/telephony/twilio/voice``: Twilio's voice webhook. It answers TwiML that
  connects the call to ``/v1/telephony/twilio/stream`` and hangs up when the stream
  closes. With an auth token configured, the request must carry a valid
  ``X-Twilio-Signature`` (403 otherwise), and the TwiML hands the stream a one-time
  token that the stream must present in its ``start`` (``customParameters.token``).
- WebSockets ``/v1/telephony/{twilio,telnyx,plivo,vonage}/stream``: one provider
  stream, one session.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from voice_agent.auth import OPEN, Caller
from voice_agent.core.clock import Clock, LoopClock
from voice_agent.core.ids import new_id
from voice_agent.errors import leaves
from voice_agent.session.driver import Session
from voice_agent.transports.telephony.audiosocket import (
    KIND_HANGUP,
    AudioSocketStream,
    frame,
    read_frame,
)
from voice_agent.transports.telephony.bridge import (
    LineDown,
    Message,
    Receive,
    Send,
    StreamOutput,
    log,
    run_media_stream,
)
from voice_agent.transports.telephony.media import Start, StreamProtocol
from voice_agent.transports.telephony.plivo import PlivoStream
from voice_agent.transports.telephony.telnyx import TelnyxStream
from voice_agent.transports.telephony.twilio import (
    BUSY_TWIML,
    TwilioStream,
    connect_stream_twiml,
    signature_valid,
)
from voice_agent.transports.telephony.vonage import VonageStream

VOICE_PATH = "/v1/telephony/twilio/voice"
STREAM_PATH = "/v1/telephony/twilio/stream"
PROTOCOLS: dict[str, type[StreamProtocol]] = {
    "twilio": TwilioStream,
    "telnyx": TelnyxStream,
    "plivo": PlivoStream,
    "vonage": VonageStream,
}
TOKEN_TTL_S = 60.0
REPLAY_WINDOW_S = 600.0
"""How long a signed webhook request is remembered, to refuse it if it comes again."""


class ExpiringKeys:
    """Keys remembered for ``ttl_s`` each. At most ``limit`` are kept (the oldest go first),
    so a burst of calls cannot grow it."""

    def __init__(self, clock: Clock, ttl_s: float = TOKEN_TTL_S, limit: int = 4096) -> None:
        self.clock, self.ttl_s, self.limit = clock, ttl_s, limit
        self._expiry: dict[str, float] = {}

    def add(self, key: str) -> None:
        now = self.clock.now()
        for old in [k for k, exp in self._expiry.items() if exp < now]:
            del self._expiry[old]
        while len(self._expiry) >= self.limit:
            del self._expiry[next(iter(self._expiry))]
        self._expiry[key] = now + self.ttl_s

    def holds(self, key: str) -> bool:
        expiry = self._expiry.get(key)
        return expiry is not None and expiry >= self.clock.now()


class OneTimeTokens(ExpiringKeys):
    """Stream tokens handed out by signed webhooks: each is good once, for ``ttl_s``."""

    def issue(self) -> str:
        token = secrets.token_urlsafe(24)
        self.add(token)
        return token

    def take(self, token: str) -> bool:
        """True (once) for a token issued less than ``ttl_s`` ago."""
        good = self.holds(token)
        self._expiry.pop(token, None)
        return good


class ReplayGuard(ExpiringKeys):
    """Signed webhook requests seen in the last ``ttl_s``: Twilio's signature has no
    timestamp, so a captured request stays valid; the same one again is a replay."""

    def first(self, signature: str) -> bool:
        if self.holds(signature):
            return False
        self.add(signature)
        return True


def stream_url(base: str) -> str:
    """The stream's WebSocket URL under an http(s) base URL: https → wss, http → ws."""
    scheme, _, rest = base.partition("://")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{STREAM_PATH}"


def telephony_routes(state: Any, refusal: Callable[[], str | None]) -> list[BaseRoute]:
    """The telephony endpoints over the server's ``state`` (its config, engine, sessions)."""
    clock = LoopClock()
    tokens = OneTimeTokens(clock)
    seen = ReplayGuard(clock, ttl_s=REPLAY_WINDOW_S)

    def public_base(request: Request) -> str:
        if state.config.public_url:
            return str(state.config.public_url).rstrip("/")
        return f"{request.url.scheme}://{request.url.netloc}"

    async def voice(request: Request) -> Response:
        body = (await request.body())[:65536].decode("utf-8", "replace")
        params = dict(parse_qsl(body, keep_blank_values=True))
        token = state.config.twilio_auth_token
        base = public_base(request)
        if token:
            url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
            signature = request.headers.get("x-twilio-signature")
            if not signature_valid(token, url, params, signature):
                return JSONResponse({"error": "missing or invalid X-Twilio-Signature"}, 403)
            if not seen.first(f"{signature}|{params.get('CallSid', '')}"):
                return JSONResponse({"error": "a replayed request (signature already used)"}, 403)
        if refusal():
            return Response(BUSY_TWIML, media_type="text/xml")  # a busy signal
        stream_params: dict[str, str] = {}
        if token:
            stream_params["token"] = tokens.issue()
        twiml = connect_stream_twiml(stream_url(base), stream_params)
        return Response(twiml, media_type="text/xml")

    def stream_endpoint(provider: str) -> Callable[[WebSocket], Awaitable[None]]:
        async def stream(ws: WebSocket) -> None:
            await serve_stream(ws, PROTOCOLS[provider]())

        return stream

    async def serve_stream(ws: WebSocket, protocol: StreamProtocol) -> None:
        await ws.accept()
        reason = refusal()
        if reason:
            await ws.close(1013, reason)
            return
        caller = Caller.of(ws.scope)  # a key in ?token= (with authentication on)
        over = state.hold_for(caller.principal)
        if over:
            await ws.close(1013, over)
            return

        async def receive() -> Message | None:
            try:
                msg = await ws.receive()
            except WebSocketDisconnect:
                return None
            if msg["type"] == "websocket.disconnect":
                return None
            return msg.get("bytes") if msg.get("bytes") is not None else msg.get("text", "")

        async def send(message: Message) -> None:
            try:
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                else:
                    await ws.send_text(message)
            except (WebSocketDisconnect, RuntimeError):
                return  # the provider hung up: the reader sees it and ends the call

        def accept(start: Start) -> bool:
            if protocol.name != "twilio" or not state.config.twilio_auth_token:
                return True
            return tokens.take(start.parameters.get("token", ""))

        session = None
        try:
            session = await serve_call(state, protocol, receive, send, accept, caller)
        finally:
            state.release_for(caller.principal)
            try:
                if session is not None:
                    await ws.close(1000, "call ended")
                else:
                    await ws.close(1008, "no valid start, or not started by a signed webhook")
            except (RuntimeError, WebSocketDisconnect):
                pass  # already closed by the peer

    routes: list[BaseRoute] = [Route(VOICE_PATH, voice, methods=["POST"])]
    routes += [
        WebSocketRoute(f"/v1/telephony/{name}/stream", stream_endpoint(name)) for name in PROTOCOLS
    ]
    return routes


async def serve_call(
    state: Any,
    protocol: StreamProtocol,
    receive: Receive,
    send: Send,
    accept: Callable[[Start], bool] = lambda start: True,
    caller: Caller = OPEN,
) -> Session | None:
    """One provider call as a session of the server: counted among its sessions while it
    lasts, its report kept after. ``accept(start)`` may refuse the stream."""
    sid = new_id()

    def make_session(output: StreamOutput) -> Session | None:
        assert output.stream.start is not None
        if not accept(output.stream.start):
            log.warning("%s stream %s: refused (no valid one-time token)", protocol.name, sid)
            return None
        session = Session(state.engine, output, LoopClock(), state.session_config)
        state.add_session(sid, session, protocol.name, caller=caller)
        return session

    failed: list[str] = []
    try:
        await run_media_stream(
            protocol, receive, send, make_session,
            start_timeout_s=state.config.start_timeout_s,
            send_timeout_s=state.config.send_timeout_s,
        )  # fmt: skip
    except* LineDown as group:
        failed += [str(e) for e in leaves(group)]
        log.warning("%s stream %s: %s; hung up", protocol.name, sid, failed[0])
    finally:
        # the session's report is kept whatever ended the call: nothing said is lost
        session: Session | None = state.sessions.pop(sid, None)
        if session is not None:
            session.errors.extend(f"{protocol.name}: {e}; hung up" for e in failed)
            state.keep_report(sid, session.report() | {"transport": protocol.name})
    return session


async def serve_audiosocket(
    state: Any, host: str, port: int, refusal: Callable[[], str | None]
) -> asyncio.Server:
    """The Asterisk AudioSocket listener: one TCP connection, one call."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def send(message: Message) -> None:
            if writer.is_closing():
                return  # Asterisk hung up: the reader sees it and ends the call
            writer.write(message if isinstance(message, bytes) else message.encode())
            with contextlib.suppress(ConnectionError):
                await writer.drain()

        try:
            reason = refusal()
            if reason:
                log.warning("audiosocket call refused: %s", reason)
                # take the call's UUID first: closing with it unread would reset the
                # connection, and Asterisk might never read the hang-up
                with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError):
                    async with asyncio.timeout(1.0):
                        await read_frame(reader)
                await send(frame(KIND_HANGUP))
            else:
                await serve_call(state, AudioSocketStream(), lambda: read_frame(reader), send)
        except ConnectionError:
            pass  # Asterisk hung up mid-write
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(on_connection, host, port)
