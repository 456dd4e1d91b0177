"""The session driver: the only place that awaits.

One session = one ``asyncio.TaskGroup``: the inbound loop (transport audio →
:class:`InboundPipeline` → speech events, partial transcripts), the control loop
(waits for events or the :class:`TurnMachine`'s next deadline, feeds the
machine and carries out its commands) and the :class:`PacedWriter`. Each reply
is one task running a :class:`Reply`; cancelling it tears the whole reply down.
STT jobs are tasks too, on the engine's fair workers, superseded and dropped
with the session. Every frame carries its generation; the :class:`PlayGate`
keeps a stale, cleared or held generation from the output.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

from voice_agent.audio.echo import EchoGuard
from voice_agent.audio.pcm import FRAME_MS, SAMPLE_RATE, Pcm
from voice_agent.audio.playout import Playout, Segment
from voice_agent.core.clock import Clock
from voice_agent.core.enums import BargeOutcome, ReplyKind
from voice_agent.core.queues import DropOldestQueue
from voice_agent.core.work import WorkOwner
from voice_agent.llm.base import Message
from voice_agent.llm.builtin_tools import TIME_TOOL
from voice_agent.llm.context import fit_context
from voice_agent.llm.tools import tools_note
from voice_agent.session import turns as t
from voice_agent.session.config import (
    DEFAULT_SYSTEM_PROMPT,
    SessionConfig,
    chat_system_message,
    honest_line,
    system_message,
)
from voice_agent.session.engine import Engine
from voice_agent.session.inbound import InboundPipeline, SpeechEnd, SpeechOnset
from voice_agent.session.listener import Listener
from voice_agent.session.metrics import TurnMetrics
from voice_agent.session.output import Events, Output
from voice_agent.session.record import CallRecord, with_user
from voice_agent.session.replies import Replies, start_purpose
from voice_agent.session.reply import Fillers, Reply, ReplyContext
from voice_agent.session.transcripts import TranscriptFilter
from voice_agent.session.writer import PacedWriter, PlayGate
from voice_agent.vad.hysteresis import VadState, frames

__all__ = ["DEFAULT_SYSTEM_PROMPT", "Output", "Session", "SessionConfig"]


class Session:
    """One conversation. Feed audio with :meth:`feed`, run it with :meth:`run`.

    The input methods (:meth:`feed`, :meth:`send_text`, :meth:`interrupt`,
    :meth:`playout_ack`, :meth:`hangup`) never block and never raise; call them
    from the event loop's thread."""

    def __init__(
        self, engine: Engine, output: Output, clock: Clock, config: SessionConfig | None = None
    ) -> None:
        self.engine, self.output, self.clock = engine, output, clock
        self.config = cfg = config or SessionConfig()
        self.t0 = clock.now()
        note = tools_note(engine.tools) if engine.tools else None
        timed = engine.tools.get(TIME_TOOL) is None  # with the time tool, it tells the time
        self.record = CallRecord(system_message(cfg, note, with_time=timed), self.t0)
        self.history, self.turns = self.record.history, self.record.turns
        self.errors = self.record.errors
        self.events = Events(output, clock, self.t0, self.record.errors)
        self.emit = self.events.emit
        """Send an event stamped with the session's clock (transports send their own too)."""
        self.machine = t.TurnMachine(
            cfg.min_silence_s, cfg.max_silence_s, cfg.preemptive, cfg.prepare_after_s,
            duplex=cfg.duplex, t0=self.t0,
            endpoint=dataclasses.replace(
                cfg.endpoint, scored=cfg.endpoint.scored and engine.turn_model is not None,
                unmarked_abstains=(
                    cfg.endpoint.unmarked_abstains or not engine.stt.marks_sentence_ends
                ),
            ),
        )  # fmt: skip
        self.owner = WorkOwner()
        """This call on the engine's shared workers, its LLM slot and its foreground
        (a key of its own, not the session: what they remember of past owners then
        keeps no ended call's audio and state alive)."""
        self.echo = EchoGuard() if cfg.echo_guard else None
        self.inbound = InboundPipeline(
            engine.new_vad(), self.echo, cfg.vad_start_ms, cfg.vad_stop_ms, cfg.preroll_ms,
            cfg.max_turn_s,
        )  # fmt: skip
        guard = self.echo
        unclear = cfg.unclear_logprob
        if unclear is None:
            unclear = engine.stt.unclear_logprob
        self.filter = TranscriptFilter(
            cfg.min_speech_s, cfg.echo_reach_s, unclear,
            line_echoes=None if guard is None else lambda: guard.had_echo,
        )  # fmt: skip
        self.playout = Playout(capacity=int(cfg.playout_capacity_s * SAMPLE_RATE))
        self.gate = PlayGate()
        self.writer = PacedWriter(
            self.playout, output, clock, self.gate, self._before_send, self._after_send,
            self.inbound.sample_at, cfg.paced,
        )  # fmt: skip
        self.ctx = ReplyContext(
            engine, self.owner, self.playout, self.writer, clock, self.emit, Fillers(cfg.fillers),
            cfg.max_tool_rounds, cfg.first_chunk_words,
            chat_system_message(cfg, note) if note else None, cfg.max_llm_turn_s,
        )  # fmt: skip
        self.end_reason: str | None = None
        self._inbound_q: DropOldestQueue[tuple[Pcm, float] | None] = DropOldestQueue(
            cfg.inbound_queue_frames
        )
        self._control: asyncio.Queue[t.Event] = asyncio.Queue(256)
        self._hangup = asyncio.Event()
        self.on_limit: Callable[[str], None] | None = None
        """Told when a limit is hit (``duration``, ``text_length``): the server's metrics."""
        self._tg: asyncio.TaskGroup | None = None
        self.replies = Replies(
            self.record, self.playout, self.gate, self.emit, self.events.emit_safely,
            self._reply_finished,
        )  # fmt: skip
        self.listener = Listener(
            engine, self.owner, self.inbound, self.filter, self.machine, clock, self._control.put,
            self.emit, cfg.partial_interval_s,
            None if cfg.speculate_ms is None else frames(cfg.speculate_ms, FRAME_MS),
            on_partial=self._prefill,
        )  # fmt: skip
        self._prefilling: asyncio.Task[bool] | None = None
        self._prefilled: list[Message] = []
        self.prefills_yielded = 0
        """Prefills not sent because another call was waiting for its answer."""

    # -- input from the transport (never blocks, never raises) -----------------

    def feed(self, pcm: Pcm | None) -> None:
        """Queue 16 kHz mono int16 audio (None: the input ended). When the queue is full
        the oldest chunk is dropped and counted. The chunk is dated now, as it arrives:
        the inbound loop may take it later, when it is busy."""
        self._inbound_q.put_nowait(None if pcm is None else (pcm, self.clock.now()))

    @property
    def dropped_frames(self) -> int:
        return self._inbound_q.dropped

    def end_input(self) -> None:
        """No more audio will come (the file ended or the caller hung up the stream)."""
        self.feed(None)

    async def input_processed(self) -> None:
        """Wait until every chunk fed so far has been through the VAD."""
        await self._inbound_q.join()

    def send_text(self, text: str) -> bool:
        """Typed input: ends the caller's turn with ``text``. False: too busy, dropped
        (a transport refuses text over ``config.max_text_chars`` before it gets here)."""
        return self._control_nowait(t.TextInput(self.clock.now(), text))

    def interrupt(self) -> bool:
        """Stop the agent's current reply (what was heard stays in the history)."""
        return self._control_nowait(t.Interrupt(self.clock.now()))

    def _control_nowait(self, event: t.Event) -> bool:
        try:
            self._control.put_nowait(event)
        except asyncio.QueueFull:
            return False
        return True

    def hangup(self) -> None:
        """End the session (idempotent): the live reply is cancelled, what was heard is
        kept, queued model work is dropped."""
        self._hangup.set()

    @property
    def closing(self) -> bool:
        return self._hangup.is_set()

    def playout_ack(self, gen: int, samples: int) -> None:
        """The client reports ``samples`` (16 kHz) of generation ``gen`` actually played."""
        self.record.playout_ack(gen, samples, self.clock.now())

    @property
    def prepared_dropped(self) -> int:
        return self.record.prepared_dropped

    @property
    def idle(self) -> bool:
        """No reply is being prepared, generated or played."""
        m = self.machine
        return m.agent is t.AgentState.IDLE and m.prepared is None and self.playout.buffered == 0

    @property
    def busy(self) -> bool:
        """The caller paused, a reply is pending or playing, or audio is queued."""
        return (
            self.inbound.state is VadState.STOPPING
            or self.machine.user is t.UserState.PAUSED
            or not self.idle
        )

    def waiting_for_answer(self) -> bool:
        """The caller has stopped talking (a pause being judged) or has been answered
        and not yet heard the answer (a filler is not one)."""
        m = self.machine
        if self.inbound.state is VadState.STOPPING or m.user is t.UserState.PAUSED:
            return True
        if m.agent is t.AgentState.IDLE:
            return False
        return not self.record.answer_heard(m.gen)

    # -- the session ----------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`hangup` (or the machine closes the call). Cancelling it tears
        everything down; an exception from the output ends it too."""
        self.engine.foreground.join(self.owner, self.waiting_for_answer)
        try:
            await self._run()
        finally:
            self.engine.foreground.leave(self.owner)

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            self.listener.start(tg)
            self._prefill(None)
            loops = [tg.create_task(self._inbound_loop()), tg.create_task(self.writer.run())]
            if self.config.max_duration_s is not None:
                end = self.clock.now() + self.config.max_duration_s
                loops.append(tg.create_task(self._time_limit(end)))
            try:
                await self._control_loop()
            finally:
                await self.replies.cancel()
                self.listener.stop()
                self._stop_prefill()
                for task in loops:
                    task.cancel()
        self._tg = None

    def report(self) -> dict[str, Any]:
        return self.record.report(self.dropped_frames)

    async def _time_limit(self, end: float) -> None:
        """End the call at ``end`` (its duration limit): what was heard is kept."""
        await self.clock.sleep_until(end)
        if not self.closing:
            self.end_reason = "time_limit"
            if self.on_limit is not None:
                self.on_limit("duration")
            await self.emit("session.ending", reason="time_limit")
            self.hangup()

    # -- inbound --------------------------------------------------------------

    async def _inbound_loop(self) -> None:
        while (item := await self._inbound_q.get()) is not None:
            try:
                for ev in self.inbound.push(*item):
                    if isinstance(ev, SpeechOnset):
                        await self.emit("speech.started", t_ms=self.events.ms(ev.at))
                        await self._control.put(t.SpeechStarted(self.clock.now(), ev.at))
                    elif isinstance(ev, SpeechEnd):
                        await self.emit("speech.stopped", t_ms=self.events.ms(ev.at))
                        await self._control.put(t.SpeechStopped(self.clock.now(), ev.at))
                if self.inbound.state is VadState.SPEAKING:
                    self.listener.frames_pushed()
                elif self.inbound.state is VadState.STOPPING:
                    self.listener.silence_pushed()
            finally:
                self._inbound_q.task_done()
        self._inbound_q.task_done()

    # -- control --------------------------------------------------------------

    async def _control_loop(self) -> None:
        getter: asyncio.Task[t.Event] | None = None
        hangup = asyncio.ensure_future(self._hangup.wait())
        try:
            while True:
                getter = getter or asyncio.ensure_future(self._control.get())
                deadline = self.machine.next_deadline()
                waits: set[asyncio.Future[Any]] = {getter, hangup}
                if deadline is not None:
                    waits.add(asyncio.ensure_future(self.clock.sleep_until(deadline)))
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    await _cancel_all(waits - {getter, hangup})
                event: t.Event
                if hangup.done():
                    event = t.Hangup(self.clock.now())
                elif getter.done():
                    event, getter = getter.result(), None
                else:
                    event = t.Tick(self.clock.now())
                commands = self.machine.handle(event)
                self.gate.current = self.machine.gen
                for command in commands:
                    if await self._execute(command):
                        return
                if isinstance(event, t.Hangup):
                    return  # the machine had closed already
        finally:
            await _cancel_all({f for f in (getter, hangup) if f is not None})

    async def _execute(self, command: t.Command) -> bool:
        """Carry out one command; True means the session is over."""
        match command:
            case t.RequestTranscript(request=req):
                self.listener.request_final(req)
            case t.ScoreTurn(request=req):
                self.listener.score_turn(req)
            case t.CheckBargeIn(request=req):
                self.listener.check_barge_in(req)
            case t.DiscardTurn():
                self.inbound.end_turn()
                await self.emit("turn.discarded")
            case t.StartReply(gen=gen, text=text, speech_end=speech_end, decided=decided):
                kind = self._start_reply(gen, text, speech_end, decided)
                await self.emit("transcript.final", text=text, gen=gen)
                await self.emit("reply.start", gen=gen, **start_purpose(kind))
            case t.PrepareReply(gen=gen, text=text, speech_end=speech_end):
                self._start_reply(gen, text, speech_end, None)
            case t.CommitReply(gen=gen, decided=decided):
                await self._commit_reply(gen, decided)
            case t.CancelReply(gen=gen):
                await self.replies.cancel(gen)
            case t.ClearPlayout(gen=gen):
                self.gate.clear(gen)
                self.playout.clear(gen)
                await self.output.clear(gen)
                await self.emit("clear", gen=gen)
            case t.PausePlayout(gen=gen, onset=onset):
                self.gate.paused = gen
                sent = self.playout.played_samples(gen)
                self.record.paused(gen, onset, self.clock.now(), sent)
                await self.output.pause(gen)
                await self.emit("reply.paused", gen=gen, onset_ms=self.events.ms(onset))
            case t.ResumePlayout(gen=gen):
                if self.gate.resume(gen):
                    self.writer.wake()
                self.record.resolved(gen, BargeOutcome.RECOVERED, "", self.clock.now())
                await self.output.resume(gen)
                await self.emit("reply.resumed", gen=gen)
            case t.ConfirmBargeIn(gen=gen, text=text):
                self.record.resolved(gen, BargeOutcome.CONFIRMED, text, self.clock.now())
                await self.emit("barge_in", gen=gen, text=text)
            case t.PlayFiller(gen=gen):
                if (reply := self.replies.live(gen)) is not None:
                    await reply.play_filler()
            case t.Say(gen=gen, purpose=purpose):
                self._say(gen, purpose)
                await self.emit("reply.start", gen=gen, purpose=purpose)
                if purpose is ReplyKind.GOODBYE:
                    self.end_reason = "idle"
                    await self.emit("session.ending", reason="idle")
            case t.Close():
                return True
        return False

    # -- replies ----------------------------------------------------------------

    def _prefill(self, words: str | None) -> None:
        """Have the LLM read the next reply's prompt so far: the history (the system
        prompt, at the start of the call), then the caller's ``words`` heard so far.
        Only while the agent is idle, one at a time; a reply that starts cancels it."""
        if not self.config.prefill or self._tg is None:
            return
        if self._prefilling is not None and not self._prefilling.done():
            return
        if self.engine.foreground.others_waiting(self.owner):
            self.prefills_yielded += 1  # their first tokens come first; the reply reads it
            return
        m = self.machine
        if words is not None and (m.agent is not t.AgentState.IDLE or m.prepared is not None):
            return
        messages = with_user(self.history, words) if words else list(self.history)
        messages = fit_context(messages, self.config.max_context_chars)
        if messages == self._prefilled:
            return  # the same words again: nothing new to read
        self._prefilled = messages
        tools = self.engine.tools.schemas() or None  # the reply's request offers them too
        self._prefilling = self._tg.create_task(
            self.engine.llm.prefill(messages, tools, owner=self.owner)
        )

    def _stop_prefill(self) -> None:
        if self._prefilling is not None:
            self._prefilling.cancel()

    def _start_reply(
        self, gen: int, text: str, speech_end: float | None, decided: float | None
    ) -> ReplyKind:
        """Start reply ``gen``; with ``decided`` None it is prepared: its audio is held.
        Returns what it is: an answer, or the line that asks an unclear turn again."""
        self._stop_prefill()  # the reply reads what it had read, and the rest
        m = TurnMetrics(gen=gen, user_text=text, speech_end=speech_end, decided=decided)
        final = self.listener.final if speech_end is not None else None
        if speech_end is not None:
            m.speech_start = self.inbound.turn_onset
        if final is not None:
            m.stt_final, m.stt_compute_s = final.ready, final.compute_s
        messages = fit_context(
            with_user(self.history, text), self.config.max_context_chars
        )
        if decided is not None:
            self._commit_turn(m)
        assert self._tg is not None
        if final is not None and final.unclear:  # a guess: ask again, never answer it
            m.kind = ReplyKind.SAY_AGAIN
            reply = Reply(self.ctx, m, [], fixed=self.config.say_again, turn=len(self.turns))
        elif (
            honest := honest_line(self.config, text, self.engine.tools.checks_live())
        ) is not None:
            # it cannot know: say so, never let the LLM guess
            m.kind = ReplyKind.CANNOT_CHECK
            reply = Reply(self.ctx, m, [], fixed=honest, turn=len(self.turns))
        else:
            reply = Reply(self.ctx, m, messages, turn=len(self.turns))
        self.replies.launch(self._tg, reply)
        return m.kind

    def _say(self, gen: int, purpose: ReplyKind) -> None:
        """A fixed line (the idle prompt, goodbye) spoken as reply ``gen``."""
        text = self.config.goodbye if purpose is ReplyKind.GOODBYE else self.config.idle_prompt
        m = TurnMetrics(gen, "", decided=self.clock.now(), kind=purpose)
        self.record.commit(m)
        assert self._tg is not None
        self.replies.launch(self._tg, Reply(self.ctx, m, [], fixed=text, turn=len(self.turns)))

    def _commit_turn(self, m: TurnMetrics) -> None:
        """The caller's turn is answered: it enters the history, its audio is dropped."""
        if m.speech_end is not None:  # what the endpoint policy decided on
            m.end_p, m.end_wait_s = self.listener.score, self.machine.wait_s
        self.record.commit(m)
        self.inbound.end_turn()
        self.listener.final = None
        self.listener.score = None

    async def _commit_reply(self, gen: int, decided: float) -> None:
        reply = self.replies.live(gen)
        assert reply is not None
        reply.m.decided = decided
        self._commit_turn(reply.m)
        reply.turn = len(self.turns)
        await self.replies.commit(gen)

    async def _reply_finished(self, gen: int) -> None:
        await self._control.put(t.ReplyFinished(self.clock.now(), gen))

    # -- the writer's hooks -----------------------------------------------------

    async def _before_send(self, gen: int, seg: Segment) -> None:
        if self.record.first_frame(gen, seg, self.clock.now()):
            await self._control.put(t.ReplyAudioStarted(self.clock.now(), gen))
            await self.emit("reply.audio.start", gen=gen)

    def _after_send(self, gen: int, frame: Pcm, seg: Segment, at_sample: int) -> None:
        self.record.frame_sent(gen, self.clock.now(), paused=self.gate.paused == gen)
        self.filter.agent_frame(at_sample, seg)
        if self.echo is not None:
            self.echo.far_end(frame, at_sample)


async def _cancel_all(futures: set[asyncio.Future[Any]]) -> None:
    """Cancel helper futures and wait until they are done (none is left pending)."""
    for f in futures:
        f.cancel()
    if futures:
        await asyncio.wait(futures)
