"""One reply: LLM → sentence splitter → TTS → playout, for one generation.

A :class:`Reply` runs as one task with an inner TaskGroup (the LLM stream and
the TTS feed, joined by a bounded queue of sentences). Cancelling that task
tears the whole reply down: the LLM stream is closed (``aclosing``), a TTS job
not yet started is dropped, and audio already queued is cleared by the driver
(the generation is stale from then on).

A prepared reply (started before the end of the turn) generates and
synthesizes at once, but its audio is held by the :class:`PlayGate` until
:meth:`Reply.commit`. Fixed lines (the idle prompt, goodbye) are replies with
no LLM call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from voice_agent.audio.pcm import SAMPLE_RATE
from voice_agent.audio.playout import Playout
from voice_agent.core.clock import Clock
from voice_agent.core.enums import ReplyKind, ReplyStatus
from voice_agent.errors import LLMError
from voice_agent.llm.base import Message, TextDelta, ToolCall
from voice_agent.llm.tools import ToolRounds
from voice_agent.session.engine import LOST_THREAD, Engine
from voice_agent.session.metrics import TurnMetrics
from voice_agent.session.record import FALSE_START_WORDS
from voice_agent.session.writer import PacedWriter
from voice_agent.text.sentences import SentenceSplitter

Emit = Callable[..., Awaitable[None]]
LLM_FAILED = "the language model failed mid-reply; what it said is kept"
LOADED_FIRST_CHUNK_WORDS = 3
"""The first chunk's most words while another call waits for its answer (at the request,
or from any token before the first chunk is out): each word is ~1.4 tokens, and with four
replies decoding at once on 2 cores a token took 110-400 ms (fast profile), so two words
fewer is 0.3-0.6 s sooner to the first audio."""
RUNWAY_S = 1.0
"""When less audio than this is left to play and no sentence is waiting for the voice, the
words written so far are spoken without waiting for the sentence's end (the LLM writes
slower than the voice speaks while it serves several calls)."""
CUT_MIN_WORDS = 3
REPHRASE = "Sorry, I'm not sure how to answer that. Could you put it another way?"
"""Said when an answer had nothing speakable in it (only a template slot, markup or an
echo of the history's own marks): the caller never hears silence instead of a reply."""


class Aside(str):
    """A fixed line spoken inside a reply whose words are not the answer's (never heard
    text, never history): the apology after an LLM failure."""


class Fillers:
    """Picks the filler lines, never the same one twice in a row."""

    def __init__(self, lines: tuple[str, ...]) -> None:
        self.lines = lines
        self.last: str | None = None

    def pick(self, turn: int, preferred: str | None = None) -> str:
        if preferred and preferred != self.last:
            return preferred
        choices = [f for f in self.lines if f != self.last]
        return choices[turn % len(choices)] if choices else self.lines[0]


@dataclass
class ReplyContext:
    """What every reply of one session shares."""

    engine: Engine
    owner: Hashable
    """Whose turn it is on the shared model workers (the session's ``WorkOwner``)."""
    playout: Playout
    writer: PacedWriter
    clock: Clock
    emit: Emit
    fillers: Fillers
    max_tool_rounds: int = 3
    first_chunk_words: int = 5
    tool_prompt: str | None = None
    """The system prompt of a turn's first round when its words plainly ask for a tool:
    the 1.5B model never calls a tool under the spoken-style prompt (it reads the time
    off nothing and says "14:30"), but does under the text chat's. The answer's round,
    after the call, is asked with the call's own prompt."""
    max_llm_s: float | None = None
    """The longest one reply may keep the LLM (SessionConfig.max_llm_turn_s)."""


class Reply:
    """Reply ``gen`` to ``messages`` (or the ``fixed`` line), recording into ``metrics``."""

    def __init__(
        self,
        ctx: ReplyContext,
        metrics: TurnMetrics,
        messages: list[Message],
        fixed: str | None = None,
        turn: int = 0,
    ) -> None:
        self.ctx = ctx
        self.m = metrics
        self.gen = metrics.gen
        self.messages = messages
        self.fixed = fixed
        self.turn = turn
        self.finished = False
        """Set by the driver once the reply's task is over."""
        self._voicing = False
        """A sentence is with the voice (TTS) now."""
        self.committed = asyncio.Event()
        if metrics.committed:
            self.committed.set()
        metrics.context = [dict(msg) for msg in messages]

    def commit(self) -> None:
        """The turn is over: the held audio may play."""
        self.m.committed = True
        self.committed.set()
        self.ctx.writer.wake()

    async def run(self) -> None:
        """Generate, speak, then wait until every frame has been played."""
        m = self.m
        sentences: asyncio.Queue[str | None] = asyncio.Queue(8)
        try:
            async with asyncio.TaskGroup() as tg:
                if self.fixed is None:
                    tg.create_task(self._generate(sentences))
                else:
                    tg.create_task(self._fixed_line(sentences, self.fixed))
                tg.create_task(self._speak(sentences))
            await self.committed.wait()
            await self.ctx.writer.wait_played(self.gen)
        except asyncio.CancelledError:
            if m.status is ReplyStatus.PENDING:
                m.status = ReplyStatus.INTERRUPTED
            raise
        m.reply_done = self.ctx.clock.now()
        played = self.ctx.playout.played_samples(self.gen)
        await self.ctx.emit("reply.audio.end", gen=self.gen, samples=played)
        if m.status is ReplyStatus.PENDING:
            m.status = ReplyStatus.COMPLETED

    def settle(self, interrupted: bool) -> None:
        """Fill in the reply's text and what the caller heard of it (after :meth:`run`)."""
        m, playout = self.m, self.ctx.playout
        m.reply_text = "".join(m.parts).strip()
        m.reply_samples = playout.played_samples(self.gen)
        if interrupted and m.client_played_samples > 0:
            # what the client confirmed playing (its cursor, or what WebRTC sent)
            m.heard_source = "client"
            m.heard_text = playout.heard_text(self.gen, m.client_played_samples)
        else:
            m.heard_text = playout.heard_text(self.gen)

    def history_entry(self, interrupted: bool) -> Message | None:
        """The assistant message the caller heard (None: nothing to remember). Cut off,
        it is the words the caller heard, as they are: a mark that says so is copied by
        small LLMs into their next answer. A false start is not remembered."""
        content = self.m.heard_text if interrupted else self.m.reply_text
        if interrupted and len(content.split()) < FALSE_START_WORDS:
            return None
        return {"role": "assistant", "content": content} if content else None

    async def _generate(self, out: asyncio.Queue[str | None]) -> None:
        m, ctx = self.m, self.ctx
        splitter = SentenceSplitter(first_max_words=ctx.first_chunk_words)
        self._shorten_first_chunk(splitter)  # at the request, then at each token
        asks = ctx.tool_prompt is not None and ctx.engine.tools.intended(m.user_text or "")
        rounds = ToolRounds(
            ctx.engine.tools, self.messages, ctx.max_tool_rounds,
            first_system=ctx.tool_prompt if asks else None,
        )  # fmt: skip
        m.llm_request = ctx.clock.now()
        try:
            async with asyncio.timeout(ctx.max_llm_s):
                await self._rounds(rounds, splitter, out)
        except TimeoutError:
            m.limit = "llm_time"  # what it said so far is spoken; the LLM is let go
        except LLMError as exc:
            m.status = ReplyStatus.LLM_ERROR
            m.error = str(exc)
            # the detail (an endpoint's address) stays in the session's report
            await ctx.emit("error", gen=self.gen, code="llm_error", message=LLM_FAILED)
        for sentence in splitter.flush():
            await self._put_sentence(out, sentence)
        if m.status is ReplyStatus.LLM_ERROR:
            await out.put(Aside(LOST_THREAD))  # the caller never hears a reply just stop
        if m.first_sentence is None and m.status is not ReplyStatus.LLM_ERROR:
            m.parts = [REPHRASE]  # what the caller hears is what the history keeps
            if m.committed:
                await ctx.emit("reply.delta", gen=self.gen, text=REPHRASE)
            await self._put_sentence(out, REPHRASE)
        await out.put(None)

    async def _rounds(
        self, rounds: ToolRounds, splitter: SentenceSplitter, out: asyncio.Queue[str | None]
    ) -> None:
        """The LLM's rounds: its text to the sentence queue, its tool calls run."""
        m, ctx = self.m, self.ctx
        while (request := rounds.request()) is not None:
            calls: list[ToolCall] = []
            reply = ctx.engine.llm.stream(*request, owner=ctx.owner)
            async with contextlib.aclosing(reply) as stream:
                async for ev in stream:
                    if isinstance(ev, TextDelta):
                        if m.llm_first_token is None:
                            m.llm_first_token = ctx.clock.now()
                        self._shorten_first_chunk(splitter)
                        m.parts.append(ev.text)
                        if m.committed:
                            await ctx.emit("reply.delta", gen=self.gen, text=ev.text)
                        for sentence in splitter.feed(ev.text):
                            await self._put_sentence(out, sentence)
                        if self._running_dry(out):
                            for words in splitter.cut(CUT_MIN_WORDS):
                                await self._put_sentence(out, words)
                    elif isinstance(ev, ToolCall):
                        calls.append(ev)  # (a Failover: the caller hears nothing extra)
            if not calls:
                break
            await self._run_tools(rounds, calls)

    def _shorten_first_chunk(self, splitter: SentenceSplitter) -> None:
        """Before the first chunk is out: 3 words at most once another caller waits for
        an answer. It is asked at the request and again at each token: callers who
        stop talking together stop a few hundred ms apart, so the first of them asks when
        no one else waits yet (measured, 4 callers: a 5-word first chunk 0.65 s after
        the 3 words were written)."""
        if (
            self.m.first_sentence is None
            and splitter.first_max_words > LOADED_FIRST_CHUNK_WORDS
            and self.ctx.engine.foreground.others_waiting(self.ctx.owner)
        ):
            splitter.first_max_words = LOADED_FIRST_CHUNK_WORDS

    async def _fixed_line(self, out: asyncio.Queue[str | None], text: str) -> None:
        self.m.parts.append(text)
        if self.m.committed:  # a prepared line's text goes out when it is committed
            await self.ctx.emit("reply.delta", gen=self.gen, text=text)
        await self._put_sentence(out, text)
        await out.put(None)

    def _running_dry(self, out: asyncio.Queue[str | None]) -> bool:
        """The answer's audio is about to run out and nothing is on its way to the voice."""
        if self.m.first_sentence is None or self._voicing or not out.empty():
            return False
        queued = self.ctx.playout.pending(self.gen) / SAMPLE_RATE
        return queued < RUNWAY_S

    async def _put_sentence(self, out: asyncio.Queue[str | None], sentence: str) -> None:
        if self.m.first_sentence is None:
            self.m.first_sentence = self.ctx.clock.now()
        await out.put(sentence)

    async def _run_tools(self, rounds: ToolRounds, calls: list[ToolCall]) -> None:
        """One round of calls, side by side (as the text chat runs them): each one's
        status line, one spoken filler (the first tool's) while they run. A call already
        answered in this reply is not run again (see ToolRounds)."""
        ctx = self.ctx
        tools = ctx.engine.tools
        calls = [c for c in calls if not rounds.was_answered(c)]
        if not calls:
            await rounds.run([], None, ctx.clock.now)
            return
        for call in calls:
            tool = tools.get(call.name)
            self.m.tool_calls.append(call.name)
            await ctx.emit("status", gen=self.gen, text=tool.status if tool else "One moment.")
        first = tools.get(calls[0].name)
        await self.play_filler(preferred=first.filler if first else "One moment.")
        await rounds.run(calls, None, ctx.clock.now)

    async def _speak(self, sentences: asyncio.Queue[str | None]) -> None:
        ctx, m = self.ctx, self.m
        while (sentence := await sentences.get()) is not None:
            if isinstance(sentence, Aside):
                await ctx.writer.wait_room()
                pcm = await ctx.engine.clip(sentence, ctx.owner)
                ctx.playout.push(self.gen, pcm, sentence, filler=True)
                ctx.writer.wake()
                await ctx.emit("reply.aside", gen=self.gen, text=str(sentence))
                continue
            if m.kind is not ReplyKind.REPLY:
                pcm = await ctx.engine.clip(sentence, ctx.owner)
            else:
                # the first words are urgent, whatever filler is still playing: they
                # cut it short (a filler's audio is no runway)
                queued = ctx.playout.pending(self.gen) if m.tts_first_audio else 0
                runway = queued / SAMPLE_RATE if queued else None
                self._voicing = True
                try:
                    pcm = await ctx.engine.run_tts(sentence, ctx.owner, runway)
                finally:
                    self._voicing = False
            if m.tts_first_audio is None:
                m.tts_first_audio = ctx.clock.now()
            await ctx.writer.wait_room()
            ctx.playout.push(self.gen, pcm, sentence)
            ctx.writer.wake()

    async def play_filler(self, preferred: str | None = None) -> bool:
        """A short clip while the agent thinks (``preferred``: a tool's own spoken status).

        It is queued behind any audio of the reply already waiting, so it never plays over
        answer audio, and is part of the reply's generation, so it is interruptible. Its
        words never enter the heard text or the history. Returns whether it was queued."""
        ctx = self.ctx
        if preferred is None and ctx.playout.pending(self.gen) > 0:
            return False  # the answer is about to play: no filler
        text = ctx.fillers.pick(self.turn, preferred)
        pcm = await ctx.engine.clip(text, ctx.owner)
        if self.finished or (preferred is None and ctx.playout.pending(self.gen) > 0):
            return False
        ctx.fillers.last = text
        ctx.playout.push(self.gen, pcm, text, filler=True)
        ctx.writer.wake()
        self.m.fillers.append((ctx.clock.now(), text))
        await ctx.emit("filler", gen=self.gen, text=text)
        return True
