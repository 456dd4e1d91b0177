"""Test doubles. Never used by the product."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Hashable
from typing import Any

from voice_agent.errors import LLMError
from voice_agent.llm.base import LLMEvent, Message, TextDelta, ToolCall
from voice_agent.session.output import OutputBase


class Hang:
    """A scripted step that never completes (the endpoint stalls); only a cancel ends it."""


HANG = Hang()
Step = str | ToolCall | LLMError | Hang


class ScriptedLLMDouble:
    """Plays back scripted replies, one per request, token by token.

    Each reply is a list of steps: text tokens, ToolCall events, or an
    LLMError to raise at that point (an endpoint dying mid-reply). Every
    request's messages are recorded in ``requests``.
    """

    name = "scripted-llm-double"

    def __init__(
        self,
        replies: list[list[Step]],
        token_delay_s: float = 0.01,
        default: list[Step] | None = None,
    ) -> None:
        self.replies = list(replies)
        self.default = default or ["(no more scripted replies)"]
        self.token_delay_s = token_delay_s
        self.requests: list[list[Message]] = []
        self.tool_schemas: list[list[dict[str, Any]]] = []
        """The tools offered with each request."""
        self.closed_streams = 0
        self.prefills: list[list[Message]] = []
        """The messages of every prefill, in order."""
        self.prefill_hangs = False
        """A prefill never completes (the endpoint is slow to read it): only a cancel ends it."""
        self.prefills_cancelled = 0
        self.owners: list[tuple[str, Hashable]] = []
        """("prefill" or "stream", the owner it named), for every request in order."""

    async def prefill(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        owner: Hashable = None,
    ) -> bool:
        self.prefills.append([dict(m) for m in messages])
        self.owners.append(("prefill", owner))
        if self.prefill_hangs:
            try:
                await asyncio.get_running_loop().create_future()
            except asyncio.CancelledError:
                self.prefills_cancelled += 1
                raise
        return True

    async def stream(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        owner: Hashable = None,
    ) -> AsyncGenerator[LLMEvent, None]:
        self.requests.append([dict(m) for m in messages])
        self.owners.append(("stream", owner))
        self.tool_schemas.append(list(tools or []))
        steps = self.replies.pop(0) if self.replies else self.default
        try:
            for step in steps:
                await asyncio.sleep(self.token_delay_s)
                if isinstance(step, Hang):
                    await asyncio.get_running_loop().create_future()
                if isinstance(step, LLMError):
                    raise step
                yield TextDelta(step) if isinstance(step, str) else step
        finally:
            self.closed_streams += 1


class CollectingOutput(OutputBase):
    """An Output that keeps every frame and event, stamped with the loop time."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, int, int]] = []  # (t, gen, samples)
        self.audio: list[Any] = []
        self.events: list[dict[str, Any]] = []

    async def send_audio(self, gen: int, pcm: Any) -> None:
        self.frames.append((asyncio.get_running_loop().time(), gen, len(pcm)))
        self.audio.append(pcm)

    async def send_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


class AutoAdvanceClockDouble:
    """A fake clock for one consumer: ``sleep_until`` jumps time to the deadline.

    Time only moves when something sleeps, so a 10-minute stream runs in
    milliseconds and every timestamp is exact.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self.sleeps = 0

    def now(self) -> float:
        return self.t

    async def sleep_until(self, deadline: float) -> None:
        self.sleeps += 1
        if deadline > self.t:
            self.t = deadline
        await asyncio.sleep(0)

    def stall(self, seconds: float) -> None:
        """The consumer was busy elsewhere: time passed without a sleep."""
        self.t += seconds


class VirtualTimeLoopDouble(asyncio.SelectorEventLoop):
    """An event loop on virtual time: when nothing is ready to run, time jumps to the next
    timer instead of waiting for it. Every sleeper (``asyncio.sleep``, timeouts, the
    product's ``LoopClock``) sees the same exact time, so a whole session runs in
    milliseconds and the same way every time.

    Only for code that does no real I/O and starts no threads (use the model doubles
    below). With nothing scheduled at all it raises instead of hanging.
    """

    def __init__(self, start: float = 1000.0) -> None:
        super().__init__()
        self._virtual = start
        real = self._selector  # type: ignore[attr-defined]
        loop = self

        class _Selector:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def select(self, timeout: float | None = None) -> Any:
                events = real.select(0)
                if events:
                    return events
                if timeout is None:
                    raise RuntimeError("virtual-time loop idle with nothing scheduled (deadlock)")
                loop._virtual += timeout
                return []

        self._selector = _Selector()  # type: ignore[attr-defined]

    def time(self) -> float:
        return self._virtual


def run_virtual(main: Any, start: float = 1000.0) -> Any:
    """Run coroutine ``main`` to completion on a fresh :class:`VirtualTimeLoopDouble`;
    fails if any task is left pending."""
    loop = VirtualTimeLoopDouble(start)
    try:
        task = loop.create_task(main)
        result = loop.run_until_complete(task)
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        assert not pending, f"tasks left pending: {pending}"
        return result
    finally:  # after a failure: cancel what is left, so it does not outlive the loop
        left = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in left:
            t.cancel()
        if left:
            loop.run_until_complete(asyncio.wait(left, timeout=60))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def tone(seconds: float, level: int) -> Any:
    """A constant-level 'utterance' for the energy VAD double; ``level`` names its words."""
    import numpy as np

    return np.full(int(seconds * 16000), level, dtype=np.int16)


def silence(seconds: float) -> Any:
    import numpy as np

    return np.zeros(int(seconds * 16000), dtype=np.int16)


class EnergyVadDouble:
    """Speech is any frame with a mean absolute level over 100."""

    name = "energy-vad-double"

    def is_speech(self, frame: Any) -> bool:
        import numpy as np

        return bool(np.abs(frame.astype(np.int32)).mean() > 100)


class ScriptedSTTDouble:
    """Reads the words of :func:`tone` utterances from their levels: ``words[level]`` for
    each level with at least 50 ms of samples within 8% of it (so a tone that went through
    μ-law or a resampler is still read). ``unsure`` levels are read with a low mean
    log-probability (-1.2), as whisper reads garbled speech; the others with -0.1."""

    name = "scripted-stt-double"
    unclear_logprob = -0.7
    marks_sentence_ends = True

    def __init__(self, words: dict[int, str], unsure: frozenset[int] = frozenset()) -> None:
        self.words = words
        self.unsure = unsure
        self.calls = 0

    def transcribe(self, pcm: Any) -> Any:
        import numpy as np

        from voice_agent.stt.base import Transcript

        self.calls += 1
        x = np.abs(pcm.astype(np.int32))
        levels = [level for level in sorted(self.words)
                  if np.count_nonzero(np.abs(x - level) <= 0.08 * level) >= 800]  # fmt: skip
        text = " ".join(self.words[level] for level in levels)
        score = -1.2 if self.unsure & set(levels) else -0.1
        return Transcript(text=text, audio_samples=len(pcm), compute_s=0.0, avg_logprob=score)


class ToneTTSDouble:
    """A constant tone, 10 ms per character (counting one space after the last word): the
    same proportion the heard-text estimate uses, so what was heard maps to samples exactly."""

    name = "tone-tts-double"

    def __init__(self, per_char_s: float = 0.01, level: int = 1000) -> None:
        self.per_char_s = per_char_s
        self.level = level
        self.texts: list[str] = []

    def synthesize(self, text: str) -> Any:
        import numpy as np

        self.texts.append(text)
        n = round((len(text) + 1) * self.per_char_s * 16000)
        return np.full(n, self.level, dtype=np.int16)


def modeled_runner(cost_s: float) -> Any:
    """A FairWorker runner that takes ``cost_s`` of (virtual) time per job, with no thread
    and no task: the result is set by a timer."""

    def run(fn: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def finish() -> None:
            if future.cancelled():
                return
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)

        loop.call_later(cost_s, finish)
        return future

    return run


def double_engine(
    llm: Any,
    words: dict[int, str] | None = None,
    stt_s: float = 0.3,
    tts_s: float = 0.1,
    partial_s: float = 0.2,
    unsure: frozenset[int] = frozenset(),
) -> Any:
    """An Engine of doubles on modeled compute times (for the virtual-time loop)."""
    from voice_agent.core.work import FairWorker
    from voice_agent.session.engine import FIXED_LINES, Engine

    tts = ToneTTSDouble()
    lines = FIXED_LINES
    return Engine(
        stt=ScriptedSTTDouble(words or {}, unsure),
        tts=tts,
        # synthesized at start-up, as the product's warm-up does
        clips={line: tts.synthesize(line) for line in lines},
        llm=llm,
        new_vad=EnergyVadDouble,
        stt_worker=FairWorker("stt", modeled_runner(stt_s)),
        partial_worker=FairWorker("stt-partial", modeled_runner(partial_s)),
        tts_worker=FairWorker("tts", modeled_runner(tts_s)),
    )


def chunk(text: str) -> bytes:
    body = {"id": "1", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}  # fmt: skip
    return f"data: {json.dumps(body)}\n\n".encode()


def http_chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class OpenAIEndpointDouble:
    """An OpenAI-compatible chat endpoint on a real socket (a test double of a model
    server). ``mode``: "ok" streams "Hello" " there."; "503", "429" or "401" answer that
    status; "dies" streams "Hello" and then drops the connection; "words" streams
    ``words``, one chunk every ``gap_s`` seconds."""

    def __init__(self, mode: str, words: list[str] | None = None, gap_s: float = 0.0) -> None:
        self.mode = mode
        self.words = words or []
        self.gap_s = gap_s
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        self.requests += 1
        if self.mode in ("503", "429", "401"):
            body = b'{"error": {"message": "no"}}'
            writer.write(
                f"HTTP/1.1 {self.mode} No\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
            )
        elif self.mode == "words":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")  # fmt: skip
            try:
                for word in self.words:
                    writer.write(http_chunk(chunk(word)))
                    await writer.drain()
                    await asyncio.sleep(self.gap_s)
            except ConnectionError:  # the client stopped reading (a prefill, a cancel)
                writer.close()
                return
            writer.write(http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        else:  # chunked, as llama-server sends it: a drop mid-body is seen as one
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                         + http_chunk(chunk("Hello")))  # fmt: skip
            await writer.drain()
            if self.mode == "dies":
                writer.transport.abort()
                return
            writer.write(http_chunk(chunk(" there.") + b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    def stop(self) -> None:
        assert self.server is not None
        self.server.close()
