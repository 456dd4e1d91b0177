"""The session driver: the only place that awaits.

One session = one ``asyncio.TaskGroup`` with three loops:

- inbound: transport audio → 20 ms frames → VAD → hysteresis → events, and
  the turn's audio buffer (plus partial transcripts while the caller talks);
- control: waits for events or the TurnMachine's next deadline, feeds the
  machine and carries out its commands;
- playout: pulls 20 ms frames from the :class:`Playout` and writes them to the
  output, paced by sample count against the injected clock.

Each reply is one task (``_reply``) with an inner TaskGroup: LLM → sentence
splitter → bounded queue → TTS (worker thread) → playout. Cancelling that one
task tears the whole reply down; every frame carries its generation, and a
frame of an old generation is dropped before it reaches the output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from voice_agent.audio.echo import EchoGuard
from voice_agent.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE, Pcm
from voice_agent.audio.playout import Playout, Segment, words_spanning
from voice_agent.core.clock import Clock
from voice_agent.errors import LLMError
from voice_agent.llm.base import Message, TextDelta, ToolCall
from voice_agent.session.engine import FILLERS, GOODBYE, IDLE_PROMPT, Engine
from voice_agent.session.metrics import Interruption, TurnMetrics
from voice_agent.session.turns import (
    BargeInTranscript,
    CancelReply,
    CheckBargeIn,
    ClearPlayout,
    Close,
    Command,
    CommitReply,
    ConfirmBargeIn,
    DiscardTurn,
    DuplexPolicy,
    Event,
    Hangup,
    Interrupt,
    PausePlayout,
    PlayFiller,
    PrepareReply,
    ReplyAudioStarted,
    ReplyFinished,
    RequestTranscript,
    ResumePlayout,
    Say,
    SpeechStarted,
    SpeechStopped,
    StartReply,
    TextInput,
    Tick,
    TranscriptReady,
    TurnMachine,
    content_words,
)
from voice_agent.stt.base import Transcript
from voice_agent.text.sentences import SentenceSplitter
from voice_agent.vad.hysteresis import VadHysteresis, VadStart, VadStop

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant speaking with a caller. Everything you write is "
    "spoken aloud by a text-to-speech voice, so answer in one to three short sentences of "
    "plain, conversational English. Never use lists, markdown, code or emoji. If you did not "
    "understand the caller, ask them to say it again."
)


class Output(Protocol):
    """Where a session's audio and events go (a transport, or the replay recorder)."""

    async def send_audio(self, gen: int, pcm: Pcm) -> None:
        """One 20 ms frame of agent audio of generation ``gen``."""
        ...

    async def send_event(self, event: dict[str, Any]) -> None:
        """A JSON-serialisable event (see docs/protocol.md)."""
        ...


@dataclass
class SessionConfig:
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    vad_start_ms: int = 60
    vad_stop_ms: int = 120
    # A turn whose transcript reads as finished ends after min_silence_s of
    # silence, any other after max_silence_s. Whisper often puts a full stop at
    # a mid-sentence pause (jfk.flac: "…can do for you." at a 540 ms pause), so
    # min_silence_s stays above common pauses; on 2 cores the final STT pass
    # (~550 ms after the VAD's 120 ms) takes longer than this anyway.
    min_silence_s: float = 0.6
    max_silence_s: float = 1.0
    preroll_ms: int = 300
    max_turn_s: float = 28.0
    partial_interval_s: float = 0.8
    inbound_queue_frames: int = 500
    playout_capacity_s: float = 20.0
    paced: bool = True
    max_tool_rounds: int = 3
    preemptive: bool = True
    """Start the reply during the pause, once its transcript is in and the pause has lasted
    ``prepare_after_s``; play it once the turn is over."""
    prepare_after_s: float = 0.25
    duplex: DuplexPolicy | None = field(default_factory=DuplexPolicy)
    """Barge-in, false-interruption recovery, fillers and idle handling (None: off)."""
    echo_guard: bool = True
    """Remove the agent's own voice from the caller's input (for clients without AEC)."""
    min_speech_s: float = 0.06
    """A transcript over less speech than this (by the engine's speech detector) is noise."""
    echo_reach_s: float = 0.6
    """How long after its audio is sent an agent word can come back as echo: a caller's
    transcript is compared with the agent words sent from this long before the caller's
    turn began until now."""
    fillers: tuple[str, ...] = FILLERS
    idle_prompt: str = IDLE_PROMPT
    goodbye: str = GOODBYE


class Session:
    """One conversation. Feed audio with :meth:`feed`, run it with :meth:`run`."""

    def __init__(
        self,
        engine: Engine,
        output: Output,
        clock: Clock,
        config: SessionConfig | None = None,
    ) -> None:
        self.engine = engine
        self.output = output
        self.clock = clock
        self.config = cfg = config or SessionConfig()
        self.machine = TurnMachine(
            cfg.min_silence_s,
            cfg.max_silence_s,
            cfg.preemptive,
            cfg.prepare_after_s,
            duplex=cfg.duplex,
            t0=clock.now(),
        )
        self.playout = Playout(capacity=int(cfg.playout_capacity_s * SAMPLE_RATE))
        self.history: list[Message] = [{"role": "system", "content": cfg.system_prompt}]
        self.turns: list[TurnMetrics] = []
        self.errors: list[str] = []
        self.t0 = clock.now()
        self.samples_in = 0
        self.dropped_frames = 0
        self.prepared_dropped = 0
        self.closing = False
        self._inbound: asyncio.Queue[Pcm | None] = asyncio.Queue(cfg.inbound_queue_frames)
        self._control: asyncio.Queue[Event] = asyncio.Queue(256)
        self._audio_ready = asyncio.Event()
        self._room = asyncio.Event()
        self._drained = asyncio.Event()
        self._partial_running = False
        self._tg: asyncio.TaskGroup | None = None
        self._reply: tuple[int, asyncio.Task[None]] | None = None
        self._held: int | None = None  # a prepared reply whose audio waits for CommitReply
        self._commit = asyncio.Event()
        self._metrics: dict[int, TurnMetrics] = {}
        # Turn audio: frames since the current turn's speech onset (with pre-roll).
        self._turn: list[Pcm] | None = None
        self._preroll: deque[Pcm] = deque(maxlen=max(1, cfg.preroll_ms // 20))
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=1000)
        self._speech_start: float | None = None
        self._final: tuple[float, float, str] | None = None  # (ready_at, compute_s, text)
        self._partial_at = 0
        self._vad_state = "quiet"
        self._paused: int | None = None  # a reply held because the caller began to speak
        self._cleared = 0  # frames of generations <= this never reach the output again
        self._last_sent: dict[int, float] = {}
        self.echo = EchoGuard() if cfg.echo_guard else None
        # agent frames sent, by the input sample they start playing at: (at, segment, end of
        # the frame in the segment); 60 s of them, for matching transcripts against echo
        self._sent_log: deque[tuple[int, Segment, int]] = deque(maxlen=3000)
        self._turn_start_sample = 0
        self._last_filler: str | None = None
        self.end_reason: str | None = None

    # -- input from the transport (never blocks) -------------------------------

    def feed(self, pcm: Pcm) -> None:
        """Queue 16 kHz mono int16 audio. When the queue is full the oldest chunk is dropped."""
        while True:
            try:
                self._inbound.put_nowait(pcm)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    self._inbound.get_nowait()
                    self._inbound.task_done()
                    self.dropped_frames += 1

    def end_input(self) -> None:
        """No more audio will come (the file ended or the caller hung up the stream)."""
        self.feed(None)  # type: ignore[arg-type]

    async def input_processed(self) -> None:
        """Wait until every chunk fed so far has been through the VAD."""
        await self._inbound.join()

    def send_text(self, text: str) -> None:
        """Typed input: ends the caller's turn with ``text``."""
        self._control.put_nowait(TextInput(self.clock.now(), text))

    def hangup(self) -> None:
        """End the session (once): the live reply is cancelled, what was heard is kept."""
        if not self.closing:
            self.closing = True
            self._control.put_nowait(Hangup(self.clock.now()))

    @property
    def idle(self) -> bool:
        """No reply is being prepared, generated or played."""
        return (
            self.machine.agent.value == "idle"
            and self.machine.prepared is None
            and self.playout.buffered == 0
        )

    def interrupt(self) -> None:
        """Stop the agent's current reply (what was heard stays in the history)."""
        self._control.put_nowait(Interrupt(self.clock.now()))

    def playout_ack(self, gen: int, samples: int) -> None:
        """The client reports ``samples`` (16 kHz) of generation ``gen`` actually played."""
        m = self._metrics.get(gen)
        if m is None:
            return
        if samples > m.client_played_samples:
            m.client_played_samples = samples
        if m.interruptions:
            last = m.interruptions[-1]
            if len(last.acks) < 500:
                last.acks.append((self.clock.now(), samples))

    @property
    def busy(self) -> bool:
        """The caller paused, a reply is pending or playing, or audio is queued."""
        return (
            self._vad_state in ("stopping", "paused")
            or self.machine.user.value == "paused"
            or self.machine.agent.value != "idle"
            or self.playout.buffered > 0
        )

    # -- the session ----------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`hangup`. Cancelling it tears everything down."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                inbound = tg.create_task(self._inbound_loop(), name="inbound")
                playout = tg.create_task(self._playout_loop(), name="playout")
                await self._control_loop()
                inbound.cancel()
                playout.cancel()
        finally:
            self._tg = None
            await self._cancel_reply()

    def report(self) -> dict[str, Any]:
        return {
            "turns": [m.to_dict(self.t0) for m in self.turns],
            "history": self.history,
            "errors": self.errors,
            "dropped_input_frames": self.dropped_frames,
            "preemptive_replies_dropped": self.prepared_dropped,
        }

    # -- inbound --------------------------------------------------------------

    def sample_time(self, sample: int) -> float:
        """Clock time at which input sample ``sample`` was captured."""
        for end, t in reversed(self._arrivals):
            if end <= sample:
                return t + (sample - end) / SAMPLE_RATE
        if self._arrivals:
            end, t = self._arrivals[0]
            return t - (end - sample) / SAMPLE_RATE
        return self.clock.now()

    async def _inbound_loop(self) -> None:
        cfg = self.config
        vad = self.engine.new_vad()
        hyst = VadHysteresis.from_ms(20, cfg.vad_start_ms, cfg.vad_stop_ms)
        carry = np.zeros(0, dtype=np.int16)
        max_frames = int(cfg.max_turn_s * 50)
        while True:
            chunk = await self._inbound.get()
            if chunk is None:
                self._inbound.task_done()
                return
            now = self.clock.now()
            carry = np.concatenate([carry, chunk]) if carry.size else chunk
            n = len(carry) // FRAME_SAMPLES
            for i in range(n):
                frame = carry[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
                if self.echo is not None:  # the VAD and STT hear the caller, not our echo
                    frame = self.echo.near_end(frame)
                self.samples_in += FRAME_SAMPLES
                # a frame is captured when its last sample is: later frames of one chunk
                # arrive together, so date each by its position in the chunk
                self._arrivals.append(
                    (self.samples_in, now - (n - 1 - i) * FRAME_SAMPLES / SAMPLE_RATE)
                )
                event = hyst.update(vad.is_speech(frame))
                self._vad_state = hyst.state.value
                if self._turn is not None:
                    if len(self._turn) < max_frames:
                        self._turn.append(frame)
                else:
                    self._preroll.append(frame)
                if isinstance(event, VadStart):
                    await self._on_speech_start(self.sample_time(event.at_sample))
                elif isinstance(event, VadStop):
                    at = self.sample_time(event.at_sample)
                    await self._emit("speech.stopped", t_ms=self._ms(at))
                    await self._control.put(SpeechStopped(self.clock.now(), at))
            carry = carry[n * FRAME_SAMPLES :]
            if hyst.state.value == "speaking":
                self._maybe_partial()
            self._inbound.task_done()

    async def _on_speech_start(self, at: float) -> None:
        if self._turn is None:
            self._turn = list(self._preroll)
            self._turn_start_sample = self.samples_in - len(self._turn) * FRAME_SAMPLES
            self._preroll.clear()
            self._speech_start = at
            self._partial_at = 0
        await self._emit("speech.started", t_ms=self._ms(at))
        await self._control.put(SpeechStarted(self.clock.now(), at))

    def _turn_audio(self) -> Pcm:
        if not self._turn:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._turn)

    def _maybe_partial(self) -> None:
        cfg = self.config
        if self._turn is None or self._partial_running or self._tg is None:
            return
        if self.machine.barge is not None:
            return  # the barge-in checks transcribe the turn now; they come first
        n = len(self._turn) * FRAME_SAMPLES
        if n - self._partial_at < cfg.partial_interval_s * SAMPLE_RATE:
            return
        self._partial_at = n
        self._tg.create_task(self._partial(self._turn_audio()))

    async def _partial(self, pcm: Pcm) -> None:
        self._partial_running = True
        try:
            result = await self.engine.run_stt(pcm, partial=True)
        finally:
            self._partial_running = False
        if result.text and self.machine.user.value == "speaking":
            await self._emit("transcript.partial", text=result.text)

    async def _final_transcript(self, request: int) -> None:
        pcm = self._turn_audio()
        result = await self.engine.run_stt(pcm)
        now = self.clock.now()
        text = "" if self._is_echo(result.text) or self._is_noise(result) else result.text
        self._final = (now, result.compute_s, text)
        await self._control.put(TranscriptReady(now, request, text))

    async def _barge_check(self, request: int) -> None:
        """The words so far of speech that began while the agent was talking."""
        result = await self.engine.run_stt(self._turn_audio(), partial=True)
        echo = self._is_echo(result.text)
        text = result.text
        if echo or self._is_noise(result) or self._is_echo(text, single_word=True):
            text = ""  # a single word the agent just said is no proof either way: check again
        await self._control.put(BargeInTranscript(self.clock.now(), request, text, echo=echo))
        if text and self.machine.user.value == "speaking":
            await self._emit("transcript.partial", text=text)  # it is the turn so far

    def _is_noise(self, result: Transcript) -> bool:
        """Words whisper wrote into a cough or noise: the speech detector found no speech."""
        return result.speech_s is not None and result.speech_s < self.config.min_speech_s

    def _is_echo(self, text: str, single_word: bool = False) -> bool:
        """Does a transcript repeat what the agent itself just said (echo the guard missed)?
        Two words or more, mostly the agent's; or, with ``single_word``, one such word."""
        words = content_words(text)
        if len(words) != 1 if single_word else len(words) < 2:
            return False
        spoken = self._sent_words_since(
            self._turn_start_sample - round(self.config.echo_reach_s * SAMPLE_RATE)
        )
        if not spoken:
            return False
        return sum(w in spoken for w in words) / len(words) >= 0.7

    def _sent_words_since(self, sample: int) -> set[str]:
        """Content words of the agent audio sent to play at or after input ``sample``
        (one word of slack either side of each sentence's span, its timing is estimated)."""
        spans: dict[int, tuple[Segment, int, int]] = {}
        for at, seg, end in reversed(self._sent_log):
            if at < sample:
                break
            lo = end - FRAME_SAMPLES
            _, a, b = spans.get(id(seg), (seg, lo, end))
            spans[id(seg)] = (seg, min(a, lo), max(b, end))
        words: set[str] = set()
        for seg, a, b in spans.values():
            words.update(content_words(" ".join(words_spanning(seg.text.split(), a, b, seg.total))))
        return words

    # -- control --------------------------------------------------------------

    async def _control_loop(self) -> None:
        getter: asyncio.Task[Event] | None = None
        try:
            while True:
                if getter is None:
                    getter = asyncio.ensure_future(self._control.get())
                deadline = self.machine.next_deadline()
                if deadline is None:
                    await asyncio.wait({getter})
                else:
                    sleeper = asyncio.ensure_future(self.clock.sleep_until(deadline))
                    try:
                        await asyncio.wait({getter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        sleeper.cancel()
                if getter.done():
                    event: Event = getter.result()
                    getter = None
                else:
                    event = Tick(self.clock.now())
                for command in self.machine.handle(event):
                    if await self._execute(command):
                        return
        finally:
            if getter is not None:
                getter.cancel()

    async def _execute(self, command: Command) -> bool:
        """Carry out one command; True means the session is over."""
        match command:
            case RequestTranscript(request=req):
                assert self._tg is not None
                self._tg.create_task(self._final_transcript(req))
            case DiscardTurn():
                self._turn = None
                await self._emit("turn.discarded")
            case StartReply(gen=gen, text=text, speech_end=speech_end, decided=decided):
                self._start_reply(gen, text, speech_end, decided)
                await self._emit("transcript.final", text=text, gen=gen)
                await self._emit("reply.start", gen=gen)
            case PrepareReply(gen=gen, text=text, speech_end=speech_end):
                self._start_reply(gen, text, speech_end, None)
            case CommitReply(gen=gen, decided=decided):
                await self._commit_reply(gen, decided)
            case CancelReply(gen=gen):
                await self._cancel_reply(gen)
            case ClearPlayout(gen=gen):
                self._cleared = max(self._cleared, gen)
                if self._paused is not None and self._paused <= gen:
                    self._paused = None
                self.playout.clear(gen)
                await self._emit("clear", gen=gen)
            case PausePlayout(gen=gen, onset=onset):
                self._paused = gen
                m = self._metrics.get(gen)
                if m is not None:
                    m.interruptions.append(
                        Interruption(
                            onset, self.clock.now(), self._last_sent.get(gen),
                            sent_samples=self.playout.played_samples(gen),
                        )
                    )  # fmt: skip
                await self._emit("reply.paused", gen=gen, onset_ms=self._ms(onset))
            case ResumePlayout(gen=gen):
                if self._paused == gen:
                    self._paused = None
                    self._audio_ready.set()
                self._resolve(gen, "recovered", "")
                await self._emit("reply.resumed", gen=gen)
            case CheckBargeIn(request=req):
                assert self._tg is not None
                self._tg.create_task(self._barge_check(req))
            case ConfirmBargeIn(gen=gen, text=text):
                self._resolve(gen, "confirmed", text)
                await self._emit("barge_in", gen=gen, text=text)
            case PlayFiller(gen=gen):
                await self._play_filler(gen)
            case Say(gen=gen, purpose=purpose):
                self._say(gen, purpose)
                if purpose == "goodbye":
                    self.end_reason = "idle"
                    await self._emit("session.ending", reason="idle")
            case Close():
                return True
        return False

    def _resolve(self, gen: int, outcome: str, words: str) -> None:
        m = self._metrics.get(gen)
        if m is not None and m.interruptions and m.interruptions[-1].outcome == "pending":
            last = m.interruptions[-1]
            last.outcome, last.words, last.resolved = outcome, words, self.clock.now()

    def _pick_filler(self, preferred: str | None = None) -> str:
        """A filler, never the same as the last one played."""
        if preferred and preferred != self._last_filler:
            return preferred
        choices = [f for f in self.config.fillers if f != self._last_filler]
        turn = len(self.turns)
        return choices[turn % len(choices)] if choices else self.config.fillers[0]

    async def _play_filler(self, gen: int, preferred: str | None = None) -> None:
        """A short clip while the agent thinks (``preferred``: a tool's own spoken status).

        It is queued behind any audio of the reply already waiting, so it never plays over
        answer audio, and is part of the reply's generation, so it is interruptible."""
        if gen != self.machine.gen and gen != self.machine.prepared:
            return
        if preferred is None and self.playout.pending(gen) > 0:
            return  # the answer is about to play: no filler
        text = self._pick_filler(preferred)
        pcm = await self.engine.clip(text)
        if self._reply is None or self._reply[0] != gen:
            return
        if preferred is None and self.playout.pending(gen) > 0:
            return
        self._last_filler = text
        self.playout.push(gen, pcm, text, filler=True)
        self._audio_ready.set()
        m = self._metrics.get(gen)
        if m is not None:
            m.fillers.append((self.clock.now(), text))
        await self._emit("filler", gen=gen, text=text)

    def _say(self, gen: int, purpose: str) -> None:
        """A fixed line (the idle prompt, goodbye) spoken as reply ``gen``."""
        text = self.config.goodbye if purpose == "goodbye" else self.config.idle_prompt
        now = self.clock.now()
        m = TurnMetrics(gen=gen, user_text="", decided=now, committed=True, kind=purpose)
        self.turns.append(m)
        self._metrics[gen] = m
        assert self._tg is not None
        task = self._tg.create_task(self._run_reply(gen, m, [], fixed=text), name=f"say-{gen}")
        self._reply = (gen, task)

    def _start_reply(
        self, gen: int, text: str, speech_end: float | None, decided: float | None
    ) -> None:
        """Start reply ``gen``; with ``decided`` None it is prepared: its audio is held."""
        m = TurnMetrics(gen=gen, user_text=text, speech_end=speech_end, decided=decided)
        if speech_end is not None:
            m.speech_start = self._speech_start
            if self._final is not None:
                m.stt_final, m.stt_compute_s, _ = self._final
        user = {"role": "user", "content": text}
        messages = [*self.history, user]
        if decided is None:
            self._held = gen
            self._commit.clear()
        else:
            m.committed = True
            self._turn = None
            self._final = None
            self.turns.append(m)
            self.history.append(user)
        self._metrics[gen] = m
        assert self._tg is not None
        task = self._tg.create_task(self._run_reply(gen, m, messages), name=f"reply-{gen}")
        self._reply = (gen, task)

    async def _commit_reply(self, gen: int, decided: float) -> None:
        m = self._metrics[gen]
        m.decided = decided
        m.committed = True
        self._turn = None
        self._final = None
        self.turns.append(m)
        self.history.append({"role": "user", "content": m.user_text})
        self._held = None
        self._commit.set()
        self._audio_ready.set()
        await self._emit("transcript.final", text=m.user_text, gen=gen)
        await self._emit("reply.start", gen=gen)
        if m.parts:
            await self._emit("reply.delta", gen=gen, text="".join(m.parts))

    async def _cancel_reply(self, gen: int | None = None) -> None:
        if self._reply is None or (gen is not None and self._reply[0] != gen):
            return
        _, task = self._reply
        self._reply = None
        task.cancel()
        await asyncio.wait({task})

    # -- one reply --------------------------------------------------------------

    async def _run_reply(
        self, gen: int, m: TurnMetrics, messages: list[Message], fixed: str | None = None
    ) -> None:
        parts = m.parts
        interrupted = False
        m.context = [dict(msg) for msg in messages]
        try:
            sentences: asyncio.Queue[str | None] = asyncio.Queue(8)
            async with asyncio.TaskGroup() as tg:
                if fixed is None:
                    tg.create_task(self._generate(gen, m, sentences, messages))
                else:
                    tg.create_task(self._fixed_line(gen, m, sentences, fixed))
                tg.create_task(self._speak(gen, m, sentences))
            if not m.committed:
                await self._commit.wait()
            while self.playout.pending(gen) > 0:
                self._drained.clear()
                await self._drained.wait()
            m.reply_done = self.clock.now()
            await self._emit("reply.audio.end", gen=gen, samples=self.playout.played_samples(gen))
            if m.status == "pending":
                m.status = "completed"
        except asyncio.CancelledError:
            interrupted = True
            if m.status == "pending":
                m.status = "interrupted"
            raise
        finally:
            m.reply_text = "".join(parts).strip()
            m.reply_samples = self.playout.played_samples(gen)
            if interrupted and m.client_played_samples > 0:
                # what the client confirmed playing (its cursor, or what WebRTC sent)
                m.heard_source = "client"
                m.heard_text = self.playout.heard_text(gen, m.client_played_samples)
            else:
                m.heard_text = self.playout.heard_text(gen)
            if m.committed:
                await self._record_reply(gen, m, interrupted)
            else:  # a prepared reply the caller never heard leaves no trace
                self.prepared_dropped += 1
                self.playout.clear(gen)
                self._metrics.pop(gen, None)
                if self._held == gen:
                    self._held = None
            self.playout.forget(gen)
            self._last_sent.pop(gen, None)
            if self._paused == gen:
                self._paused = None
        if self._reply is not None and self._reply[0] == gen:
            self._reply = None
        await self._control.put(ReplyFinished(self.clock.now(), gen))

    async def _record_reply(self, gen: int, m: TurnMetrics, interrupted: bool) -> None:
        """History and events for a reply the caller heard (all of it, or part of it)."""
        content = m.reply_text
        if interrupted:
            content = f"{m.heard_text} [interrupted by the caller]".strip()
        if content:
            self.history.append({"role": "assistant", "content": content})
        await self._emit_safely("reply.done", gen=gen, status=m.status, text=m.reply_text)
        await self._emit_safely("metrics", turn=m.to_dict(self.t0) | {"context": None})

    async def _generate(
        self, gen: int, m: TurnMetrics, out: asyncio.Queue[str | None], context: list[Message]
    ) -> None:
        splitter = SentenceSplitter()
        messages = [dict(msg) for msg in context]
        m.llm_request = self.clock.now()
        tools = self.engine.tools.schemas() or None
        try:
            for _ in range(self.config.max_tool_rounds + 1):
                calls: list[ToolCall] = []
                async for ev in self.engine.llm.stream(messages, tools):
                    if isinstance(ev, TextDelta):
                        if m.llm_first_token is None:
                            m.llm_first_token = self.clock.now()
                        m.parts.append(ev.text)
                        if m.committed:
                            await self._emit("reply.delta", gen=gen, text=ev.text)
                        for sentence in splitter.feed(ev.text):
                            await self._put_sentence(m, out, sentence)
                    else:
                        calls.append(ev)
                if not calls:
                    break
                messages += await self._run_tools(gen, m, calls)
        except LLMError as exc:
            m.status = "llm_error"
            m.error = str(exc)
            self.errors.append(str(exc))
            await self._emit("error", gen=gen, message=str(exc))
        for sentence in splitter.flush():
            await self._put_sentence(m, out, sentence)
        await out.put(None)

    async def _fixed_line(
        self, gen: int, m: TurnMetrics, out: asyncio.Queue[str | None], text: str
    ) -> None:
        m.parts.append(text)
        await self._emit("reply.start", gen=gen, purpose=m.kind)
        await self._emit("reply.delta", gen=gen, text=text)
        await self._put_sentence(m, out, text)
        await out.put(None)

    async def _put_sentence(self, m: TurnMetrics, out: asyncio.Queue[str | None], s: str) -> None:
        if m.first_sentence is None:
            m.first_sentence = self.clock.now()
        await out.put(s)

    async def _run_tools(self, gen: int, m: TurnMetrics, calls: list[ToolCall]) -> list[Message]:
        msgs: list[Message] = [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                    }
                    for c in calls
                ],
            }
        ]
        for call in calls:
            tool = self.engine.tools.get(call.name)
            m.tool_calls.append(call.name)
            status = tool.status if tool else "One moment."
            await self._emit("status", gen=gen, text=status)
            await self._play_filler(gen, preferred=status)  # the caller hears it too
            result = await self.engine.tools.run(call)
            msgs.append({"role": "tool", "tool_call_id": call.id, "content": result})
        return msgs

    async def _speak(self, gen: int, m: TurnMetrics, sentences: asyncio.Queue[str | None]) -> None:
        while (sentence := await sentences.get()) is not None:
            if m.kind != "reply":
                pcm = await self.engine.clip(sentence)
            else:
                pcm = await self.engine.run_tts(sentence)
            if m.tts_first_audio is None:
                m.tts_first_audio = self.clock.now()
            while not self.playout.has_room():
                self._room.clear()
                await self._room.wait()
            self.playout.push(gen, pcm, sentence)
            self._audio_ready.set()

    # -- playout ---------------------------------------------------------------

    async def _playout_loop(self) -> None:
        frame_s = FRAME_SAMPLES / SAMPLE_RATE
        while True:
            if self.playout.buffered == 0 or self._head_held():
                self._drained.set()
                self._audio_ready.clear()
                await self._audio_ready.wait()
                continue
            t0 = self.clock.now()
            k = 0
            # where the caller's input stream stands now: this burst's echo, if any, comes
            # back at or after this input sample
            anchor = self._input_sample_at(t0)
            while not self._head_held() and (item := self.playout.pull()) is not None:
                self._room.set()
                gen, frame, seg = item
                if gen != self.machine.gen or gen <= self._cleared:
                    continue  # a stale or cleared generation never reaches the caller
                m = self._metrics.get(gen)
                if m is not None and m.first_audio_out is None and not seg.filler:
                    m.first_audio_out = self.clock.now()
                if seg.played == len(frame):  # the first frame of a sentence or filler
                    if m is not None and not m.audio_started:
                        m.audio_started = True
                        await self._control.put(ReplyAudioStarted(self.clock.now(), gen))
                        await self._emit("reply.audio.start", gen=gen)
                await self.output.send_audio(gen, frame)
                self._last_sent[gen] = self.clock.now()
                self._sent_log.append((anchor + k * FRAME_SAMPLES, seg, seg.played))
                if self.echo is not None:
                    self.echo.far_end(frame, anchor + k * FRAME_SAMPLES)
                if m is not None and m.interruptions and self._paused == gen:
                    m.interruptions[-1].last_sent = self._last_sent[gen]  # the frame in flight
                k += 1
                if self.config.paced:
                    await self.clock.sleep_until(t0 + k * frame_s)
                else:
                    await asyncio.sleep(0)
                if self.playout.pending(gen) == 0:
                    self._drained.set()

    def _head_held(self) -> bool:
        head = self.playout.head_gen()
        return head is not None and head in (self._held, self._paused)

    def _input_sample_at(self, t: float) -> int:
        """The input sample being captured at clock time ``t`` (from the latest arrival)."""
        if not self._arrivals:
            return self.samples_in
        end, at = self._arrivals[-1]
        return end + round((t - at) * SAMPLE_RATE)

    # -- events -----------------------------------------------------------------

    def _ms(self, t: float) -> float:
        return round((t - self.t0) * 1000, 1)

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
