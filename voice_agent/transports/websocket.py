"""The WebSocket audio transport: framing, resampling at the edge, bounded send queue.

Protocol: see docs/protocol.md. Pure helpers (parsing, framing) are separate
from the one class that touches the socket, so they are tested without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from voice_agent.audio.pcm import SAMPLE_RATE, Pcm, from_bytes
from voice_agent.audio.resample import StreamResampler
from voice_agent.session.output import OutputBase, SlowClient

__all__ = ["SlowClient", "WebSocketOutput"]

SUPPORTED_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
AUDIO_HEADER = struct.Struct("<II")  # generation, sequence number

# Close codes (RFC 6455 private range 4000-4999 for ours).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013
CLOSE_PROTOCOL = 4400
CLOSE_SLOW_CLIENT = 4408
CLOSE_BAD_RATE = 4415


class ProtocolError(Exception):
    """A client message that ends the session: carries the close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class StartOptions:
    sample_rate: int
    output_sample_rate: int
    session_id: str | None
    conversation_id: str | None = None
    """A stored conversation the call goes on with (its turns are added to it)."""


def _json(text: str) -> Any:
    """``json.loads``, with every way it can fail as a ValueError for the client: a syntax
    error, nesting too deep for the parser (RecursionError), or an integer of more digits
    than Python converts (ValueError)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise ValueError("not valid JSON: nested too deep") from None
    except ValueError:
        raise ValueError("not valid JSON: a number is too long") from None


def _show(value: Any) -> str:
    """A client's value in an error message, cut short."""
    plain = isinstance(value, str | int | float | bool | None)
    text = repr(value) if plain else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def parse_start(text: str) -> StartOptions:
    """Validate the opening ``session.start`` message or raise :class:`ProtocolError`."""
    try:
        msg = _json(text)
    except ValueError as exc:
        raise ProtocolError(CLOSE_PROTOCOL, f"session.start is {exc}") from None
    if not isinstance(msg, dict) or msg.get("type") != "session.start":
        raise ProtocolError(CLOSE_PROTOCOL, "the first message must be a session.start JSON object")
    encoding = msg.get("encoding", "pcm16")
    if encoding != "pcm16":
        raise ProtocolError(CLOSE_PROTOCOL, f"unsupported encoding {_show(encoding)}: use pcm16")
    rates = []
    for key, default in (("sample_rate", None), ("output_sample_rate", "sample_rate")):
        value = msg.get(key, msg.get(default) if default else None)
        if not isinstance(value, int) or value not in SUPPORTED_RATES:
            raise ProtocolError(
                CLOSE_BAD_RATE,
                f"unsupported {key} {_show(value)}: use one of "
                f"{', '.join(map(str, SUPPORTED_RATES))}",
            )
        rates.append(value)
    sid = msg.get("session_id")
    if sid is not None and (not isinstance(sid, str) or not 0 < len(sid) <= 64):
        raise ProtocolError(CLOSE_PROTOCOL, "session_id must be a string of 1 to 64 characters")
    cid = msg.get("conversation_id")
    if cid is not None and (not isinstance(cid, str) or not 0 < len(cid) <= 64):
        raise ProtocolError(
            CLOSE_PROTOCOL, "conversation_id must be a string of 1 to 64 characters"
        )
    return StartOptions(rates[0], rates[1], sid, cid)


def parse_client_message(text: str) -> dict[str, Any]:
    """A control message after the start. Raises ValueError with a message for the client."""
    msg = _json(text)
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ValueError("a message must be a JSON object with a string 'type'")
    kind = msg["type"]
    if kind == "playout":
        if not isinstance(msg.get("gen"), int) or not isinstance(msg.get("samples"), int):
            raise ValueError("playout needs integer 'gen' and 'samples'")
        if msg["samples"] < 0:
            raise ValueError("playout 'samples' must be >= 0")
    elif kind == "text":
        if not isinstance(msg.get("text"), str) or not msg["text"].strip():
            raise ValueError("text needs a non-empty string 'text'")
    elif kind not in ("interrupt", "session.end"):
        raise ValueError(f"unknown message type {_show(kind)}")
    return msg


def frame_audio(gen: int, seq: int, pcm: Pcm) -> bytes:
    """Binary agent audio: 8-byte header (uint32 LE gen, uint32 LE seq), then PCM16 LE."""
    return AUDIO_HEADER.pack(gen, seq) + pcm.astype("<i2").tobytes()


def parse_audio(data: bytes) -> tuple[int, int, Pcm]:
    gen, seq = AUDIO_HEADER.unpack_from(data)
    return gen, seq, from_bytes(data[AUDIO_HEADER.size :])


class InboundAudio:
    """Client PCM16 at its own rate → 16 kHz int16 for the session."""

    def __init__(self, rate: int) -> None:
        self._resampler = StreamResampler(rate, SAMPLE_RATE)

    def convert(self, data: bytes) -> Pcm:
        """Raises ValueError for an odd byte count."""
        return self._resampler.process(from_bytes(data))


class WebSocketOutput(OutputBase):
    """Session :class:`Output` over a WebSocket: a bounded queue drained by :meth:`writer`.

    The queue never blocks the session: when it is full the client is too
    slow, and :class:`SlowClient` ends the session (close code 4408). The client keeps
    its own playback buffer and acts on the ``clear``, ``reply.paused`` and
    ``reply.resumed`` events, so the clear, pause and resume hooks have nothing to do.
    """

    def __init__(
        self,
        send_text: Callable[[str], Awaitable[None]],
        send_bytes: Callable[[bytes], Awaitable[None]],
        output_rate: int,
        max_queue: int = 1000,
        send_timeout_s: float = 5.0,
    ) -> None:
        self._send_text = send_text
        self._send_bytes = send_bytes
        self._queue: asyncio.Queue[str | bytes] = asyncio.Queue(max_queue)
        self._resampler = StreamResampler(SAMPLE_RATE, output_rate)
        self._seq = 0
        self.send_timeout_s = send_timeout_s
        self.slow = False

    async def send_audio(self, gen: int, pcm: Pcm) -> None:
        out = self._resampler.process(pcm)
        if out.size:
            self._put(frame_audio(gen, self._seq, np.asarray(out, dtype=np.int16)))
            self._seq += 1

    async def send_event(self, event: dict[str, Any]) -> None:
        self._put(json.dumps(event))

    def _put(self, item: str | bytes) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.slow = True
            raise SlowClient("client is not reading: send queue full") from None

    async def flush(self, timeout_s: float = 2.0) -> None:
        """Wait (bounded) until everything queued has been sent."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._queue.join()

    async def writer(self) -> None:
        """Send queued messages in order; a send that takes too long means a slow client."""
        while True:
            item = await self._queue.get()
            try:
                async with asyncio.timeout(self.send_timeout_s):
                    if isinstance(item, bytes):
                        await self._send_bytes(item)
                    else:
                        await self._send_text(item)
            except TimeoutError:
                self.slow = True
                raise SlowClient(f"client did not read for {self.send_timeout_s:.0f}s") from None
            finally:
                self._queue.task_done()
