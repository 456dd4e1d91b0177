"""Plivo audio streams, sans-I/O (a bidirectional ``<Stream>``).

From Plivo: ``start`` (``start.streamId``, ``callId``, ``mediaFormat`` {encoding,
sampleRate}, and ``extra_headers``), ``media`` (base64 audio), ``dtmf``,
``playedStream`` (a checkpoint's audio has played) and ``clearedAudio``. Plivo sends no
``connected`` and no ``stop``: the stream ends when the WebSocket closes.

To Plivo: ``playAudio`` (``media.contentType``, ``sampleRate``, ``payload``),
``checkpoint`` (answered by ``playedStream`` only if the audio before it played: a
``clearAudio`` drops it without an answer) and ``clearAudio``.

Codecs: ``audio/x-mulaw`` at 8 kHz and ``audio/x-l16`` (16-bit little-endian) at 8 or
16 kHz; the agent answers in the stream's own format.
"""

from __future__ import annotations

from typing import Any

from voice_agent.transports.telephony.media import (
    Cleared,
    Codec,
    Played,
    Start,
    StreamEvent,
    StreamProtocol,
    TelephonyInputError,
    b64,
    digit,
    obj,
)

CODECS = {
    ("audio/x-mulaw", 8000): Codec("mulaw", 8000),
    ("audio/x-l16", 8000): Codec("l16", 8000),
    ("audio/x-l16", 16000): Codec("l16", 16000),
}
CONTENT_TYPES = {codec: content for (content, _), codec in CODECS.items()}


class PlivoStream(StreamProtocol):
    name = "plivo"

    def receive_json(self, event: str, msg: dict[str, Any]) -> StreamEvent:
        if event == "start":
            return self._on_start(msg)
        self.check_stream(event, msg.get("streamId"))
        if event == "media":
            return self.audio(obj(msg, "media").get("payload"))
        if event == "dtmf":
            return digit(obj(msg, "dtmf").get("digit"))
        if event == "playedStream":
            name = msg.get("name")
            if not isinstance(name, str):
                raise TelephonyInputError("a playedStream without a name was skipped")
            return Played(name)
        if event == "clearedAudio":
            return Cleared()
        raise self.unknown(event)

    def _on_start(self, msg: dict[str, Any]) -> Start:
        start, fmt = msg.get("start"), None
        if isinstance(start, dict):
            fmt = start.get("mediaFormat")
        if not isinstance(start, dict) or not isinstance(fmt, dict):
            raise TelephonyInputError("'start' without its start.mediaFormat object", fatal=True)
        sid, call = start.get("streamId"), start.get("callId")
        if not isinstance(sid, str) or not sid or not isinstance(call, str):
            raise TelephonyInputError("'start' without streamId and callId", fatal=True)
        encoding, rate = fmt.get("encoding"), fmt.get("sampleRate")
        codec = CODECS.get((str(encoding), rate)) if isinstance(rate, int) else None
        if codec is None:
            raise TelephonyInputError(
                f"unsupported media format {str(encoding)[:40]!r} at {str(rate)[:10]} Hz: "
                "audio/x-mulaw at 8000 Hz, or audio/x-l16 at 8000 or 16000 Hz",
                fatal=True,
            )
        tracks = start.get("tracks")
        return self.started(
            Start(
                stream_id=sid,
                call_id=call,
                codec=codec,
                parameters=_extra_headers(msg.get("extra_headers")),
                tracks=tuple(str(t) for t in tracks) if isinstance(tracks, list) else (),
            )
        )

    # -- to Plivo --------------------------------------------------------------------

    def media(self, audio: bytes) -> str:
        content, rate = CONTENT_TYPES[self.codec], self.codec.rate
        media = {"contentType": content, "sampleRate": rate, "payload": b64(audio)}
        return self.json_message({"event": "playAudio", "media": media})

    def mark(self, name: str) -> str:
        return self.json_message({"event": "checkpoint", "streamId": self.stream_id, "name": name})

    def clear(self) -> str:
        return self.json_message({"event": "clearAudio", "streamId": self.stream_id})


def _extra_headers(value: Any) -> dict[str, str]:
    """Plivo's ``extra_headers``: ``"k1=v1;k2=v2"`` (the XML's ``extraHeaders``, which
    separates pairs with commas)."""
    if not isinstance(value, str):
        return {}
    pairs = (part.partition("=") for part in value.replace(",", ";").split(";") if "=" in part)
    return {k.strip(): v.strip() for k, _, v in pairs}
