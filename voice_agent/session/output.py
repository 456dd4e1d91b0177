"""The session's typed seam to a transport (or the replay recorder)."""

from __future__ import annotations

from typing import Any, Protocol

from voice_agent.audio.pcm import Pcm
from voice_agent.core.clock import Clock


class SlowClient(Exception):
    """The client does not take what is sent fast enough (a full send queue or data channel);
    raised by an :class:`Output`, it ends the session."""


class Output(Protocol):
    """Where one session's audio and events go.

    Contract:

    - The session calls these from its own tasks (the paced writer, the control loop and
      the reply tasks), never from another thread, and awaits each call. A call should
      return quickly: queue the work and send it from the transport's own task. A call
      may block only to apply backpressure, briefly.
    - Audio: :meth:`send_audio` gets 20 ms frames (16 kHz int16), in order, paced in real
      time, each tagged with its generation ``gen``. A transport resamples and frames them
      for its wire.
    - Control: :meth:`clear`, :meth:`pause` and :meth:`resume` are what a transport acts
      on for its audio: drop everything queued of generations ``<= gen`` (Twilio
      ``clear``, WebRTC: empty the track), hold ``gen``'s queued audio (send silence), and
      release it in order. No transport needs to read an event's name.
    - Events: :meth:`send_event` gets JSON-serialisable dicts (docs/protocol.md) that a
      transport forwards as they are, or drops if its wire has no place for them. The
      ``clear``, ``reply.paused`` and ``reply.resumed`` events follow the calls above, for
      clients that keep their own buffer.
    - Errors: any exception raised here ends the session; it propagates out of
      :meth:`Session.run <voice_agent.session.driver.Session.run>` (for example the
      WebSocket transport's ``SlowClient``). Raise nothing for a client that is merely gone.
    """

    async def send_audio(self, gen: int, pcm: Pcm) -> None:
        """One 20 ms frame of agent audio of generation ``gen``."""
        ...

    async def send_event(self, event: dict[str, Any]) -> None:
        """A JSON-serialisable event."""
        ...

    async def clear(self, gen: int) -> None:
        """Drop queued audio of generations ``<= gen``: the caller must not hear it."""
        ...

    async def pause(self, gen: int) -> None:
        """Hold generation ``gen``'s queued audio (the caller began to talk); keep it."""
        ...

    async def resume(self, gen: int) -> None:
        """Play generation ``gen``'s held audio on, in order."""
        ...

    async def flush(self) -> None:
        """The agent's audio has run dry for now (the reply is done, or waits for TTS): send
        whatever the transport holds back, such as a streaming resampler's tail."""
        ...


class OutputBase:
    """Defaults for an :class:`Output` whose wire has no audio queue of its own to clear,
    hold or release (the session already stops sending at once): the hooks do nothing."""

    async def clear(self, gen: int) -> None:
        return None

    async def pause(self, gen: int) -> None:
        return None

    async def resume(self, gen: int) -> None:
        return None

    async def flush(self) -> None:
        return None


class Events:
    """Events to an :class:`Output`, stamped ``t_ms``: milliseconds of the session's clock
    since ``t0``."""

    def __init__(self, output: Output, clock: Clock, t0: float, errors: list[str]) -> None:
        self.output, self.clock, self.t0, self.errors = output, clock, t0, errors

    def ms(self, at: float) -> float:
        return round((at - self.t0) * 1000, 1)

    async def emit(self, kind: str, **fields: Any) -> None:
        await self.output.send_event({"type": kind, "t_ms": self.ms(self.clock.now()), **fields})

    async def emit_safely(self, kind: str, **fields: Any) -> None:
        """Emit from a ``finally`` that may run during cancellation: an output that fails
        is noted in ``errors`` (the session keeps its record)."""
        try:
            await self.emit(kind, **fields)
        except Exception as exc:
            self.errors.append(f"could not send {kind}: {exc}")
