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
    section,
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
        if event in ("media", "dtmf") and (common := self.common(event, msg)) is not None:
            return common
        if event == "playedStream":
            name = msg.get("name")
            if not isinstance(name, str):
                raise TelephonyInputError("a playedStream without a name was skipped")
            return Played(name)
        if event == "clearedAudio":
            return Cleared()
        raise self.unknown(event)

    def _on_start(self, msg: dict[str, Any]) -> Start:
        start = section(msg, "start")
        return self.started_with(
            msg,
            "mediaFormat",
            (start.get("streamId"), start.get("callId")),
            CODECS,
            "sampleRate",
            "audio/x-mulaw at 8000 Hz, or audio/x-l16 at 8000 or 16000 Hz",
            _extra_headers(msg.get("extra_headers")),
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
