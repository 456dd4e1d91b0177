"""The session's STT jobs: partial transcripts while the caller talks, the final pass
when the VAD reports a pause, and the words checks of a possible barge-in.

Each job is a task of the session's TaskGroup on the engine's fair workers (the
session's ``WorkOwner`` is the owner), answered into the control loop through ``answer``. A job
superseded by a newer one, or refused by a full queue, is dropped; :meth:`stop`
cancels every job, so nothing of a session outlives it.
"""

from __future__ import annotations

import asyncio
import logging
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
log = logging.getLogger("voice_agent.session")


class FinalPass(NamedTuple):
    ready: float
    """When it was ready (the session's clock)."""
    compute_s: float
    text: str
    """The caller's words ("" for echo or noise)."""
    unclear: bool
    """Words the STT was unsure of: asked again, never answered."""


class EarlyPass(NamedTuple):
    """A final pass started in a pause the VAD has not confirmed yet."""

    stop_sample: int
    """The pause's first silent sample."""
    turn_start: int
    """The turn's first sample."""
    result: asyncio.Future[Transcript | None]
    """Its transcript; None if it was dropped before it started."""


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
        speculate_frames: int | None = None,
        on_partial: Callable[[str], None] | None = None,
    ) -> None:
        self.engine, self.owner, self.inbound = engine, owner, inbound
        self.transcripts, self.machine, self.clock = transcripts, machine, clock
        self.answer, self.emit = answer, emit
        self.partial_every_s = partial_every_s
        self.speculate_frames = speculate_frames
        self.on_partial = on_partial
        """Called with each partial transcript heard while the caller talks."""
        self._spec: EarlyPass | None = None
        self.final: FinalPass | None = None
        """The last final pass (None once its turn is answered)."""
        self.score: float | None = None
        """The end-of-turn model's last score (None once its turn is answered)."""
        self._tg: asyncio.TaskGroup | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._partial_running = False
        self.partials_yielded = 0
        """Partial passes not run because another call was waiting for its answer."""
        self.stt_failures = 0
        """Passes the STT model failed (each told to the client as an ``stt_error``)."""

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

    async def _transcribe(self, partial: bool, preview: bool = False) -> Transcript:
        """A pass over the turn so far (by the engine's check STT while the caller talks
        over the agent: a barge-in is pending). A ``preview`` (a partial transcript) is
        dropped unrun if another call is waiting for its answer when its turn comes."""
        pcm = self.inbound.turn_audio()
        over_agent = self.machine.barge is not None
        wanted = self._no_one_waiting if preview else None
        # a preview can wait a partial interval; a barge-in's words check cannot
        runway = self.partial_every_s if preview else None
        try:
            return await self.engine.run_stt(
                pcm, partial=partial, owner=self.owner, over_agent=over_agent, wanted=wanted,
                runway_s=runway,
            )  # fmt: skip
        except Dropped:
            raise
        except Exception:  # the model failed on this audio: the call goes on without it
            log.exception("speech recognition failed (%d samples)", len(pcm))
            self.stt_failures += 1
            await self.emit(
                "error", code="stt_error",
                message="speech recognition failed on that audio; please say it again",
            )  # fmt: skip
            return Transcript("", len(pcm), 0.0)

    def _no_one_waiting(self) -> bool:
        if self.engine.foreground.others_waiting(self.owner):
            self.partials_yielded += 1
            return False
        return True

    def frames_pushed(self) -> None:
        """After each inbound chunk: a partial pass when the turn has grown enough (not
        while a barge-in is pending: its checks transcribe the turn, and come first). A
        partial is only a preview: when its turn on the worker comes while another call
        waits for its answer, it is dropped (``_no_one_waiting``)."""
        if self._partial_running or self.machine.barge is not None:
            return
        if self.inbound.partial_due(self.partial_every_s):
            self._spawn(self._partial())

    def silence_pushed(self) -> None:
        """After each inbound chunk while the VAD confirms a stop: once the pause has
        lasted ``speculate_frames``, start the final pass on the turn so far. If the stop
        is confirmed, that pass answers the final request (it started up to
        ``vad_stop_ms`` sooner); if the caller goes on, it is dropped."""
        run = self.inbound.hysteresis.quiet_run
        if self.speculate_frames is None or run is None or self._tg is None:
            return
        start, frames = run
        if frames < self.speculate_frames or (
            self._spec is not None and self._spec.stop_sample == start
        ):
            return
        result: asyncio.Future[Transcript | None] = asyncio.get_running_loop().create_future()
        self._spec = EarlyPass(start, self.inbound.turn_start_sample, result)
        self._spawn(self._speculate(result))

    async def _speculate(self, out: asyncio.Future[Transcript | None]) -> None:
        result: Transcript | None = None
        try:
            result = await self._transcribe(partial=False)
        except Dropped:  # a newer final pass replaced it before it started
            pass
        finally:
            if not out.done():
                out.set_result(result)

    def request_final(self, request: int) -> None:
        self._spawn(self._final_pass(request))

    def score_turn(self, request: int) -> None:
        self._spawn(self._score(request))

    def check_barge_in(self, request: int) -> None:
        self._spawn(self._barge_check(request))

    async def _partial(self) -> None:
        self._partial_running = True
        try:
            result = await self._transcribe(partial=True, preview=True)
        except Dropped:
            return
        finally:
            self._partial_running = False
        if result.text and self.machine.user is t.UserState.SPEAKING:
            await self.emit("transcript.partial", text=result.text)
            if self.on_partial is not None:
                self.on_partial(result.text)

    async def _final_pass(self, request: int) -> None:
        spec, self._spec = self._spec, None
        result: Transcript | None = None
        here = (self.inbound.stop_sample, self.inbound.turn_start_sample)
        if spec is not None and (spec.stop_sample, spec.turn_start) == here:
            result = await spec.result  # started early, in this very pause
        if result is None:
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
