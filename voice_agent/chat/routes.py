"""HTTP routes of the text chat: start a response, follow its events over SSE, cancel,
regenerate, read a conversation.

Every refusal is a 4xx (or 503) with ``{"error": message}``; nothing internal reaches
the client. The event stream is sse-starlette's: ``id``, ``event`` and JSON ``data``
per event, a ``: ping`` comment every ``heartbeat_s`` seconds, and a reader that does
not take its events within ``send_timeout_s`` is disconnected (its response goes on;
it can reconnect with ``Last-Event-ID``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from sse_starlette.event import ServerSentEvent
from sse_starlette.sse import EventSourceResponse, SendTimeoutError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from voice_agent.auth import Caller
from voice_agent.chat.events import (
    BadLastEventId,
    EventsUnavailable,
    UnknownResponse,
    parse_last_event_id,
)
from voice_agent.chat.service import ChatRefused, ChatService
from voice_agent.chat.service import Response as Response_

log = logging.getLogger("voice_agent.chat")
RECONNECT_MS = 1000
"""How soon a dropped EventSource reconnects (its ``retry:``; browsers wait 3 s without)."""
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _accepted(resp: Response_) -> JSONResponse:
    return JSONResponse(
        {
            "response_id": resp.id,
            "conversation_id": resp.conversation_id,
            "events_url": f"/v1/chat/{resp.id}/events",
        },
        status_code=202,
    )


def chat_routes(
    service: Callable[[], ChatService | None],
    heartbeat_s: float = 15.0,
    max_body_bytes: int = 64 * 1024,
    send_timeout_s: float = 30.0,
) -> list[Route]:
    """``service()`` is None until the models are loaded (the routes answer 503)."""

    def ready() -> ChatService:
        s = service()
        if s is None:
            raise ChatRefused(503, "the server is still loading its models; try again shortly")
        return s

    async def start(request: Request) -> Response:
        try:
            s = ready()
            body = await _json_body(request, max_body_bytes)
            message = body.get("message")
            if not isinstance(message, str):
                raise ChatRefused(400, 'the body needs "message", a string')
            cid = body.get("conversation_id")
            if cid is not None and not isinstance(cid, str):
                raise ChatRefused(400, '"conversation_id" must be a string')
            resp = await s.start(message, cid, Caller.of(request.scope))
        except ChatRefused as exc:
            return _error(exc.status, exc.message)
        return _accepted(resp)

    async def events(request: Request) -> Response:
        rid = request.path_params["response_id"]
        try:
            s = ready()
            after = parse_last_event_id(request.headers.get("last-event-id"))
            if not await s.may_follow(rid, Caller.of(request.scope)):
                raise UnknownResponse(rid)
            stream = await s.events.open(rid, after)
        except ChatRefused as exc:
            return _error(exc.status, exc.message)
        except UnknownResponse:
            return _error(404, "no such response (or it has expired)")
        except EventsUnavailable:
            return _error(503, "the event store is unavailable; try again shortly")
        except BadLastEventId as exc:
            return _error(400, str(exc))

        async def sse() -> AsyncIterator[ServerSentEvent]:
            retry: int | None = RECONNECT_MS  # told once per connection
            async for ev in stream:
                yield ServerSentEvent(data=ev.json(), event=ev.event, id=str(ev.id), retry=retry)
                retry = None

        return _EventStream(
            sse(), headers=SSE_HEADERS, ping=heartbeat_s, send_timeout=send_timeout_s
        )

    async def cancel(request: Request) -> Response:
        try:
            s = ready()
            stopped = s.cancel(request.path_params["response_id"], Caller.of(request.scope))
        except ChatRefused as exc:
            return _error(exc.status, exc.message)
        if not stopped:
            return _error(409, "the response had already ended")
        return JSONResponse({"cancelled": True}, status_code=202)

    async def regenerate(request: Request) -> Response:
        try:
            s = ready()
            resp = await s.regenerate(request.path_params["response_id"], Caller.of(request.scope))
        except ChatRefused as exc:
            return _error(exc.status, exc.message)
        return _accepted(resp)

    async def conversation(request: Request) -> Response:
        try:
            s = ready()
            cid = request.path_params["conversation_id"]
            return JSONResponse(await s.conversation(cid, Caller.of(request.scope)))
        except ChatRefused as exc:
            return _error(exc.status, exc.message)

    return [
        Route("/v1/chat", start, methods=["POST"]),
        Route("/v1/chat/{response_id}/events", events),
        Route("/v1/chat/{response_id}/cancel", cancel, methods=["POST"]),
        Route("/v1/chat/{response_id}/regenerate", regenerate, methods=["POST"]),
        Route("/v1/conversations/{conversation_id}", conversation),
    ]


class _EventStream(EventSourceResponse):
    """sse-starlette's response; a reader that took no event within the send timeout is
    let go quietly (the response goes on, and the reader can resume), not logged as an
    error of the app."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except* SendTimeoutError:
            log.info("a chat reader took no event for %.0f s: disconnected", self.send_timeout)


async def _json_body(request: Request, limit: int) -> dict[str, Any]:
    try:
        size = int(request.headers.get("content-length") or 0)
    except ValueError:
        raise ChatRefused(400, "Content-Length is not a number") from None
    if size > limit:
        raise ChatRefused(413, f"the body is over {limit} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise ChatRefused(413, f"the body is over {limit} bytes")
    if not raw.strip():
        raise ChatRefused(400, 'the body is empty; send JSON with "message"')
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ChatRefused(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ChatRefused(400, 'the body must be a JSON object with "message"')
    return body
