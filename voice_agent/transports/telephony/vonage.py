"""The Vonage Voice API WebSocket, sans-I/O (an NCCO ``connect`` to a ``websocket`` endpoint).

From Vonage: first a text message, ``{"event": "websocket:connected", "content-type":
"audio/l16;rate=16000", ...}`` (with the NCCO's ``headers`` as further fields); then
binary frames of 16-bit little-endian linear PCM at 8 or 16 kHz, 20 ms each, and text
events: ``websocket:dtmf`` ({"digit", "duration"}), ``websocket:notify`` (the payload of a
``notify`` whose audio has played) and ``websocket:cleared``.

To Vonage: binary frames of 20 ms in the same format, ``{"action": "notify", "payload":
{"name": ...}}`` and ``{"action": "clear"}``.
"""

from __future__ import annotations

import re
from typing import Any

from voice_agent.transports.telephony.media import (
    Cleared,
    Codec,
    Media,
    Played,
    Start,
    StreamEvent,
    StreamProtocol,
    TelephonyInputError,
    digit,
)

_CONTENT_TYPE = re.compile(r"^\s*audio/l16\s*;\s*rate\s*=\s*(8000|16000)\s*$", re.IGNORECASE)


class VonageStream(StreamProtocol):
    name = "vonage"

    def receive_binary(self, data: bytes) -> StreamEvent:
        self.require_start("audio")
        if len(data) > self.max_media_bytes:
            raise TelephonyInputError("an oversized audio frame was skipped")
        return Media(data)

    def receive_json(self, event: str, msg: dict[str, Any]) -> StreamEvent:
        if event == "websocket:connected":
            return self._on_connected(msg)
        self.require_start(event)
        if event == "websocket:dtmf":
            nested = msg.get("dtmf")
            return digit(nested.get("digit") if isinstance(nested, dict) else msg.get("digit"))
        if event == "websocket:notify":
            payload = msg.get("payload")
            name = payload.get("name") if isinstance(payload, dict) else None
            if not isinstance(name, str):
                raise TelephonyInputError("a websocket:notify without payload.name was skipped")
            return Played(name)
        if event == "websocket:cleared":
            return Cleared()
        raise self.unknown(event)

    def _on_connected(self, msg: dict[str, Any]) -> Start:
        match = _CONTENT_TYPE.match(str(msg.get("content-type", "")))
        if match is None:
            raise TelephonyInputError(
                f"unsupported content-type {str(msg.get('content-type'))[:40]!r}: "
                "audio/l16;rate=8000 or audio/l16;rate=16000",
                fatal=True,
            )
        headers = {
            str(k): str(v)
            for k, v in msg.items()
            if k not in ("event", "content-type") and isinstance(v, str | int | float)
        }
        call = headers.get("uuid") or headers.get("conversation_uuid") or ""
        return self.started(Start(call, call, Codec("l16", int(match.group(1))), headers))

    # -- to Vonage -------------------------------------------------------------------

    def media(self, audio: bytes) -> bytes:
        if self.start is None:
            raise RuntimeError("cannot send audio before websocket:connected")
        return audio

    def mark(self, name: str) -> str:
        return self.json_message({"action": "notify", "payload": {"name": name}})

    def clear(self) -> str:
        return self.json_message({"action": "clear"})
