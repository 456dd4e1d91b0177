"""Asterisk AudioSocket, sans-I/O: the frames of one TCP connection from ``AudioSocket()``.

Each frame is a 3-byte header, a type byte and a big-endian uint16 payload length, then
the payload. Types: ``0x01`` the call's UUID (16 bytes, first), ``0x10`` signed linear
16-bit little-endian audio at 8 kHz (320 bytes per 20 ms), ``0x03`` a DTMF digit,
``0x00`` hang-up and ``0xff`` an error. Both directions use the same frames.

There is no mark and no clear: the session paces its output at real time, so the
playout position is what was sent, and a barge-in stops the audio at the next frame.

Bad input: an unknown type or an odd audio length is skipped; a truncated header, a
frame cut short, an oversized length (more than 1 s of audio) or a second UUID cannot be
trusted to keep the framing, so the call hangs up.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, ClassVar

from voice_agent.transports.telephony.media import (
    Codec,
    Media,
    Start,
    Stop,
    StreamEvent,
    StreamProtocol,
    TelephonyInputError,
    digit,
)

KIND_HANGUP = 0x00
KIND_UUID = 0x01
KIND_DTMF = 0x03
KIND_SLIN = 0x10
KIND_ERROR = 0xFF
HEADER = 3
MAX_PAYLOAD = 16000
"""1 s of 8 kHz audio; Asterisk sends 320 bytes."""
SLIN_8K = Codec("l16", 8000)


def frame(kind: int, payload: bytes = b"") -> bytes:
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


class AudioSocketStream(StreamProtocol):
    name = "audiosocket"
    marks: ClassVar[bool] = False

    def receive_binary(self, data: bytes) -> StreamEvent:
        """One whole frame, header included (see :func:`read_frame`)."""
        if len(data) < HEADER:
            raise TelephonyInputError("the connection ended inside a frame header", fatal=True)
        kind, size, payload = data[0], int.from_bytes(data[1:3], "big"), data[HEADER:]
        if size > MAX_PAYLOAD:
            raise TelephonyInputError(f"an oversized frame length ({size} bytes)", fatal=True)
        if len(payload) != size:
            raise TelephonyInputError("the connection ended inside a frame", fatal=True)
        if kind == KIND_UUID:
            if size != 16:
                raise TelephonyInputError("a UUID frame that is not 16 bytes", fatal=True)
            call = str(uuid.UUID(bytes=payload))
            if self.start is not None:
                raise TelephonyInputError("a second UUID on one connection", fatal=True)
            return self.started(Start(call, call, SLIN_8K))
        if kind == KIND_HANGUP:
            self.stopped = True
            return Stop(self.stream_id)
        self.require_start(f"frame type 0x{kind:02x}")
        if kind == KIND_SLIN:
            return Media(payload)
        if kind == KIND_DTMF:
            return digit(payload.decode("ascii", "replace"))
        if kind == KIND_ERROR:
            code = payload.hex() or "none"
            raise TelephonyInputError(f"Asterisk reported an error (code {code[:8]})")
        raise TelephonyInputError(f"a frame of unknown type 0x{kind:02x} was skipped")

    def receive_json(self, event: str, msg: dict[str, Any]) -> StreamEvent:
        raise TelephonyInputError("AudioSocket carries no text", fatal=True)

    def media(self, audio: bytes) -> bytes:
        return frame(KIND_SLIN, audio)

    def goodbye(self) -> bytes:
        return frame(KIND_HANGUP)


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """One frame as :meth:`AudioSocketStream.receive_binary` takes it; None at a clean end.
    A frame cut short comes back as what arrived; an oversized length as its header alone
    (its payload is never read), so that the stream can say what went wrong. A reset
    connection is a hang-up."""
    try:
        header = await reader.readexactly(HEADER)
    except asyncio.IncompleteReadError as exc:
        return exc.partial or None
    except ConnectionError:
        return None
    size = int.from_bytes(header[1:3], "big")
    if size > MAX_PAYLOAD:
        return header
    try:
        return header + await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        return header + exc.partial
    except ConnectionError:
        return None
