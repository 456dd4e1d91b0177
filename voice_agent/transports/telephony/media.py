"""What every telephony media stream shares, sans-I/O: codecs, typed events, bad input.

Each provider's module (``twilio``, ``telnyx``, ``plivo``, ``vonage``) subclasses
:class:`StreamProtocol`: ``receive`` turns one WebSocket message from the provider into
one typed event; ``media``, ``mark`` and ``clear`` build the messages sent back. Bad
input raises :class:`TelephonyInputError`: ``fatal`` says whether the bridge must hang
up (the stream cannot go on) or may skip that one message.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from voice_agent.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from voice_agent.audio.pcm import Pcm

DIGITS = frozenset("0123456789*#ABCD")


class TelephonyInputError(Exception):
    """A message the bridge cannot use. ``fatal``: hang up; otherwise skip the message."""

    def __init__(self, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


@dataclass(frozen=True)
class Codec:
    """One direction's audio on the wire: ``mulaw``, ``alaw`` or ``l16`` (16-bit linear,
    little-endian unless ``big_endian``, as RTP's L16 is) at ``rate`` Hz, mono."""

    encoding: str
    rate: int
    big_endian: bool = False

    @property
    def frame_samples(self) -> int:
        """Samples in 20 ms."""
        return self.rate // 50

    @property
    def sample_bytes(self) -> int:
        return 2 if self.encoding == "l16" else 1

    def decode(self, data: bytes) -> Pcm:
        if self.encoding == "mulaw":
            return ulaw_decode(data)
        if self.encoding == "alaw":
            return alaw_decode(data)
        if len(data) % 2:
            raise TelephonyInputError("16-bit audio with an odd byte count was skipped")
        return np.frombuffer(data, dtype=">i2" if self.big_endian else "<i2").astype(np.int16)

    def encode(self, pcm: Pcm) -> bytes:
        if self.encoding == "mulaw":
            return ulaw_encode(pcm)
        if self.encoding == "alaw":
            return alaw_encode(pcm)
        return np.asarray(pcm, dtype=">i2" if self.big_endian else "<i2").tobytes()


MULAW_8K = Codec("mulaw", 8000)


@dataclass(frozen=True)
class Connected:
    detail: str = ""


@dataclass(frozen=True)
class Start:
    stream_id: str
    call_id: str
    codec: Codec
    parameters: dict[str, str] = field(default_factory=dict)
    """The call's custom parameters (Twilio ``customParameters``, Telnyx
    ``custom_parameters``, Plivo ``extra_headers``, Vonage's connect headers)."""
    tracks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Media:
    audio: bytes
    """Caller audio in the stream's codec."""


@dataclass(frozen=True)
class Dtmf:
    digit: str


@dataclass(frozen=True)
class Played:
    """A mark (Twilio, Telnyx), checkpoint (Plivo) or notify (Vonage) came back: the
    audio sent before it has played, or (Twilio, Telnyx) a clear dropped it."""

    name: str


@dataclass(frozen=True)
class Cleared:
    """The provider confirms a clear (Plivo ``clearedAudio``, Vonage ``websocket:cleared``)."""


@dataclass(frozen=True)
class Stop:
    call_id: str | None = None


StreamEvent = Connected | Start | Media | Dtmf | Played | Cleared | Stop


class StreamProtocol:
    """One provider stream's state: which stream it is, once its start has said so."""

    name: ClassVar[str] = ""
    marks: ClassVar[bool] = True
    """Whether the provider answers marks (AudioSocket has none: what was sent is the
    playout position)."""
    max_media_bytes: ClassVar[int] = 32000
    """One message's audio at most (1 s of 16-bit audio at 16 kHz); providers send 20 ms."""

    def __init__(self) -> None:
        self.start: Start | None = None
        self.stopped = False

    @property
    def stream_id(self) -> str | None:
        return self.start.stream_id if self.start else None

    @property
    def codec(self) -> Codec:
        if self.start is None:
            raise RuntimeError("no codec before the stream's start")
        return self.start.codec

    def receive(self, message: str | bytes) -> StreamEvent:
        """Parse one message. Raises :class:`TelephonyInputError`."""
        if isinstance(message, bytes):
            return self.receive_binary(message)
        try:
            msg = json.loads(message)
        except (ValueError, RecursionError):  # bad syntax, too deep, a number too long
            raise TelephonyInputError("a message that is not JSON was skipped") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
            raise TelephonyInputError("a message without an 'event' was skipped")
        return self.receive_json(msg["event"], msg)

    def receive_binary(self, data: bytes) -> StreamEvent:
        raise TelephonyInputError("a binary message was skipped: this stream sends JSON")

    def receive_json(self, event: str, msg: dict[str, Any]) -> StreamEvent:
        raise NotImplementedError

    def started(self, start: Start) -> Start:
        if self.start is not None:
            raise TelephonyInputError("a second 'start' on one stream", fatal=True)
        self.start = start
        return start

    def require_start(self, event: str) -> Start:
        if self.start is None:
            raise TelephonyInputError(f"'{event}' before 'start' was skipped")
        return self.start

    def check_stream(self, event: str, stream_id: Any) -> None:
        if stream_id != self.require_start(event).stream_id:
            raise TelephonyInputError(f"'{event}' for another stream was skipped")

    def common(self, event: str, msg: dict[str, Any]) -> StreamEvent | None:
        """The events Twilio, Telnyx and Plivo spell alike: ``media`` ({"media":
        {"payload"}}), ``dtmf`` ({"dtmf": {"digit"}}) and ``mark`` ({"mark": {"name"}})."""
        if event == "media":
            return self.audio(obj(msg, "media").get("payload"))
        if event == "dtmf":
            return digit(obj(msg, "dtmf").get("digit"))
        if event == "mark":
            name = obj(msg, "mark").get("name")
            if not isinstance(name, str):
                raise TelephonyInputError("a mark without a name was skipped")
            return Played(name)
        return None

    def started_with(
        self,
        msg: dict[str, Any],
        fmt_key: str,
        ids: tuple[Any, Any],
        codecs: dict[tuple[str, int], Codec],
        rate_key: str,
        supported: str,
        parameters: dict[str, str],
    ) -> Start:
        """A ``start`` with its media format object (``msg["start"][fmt_key]``): ``ids`` is
        (stream id, call id) as the message has them; ``codecs`` maps (encoding, rate) to
        the codecs the bridge carries (``supported`` says which in words)."""
        start = msg.get("start")
        fmt = start.get(fmt_key) if isinstance(start, dict) else None
        if not isinstance(start, dict) or not isinstance(fmt, dict):
            raise TelephonyInputError(f"'start' without its start.{fmt_key} object", fatal=True)
        sid, call = ids
        if not isinstance(sid, str) or not sid or not isinstance(call, str):
            raise TelephonyInputError("'start' without its stream and call ids", fatal=True)
        encoding, rate = fmt.get("encoding"), fmt.get(rate_key)
        found = codecs.get((str(encoding), rate)) if isinstance(rate, int) else None
        if found is None:
            raise TelephonyInputError(
                f"unsupported media format {str(encoding)[:40]!r} at {str(rate)[:10]} Hz: "
                f"{supported}",
                fatal=True,
            )
        tracks = start.get("tracks")
        tracks = tuple(str(t) for t in tracks) if isinstance(tracks, list) else ("inbound",)
        return self.started(Start(sid, call, found, parameters, tracks))

    def unknown(self, event: str) -> TelephonyInputError:
        return TelephonyInputError(f"unknown event '{event[:40]}' was skipped")

    def audio(self, payload: Any) -> Media:
        """A base64 media payload, checked."""
        if not isinstance(payload, str):
            raise TelephonyInputError("a media message without a payload was skipped")
        if len(payload) > self.max_media_bytes * 4 // 3 + 4:
            raise TelephonyInputError("an oversized media payload was skipped")
        try:
            return Media(base64.b64decode(payload, validate=True))
        except (binascii.Error, ValueError):
            raise TelephonyInputError("a media payload that is not base64 was skipped") from None

    # -- to the provider (each provider's shapes) ----------------------------------

    def json_message(self, msg: dict[str, Any]) -> str:
        if self.start is None:
            raise RuntimeError("cannot send to a stream before its start")
        return json.dumps(msg)

    def media(self, audio: bytes) -> str | bytes:
        """Agent audio (in the stream's codec) for the caller."""
        raise NotImplementedError

    def mark(self, name: str) -> str:
        """The provider answers it (:class:`Played`) once the audio before it has played."""
        raise NotImplementedError

    def clear(self) -> str | None:
        """Drop the audio the provider has buffered for the caller (None: it buffers none)."""
        return None

    def goodbye(self) -> str | bytes | None:
        """What to send as the call ends, before the socket closes (None: nothing)."""
        return None


def obj(msg: dict[str, Any], key: str) -> dict[str, Any]:
    value = msg.get(key)
    if not isinstance(value, dict):
        raise TelephonyInputError(f"'{msg.get('event')}' without its '{key}' object was skipped")
    return value


def digit(value: Any) -> Dtmf:
    if not isinstance(value, str) or value not in DIGITS:
        raise TelephonyInputError("a dtmf message without a valid digit was skipped")
    return Dtmf(value)


def b64(audio: bytes) -> str:
    return base64.b64encode(audio).decode("ascii")


def section(msg: dict[str, Any], key: str) -> dict[str, Any]:
    """``msg[key]`` if it is an object, else an empty one."""
    value = msg.get(key)
    return value if isinstance(value, dict) else {}


def params(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
