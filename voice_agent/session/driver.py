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
import contextlib
from typing import Any

from voice_agent.audio.echo import EchoGuard
from voice_agent.audio.pcm import SAMPLE_RATE, Pcm
from voice_agent.audio.playout import Playout, Segment
from voice_agent.core.clock import Clock
from voice_agent.core.enums import BargeOutcome, ReplyKind
from voice_agent.core.work import Superseded, WorkQueueFull
from voice_agent.llm.base import Message
from voice_agent.session import turns as t
from voice_agent.session.config import DEFAULT_SYSTEM_PROMPT, SessionConfig
from voice_agent.session.engine import Engine
from voice_agent.session.inbound import InboundPipeline, SpeechEnd, SpeechOnset
from voice_agent.session.metrics import Interruption, TurnMetrics
from voice_agent.session.output import Output
from voice_agent.session.reply import Fillers, Reply, ReplyContext
from voice_agent.session.transcripts import TranscriptFilter
from voice_agent.session.writer import PacedWriter, PlayGate
from voice_agent.vad.hysteresis import VadState

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
        self.machine = t.TurnMachine(
            cfg.min_silence_s, cfg.max_silence_s, cfg.preemptive, cfg.prepare_after_s,
            duplex=cfg.duplex, t0=self.t0,
        )  # fmt: skip
        self.echo = EchoGuard() if cfg.echo_guard else None
        self.inbound = InboundPipeline(
            engine.new_vad(), self.echo, cfg.vad_start_ms, cfg.vad_stop_ms, cfg.preroll_ms,
            cfg.max_turn_s,
        )  # fmt: skip
        self.filter = TranscriptFilter(cfg.min_speech_s, cfg.echo_reach_s)
        self.playout = Playout(capacity=int(cfg.playout_capacity_s * SAMPLE_RATE))
        self.gate = PlayGate()
        self.writer = PacedWriter(
            self.playout, output, clock, self.gate, self._before_send, self._after_send,
            self.inbound.sample_at, cfg.paced,
        )  # fmt: skip
        self.ctx = ReplyContext(
            engine, self, self.playout, self.writer, clock, self._emit, Fillers(cfg.fillers),
            cfg.max_tool_rounds,
        )  # fmt: skip
        self.history: list[Message] = [{"role": "system", "content": cfg.system_prompt}]
        self.turns: list[TurnMetrics] = []
        self.errors: list[str] = []
        self.dropped_frames = self.prepared_dropped = 0
        self.end_reason: str | None = None
        self._inbound_q: asyncio.Queue[Pcm | None] = asyncio.Queue(cfg.inbound_queue_frames)
        self._control: asyncio.Queue[t.Event] = asyncio.Queue(256)
        self._hangup = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._partial_running = False
        self._reply: tuple[Reply, asyncio.Task[None]] | None = None
        self._metrics: dict[int, TurnMetrics] = {}
        self._final: tuple[float, float, str] | None = None  # (ready_at, compute_s, text)
        self._last_sent: dict[int, float] = {}

    # -- input from the transport (never blocks, never raises) -----------------

    def feed(self, pcm: Pcm | None) -> None:
        """Queue 16 kHz mono int16 audio (None: the input ended). When the queue is full
        the oldest chunk is dropped and counted."""
        while True:
            try:
                return self._inbound_q.put_nowait(pcm)
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    self._inbound_q.get_nowait()
                    self._inbound_q.task_done()
                    self.dropped_frames += 1

    def end_input(self) -> None:
        """No more audio will come (the file ended or the caller hung up the stream)."""
        self.feed(None)

    async def input_processed(self) -> None:
        """Wait until every chunk fed so far has been through the VAD."""
        await self._inbound_q.join()

    def send_text(self, text: str) -> bool:
        """Typed input: ends the caller's turn with ``text``. False: too busy, dropped."""
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
        m = self._metrics.get(gen)
        if m is None:
            return
        m.client_played_samples = max(m.client_played_samples, samples)
        if m.interruptions and len(m.interruptions[-1].acks) < 500:
            m.interruptions[-1].acks.append((self.clock.now(), samples))

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

    # -- the session ----------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`hangup` (or the machine closes the call). Cancelling it tears
        everything down; an exception from the output ends it too."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            loops = [tg.create_task(self._inbound_loop()), tg.create_task(self.writer.run())]
            try:
                await self._control_loop()
            finally:
                await self._cancel_reply()
                for task in [*loops, *self._jobs]:
                    task.cancel()
        self._tg = None

    def report(self) -> dict[str, Any]:
        return {
            "turns": [m.to_dict(self.t0) for m in self.turns],
            "history": self.history,
            "errors": self.errors,
            "dropped_input_frames": self.dropped_frames,
            "preemptive_replies_dropped": self.prepared_dropped,
        }

    # -- inbound --------------------------------------------------------------

    async def _inbound_loop(self) -> None:
        while (chunk := await self._inbound_q.get()) is not None:
            try:
                for ev in self.inbound.push(chunk, self.clock.now()):
                    if isinstance(ev, SpeechOnset):
                        await self._emit("speech.started", t_ms=self._ms(ev.at))
                        await self._control.put(t.SpeechStarted(self.clock.now(), ev.at))
                    elif isinstance(ev, SpeechEnd):
                        await self._emit("speech.stopped", t_ms=self._ms(ev.at))
                        await self._control.put(t.SpeechStopped(self.clock.now(), ev.at))
                if self.inbound.state is VadState.SPEAKING and self._may_partial():
                    self._job(self._partial())
            finally:
                self._inbound_q.task_done()
        self._inbound_q.task_done()

    def _may_partial(self) -> bool:
        # while a barge-in is pending its checks transcribe the turn; they come first
        if self._partial_running or self.machine.barge is not None:
            return False
        return self.inbound.partial_due(self.config.partial_interval_s)

    def _job(self, coro: Any) -> None:
        """Model work as a task of the session: cancelled (and dropped) when it ends."""
        assert self._tg is not None
        task = self._tg.create_task(coro)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _stt(self, partial: bool) -> Any:
        return await self.engine.run_stt(self.inbound.turn_audio(), partial=partial, owner=self)

    async def _partial(self) -> None:
        self._partial_running = True
        try:
            result = await self._stt(partial=True)
        except (Superseded, WorkQueueFull):
            return
        finally:
            self._partial_running = False
        if result.text and self.machine.user is t.UserState.SPEAKING:
            await self._emit("transcript.partial", text=result.text)

    async def _final_transcript(self, request: int) -> None:
        with contextlib.suppress(Superseded, WorkQueueFull):  # a newer request answers
            result = await self._stt(partial=False)
            now = self.clock.now()
            text = self.filter.final(result, self.inbound.turn_start_sample)
            self._final = (now, result.compute_s, text)
            await self._control.put(t.TranscriptReady(now, request, text))

    async def _barge_check(self, request: int) -> None:
        """The words so far of speech that began while the agent was talking."""
        try:
            result = await self._stt(partial=True)
        except (Superseded, WorkQueueFull):  # no answer proves nothing: checked again
            text, echo = "", False
        else:
            text, echo = self.filter.check(result, self.inbound.turn_start_sample)
        await self._control.put(t.BargeInTranscript(self.clock.now(), request, text, echo=echo))
        if text and self.machine.user is t.UserState.SPEAKING:
            await self._emit("transcript.partial", text=text)  # it is the turn so far

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
                self._job(self._final_transcript(req))
            case t.CheckBargeIn(request=req):
                self._job(self._barge_check(req))
            case t.DiscardTurn():
                self.inbound.end_turn()
                await self._emit("turn.discarded")
            case t.StartReply(gen=gen, text=text, speech_end=speech_end, decided=decided):
                self._start_reply(gen, text, speech_end, decided)
                await self._emit("transcript.final", text=text, gen=gen)
                await self._emit("reply.start", gen=gen)
            case t.PrepareReply(gen=gen, text=text, speech_end=speech_end):
                self._start_reply(gen, text, speech_end, None)
            case t.CommitReply(gen=gen, decided=decided):
                await self._commit_reply(gen, decided)
            case t.CancelReply(gen=gen):
                await self._cancel_reply(gen)
            case t.ClearPlayout(gen=gen):
                self.gate.cleared = max(self.gate.cleared, gen)
                if self.gate.paused is not None and self.gate.paused <= gen:
                    self.gate.paused = None
                self.playout.clear(gen)
                await self.output.clear(gen)
                await self._emit("clear", gen=gen)
            case t.PausePlayout(gen=gen, onset=onset):
                self.gate.paused = gen
                if (m := self._metrics.get(gen)) is not None:
                    sent = self.playout.played_samples(gen)
                    last = self._last_sent.get(gen)
                    m.interruptions.append(Interruption(onset, self.clock.now(), last, sent))
                await self.output.pause(gen)
                await self._emit("reply.paused", gen=gen, onset_ms=self._ms(onset))
            case t.ResumePlayout(gen=gen):
                if self.gate.paused == gen:
                    self.gate.paused = None
                    self.writer.wake()
                self._resolve(gen, BargeOutcome.RECOVERED, "")
                await self.output.resume(gen)
                await self._emit("reply.resumed", gen=gen)
            case t.ConfirmBargeIn(gen=gen, text=text):
                self._resolve(gen, BargeOutcome.CONFIRMED, text)
                await self._emit("barge_in", gen=gen, text=text)
            case t.PlayFiller(gen=gen):
                if self._reply is not None and self._reply[0].gen == gen:
                    await self._reply[0].play_filler()
            case t.Say(gen=gen, purpose=purpose):
                self._say(gen, purpose)
                if purpose is ReplyKind.GOODBYE:
                    self.end_reason = "idle"
                    await self._emit("session.ending", reason="idle")
            case t.Close():
                return True
        return False

    def _resolve(self, gen: int, outcome: BargeOutcome, words: str) -> None:
        m = self._metrics.get(gen)
        if m is not None and m.interruptions:
            last = m.interruptions[-1]
            if last.outcome is BargeOutcome.PENDING:
                last.outcome, last.words, last.resolved = outcome, words, self.clock.now()

    # -- replies ----------------------------------------------------------------

    def _start_reply(
        self, gen: int, text: str, speech_end: float | None, decided: float | None
    ) -> None:
        """Start reply ``gen``; with ``decided`` None it is prepared: its audio is held."""
        m = TurnMetrics(gen=gen, user_text=text, speech_end=speech_end, decided=decided)
        if speech_end is not None:
            m.speech_start = self.inbound.turn_onset
            if self._final is not None:
                m.stt_final, m.stt_compute_s, _ = self._final
        messages = [*self.history, {"role": "user", "content": text}]
        if decided is None:
            self.gate.held = gen
        else:
            self._commit_turn(m)
        self._launch(Reply(self.ctx, m, messages, turn=len(self.turns)))

    def _say(self, gen: int, purpose: ReplyKind) -> None:
        """A fixed line (the idle prompt, goodbye) spoken as reply ``gen``."""
        text = self.config.goodbye if purpose is ReplyKind.GOODBYE else self.config.idle_prompt
        m = TurnMetrics(gen, "", decided=self.clock.now(), committed=True, kind=purpose)
        self.turns.append(m)
        self._launch(Reply(self.ctx, m, [], fixed=text, turn=len(self.turns)))

    def _launch(self, reply: Reply) -> None:
        assert self._tg is not None
        self._metrics[reply.gen] = reply.m
        self._reply = (reply, self._tg.create_task(self._run_reply(reply)))

    def _commit_turn(self, m: TurnMetrics) -> None:
        """The caller's turn is answered: it enters the history, its audio is dropped."""
        m.committed = True
        self.inbound.end_turn()
        self._final = None
        self.turns.append(m)
        self.history.append({"role": "user", "content": m.user_text})

    async def _commit_reply(self, gen: int, decided: float) -> None:
        assert self._reply is not None and self._reply[0].gen == gen
        reply = self._reply[0]
        reply.m.decided = decided
        self._commit_turn(reply.m)
        reply.turn = len(self.turns)
        self.gate.held = None
        reply.commit()
        await self._emit("transcript.final", text=reply.m.user_text, gen=gen)
        await self._emit("reply.start", gen=gen)
        if reply.m.parts:
            await self._emit("reply.delta", gen=gen, text="".join(reply.m.parts))

    async def _cancel_reply(self, gen: int | None = None) -> None:
        if self._reply is None or (gen is not None and self._reply[0].gen != gen):
            return
        _, task = self._reply
        self._reply = None
        task.cancel()
        await asyncio.wait({task})

    async def _run_reply(self, reply: Reply) -> None:
        gen, m = reply.gen, reply.m
        interrupted = False
        try:
            await reply.run()
        except asyncio.CancelledError:
            interrupted = True
            raise
        finally:
            reply.finished = True
            reply.settle(interrupted)
            if m.error:
                self.errors.append(m.error)
            if m.committed:
                if (entry := reply.history_entry(interrupted)) is not None:
                    self.history.append(entry)
                await self._emit_safely("reply.done", gen=gen, status=m.status, text=m.reply_text)
                await self._emit_safely("metrics", turn=m.to_dict(self.t0) | {"context": None})
            else:  # a prepared reply the caller never heard leaves no trace
                self.prepared_dropped += 1
                self.playout.clear(gen)
                self._metrics.pop(gen, None)
                if self.gate.held == gen:
                    self.gate.held = None
            self.playout.forget(gen)
            self._last_sent.pop(gen, None)
            if self.gate.paused == gen:
                self.gate.paused = None
            if self._reply is not None and self._reply[0] is reply:
                self._reply = None
        await self._control.put(t.ReplyFinished(self.clock.now(), gen))

    # -- the writer's hooks -----------------------------------------------------

    async def _before_send(self, gen: int, seg: Segment) -> None:
        m = self._metrics.get(gen)
        if m is None:
            return
        if m.first_audio_out is None and not seg.filler:
            m.first_audio_out = self.clock.now()
        if not m.audio_started:
            m.audio_started = True
            await self._control.put(t.ReplyAudioStarted(self.clock.now(), gen))
            await self._emit("reply.audio.start", gen=gen)

    def _after_send(self, gen: int, frame: Pcm, seg: Segment, at_sample: int) -> None:
        self._last_sent[gen] = now = self.clock.now()
        self.filter.agent_frame(at_sample, seg)
        if self.echo is not None:
            self.echo.far_end(frame, at_sample)
        m = self._metrics.get(gen)
        if m is not None and m.interruptions and self.gate.paused == gen:
            m.interruptions[-1].last_sent = now  # the frame in flight

    # -- events -----------------------------------------------------------------

    def _ms(self, at: float) -> float:
        return round((at - self.t0) * 1000, 1)

    async def emit(self, kind: str, **fields: Any) -> None:
        """Send an event stamped with the session's clock (for transports' own events)."""
        await self._emit(kind, **fields)

    async def _emit(self, kind: str, **fields: Any) -> None:
        await self.output.send_event({"type": kind, "t_ms": self._ms(self.clock.now()), **fields})

    async def _emit_safely(self, kind: str, **fields: Any) -> None:
        """Emit from a ``finally`` that may run during cancellation; a failing output is logged."""
        try:
            await self._emit(kind, **fields)
        except Exception as exc:  # the transport died; the session keeps its record
            self.errors.append(f"could not send {kind}: {exc}")


async def _cancel_all(futures: set[asyncio.Future[Any]]) -> None:
    """Cancel helper futures and wait until they are done (none is left pending)."""
    for f in futures:
        f.cancel()
    if futures:
        await asyncio.wait(futures)
