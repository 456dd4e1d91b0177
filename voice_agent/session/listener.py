"""The session's STT jobs: partial transcripts while the caller talks, the final pass
when the VAD reports a pause, and the words checks of a possible barge-in.

Each job is a task of the session's TaskGroup on the engine's fair workers (the
session is the owner), answered into the control loop through ``answer``. A job
superseded by a newer one, or refused by a full queue, is dropped; :meth:`stop`
cancels every job, so nothing of a session outlives it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, NamedTuple

from voice_agent.core.clock import Clock
from voice_agent.core.work import Superseded, WorkQueueFull
from voice_agent.session import turns as t
from voice_agent.session.engine import Engine
from voice_agent.session.inbound import InboundPipeline
from voice_agent.session.transcripts import TranscriptFilter
from voice_agent.stt.base import Transcript

Dropped = (Superseded, WorkQueueFull)


class FinalPass(NamedTuple):
    ready: float
    """When it was ready (the session's clock)."""
    compute_s: float
    text: str
    """The caller's words ("" for echo or noise)."""
    unclear: bool
    """Words whisper was unsure of: asked again, never answered."""


class Listener:
    def __init__(
        self,
        engine: Engine,
        owner: Hashable,
        inbound: InboundPipeline,
        transcripts: TranscriptFilter,
        machine: t.TurnMachine,
        clock: Clock,
        answer: Callable[[t.Event], Awaitable[None]],
        emit: Callable[..., Awaitable[None]],
        partial_every_s: float,
    ) -> None:
        self.engine, self.owner, self.inbound = engine, owner, inbound
        self.transcripts, self.machine, self.clock = transcripts, machine, clock
        self.answer, self.emit = answer, emit
        self.partial_every_s = partial_every_s
        self.final: FinalPass | None = None
        """The last final pass (None once its turn is answered)."""
        self.score: float | None = None
        """The end-of-turn model's last score (None once its turn is answered)."""
        self._tg: asyncio.TaskGroup | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._partial_running = False

    def start(self, tg: asyncio.TaskGroup) -> None:
        self._tg = tg

    def stop(self) -> None:
        """Cancel every job (a job running in a worker thread finishes there, unheard)."""
        for task in self._jobs:
            task.cancel()
        self._tg = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._tg is None:
            coro.close()
            return
        task = self._tg.create_task(coro)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _transcribe(self, partial: bool) -> Transcript:
        pcm = self.inbound.turn_audio()
        return await self.engine.run_stt(pcm, partial=partial, owner=self.owner)

    def frames_pushed(self) -> None:
        """After each inbound chunk: a partial pass when the turn has grown enough (not
        while a barge-in is pending: its checks transcribe the turn, and come first)."""
        if self._partial_running or self.machine.barge is not None:
            return
        if self.inbound.partial_due(self.partial_every_s):
            self._spawn(self._partial())

    def request_final(self, request: int) -> None:
        self._spawn(self._final_pass(request))

    def score_turn(self, request: int) -> None:
        self._spawn(self._score(request))

    def check_barge_in(self, request: int) -> None:
        self._spawn(self._barge_check(request))

    async def _partial(self) -> None:
        self._partial_running = True
        try:
            result = await self._transcribe(partial=True)
        except Dropped:
            return
        finally:
            self._partial_running = False
        if result.text and self.machine.user is t.UserState.SPEAKING:
            await self.emit("transcript.partial", text=result.text)

    async def _final_pass(self, request: int) -> None:
        try:
            result = await self._transcribe(partial=False)
        except Dropped:  # a newer request answers
            return
        now = self.clock.now()
        text = self.transcripts.final(result, self.inbound.turn_start_sample)
        unclear = bool(text) and self.transcripts.is_unclear(result)
        self.final = FinalPass(now, result.compute_s, text, unclear)
        await self.answer(t.TranscriptReady(now, request, text))

    async def _score(self, request: int) -> None:
        """The end-of-turn model's P(complete) for the turn so far."""
        try:
            p = await self.engine.run_turn_score(self.inbound.turn_audio(), owner=self.owner)
        except Dropped:  # a newer pause is being scored
            return
        self.score = p
        await self.answer(t.TurnScore(self.clock.now(), request, p))

    async def _barge_check(self, request: int) -> None:
        """The words so far of speech that began while the agent was talking."""
        try:
            result = await self._transcribe(partial=True)
        except Dropped:  # no answer proves nothing: the machine checks again
            text, echo = "", False
        else:
            text, echo = self.transcripts.check(result, self.inbound.turn_start_sample)
        await self.answer(t.BargeInTranscript(self.clock.now(), request, text, echo=echo))
        if text and self.machine.user is t.UserState.SPEAKING:
            await self.emit("transcript.partial", text=text)  # it is the turn so far
