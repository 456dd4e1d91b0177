"""Twilio Media Streams, sans-I/O: the JSON messages of a bidirectional ``<Connect><Stream>``.

:class:`TwilioStream` turns each text message from Twilio into a typed event (see
:mod:`~voice_agent.transports.telephony.media`) and builds the messages sent back
(``media``, ``mark``, ``clear``). It never touches a socket.

From Twilio: ``connected``, ``start`` (streamSid, callSid, customParameters,
mediaFormat), ``media`` (base64 μ-law, 8 kHz, 20 ms chunks), ``dtmf``, ``mark`` (echoed
once the audio before it has played, or when a ``clear`` dropped it) and ``stop``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any
from xml.sax.saxutils import quoteattr

from voice_agent.transports.telephony.media import (
    MULAW_8K,
    Connected,
    Start,
    Stop,
    StreamEvent,
    StreamProtocol,
    b64,
    obj,
    params,
    section,
)

TWILIO_RATE = 8000
CODECS = {("audio/x-mulaw", TWILIO_RATE): MULAW_8K}


class TwilioStream(StreamProtocol):
    """One Twilio Media Stream: camelCase fields, ``streamSid`` on every message."""

    name = "twilio"
    max_media_bytes = 8000  # 1 s of μ-law; Twilio sends 160 bytes (20 ms)

    def receive_json(self, event: str, msg: dict[str, Any]) -> StreamEvent:
        if event == "connected":
            return Connected(f"{msg.get('protocol', '')} {msg.get('version', '')}".strip())
        if event == "start":
            return self._on_start(msg)
        self.check_stream(event, msg.get("streamSid"))
        if (common := self.common(event, msg)) is not None:
            return common
        if event == "stop":
            self.stopped = True
            call = obj(msg, "stop").get("callSid")
            return Stop(call if isinstance(call, str) else None)
        raise self.unknown(event)

    def _on_start(self, msg: dict[str, Any]) -> Start:
        start = section(msg, "start")
        return self.started_with(
            msg,
            "mediaFormat",
            (start.get("streamSid") or msg.get("streamSid"), start.get("callSid")),
            CODECS,
            "sampleRate",
            "Media Streams send audio/x-mulaw at 8000 Hz",
            params(start.get("customParameters")),
        )

    # -- to Twilio ------------------------------------------------------------------

    def media(self, audio: bytes) -> str:
        return self._send("media", {"media": {"payload": b64(audio)}})

    def mark(self, name: str) -> str:
        """Twilio echoes it once the audio sent before it has played, or a clear dropped it."""
        return self._send("mark", {"mark": {"name": name}})

    def clear(self) -> str:
        """Drop the audio Twilio has buffered for the caller (pending marks come back)."""
        return self._send("clear", {})

    def _send(self, event: str, body: dict[str, Any]) -> str:
        return self.json_message({"event": event, "streamSid": self.stream_id, **body})


# -- the voice webhook ------------------------------------------------------------------


def request_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's ``X-Twilio-Signature``: HMAC-SHA1, keyed with the account's auth token, of
    the full URL followed by each POST parameter's name and value, sorted by name; base64."""
    data = url + "".join(f"{k}{params[k]}" for k in sorted(params))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def signature_valid(
    auth_token: str, url: str, params: dict[str, str], signature: str | None
) -> bool:
    """Whether ``signature`` (the header; None when absent) signs this request."""
    if not signature:
        return False
    expected = request_signature(auth_token, url, params)
    return hmac.compare_digest(expected.encode(), signature.encode())


BUSY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy"/></Response>'
"""The answer to a call the server cannot take now: the caller hears a busy signal (the
phone's 1013), and no call is billed."""


def connect_stream_twiml(stream_url: str, parameters: dict[str, str] | None = None) -> str:
    """TwiML that connects the call to a bidirectional stream at ``stream_url`` (with custom
    parameters, which Twilio hands back in ``start.customParameters``), then hangs up when
    the stream closes."""
    params = "".join(
        f"<Parameter name={quoteattr(k)} value={quoteattr(v)}/>"
        for k, v in (parameters or {}).items()
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Connect><Stream url={quoteattr(stream_url)}>{params}</Stream></Connect>"
        "<Hangup/></Response>"
    )
