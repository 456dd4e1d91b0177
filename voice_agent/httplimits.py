"""HTTP limits uvicorn does not set: a request body's size and time, and the time to send
a request's headers (a slow or half-sent request otherwise holds a connection forever).

- :class:`BodyLimit` (ASGI middleware): a body over ``max_bytes`` gets 413, one that
  takes longer than ``timeout_s`` to arrive gets 408; the app sees the client gone.
- :func:`timed_h11`: uvicorn's h11 protocol with a deadline for each request's
  headers, from the connection's start or the previous response's end.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


class BodyLimit:
    def __init__(
        self,
        app: Any,
        max_bytes: int,
        timeout_s: float,
        on_refused: Callable[[str], None] = lambda why: None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.on_refused = on_refused

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            self.on_refused("body_size")
            await _reply(send, 413, f"the body is over {self.max_bytes} bytes")
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        received = 0
        refused = False
        started = False
        done = False

        async def limited_receive() -> Any:
            nonlocal received, refused, done
            if done or refused:
                return await receive()  # the body is over: wait for the disconnect
            try:
                async with asyncio.timeout_at(deadline):
                    msg = await receive()
            except TimeoutError:
                return await refuse(408, f"the body took over {self.timeout_s:.0f} s")
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    return await refuse(413, f"the body is over {self.max_bytes} bytes")
                done = not msg.get("more_body", False)
            return msg

        async def refuse(status: int, message: str) -> dict[str, str]:
            nonlocal refused
            self.on_refused("body_size" if status == 413 else "body_time")
            if not started:
                refused = True
                await _reply(send, status, message)
            return {"type": "http.disconnect"}

        async def guarded_send(msg: Any) -> None:
            nonlocal started
            if refused:
                return  # our 4xx went out instead
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        await self.app(scope, limited_receive, guarded_send)


async def _reply(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def timed_h11(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol (``uvicorn.Config(http=...)``) that closes a connection
    whose request headers are not all in ``header_timeout_s`` after it opened or after
    its previous response ended."""

    class TimedH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_timer: asyncio.TimerHandle | None = None
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._waiting_for = self.cycle
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm(self) -> None:
            timer = getattr(self, "_header_timer", None)
            if timer is not None:
                timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.cycle is self._waiting_for and not self.transport.is_closing():
                self.transport.close()  # no request came whole: nothing to answer

        def handle_events(self) -> None:
            super().handle_events()
            if self._header_timer is not None and self.cycle is not self._waiting_for:
                self._disarm()  # a request's headers are in

        def handle_websocket_upgrade(self, event: Any) -> None:
            self._disarm()  # the headers are in; the socket is the WebSocket's from now on
            super().handle_websocket_upgrade(event)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return TimedH11Protocol
