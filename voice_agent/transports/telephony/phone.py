"""The provider's side of each telephony protocol, and a simulated phone call over it.

A :class:`ProviderSide` writes what Twilio, Telnyx, Plivo, Vonage or Asterisk would send
(start, 20 ms of caller audio at a time, DTMF, stop) and reads what the agent sends back
(audio, marks, clear). :func:`phone_call` plays a caller through one in real time, as
the provider's media server does:
- the caller's file goes out in the provider's codec and framing, one frame per 20 ms;
- the agent's audio goes into a phone buffer that plays 20 ms per tick;
- a mark (checkpoint, notify) is answered only once the audio before it has played;
- a clear drops the buffer (Twilio and Telnyx send the pending marks back at once);
- what the caller heard is recorded on the same ticks as what they said.

It is the harness of the telephony tests and bench, and ``voice-agent call``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voice_agent.audio.pcm import SAMPLE_RATE, Pcm, rms_dbfs, split_frames
from voice_agent.audio.resample import resample
from voice_agent.transports.telephony import audiosocket as asock
from voice_agent.transports.telephony.media import MULAW_8K, Codec
from voice_agent.transports.telephony.plivo import CONTENT_TYPES as PLIVO_TYPES
from voice_agent.transports.telephony.telnyx import CODECS as TELNYX_CODECS

Message = str | bytes
TICK_S = 0.02


@dataclass(frozen=True)
class Play:
    audio: bytes
    """Agent audio in the stream's codec."""


@dataclass(frozen=True)
class MarkAt:
    name: str


@dataclass(frozen=True)
class ClearAll:
    pass


@dataclass(frozen=True)
class HangUp:
    pass


Command = Play | MarkAt | ClearAll | HangUp


class ProviderSide:
    """One provider's messages, seen from the provider."""

    name = ""
    echoes_marks_on_clear = False

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.stream_id = str(uuid.uuid4())
        self.call_id = str(uuid.uuid4())
        self.chunk = 0

    def opening(self) -> list[Message]:
        raise NotImplementedError

    def audio(self, encoded: bytes) -> Message:
        raise NotImplementedError

    def dtmf(self, digit: str) -> Message:
        raise NotImplementedError

    def closing(self) -> list[Message]:
        return []

    def read(self, message: Message) -> list[Command]:
        """What the agent asked for. Raises ValueError on a message this provider would
        reject."""
        if isinstance(message, bytes):
            raise ValueError(f"{self.name} takes no binary messages")
        msg = json.loads(message)
        if not isinstance(msg, dict):
            raise ValueError("a message that is not a JSON object")
        return self.read_json(msg)

    def read_json(self, msg: dict[str, Any]) -> list[Command]:
        raise NotImplementedError

    def answer(self, name: str) -> Message:
        """The message that says a mark's audio has played."""
        raise NotImplementedError

    def cleared(self) -> list[Message]:
        return []

    def _payload(self, media: Any) -> Play:
        if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
            raise ValueError("media without a payload")
        return Play(base64.b64decode(media["payload"], validate=True))

    def _media_mark_clear(self, msg: dict[str, Any]) -> list[Command]:
        """Twilio's and Telnyx's ``media``, ``mark`` and ``clear``."""
        match msg.get("event"):
            case "media":
                return [self._payload(msg.get("media"))]
            case "mark":
                return [MarkAt(str(msg["mark"]["name"]))]
            case "clear":
                return [ClearAll()]
        raise ValueError(f"unknown event {msg.get('event')!r}")

    def _next_chunk(self) -> int:
        self.chunk += 1
        return self.chunk


class TwilioSide(ProviderSide):
    name = "twilio"
    echoes_marks_on_clear = True

    def __init__(self, parameters: dict[str, str] | None = None) -> None:
        super().__init__(MULAW_8K)
        self.stream_id = "MZ" + uuid.uuid4().hex
        self.call_id = "CA" + uuid.uuid4().hex
        self.parameters = parameters or {}

    def opening(self) -> list[Message]:
        start = {
            "streamSid": self.stream_id, "accountSid": "AC" + "0" * 32, "callSid": self.call_id,
            "tracks": ["inbound"], "customParameters": self.parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }  # fmt: skip
        return [
            json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
            json.dumps({"event": "start", "sequenceNumber": "1", "start": start,
                        "streamSid": self.stream_id}),
        ]  # fmt: skip

    def audio(self, encoded: bytes) -> Message:
        k = self._next_chunk()
        media = {"track": "inbound", "chunk": str(k), "timestamp": str(20 * (k - 1)),
                 "payload": base64.b64encode(encoded).decode()}  # fmt: skip
        return json.dumps({"event": "media", "streamSid": self.stream_id, "media": media})

    def dtmf(self, digit: str) -> Message:
        return json.dumps({"event": "dtmf", "streamSid": self.stream_id,
                           "dtmf": {"track": "inbound_track", "digit": digit}})  # fmt: skip

    def closing(self) -> list[Message]:
        return [json.dumps({"event": "stop", "streamSid": self.stream_id,
                            "stop": {"callSid": self.call_id}})]  # fmt: skip

    def read_json(self, msg: dict[str, Any]) -> list[Command]:
        if msg.get("streamSid") != self.stream_id:
            raise ValueError("a message for another streamSid")
        return self._media_mark_clear(msg)

    def answer(self, name: str) -> Message:
        return json.dumps({"event": "mark", "streamSid": self.stream_id, "mark": {"name": name}})


class TelnyxSide(ProviderSide):
    name = "telnyx"
    echoes_marks_on_clear = True

    def opening(self) -> list[Message]:
        encoding = next(e for (e, rate), c in TELNYX_CODECS.items() if c == self.codec)
        start = {
            "user_id": str(uuid.uuid4()), "call_control_id": "v3:" + self.call_id,
            "call_session_id": str(uuid.uuid4()), "from": "+13122010094", "to": "+13122123456",
            "client_state": None, "custom_parameters": {},
            "media_format": {"encoding": encoding, "sample_rate": self.codec.rate, "channels": 1},
        }  # fmt: skip
        return [
            json.dumps({"event": "connected", "version": "1.0.0"}),
            json.dumps({"event": "start", "sequence_number": "1", "stream_id": self.stream_id,
                        "start": start}),
        ]  # fmt: skip

    def audio(self, encoded: bytes) -> Message:
        k = self._next_chunk()
        media = {"track": "inbound", "chunk": str(k), "timestamp": str(20 * (k - 1)),
                 "payload": base64.b64encode(encoded).decode()}  # fmt: skip
        return json.dumps({"event": "media", "sequence_number": str(k + 1), "media": media,
                           "stream_id": self.stream_id})  # fmt: skip

    def dtmf(self, digit: str) -> Message:
        return json.dumps({"event": "dtmf", "stream_id": self.stream_id, "dtmf": {"digit": digit}})

    def closing(self) -> list[Message]:
        return [json.dumps({"event": "stop", "stream_id": self.stream_id,
                            "stop": {"call_control_id": "v3:" + self.call_id}})]  # fmt: skip

    def read_json(self, msg: dict[str, Any]) -> list[Command]:
        return self._media_mark_clear(msg)

    def answer(self, name: str) -> Message:
        return json.dumps({"event": "mark", "stream_id": self.stream_id, "mark": {"name": name}})


class PlivoSide(ProviderSide):
    name = "plivo"

    def opening(self) -> list[Message]:
        start = {
            "callId": self.call_id, "streamId": self.stream_id, "accountId": "MA" + "X" * 18,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": PLIVO_TYPES[self.codec], "sampleRate": self.codec.rate},
        }  # fmt: skip
        return [json.dumps({"event": "start", "sequenceNumber": 1, "start": start,
                            "extra_headers": ""})]  # fmt: skip

    def audio(self, encoded: bytes) -> Message:
        k = self._next_chunk()
        media = {"track": "inbound", "timestamp": str(20 * k), "chunk": k,
                 "payload": base64.b64encode(encoded).decode()}  # fmt: skip
        return json.dumps({"event": "media", "sequenceNumber": k + 1,
                           "streamId": self.stream_id, "media": media})  # fmt: skip

    def dtmf(self, digit: str) -> Message:
        return json.dumps({"event": "dtmf", "streamId": self.stream_id,
                           "dtmf": {"track": "inbound", "digit": digit}})  # fmt: skip

    def read_json(self, msg: dict[str, Any]) -> list[Command]:
        match msg.get("event"):
            case "playAudio":
                media = msg.get("media") or {}
                if (media.get("contentType"), media.get("sampleRate")) != (
                    PLIVO_TYPES[self.codec], self.codec.rate):  # fmt: skip
                    raise ValueError("playAudio in another format than the stream's")
                return [self._payload(media)]
            case "checkpoint":
                return [MarkAt(str(msg["name"]))]
            case "clearAudio":
                return [ClearAll()]
        raise ValueError(f"unknown event {msg.get('event')!r}")

    def answer(self, name: str) -> Message:
        return json.dumps({"event": "playedStream", "streamId": self.stream_id, "name": name})

    def cleared(self) -> list[Message]:
        return [json.dumps({"event": "clearedAudio", "streamId": self.stream_id})]


class VonageSide(ProviderSide):
    name = "vonage"

    def opening(self) -> list[Message]:
        return [json.dumps({"event": "websocket:connected",
                            "content-type": f"audio/l16;rate={self.codec.rate}",
                            "uuid": self.call_id})]  # fmt: skip

    def audio(self, encoded: bytes) -> Message:
        return encoded

    def dtmf(self, digit: str) -> Message:
        return json.dumps({"event": "websocket:dtmf", "digit": digit, "duration": 260})

    def read(self, message: Message) -> list[Command]:
        if isinstance(message, bytes):
            if len(message) != 2 * self.codec.frame_samples:
                raise ValueError(f"an audio frame of {len(message)} bytes, not 20 ms")
            return [Play(message)]
        return super().read(message)

    def read_json(self, msg: dict[str, Any]) -> list[Command]:
        match msg.get("action"):
            case "notify":
                return [MarkAt(str(msg["payload"]["name"]))]
            case "clear":
                return [ClearAll()]
        raise ValueError(f"unknown action {msg.get('action')!r}")

    def answer(self, name: str) -> Message:
        return json.dumps({"event": "websocket:notify", "payload": {"name": name}})

    def cleared(self) -> list[Message]:
        return [json.dumps({"event": "websocket:cleared"})]


class AudioSocketSide(ProviderSide):
    name = "audiosocket"

    def __init__(self) -> None:
        super().__init__(asock.SLIN_8K)
        self._buffer = bytearray()

    def opening(self) -> list[Message]:
        return [asock.frame(asock.KIND_UUID, uuid.UUID(self.call_id).bytes)]

    def audio(self, encoded: bytes) -> Message:
        return asock.frame(asock.KIND_SLIN, encoded)

    def dtmf(self, digit: str) -> Message:
        return asock.frame(asock.KIND_DTMF, digit.encode())

    def closing(self) -> list[Message]:
        return [asock.frame(asock.KIND_HANGUP)]

    def read(self, message: Message) -> list[Command]:
        """A TCP stream: frames may arrive split or several at once."""
        self._buffer += message if isinstance(message, bytes) else message.encode()
        out: list[Command] = []
        while len(self._buffer) >= asock.HEADER:
            size = int.from_bytes(self._buffer[1:3], "big")
            if len(self._buffer) < asock.HEADER + size:
                break
            kind, payload = self._buffer[0], bytes(self._buffer[asock.HEADER : asock.HEADER + size])
            del self._buffer[: asock.HEADER + size]
            if kind == asock.KIND_SLIN:
                out.append(Play(payload))
            elif kind == asock.KIND_HANGUP:
                out.append(HangUp())
            else:
                raise ValueError(f"a frame of type 0x{kind:02x} from the agent")
        return out


def provider_side(protocol: str, rate: int = 8000) -> ProviderSide:
    """The provider side for ``protocol``; ``rate`` picks 16 kHz L16 where the provider has it
    (Telnyx, Plivo, Vonage)."""
    if protocol == "twilio":
        return TwilioSide()
    if protocol == "audiosocket":
        return AudioSocketSide()
    if protocol == "telnyx":
        return TelnyxSide(TELNYX_CODECS[("PCMU", 8000) if rate == 8000 else ("L16", rate)])
    if protocol == "plivo":
        return PlivoSide(Codec("mulaw", 8000) if rate == 8000 else Codec("l16", rate))
    if protocol == "vonage":
        return VonageSide(Codec("l16", rate))
    raise ValueError(f"unknown protocol {protocol!r}")


PROTOCOLS = ("twilio", "telnyx", "plivo", "vonage", "audiosocket")


# -- the call ---------------------------------------------------------------------------------


@dataclass
class PhoneCall:
    """What happened on the line, on the phone's 20 ms ticks."""

    protocol: str
    rate: int
    said: list[Pcm] = field(default_factory=list)
    """The caller's audio, one 20 ms frame per tick (the stream's rate)."""
    heard: list[Pcm] = field(default_factory=list)
    """What the phone played on the same ticks."""
    marks_answered: int = 0
    clears: int = 0
    errors: list[str] = field(default_factory=list)
    hung_up_by_agent: bool = False
    barge_in_at_s: float | None = None
    """When the caller began to talk over the agent (``phone_call``'s ``barge_in``)."""

    def stereo(self) -> Pcm:
        """16 kHz stereo: the caller left, what they heard right, time-aligned."""
        said = resample(
            np.concatenate(self.said or [np.zeros(0, np.int16)]), self.rate, SAMPLE_RATE
        )
        heard = resample(
            np.concatenate(self.heard or [np.zeros(0, np.int16)]), self.rate, SAMPLE_RATE
        )
        n = max(len(said), len(heard))
        out = np.zeros((n, 2), dtype=np.int16)
        out[: len(said), 0], out[: len(heard), 1] = said, heard
        return out

    def heard_audio(self) -> Pcm:
        """What the caller heard, at 16 kHz."""
        return resample(
            np.concatenate(self.heard or [np.zeros(0, np.int16)]), self.rate, SAMPLE_RATE
        )

    def report(self, speech_dbfs: float = -40.0) -> dict[str, Any]:
        """Times on the call's clock (s from its start): each stretch of agent audio, the
        caller's speech before it (voice-to-voice as heard), and how long agent audio
        went on after the caller began to talk over it (barge-in stop)."""
        said = [rms_dbfs(f) > speech_dbfs for f in self.said]
        heard = [bool(np.any(np.abs(f) > 64)) for f in self.heard]
        replies: list[dict[str, Any]] = []
        barge_ins, began = [], -1
        for start, end in _runs(heard, gap=15):  # 300 ms of silence splits the audio
            spoke = [k for k in range(start) if said[k]]
            if spoke and spoke[-1] > began:  # the caller spoke since the last reply began
                began = start
                replies.append(
                    {"caller_end_s": round((spoke[-1] + 1) * TICK_S, 3),
                     "agent_start_s": round(start * TICK_S, 3),
                     "voice_to_voice_ms": round((start - spoke[-1] - 1) * TICK_S * 1000)}
                )  # fmt: skip
            if replies:
                replies[-1]["agent_end_s"] = round(end * TICK_S, 3)
            onsets = [k for k in range(start + 1, end) if said[k] and not said[k - 1]]
            if onsets and end < len(heard):
                barge_ins.append({"onset_s": round(onsets[0] * TICK_S, 3),
                                  "stopped_s": round(end * TICK_S, 3),
                                  "stop_ms": round((end - onsets[0]) * TICK_S * 1000)})  # fmt: skip
        return {
            "protocol": self.protocol, "rate": self.rate,
            "seconds": round(len(self.said) * TICK_S, 2), "replies": replies,
            "barge_ins": barge_ins, "marks_answered": self.marks_answered,
            "clears": self.clears, "errors": self.errors,
            "hung_up_by_agent": self.hung_up_by_agent, "barge_in_at_s": self.barge_in_at_s,
        }  # fmt: skip


def _runs(flags: list[bool], gap: int) -> list[tuple[int, int]]:
    """[start, end) of each run of True, joining runs less than ``gap`` apart."""
    runs: list[tuple[int, int]] = []
    for k, on in enumerate(flags):
        if not on:
            continue
        if runs and k - runs[-1][1] < gap:
            runs[-1] = (runs[-1][0], k + 1)
        else:
            runs.append((k, k + 1))
    return runs


async def phone_call(
    side: ProviderSide,
    mic: Pcm,
    receive: Callable[[], Awaitable[Message | None]],
    send: Callable[[Message], Awaitable[None]],
    linger_s: float = 4.0,
    max_s: float = 120.0,
    dtmf: dict[float, str] | None = None,
    barge_in: tuple[float, Pcm] | None = None,
) -> PhoneCall:
    """Call in real time (the running loop's clock): say ``mic`` (16 kHz), then stay on
    the line until ``linger_s`` pass with nothing to play (or ``max_s`` in all), then
    hang up. ``dtmf`` presses keys at given seconds; ``barge_in = (s, pcm)`` says ``pcm``
    once ``s`` seconds of agent audio have played (talking over the agent)."""
    loop = asyncio.get_running_loop()
    codec, n = side.codec, side.codec.frame_samples
    frames = split_frames(resample(mic, SAMPLE_RATE, codec.rate), n) if len(mic) else []
    call = PhoneCall(side.name, codec.rate)
    buffer: deque[Pcm | str] = deque()  # agent audio (the stream's rate) and mark names
    keys = sorted((dtmf or {}).items())
    for message in side.opening():
        await send(message)

    async def answer_reached_marks() -> None:
        while buffer and isinstance(head := buffer[0], str):
            buffer.popleft()
            call.marks_answered += 1
            await send(side.answer(head))

    async def listen() -> None:
        while (message := await receive()) is not None:
            try:
                commands = side.read(message)
            except (ValueError, KeyError, TypeError) as exc:
                call.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            for command in commands:
                match command:
                    case Play(audio=audio):
                        buffer.append(codec.decode(audio))
                    case MarkAt(name=name):
                        buffer.append(name)
                        if len(buffer) == 1:  # nothing queued before it: answered at once
                            await answer_reached_marks()
                    case ClearAll():
                        call.clears += 1
                        marks = [m for m in buffer if isinstance(m, str)]
                        buffer.clear()
                        for name in marks if side.echoes_marks_on_clear else []:
                            await send(side.answer(name))
                        for message_out in side.cleared():
                            await send(message_out)
                    case HangUp():
                        call.hung_up_by_agent = True
                        return
        call.hung_up_by_agent = True

    listener = asyncio.create_task(listen())
    t0 = loop.time()
    quiet_since = 0.0
    k = heard_ticks = 0
    try:
        while not listener.done():
            if barge_in and heard_ticks * TICK_S >= barge_in[0]:
                silent = [np.zeros(n, dtype=np.int16)] * max(0, k - len(frames))
                talk = split_frames(resample(barge_in[1], SAMPLE_RATE, codec.rate), n)
                frames = frames[:k] + silent + talk
                barge_in, call.barge_in_at_s = None, k * TICK_S
            await asyncio.sleep(max(0.0, t0 + k * TICK_S - loop.time()))
            said = frames[k] if k < len(frames) else np.zeros(n, dtype=np.int16)
            await send(side.audio(codec.encode(said)))
            while keys and keys[0][0] <= k * TICK_S:
                await send(side.dtmf(keys.pop(0)[1]))
            call.said.append(said)
            heard, passed = _play(buffer, n)
            call.heard.append(heard)
            for name in passed:
                call.marks_answered += 1
                await send(side.answer(name))
            await answer_reached_marks()
            k += 1
            heard_ticks += bool(np.any(heard))
            if bool(np.any(heard)) or buffer:
                quiet_since = k * TICK_S
            if k >= len(frames) and k * TICK_S - max(quiet_since, len(frames) * TICK_S) >= linger_s:
                break
            if k * TICK_S >= max_s:
                break
        if not listener.done():
            for message in side.closing():
                with contextlib.suppress(Exception):  # the agent may have closed first
                    await send(message)
    finally:
        listener.cancel()
        (outcome,) = await asyncio.gather(listener, return_exceptions=True)
        if isinstance(outcome, Exception):
            call.errors.append(f"the line failed: {type(outcome).__name__}")
    return call


def _play(buffer: deque[Pcm | str], n: int) -> tuple[Pcm, list[str]]:
    """Play ``n`` samples from the head of the buffer; returns them (silence where the
    buffer ran dry) and the marks passed on the way, whose audio has now all played."""
    out = np.zeros(n, dtype=np.int16)
    got, passed = 0, []
    while got < n and buffer:
        head = buffer[0]
        if isinstance(head, str):
            passed.append(head)
            buffer.popleft()
            continue
        take = min(n - got, len(head))
        out[got : got + take] = head[:take]
        got += take
        if take == len(head):
            buffer.popleft()
        else:
            buffer[0] = head[take:]
    return out, passed


# -- the line ---------------------------------------------------------------------------------


async def dial(
    protocol: str,
    url: str,
    mic: Pcm,
    rate: int = 8000,
    linger_s: float = 4.0,
    max_s: float = 120.0,
    dtmf: dict[float, str] | None = None,
    barge_in: tuple[float, Pcm] | None = None,
) -> PhoneCall:
    """Call the agent at ``url`` as ``protocol``'s media server would: a WebSocket URL for
    Twilio, Telnyx, Plivo and Vonage, ``host:port`` (or ``tcp://host:port``) for
    AudioSocket."""
    side = provider_side(protocol, rate)
    if protocol == "audiosocket":
        host, _, port = url.removeprefix("tcp://").rpartition(":")
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))

        async def tcp_receive() -> Message | None:
            data = await reader.read(65536)
            return data or None

        async def tcp_send(message: Message) -> None:
            if writer.is_closing():
                return  # the agent hung up: the receiving side says so
            writer.write(message if isinstance(message, bytes) else message.encode())
            with contextlib.suppress(ConnectionError):
                await writer.drain()

        try:
            return await phone_call(
                side, mic, tcp_receive, tcp_send, linger_s, max_s, dtmf, barge_in
            )
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    import websockets

    async with websockets.connect(url, max_size=1 << 20) as ws:

        async def ws_receive() -> Message | None:
            try:
                return await ws.recv()
            except websockets.ConnectionClosed:
                return None

        async def ws_send(message: Message) -> None:
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(message)  # (after a hang-up, the receiving side says so)

        return await phone_call(side, mic, ws_receive, ws_send, linger_s, max_s, dtmf, barge_in)
