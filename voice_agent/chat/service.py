"""Text chat: one response at a time per conversation, streamed as events.

:meth:`ChatService.start` answers at once with the ids; generation runs as its own
task and writes every event to the response's log (:mod:`voice_agent.chat.events`),
whether or not a reader is connected. Only :meth:`ChatService.cancel` stops it.

Events, in order: ``status`` (``thinking``) at once, then ``status`` (``writing``) and
``token`` deltas as the LLM streams, then ``done``; or ``error`` when the LLM fails.
What was written before a failure or a cancel is kept in the conversation, marked
``incomplete`` (failed) or ``interrupted`` (cancelled), and :meth:`regenerate`
answers the same message again. An error event never carries internal detail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from voice_agent.chat.events import EventStore
from voice_agent.core.clock import Clock
from voice_agent.errors import LLMError
from voice_agent.llm.base import LLM, Failover, Message, ToolCall
from voice_agent.llm.tools import ToolRegistry, ToolRounds, tools_note

log = logging.getLogger("voice_agent.chat")


def new_id() -> str:
    """An unguessable id: 128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)


class ChatRefused(Exception):
    """A request the service will not take: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ChatMessage:
    role: str
    content: str
    response_id: str | None = None
    incomplete: bool = False
    """The LLM failed while writing it: what came before the failure."""
    interrupted: bool = False
    """The reply was cancelled while being written."""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """The tools the reply called: name, arguments, state, duration_ms and result."""

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.response_id is not None:
            out["response_id"] = self.response_id
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.incomplete:
            out["incomplete"] = True
        if self.interrupted:
            out["interrupted"] = True
        return out


@dataclass
class Conversation:
    id: str
    messages: list[ChatMessage] = field(default_factory=list)
    running: str | None = None
    """The response being written now, if any."""


@dataclass
class Response:
    id: str
    conversation: Conversation
    user_index: int
    """Where the user message it answers is in the conversation."""
    task: asyncio.Task[None] | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    state: str = "running"
    """``running``, ``done``, ``failed`` or ``cancelled``."""


class ChatService:
    def __init__(
        self,
        llm: LLM,
        store: EventStore,
        clock: Clock,
        system_prompt: Callable[[str | None], str],
        max_message_chars: int = 8000,
        max_running: int = 32,
        max_conversations: int = 10_000,
        tools: ToolRegistry | None = None,
        max_tool_rounds: int = 3,
    ) -> None:
        self.llm = llm
        self.tools = tools or ToolRegistry()
        self.max_tool_rounds = max_tool_rounds
        self.store = store
        self.clock = clock
        self.system_prompt = system_prompt
        self.max_message_chars = max_message_chars
        self.max_running = max_running
        self.max_conversations = max_conversations
        self.conversations: dict[str, Conversation] = {}
        self.responses: dict[str, Response] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- requests ----------------------------------------------------------------

    def start(self, message: str, conversation_id: str | None = None) -> Response:
        """Take a user message and start its response (the ids come back at once)."""
        text = message.strip()
        if not text:
            raise ChatRefused(400, "message must not be empty")
        if len(text) > self.max_message_chars:
            raise ChatRefused(413, f"message is over {self.max_message_chars} characters")
        if conversation_id is None:
            if len(self.conversations) >= self.max_conversations:
                raise ChatRefused(503, "too many conversations; try again later")
            conv = Conversation(new_id())
            self.conversations[conv.id] = conv
        else:
            found = self.conversations.get(conversation_id)
            if found is None:
                raise ChatRefused(404, "no such conversation")
            conv = found
        self._check_free(conv)
        conv.messages.append(ChatMessage("user", text))
        return self._launch(conv, len(conv.messages) - 1)

    def regenerate(self, response_id: str) -> Response:
        """Answer again the message of a response that failed or was cancelled; what it
        had written is taken out of the conversation."""
        old = self.responses.get(response_id)
        if old is None:
            raise ChatRefused(404, "no such response")
        if old.state not in ("failed", "cancelled"):
            raise ChatRefused(
                409, f"the response is {old.state}; only a failed or cancelled one is redone"
            )
        conv = old.conversation
        self._check_free(conv)
        if conv.messages[-1].response_id == old.id:
            conv.messages.pop()
        if conv.messages[-1] is not conv.messages[old.user_index]:
            raise ChatRefused(409, "the conversation has gone on since that response")
        old.state = "regenerated"
        return self._launch(conv, old.user_index)

    def cancel(self, response_id: str) -> bool:
        """Stop a response being written. False: it had already ended."""
        resp = self.responses.get(response_id)
        if resp is None:
            raise ChatRefused(404, "no such response")
        if resp.state != "running" or resp.task is None:
            return False
        resp.task.cancel()
        return True

    async def warm(self) -> bool:
        """Have the LLM read the chat's system prompt and tools ahead of the first
        message (the endpoint's prompt cache; a no-op for one without)."""
        return await self.llm.prefill(
            self._context(Conversation(""), -1), self.tools.schemas() or None
        )

    async def aclose(self) -> None:
        """Cancel every response still being written (the server is stopping)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)

    # -- generation ----------------------------------------------------------------

    def _check_free(self, conv: Conversation) -> None:
        if conv.running is not None:
            raise ChatRefused(409, "a response is still being written in this conversation")
        if len(self._tasks) >= self.max_running:
            raise ChatRefused(503, "too many responses in progress; try again later")

    def _launch(self, conv: Conversation, user_index: int) -> Response:
        resp = Response(new_id(), conv, user_index)
        self.store.create(resp.id)
        self.responses[resp.id] = resp
        conv.running = resp.id
        resp.task = asyncio.get_running_loop().create_task(self._run(resp))
        self._tasks.add(resp.task)
        resp.task.add_done_callback(self._tasks.discard)
        return resp

    def _emit(self, resp: Response, event: str, **data: Any) -> None:
        self.store.append(resp.id, event, data)

    async def _run(self, resp: Response) -> None:
        t0 = self.clock.now()
        conv = resp.conversation
        written: list[str] = []
        timings: dict[str, float | None] = {"first_status_ms": None, "first_token_ms": None}

        def ms(t: float) -> float:
            return round((t - t0) * 1000, 1)

        try:
            self._emit(resp, "status", phase="thinking", text="Thinking…")
            timings["first_status_ms"] = ms(self.clock.now())
            c0 = self.clock.now()
            messages = self._context(conv, resp.user_index)
            timings["context_ms"] = ms(self.clock.now()) - ms(c0)
            rounds = ToolRounds(self.tools, messages, self.max_tool_rounds)
            while (request := rounds.request()) is not None:
                calls: list[ToolCall] = []
                async with contextlib.aclosing(self.llm.stream(*request)) as stream:
                    async for ev in stream:
                        if isinstance(ev, ToolCall):
                            calls.append(ev)
                            continue
                        if isinstance(ev, Failover):
                            self._emit(
                                resp, "status", phase="failover",
                                text="The first model did not answer; asking another…",
                            )  # fmt: skip
                            continue
                        if not ev.text:
                            continue
                        if not written:
                            self._emit(resp, "status", phase="writing", text="Writing…")
                            timings["first_token_ms"] = ms(self.clock.now())
                        written.append(ev.text)
                        self._emit(resp, "token", text=ev.text)
                if not calls:
                    break
                await self._run_tools(resp, rounds, calls)
        except asyncio.CancelledError:
            self._finish(resp, written, "cancelled")
            timings["total_ms"] = ms(self.clock.now())
            self._emit(
                resp, "done", finish_reason="cancelled", usage=_usage(written), timings=timings
            )
            self.store.close(resp.id)
            raise
        except Exception as exc:  # the detail goes to the log, never to the reader
            if not isinstance(exc, LLMError):
                log.error("chat response %s failed", resp.id, exc_info=exc)
            else:
                log.warning("chat response %s: %s", resp.id, exc)
            kept = self._finish(resp, written, "failed")
            self._emit(
                resp, "error", code="llm_failed",
                message="The language model failed while answering. Regenerate to try again.",
                partial_kept=kept,
            )  # fmt: skip
            self.store.close(resp.id)
            return
        self._finish(resp, written, "done")
        timings["total_ms"] = ms(self.clock.now())
        self._emit(resp, "done", finish_reason="stop", usage=_usage(written), timings=timings)
        self.store.close(resp.id)

    async def _run_tools(self, resp: Response, rounds: ToolRounds, calls: list[ToolCall]) -> None:
        """One round of calls, side by side: a status line and a ``tool`` event as each
        starts and ends (a failing tool is a result for the LLM, never the reply's end).
        A call already answered in this reply is not run again (see ToolRounds)."""
        calls = [c for c in calls if not rounds.was_answered(c)]
        if not calls:
            await rounds.run([], None, self.clock.now)
            return
        for call in calls:
            known = self.tools.get(call.name)
            self._emit(
                resp, "status", phase="tool", text=known.status if known else "One moment."
            )
            self._emit(resp, "tool", name=call.name, state="started")

        records: dict[str, dict[str, Any]] = {}

        def finished(call: ToolCall, ok: bool, seconds: float) -> None:
            state, ms = "finished" if ok else "failed", round(seconds * 1000, 1)
            records[call.id] = {"state": state, "duration_ms": ms}
            self._emit(resp, "tool", name=call.name, state=state, duration_ms=ms)

        await rounds.run(calls, finished, self.clock.now)
        for call in calls:
            resp.tool_calls.append(
                {"name": call.name, "arguments": call.arguments, **records[call.id],
                 "result": rounds.result(call)}
            )  # fmt: skip

    def _context(self, conv: Conversation, user_index: int) -> list[Message]:
        """The LLM's messages: the system prompt, then the conversation up to the user
        message being answered."""
        note = tools_note(self.tools) if self.tools else None
        history: list[Message] = [{"role": "system", "content": self.system_prompt(note)}]
        for m in conv.messages[: user_index + 1]:
            history.append({"role": m.role, "content": m.content})
        return history

    def _finish(self, resp: Response, written: list[str], state: str) -> bool:
        """Store what was written; True when a (partial) reply was kept."""
        resp.state = state
        resp.conversation.running = None
        text = "".join(written).strip()
        if not text:
            return False
        resp.conversation.messages.append(
            ChatMessage(
                "assistant", text, response_id=resp.id,
                incomplete=state == "failed", interrupted=state == "cancelled",
                tool_calls=resp.tool_calls,
            )
        )  # fmt: skip
        return True


def _usage(written: list[str]) -> dict[str, int]:
    """What the reply's stream carried (the endpoint's own token counts are not read)."""
    return {"token_events": len(written), "characters": len("".join(written))}
