"""HTTP and WebSocket endpoints of the Twilio bridge.

- ``POST /v1/telephony/twilio/voice``: the voice webhook. It answers TwiML that
  connects the call to ``/v1/telephony/twilio/stream`` and hangs up when the stream
  closes. With an auth token configured, the request must carry a valid
  ``X-Twilio-Signature`` (403 otherwise), and the TwiML hands the stream a one-time
  token that the stream must present in its ``start`` (``customParameters.token``).
- WebSocket ``/v1/telephony/twilio/stream``: one Media Stream, one session.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from voice_agent.core.clock import LoopClock
from voice_agent.session.driver import Session
from voice_agent.transports.telephony.twilio import connect_stream_twiml, signature_valid
from voice_agent.transports.telephony.twilio_bridge import TwilioOutput, log, run_twilio_stream

VOICE_PATH = "/v1/telephony/twilio/voice"
STREAM_PATH = "/v1/telephony/twilio/stream"
TOKEN_TTL_S = 60.0


def twilio_routes(state: Any, refusal: Callable[[], str | None]) -> list[BaseRoute]:
    """The Twilio endpoints over the server's ``state`` (its config, engine, sessions)."""
    tokens: dict[str, float] = {}  # one-time stream tokens → expiry (clock seconds)
    clock = LoopClock()

    def public_base(request: Request | WebSocket) -> str:
        if state.config.public_url:
            return str(state.config.public_url).rstrip("/")
        return f"{request.url.scheme}://{request.url.netloc}".replace("ws", "http", 1)

    async def voice(request: Request) -> Response:
        body = (await request.body())[:65536].decode("utf-8", "replace")
        params = dict(parse_qsl(body, keep_blank_values=True))
        token = state.config.twilio_auth_token
        base = public_base(request)
        if token:
            url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
            if not signature_valid(token, url, params, request.headers.get("x-twilio-signature")):
                return JSONResponse({"error": "missing or invalid X-Twilio-Signature"}, 403)
        reason = refusal()
        if reason:
            return JSONResponse({"error": reason}, 503)
        stream_params: dict[str, str] = {}
        if token:
            now = clock.now()
            for old in [k for k, exp in tokens.items() if exp < now]:
                del tokens[old]
            one_time = secrets.token_urlsafe(24)
            tokens[one_time] = now + TOKEN_TTL_S
            stream_params["token"] = one_time
        stream_url = base.replace("http", "ws", 1) + STREAM_PATH
        return Response(connect_stream_twiml(stream_url, stream_params), media_type="text/xml")

    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        reason = refusal()
        if reason:
            await ws.close(1013, reason)
            return

        async def receive() -> str | None:
            try:
                msg = await ws.receive()
            except WebSocketDisconnect:
                return None
            if msg["type"] == "websocket.disconnect":
                return None
            return msg.get("text") or ""  # a binary frame is no Twilio message: skipped

        sid = uuid.uuid4().hex[:12]

        def make_session(output: TwilioOutput) -> Session | None:
            assert output.stream.start is not None
            if state.config.twilio_auth_token:
                presented = output.stream.start.custom_parameters.get("token", "")
                expiry = tokens.pop(presented, None)
                if expiry is None or expiry < clock.now():
                    log.warning("twilio stream %s: no valid one-time token", sid)
                    return None
            session = Session(state.engine, output, clock, state.session_config)
            state.sessions[sid] = session
            return session

        session = None
        try:
            session = await run_twilio_stream(
                receive, ws.send_text, make_session, state.config.start_timeout_s
            )
        finally:
            if session is not None:
                state.sessions.pop(sid, None)
                state.keep_report(sid, session.report() | {"transport": "twilio"})
            try:
                if session is not None:
                    await ws.close(1000, "call ended")
                else:
                    await ws.close(1008, "no valid start, or not started by a signed webhook")
            except RuntimeError:
                pass  # already closed by the peer

    return [Route(VOICE_PATH, voice, methods=["POST"]), WebSocketRoute(STREAM_PATH, stream)]
