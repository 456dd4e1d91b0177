"""Telnyx media streaming, sans-I/O: Twilio's event set with Telnyx's snake_case fields.

From Telnyx: ``connected``, ``start`` (top-level ``stream_id``; ``start.call_control_id``,
``custom_parameters``, ``media_format`` {encoding, sample_rate, channels}), ``media``
(a base64 RTP payload), ``dtmf``, ``mark`` (sent back once the audio before it has played,
or when a ``clear`` dropped it), ``error`` and ``stop``.

To Telnyx (bidirectional RTP mode, ``stream_bidirectional_mode: rtp``): ``media``
({"media": {"payload"}}), ``mark`` and ``clear``. Audio goes back in the codec and rate
the ``start`` announced, so set ``stream_bidirectional_codec`` and
``stream_bidirectional_sampling_rate`` to match the stream's.

Codecs: PCMU and PCMA at 8 kHz, and L16 (RTP's 16-bit linear, big-endian) at 8 or 16 kHz.
"""

from __future__ import annotations

from typing import Any

from voice_agent.transports.telephony.media import (
    Codec,
    Connected,
    Start,
    Stop,
    StreamEvent,
    StreamProtocol,
    TelephonyInputError,
    b64,
    params,
    section,
)

CODECS = {
    ("PCMU", 8000): Codec("mulaw", 8000),
    ("PCMA", 8000): Codec("alaw", 8000),
    ("L16", 8000): Codec("l16", 8000, big_endian=True),
    ("L16", 16000): Codec("l16", 16000, big_endian=True),
}


class TelnyxStream(StreamProtocol):
    name = "telnyx"

    def receive_json(self, event: str, msg: dict[str, Any]) -> StreamEvent:
        if event == "connected":
            return Connected(str(msg.get("version", "")))
        if event == "start":
            return self._on_start(msg)
        self.check_stream(event, msg.get("stream_id"))
        if (common := self.common(event, msg)) is not None:
            return common
        if event == "error":
            payload = msg.get("payload")
            title = payload.get("title") if isinstance(payload, dict) else None
            raise TelephonyInputError(f"Telnyx reported an error: {str(title or 'unknown')[:80]}")
        if event == "stop":
            self.stopped = True
            stop = msg.get("stop")
            call = stop.get("call_control_id") if isinstance(stop, dict) else None
            return Stop(call if isinstance(call, str) else None)
        raise self.unknown(event)

    def _on_start(self, msg: dict[str, Any]) -> Start:
        start = section(msg, "start")
        return self.started_with(
            msg,
            "media_format",
            (msg.get("stream_id"), start.get("call_control_id")),
            CODECS,
            "sample_rate",
            "PCMU or PCMA at 8000 Hz, or L16 at 8000 or 16000 Hz",
            params(start.get("custom_parameters")),
        )

    # -- to Telnyx -------------------------------------------------------------------

    def media(self, audio: bytes) -> str:
        return self.json_message({"event": "media", "media": {"payload": b64(audio)}})

    def mark(self, name: str) -> str:
        return self.json_message({"event": "mark", "mark": {"name": name}})

    def clear(self) -> str:
        return self.json_message({"event": "clear"})
