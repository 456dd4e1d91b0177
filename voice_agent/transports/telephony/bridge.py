"""The media-stream bridge: one provider stream (Twilio, Telnyx, Plivo, Vonage) ↔ one
:class:`Session`.

Audio: the stream's codec (μ-law, A-law or 16-bit linear) at its rate → PCM16 → 16 kHz
(libswresample through av, once, at this edge) into the session; the agent's 16 kHz
frames → the stream's rate and codec, 20 ms a message, paced by the session.

Playout position: after every ``mark_every_ms`` of a generation's audio the bridge
sends the provider's mark (Twilio and Telnyx ``mark``, Plivo ``checkpoint``, Vonage
``notify``) named ``"<gen>:<samples at 16 kHz>"``. The provider answers it only once the
audio before it has played, so an answer is exactly what the caller heard, and it
becomes the session's playout report.

Barge-in: no provider can pause its buffer, so both :meth:`StreamOutput.pause` and
:meth:`~StreamOutput.clear` send the provider's clear at once: the caller stops hearing
the agent the moment the session pauses. The session's writer still holds what it had
not sent, so a reply that resumes plays on from there; only the few tens of ms the
provider had buffered are lost. Marks pending at a clear are forgotten: Twilio and Telnyx
send them back unplayed, Plivo and Vonage never answer them, and either way they prove
nothing was heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from voice_agent.audio.pcm import SAMPLE_RATE, FrameCutter, Pcm
from voice_agent.audio.resample import StreamResampler
from voice_agent.session.output import OutputBase
from voice_agent.transports.telephony.media import (
    Dtmf,
    Media,
    Played,
    Stop,
    StreamProtocol,
    TelephonyInputError,
)

log = logging.getLogger("voice_agent.telephony")
STALL_S = 1.0
"""No message from the provider for this long counts as that much silence."""

Message = str | bytes
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message | None]]


class LineDown(Exception):
    """The provider stopped taking the agent's audio (a send timed out): hang up."""


class StreamOutput(OutputBase):
    """Session :class:`~voice_agent.session.output.Output` onto a provider stream; ``send``
    writes one message to the WebSocket (it may raise to end the session)."""

    def __init__(self, stream: StreamProtocol, send: Send, mark_every_ms: int = 200) -> None:
        self.stream = stream
        self.send = send
        self.codec = stream.codec
        self.mark_every = SAMPLE_RATE * mark_every_ms // 1000
        self._resampler = self._new_resampler()
        self._frames = FrameCutter(self.codec.frame_samples)
        self._gen = -1
        self._sent = 0
        """Samples (16 kHz) of generation ``_gen`` sent to the provider (as media)."""
        self._marked = 0
        """``_sent`` at the last mark."""
        self._pending: set[str] = set()
        """Marks sent and not yet answered (forgotten at a clear)."""
        self._audio_since_clear = False
        """Audio came since the last clear (a second clear would have nothing to drop)."""
        self.marks_sent = 0

    def _new_resampler(self) -> StreamResampler:
        return StreamResampler(SAMPLE_RATE, self.codec.rate)

    async def _send_frames(self, frames: list[Pcm]) -> None:
        for frame in frames:
            await self.send(self.stream.media(self.codec.encode(frame)))
            # a mark counts what went out, not what the resampler and cutter still hold
            self._sent += len(frame) * SAMPLE_RATE // self.codec.rate

    async def send_audio(self, gen: int, pcm: Pcm) -> None:
        self._audio_since_clear = True
        if gen != self._gen:
            self._gen, self._sent, self._marked = gen, 0, 0
        await self._send_frames(self._frames.cut(self._resampler.process(pcm)))
        if self.stream.marks and self._sent - self._marked >= self.mark_every:
            self._marked = self._sent
            self.marks_sent += 1
            name = f"{gen}:{self._sent}"
            self._pending.add(name)
            await self.send(self.stream.mark(name))

    async def flush(self) -> None:
        """Send the resampler's tail (and the last partial 20 ms, padded) at once."""
        tail = self._frames.cut(self._resampler.flush()) + self._frames.drain()
        self._resampler = self._new_resampler()
        await self._send_frames(tail)

    async def send_event(self, event: dict[str, Any]) -> None:
        return None  # a phone line has no place for events; the session report keeps them

    async def clear(self, gen: int) -> None:
        # what the resampler holds is the cleared audio too: drop it, never flush it later
        self._resampler = self._new_resampler()
        self._frames.clear()
        self._pending.clear()
        if self._audio_since_clear and (message := self.stream.clear()) is not None:
            self._audio_since_clear = False
            await self.send(message)

    async def pause(self, gen: int) -> None:
        await self.clear(gen)

    def played(self, mark: Played) -> tuple[int, int] | None:
        """The playout position an answered mark proves: (gen, samples at 16 kHz), or None
        (not one of ours, or sent back because a clear dropped its audio)."""
        if mark.name not in self._pending:
            return None
        self._pending.discard(mark.name)
        gen, _, samples = mark.name.partition(":")
        return int(gen), int(samples)


class StreamCall:
    """Feeds one stream's messages to a session: :meth:`handle` for each message."""

    def __init__(self, stream: StreamProtocol, output: StreamOutput) -> None:
        self.stream = stream
        self.output = output
        self.errors: list[str] = []
        self._resampler = StreamResampler(stream.codec.rate, SAMPLE_RATE)

    def handle(self, message: Message, session: Any) -> bool:
        """One message from the provider. False: the call is over (stop, or fatal input)."""
        try:
            event = self.stream.receive(message)
            if isinstance(event, Media):
                session.feed(self._resampler.process(self.stream.codec.decode(event.audio)))
        except TelephonyInputError as exc:
            self.errors.append(str(exc))
            log.warning("%s stream %s: %s", self.stream.name, self.stream.stream_id, exc)
            return not exc.fatal
        match event:
            case Dtmf(digit=digit):
                session.send_text(digit)  # the caller's keypad is caller input
            case Played() as mark:
                if (pos := self.output.played(mark)) is not None:
                    session.playout_ack(*pos)
            case Stop():
                return False
        return True  # (a second start never gets here: it is fatal input)


async def run_media_stream(
    stream: StreamProtocol,
    receive: Receive,
    send: Send,
    make_session: Callable[[StreamOutput], Any],
    start_timeout_s: float = 10.0,
    quiet_timeout_s: float = 5.0,
    send_timeout_s: float = 5.0,
) -> Any:
    """Serve one provider stream until its stop, the socket closing (``receive`` returns
    None) or the session ending; returns the session (None if no valid start came).
    Providers stream the caller's audio without a break (silence too): after ``STALL_S``
    with no message, that much silence is fed (so a turn being spoken still ends), and a
    stream with no message for ``quiet_timeout_s`` is a provider that vanished without its
    stop: the call hangs up. A send that takes over ``send_timeout_s`` is a provider that
    stopped reading: :class:`LineDown` ends the call.

    ``make_session(output)`` builds the session for this call (the server passes its
    engine, clock and config), or returns None to refuse the stream."""
    try:
        async with asyncio.timeout(start_timeout_s):
            while stream.start is None:
                message = await receive()
                if message is None:
                    return None
                try:
                    stream.receive(message)
                except TelephonyInputError as exc:
                    log.warning("%s stream before start: %s", stream.name, exc)
                    if exc.fatal:
                        return None
    except TimeoutError:
        log.warning("%s stream: no start within %.0f s", stream.name, start_timeout_s)
        return None

    async def timed_send(message: Message) -> None:
        try:
            async with asyncio.timeout(send_timeout_s):
                await send(message)
        except TimeoutError:
            raise LineDown("the provider stopped reading the agent's audio") from None

    output = StreamOutput(stream, timed_send)
    session = make_session(output)
    if session is None:  # refused (say, no valid stream token)
        return None
    call = StreamCall(stream, output)

    async def read() -> None:
        quiet = 0.0
        while quiet < quiet_timeout_s:
            try:
                async with asyncio.timeout(STALL_S):
                    message = await receive()
            except TimeoutError:
                # what the line did not carry was silence: a turn being spoken still ends
                quiet += STALL_S
                session.feed(np.zeros(int(STALL_S * SAMPLE_RATE), dtype=np.int16))
                continue
            quiet = 0.0
            if message is None or not call.handle(message, session):
                break
        else:
            call.errors.append(f"nothing from the provider for {quiet_timeout_s:g} s: hung up")
            log.warning("%s stream %s: silent, hung up", stream.name, stream.stream_id)
        session.hangup()

    async with asyncio.TaskGroup() as tg:
        reader = tg.create_task(read())
        await session.run()
        reader.cancel()
    session.errors.extend(f"{stream.name}: {e}" for e in call.errors)
    if (bye := stream.goodbye()) is not None:
        with contextlib.suppress(Exception):  # the peer may be gone already
            await send(bye)
    return session
