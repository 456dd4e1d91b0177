"""The Twilio bridge: one Media Stream ↔ one :class:`Session`.

Audio: Twilio's 8 kHz μ-law → PCM16 → 16 kHz (soxr) into the session; the agent's
16 kHz frames → 8 kHz → μ-law ``media`` messages, 20 ms each, paced by the session.

Playout position: after every ``mark_every_ms`` of a generation's audio a ``mark``
named ``"<gen>:<samples at 16 kHz>"`` is sent. Twilio echoes a mark only once the
audio before it has played (or a ``clear`` dropped it), so an echoed mark is exactly
what the caller heard, and it becomes the session's playout report.

Barge-in: Twilio has no pause, so both :meth:`TwilioOutput.pause` and
:meth:`~TwilioOutput.clear` send Twilio's ``clear`` at once: the caller stops hearing
the agent the moment the session pauses. The session's writer still holds what it had
not sent, so a reply that resumes plays on from there; only the few tens of ms Twilio
had buffered are lost.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from voice_agent.audio.g711 import ulaw_decode, ulaw_encode
from voice_agent.audio.pcm import SAMPLE_RATE, FrameCutter, Pcm
from voice_agent.audio.resample import StreamResampler
from voice_agent.session.output import OutputBase
from voice_agent.transports.telephony.twilio import (
    TWILIO_RATE,
    Dtmf,
    Mark,
    Media,
    Stop,
    TwilioInputError,
    TwilioStream,
)

log = logging.getLogger("voice_agent.telephony.twilio")
CHUNK = TWILIO_RATE // 50  # 160 samples = 20 ms at 8 kHz
QUALITY = "VHQ"
"""soxr at VHQ holds back 26 ms between 8 and 16 kHz (HQ: 85 ms, which the caller's audio
would reach the VAD late by, and a reply's tail would wait in)."""


class TwilioOutput(OutputBase):
    """Session :class:`~voice_agent.session.output.Output` onto a Twilio stream; ``send``
    writes one text message to the WebSocket (it may raise to end the session)."""

    def __init__(
        self, stream: TwilioStream, send: Callable[[str], Awaitable[None]], mark_every_ms: int = 200
    ) -> None:
        self.stream = stream
        self.send = send
        self.mark_every = SAMPLE_RATE * mark_every_ms // 1000
        self._resampler = StreamResampler(SAMPLE_RATE, TWILIO_RATE, quality=QUALITY)
        self._frames = FrameCutter(CHUNK)
        self._gen = -1
        self._sent = 0
        """Samples (16 kHz) of generation ``_gen`` sent to Twilio."""
        self._marked = 0
        """``_sent`` at the last mark."""
        self._pending: set[str] = set()
        """Marks sent and not yet echoed."""
        self._dropped: set[str] = set()
        """Marks pending when a clear went out: Twilio echoes them unplayed."""
        self.marks_sent = 0

    async def send_audio(self, gen: int, pcm: Pcm) -> None:
        for chunk in self._frames.cut(self._resampler.process(pcm)):
            await self.send(self.stream.media(ulaw_encode(chunk)))
        if gen != self._gen:
            self._gen, self._sent, self._marked = gen, 0, 0
        self._sent += len(pcm)
        if self._sent - self._marked >= self.mark_every:
            self._marked = self._sent
            self.marks_sent += 1
            name = f"{gen}:{self._sent}"
            self._pending.add(name)
            await self.send(self.stream.mark(name))

    async def flush(self) -> None:
        """Send the resampler's tail (and the last partial 20 ms, padded) at once."""
        tail = self._frames.cut(self._resampler.flush()) + self._frames.drain()
        self._resampler = StreamResampler(SAMPLE_RATE, TWILIO_RATE, quality=QUALITY)
        for chunk in tail:
            await self.send(self.stream.media(ulaw_encode(chunk)))

    async def send_event(self, event: dict[str, Any]) -> None:
        return None  # a phone line has no place for events; the session report keeps them

    async def clear(self, gen: int) -> None:
        # what the resampler holds is the cleared audio too: drop it, never flush it later
        self._resampler = StreamResampler(SAMPLE_RATE, TWILIO_RATE, quality=QUALITY)
        self._frames.clear()
        self._dropped |= self._pending
        self._pending = set()
        await self.send(self.stream.clear())

    async def pause(self, gen: int) -> None:
        await self.clear(gen)

    def played(self, mark: Mark) -> tuple[int, int] | None:
        """The playout position an echoed mark proves: (gen, samples at 16 kHz), or None
        (not one of ours, or echoed because a clear dropped its audio)."""
        if mark.name in self._dropped:
            self._dropped.discard(mark.name)
            return None
        if mark.name not in self._pending:
            return None
        self._pending.discard(mark.name)
        gen, _, samples = mark.name.partition(":")
        return int(gen), int(samples)


class TwilioCall:
    """Feeds one stream's messages to a session: :meth:`handle` for each text message."""

    def __init__(self, stream: TwilioStream, output: TwilioOutput) -> None:
        self.stream = stream
        self.output = output
        self.errors: list[str] = []
        self._resampler = StreamResampler(TWILIO_RATE, SAMPLE_RATE, quality=QUALITY)

    def handle(self, text: str, session: Any) -> bool:
        """One message from Twilio. False: the call is over (``stop``, or fatal input)."""
        try:
            event = self.stream.receive(text)
        except TwilioInputError as exc:
            self.errors.append(str(exc))
            log.warning("twilio stream %s: %s", self.stream.stream_sid, exc)
            return not exc.fatal
        match event:
            case Media(ulaw=ulaw):
                session.feed(self._resampler.process(ulaw_decode(ulaw)))
            case Dtmf(digit=digit):
                session.send_text(digit)  # the caller's keypad is caller input
            case Mark() as mark:
                if (pos := self.output.played(mark)) is not None:
                    session.playout_ack(*pos)
            case Stop():
                return False
        return True  # (a second Start never gets here: it is fatal input)


async def run_twilio_stream(
    receive: Callable[[], Awaitable[str | None]],
    send: Callable[[str], Awaitable[None]],
    make_session: Callable[[TwilioOutput], Any],
    start_timeout_s: float = 10.0,
) -> Any:
    """Serve one Twilio Media Stream until ``stop``, the socket closing (``receive`` returns
    None) or the session ending; returns the session (None if no valid ``start`` came).

    ``make_session(output)`` builds the session for this call (the server passes its
    engine, clock and config), or returns None to refuse the stream."""
    import asyncio

    stream = TwilioStream()
    try:
        async with asyncio.timeout(start_timeout_s):
            while stream.start is None:
                text = await receive()
                if text is None:
                    return None
                try:
                    stream.receive(text)
                except TwilioInputError as exc:
                    log.warning("twilio stream before start: %s", exc)
                    if exc.fatal:
                        return None
    except TimeoutError:
        log.warning("twilio stream: no 'start' within %.0f s", start_timeout_s)
        return None
    output = TwilioOutput(stream, send)
    session = make_session(output)
    if session is None:  # refused (say, no valid stream token)
        return None
    call = TwilioCall(stream, output)

    async def read() -> None:
        while (text := await receive()) is not None and call.handle(text, session):
            pass
        session.hangup()

    async with asyncio.TaskGroup() as tg:
        reader = tg.create_task(read())
        await session.run()
        reader.cancel()
    session.errors.extend(f"twilio: {e}" for e in call.errors)
    return session
