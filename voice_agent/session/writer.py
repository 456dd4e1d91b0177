"""The paced writer: agent audio from the :class:`Playout` to the :class:`Output`.

Frames go out paced by sample count against the injected clock (frame ``k`` of
a burst at ``t0 + k * 20 ms``), so the pace never drifts with how fast TTS runs.
A :class:`PlayGate` says which generation may play: a stale or cleared one never
reaches the output, and a held one (prepared ahead of the end of turn, or paused
because the caller began to talk) waits at the head of the buffer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from voice_agent.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE, Pcm
from voice_agent.audio.playout import Playout, Segment
from voice_agent.core.clock import Clock
from voice_agent.session.output import Output

FRAME_S = FRAME_SAMPLES / SAMPLE_RATE


@dataclass
class PlayGate:
    """Which generation's audio may reach the caller."""

    current: int = 0
    """The generation that may play (the TurnMachine's ``gen``)."""
    cleared: int = 0
    """Generations ``<= cleared`` never reach the output again."""
    held: int | None = None
    """A prepared reply whose audio waits for the end of the turn."""
    paused: int | None = None
    """A reply held because the caller began to speak."""

    def passes(self, gen: int) -> bool:
        return gen == self.current and gen > self.cleared

    def holds(self, gen: int | None) -> bool:
        return gen is not None and gen in (self.held, self.paused)

    def clear(self, gen: int) -> None:
        """Generations ``<= gen`` never play again (a pause of one of them is over)."""
        self.cleared = max(self.cleared, gen)
        if self.paused is not None and self.paused <= gen:
            self.paused = None

    def resume(self, gen: int) -> bool:
        """Release a pause of ``gen``; True if it was paused."""
        if self.paused != gen:
            return False
        self.paused = None
        return True

    def release(self, gen: int) -> None:
        """Reply ``gen`` is over: it holds nothing any more."""
        if self.held == gen:
            self.held = None
        self.resume(gen)


class PacedWriter:
    """Runs :meth:`run` as one task of the session.

    ``before_send(gen, segment)`` is awaited before each frame goes out (first-audio
    events); ``after_send(gen, frame, segment, at_sample)`` is called after it, with the
    input sample at which the frame starts to play (the echo reference).
    ``input_sample_at(t)`` maps clock time to the input's sample timeline.
    """

    def __init__(
        self,
        playout: Playout,
        output: Output,
        clock: Clock,
        gate: PlayGate,
        before_send: Callable[[int, Segment], Awaitable[None]],
        after_send: Callable[[int, Pcm, Segment, int], None],
        input_sample_at: Callable[[float], int],
        paced: bool = True,
    ) -> None:
        self.playout = playout
        self.output = output
        self.clock = clock
        self.gate = gate
        self.before_send = before_send
        self.after_send = after_send
        self.input_sample_at = input_sample_at
        self.paced = paced
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._drained = asyncio.Event()

    def wake(self) -> None:
        """Audio was pushed, or a hold was released."""
        self._ready.set()

    async def wait_room(self) -> None:
        """Return once the playout buffer has room for another push."""
        while not self.playout.has_room():
            self._room.clear()
            await self._room.wait()

    async def wait_played(self, gen: int) -> None:
        """Return once nothing of ``gen`` is left in the buffer (played or cleared)."""
        while self.playout.pending(gen) > 0:
            self._drained.clear()
            await self._drained.wait()

    def _head_held(self) -> bool:
        return self.gate.holds(self.playout.head_gen())

    async def run(self) -> None:
        while True:
            if self.playout.buffered == 0 or self._head_held():
                self._drained.set()
                self._ready.clear()
                await self._ready.wait()
                continue
            t0 = self.clock.now()
            k = 0
            # where the caller's input stream stands now: this burst's echo, if any, comes
            # back at or after this input sample
            anchor = self.input_sample_at(t0)
            while not self._head_held() and (item := self.playout.pull()) is not None:
                self._room.set()
                gen, frame, seg = item
                if not self.gate.passes(gen):
                    continue  # a stale or cleared generation never reaches the caller
                await self.before_send(gen, seg)
                await self.output.send_audio(gen, frame)
                self.after_send(gen, frame, seg, anchor + k * FRAME_SAMPLES)
                k += 1
                if self.paced:
                    await self.clock.sleep_until(t0 + k * FRAME_S)
                else:
                    await asyncio.sleep(0)
                if self.playout.pending(gen) == 0:
                    self._drained.set()
            if k:
                await self.output.flush()  # the audio ran dry (or is held) for now
