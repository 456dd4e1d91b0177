"""Twilio Media Streams, sans-I/O: the JSON messages of a bidirectional ``<Connect><Stream>``.

:class:`TwilioStream` turns each text message from Twilio into a typed event and
builds the messages sent back (``media``, ``mark``, ``clear``). It never touches a
socket. Bad input raises :class:`TwilioInputError`: ``fatal`` says whether the bridge
must hang up (the stream cannot go on) or may skip that one message.

From Twilio: ``connected``, ``start`` (streamSid, callSid, customParameters,
mediaFormat), ``media`` (base64 μ-law, 8 kHz, 20 ms chunks), ``dtmf``, ``mark`` (echoed
once the audio before it has played, or when a ``clear`` dropped it) and ``stop``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import quoteattr

TWILIO_RATE = 8000
MAX_MEDIA_BYTES = 8000
"""One message's audio at most (1 s of μ-law); Twilio sends 160 bytes (20 ms)."""


class TwilioInputError(Exception):
    """A message the bridge cannot use. ``fatal``: hang up; otherwise skip the message."""

    def __init__(self, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


@dataclass(frozen=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    encoding: str
    sample_rate: int
    channels: int
    tracks: tuple[str, ...] = ()
    custom_parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Media:
    ulaw: bytes
    chunk: int | None
    timestamp_ms: int | None
    """Milliseconds since the stream started (Twilio's clock)."""


@dataclass(frozen=True)
class Dtmf:
    digit: str


@dataclass(frozen=True)
class Mark:
    name: str


@dataclass(frozen=True)
class Stop:
    call_sid: str | None


TwilioEvent = Connected | Start | Media | Dtmf | Mark | Stop

_DIGITS = frozenset("0123456789*#ABCD")


class TwilioStream:
    """One stream's state: which ``streamSid`` it is, once ``start`` has said so."""

    def __init__(self) -> None:
        self.start: Start | None = None
        self.stopped = False

    @property
    def stream_sid(self) -> str | None:
        return self.start.stream_sid if self.start else None

    # -- from Twilio --------------------------------------------------------------

    def receive(self, text: str) -> TwilioEvent:
        """Parse one message. Raises :class:`TwilioInputError` (see the module docstring)."""
        try:
            msg = json.loads(text)
        except json.JSONDecodeError:
            raise TwilioInputError("a message that is not JSON was skipped") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
            raise TwilioInputError("a message without an 'event' was skipped")
        event = msg["event"]
        if event == "connected":
            return Connected(str(msg.get("protocol", "")), str(msg.get("version", "")))
        if event == "start":
            return self._on_start(msg)
        if self.start is None:
            raise TwilioInputError(f"'{event}' before 'start' was skipped")
        if msg.get("streamSid") != self.start.stream_sid:
            raise TwilioInputError(f"'{event}' for another streamSid was skipped")
        if event == "media":
            return self._on_media(msg)
        if event == "dtmf":
            digit = _obj(msg, "dtmf").get("digit")
            if not isinstance(digit, str) or digit not in _DIGITS:
                raise TwilioInputError("a dtmf message without a valid digit was skipped")
            return Dtmf(digit)
        if event == "mark":
            name = _obj(msg, "mark").get("name")
            if not isinstance(name, str):
                raise TwilioInputError("a mark without a name was skipped")
            return Mark(name)
        if event == "stop":
            self.stopped = True
            call = _obj(msg, "stop").get("callSid")
            return Stop(call if isinstance(call, str) else None)
        raise TwilioInputError(f"unknown event '{event[:40]}' was skipped")

    def _on_start(self, msg: dict[str, Any]) -> Start:
        if self.start is not None:
            raise TwilioInputError("a second 'start' on one stream", fatal=True)
        start, fmt = msg.get("start"), None
        if isinstance(start, dict):
            fmt = start.get("mediaFormat")
        if not isinstance(start, dict) or not isinstance(fmt, dict):
            raise TwilioInputError("'start' without its start.mediaFormat object", fatal=True)
        sid = start.get("streamSid") or msg.get("streamSid")
        call = start.get("callSid")
        if not isinstance(sid, str) or not sid or not isinstance(call, str):
            raise TwilioInputError("'start' without streamSid and callSid", fatal=True)
        encoding, rate = fmt.get("encoding"), fmt.get("sampleRate")
        if encoding != "audio/x-mulaw" or rate != TWILIO_RATE:
            raise TwilioInputError(
                f"unsupported media format {encoding!r} at {rate!r} Hz: "
                "Media Streams send audio/x-mulaw at 8000 Hz",
                fatal=True,
            )
        params = start.get("customParameters") or {}
        self.start = Start(
            stream_sid=sid,
            call_sid=call,
            account_sid=str(start.get("accountSid", "")),
            encoding=encoding,
            sample_rate=rate,
            channels=int(fmt.get("channels", 1)),
            tracks=tuple(str(t) for t in start.get("tracks", ())),
            custom_parameters={str(k): str(v) for k, v in dict(params).items()},
        )
        return self.start

    def _on_media(self, msg: dict[str, Any]) -> Media:
        media = _obj(msg, "media")
        payload = media.get("payload")
        if not isinstance(payload, str):
            raise TwilioInputError("a media message without a payload was skipped")
        if len(payload) > MAX_MEDIA_BYTES * 4 // 3 + 4:
            raise TwilioInputError("an oversized media payload was skipped")
        try:
            ulaw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise TwilioInputError("a media payload that is not base64 was skipped") from None
        return Media(ulaw, _int(media.get("chunk")), _int(media.get("timestamp")))

    # -- to Twilio ------------------------------------------------------------------

    def media(self, ulaw: bytes) -> str:
        """Agent audio (μ-law, 8 kHz) for the caller."""
        payload = base64.b64encode(ulaw).decode("ascii")
        return self._send("media", {"media": {"payload": payload}})

    def mark(self, name: str) -> str:
        """Twilio echoes it once the audio sent before it has played."""
        return self._send("mark", {"mark": {"name": name}})

    def clear(self) -> str:
        """Drop the audio Twilio has buffered for the caller (pending marks come back)."""
        return self._send("clear", {})

    def _send(self, event: str, body: dict[str, Any]) -> str:
        if self.start is None:
            raise RuntimeError(f"cannot send '{event}' before the stream's 'start'")
        return json.dumps({"event": event, "streamSid": self.start.stream_sid, **body})


def _obj(msg: dict[str, Any], key: str) -> dict[str, Any]:
    value = msg.get(key)
    if not isinstance(value, dict):
        raise TwilioInputError(f"'{msg.get('event')}' without its '{key}' object was skipped")
    return value


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


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
