"""Text chat: one response at a time per conversation, streamed as events.

:meth:`ChatService.start` answers at once with the ids; generation runs as its own
task and writes every event to the response's log (:mod:`voice_agent.chat.events`),
whether or not a reader is connected. Only :meth:`ChatService.cancel` stops it.

Events, in order: ``status`` (``thinking``) at once, then ``status`` (``writing``) and
``token`` deltas as the LLM streams, then ``done``; or ``error`` when the LLM fails.
What was written before a failure or a cancel is kept in the conversation, marked
``incomplete`` (failed) or ``interrupted`` (cancelled), and :meth:`regenerate`
answers the same message again. An error event never carries internal detail.

Conversations, their messages, tool calls and timings live in the conversation store
(:mod:`voice_agent.store`), so they outlive the process and are shared by every
process on the same database; the response being written (its task) lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from voice_agent.auth import ANONYMOUS, OPEN, Caller, KeyHolds
from voice_agent.chat.events import EventStore, EventsUnavailable
from voice_agent.core.clock import Clock
from voice_agent.core.ids import new_id
from voice_agent.errors import LLMError
from voice_agent.llm.base import LLM, Failover, Message, ToolCall
from voice_agent.llm.context import fit_context
from voice_agent.llm.tools import ToolRegistry, ToolRounds, tools_note
from voice_agent.store import ConversationStore, StoreError

log = logging.getLogger("voice_agent.chat")

Prefetch = Callable[[str], Awaitable[str | None]]
"""Context read ahead of the LLM call from the user's message (knowledge hits): a
system note, or None."""


class ChatRefused(Exception):
    """A request the service will not take: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Response:
    id: str
    conversation_id: str
    user_message_id: int
    """The user message it answers (its id in the store)."""
    user_text: str
    task: asyncio.Task[None] | None = None
    owner: str | None = None
    """Who owns its conversation (:attr:`voice_agent.auth.Caller.owner`)."""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    state: str = "running"
    """``running``, ``done``, ``failed`` or ``cancelled``."""


class ChatService:
    def __init__(
        self,
        llm: LLM,
        events: EventStore,
        store: ConversationStore,
        clock: Clock,
        system_prompt: Callable[[str | None], str],
        max_message_chars: int = 8000,
        max_running: int = 32,
        tools: ToolRegistry | None = None,
        max_tool_rounds: int = 3,
        prefetch: Prefetch | None = None,
        max_context_chars: int = 12_000,
        max_running_per_key: int | None = None,
    ) -> None:
        self.llm = llm
        self.tools = tools or ToolRegistry()
        self.max_tool_rounds = max_tool_rounds
        self.events = events
        self.store = store
        self.clock = clock
        self.system_prompt = system_prompt
        self.max_message_chars = max_message_chars
        self.max_running = max_running
        self.max_running_per_key = max_running_per_key
        """Responses one API key may have in progress at once (None: no such limit)."""
        self.by_key = KeyHolds()
        self.on_refused: Callable[[str], None] | None = None
        """Told when a limit refuses a message (``per_key``): metrics."""
        self.prefetch = prefetch
        self.max_context_chars = max_context_chars
        """The most characters of history a request carries (older turns dropped)."""
        self.on_end: Callable[[str], None] | None = None
        """Told how each response ended (``done``, ``failed``, ``cancelled``): metrics."""
        self.responses: dict[str, Response] = {}
        """The responses this process is writing (or wrote), for cancel."""
        self.running: dict[str, str] = {}
        """conversation id → the response being written in it (in this process)."""
        self._tasks: set[asyncio.Task[None]] = set()

    # -- requests ----------------------------------------------------------------

    async def start(
        self, message: str, conversation_id: str | None = None, caller: Caller = OPEN
    ) -> Response:
        """Take a user message and start its response (the ids come back at once). A new
        conversation is ``caller``'s; another's is not there for them."""
        text = message.strip()
        if not text:
            raise ChatRefused(400, "message must not be empty")
        if len(text) > self.max_message_chars:
            raise ChatRefused(413, f"message is over {self.max_message_chars} characters")
        with _store_refusals(), self._key_held(caller):
            if conversation_id is None:
                self._check_free(None)
                cid = new_id()
                owner: str | None = caller.owner
                await self.store.create_conversation(cid, owner)
            else:
                cid = conversation_id
                exists, owner = await self.store.conversation_owner(cid)
                if not exists or not caller.may_read(owner):
                    raise ChatRefused(404, "no such conversation")
                self._check_free(cid)
            self.running[cid] = ""  # held while the user message is written
            try:
                mid = await self.store.add_message(cid, "user", text, source="text")
            finally:
                self.running.pop(cid, None)
            return await self._launch(cid, mid, text, owner, caller.principal)

    async def regenerate(self, response_id: str, caller: Caller = OPEN) -> Response:
        """Answer again the message of a response that failed or was cancelled; what it
        had written is taken out of the conversation."""
        with _store_refusals(), self._key_held(caller):
            old = await self.store.response(response_id)
            if old is None:
                raise ChatRefused(404, "no such response")
            _, owner = await self.store.conversation_owner(old["conversation_id"])
            if not caller.may_read(owner):
                raise ChatRefused(404, "no such response")
            if old["state"] not in ("failed", "cancelled"):
                raise ChatRefused(
                    409,
                    f"the response is {old['state']}; only a failed or cancelled one is redone",
                )
            cid = old["conversation_id"]
            self._check_free(cid)
            last = await self.store.last_message(cid)
            if last is not None and last[1] == response_id:
                await self.store.delete_reply(response_id)
                last = await self.store.last_message(cid)
            if last is None or last[0] != old["user_message_id"]:
                raise ChatRefused(409, "the conversation has gone on since that response")
            if not await self.store.set_response_state(response_id, "regenerated", old["state"]):
                raise ChatRefused(409, "the response is being regenerated already")
            text = (await self.store.history(cid, old["user_message_id"], limit=1))[-1][1]
            return await self._launch(cid, old["user_message_id"], text, owner, caller.principal)

    async def may_follow(self, response_id: str, caller: Caller = OPEN) -> bool:
        """May ``caller`` read the events of this response (False: not theirs, or no
        such response: neither is told apart)."""
        resp = self.responses.get(response_id)
        if resp is not None:
            return caller.may_read(resp.owner)
        if caller.principal == ANONYMOUS:
            return True  # authentication is off: the event store says if it exists
        with _store_refusals():
            row = await self.store.response(response_id)
            if row is None:
                return False
            _, owner = await self.store.conversation_owner(row["conversation_id"])
        return caller.may_read(owner)

    def cancel(self, response_id: str, caller: Caller = OPEN) -> bool:
        """Stop a response being written. False: it had already ended."""
        resp = self.responses.get(response_id)
        if resp is None or not caller.may_read(resp.owner):
            raise ChatRefused(404, "no such response (or it is being written by another server)")
        if resp.state != "running" or resp.task is None:
            return False
        resp.task.cancel()
        return True

    async def conversation(self, cid: str, caller: Caller = OPEN) -> dict[str, Any]:
        with _store_refusals():
            conv = await self.store.conversation(cid)
        if conv is None or not caller.may_read(conv.pop("owner")):
            raise ChatRefused(404, "no such conversation")
        for m in conv["messages"]:  # a failed call's result is the tool's error: not shown
            for call in m.get("tool_calls", []):
                if call["state"] != "finished":
                    call.pop("result", None)
        rid = self.running.get(cid)
        return conv | {"running": rid or None}

    async def warm(self) -> bool:
        """Have the LLM read the chat's system prompt and tools ahead of the first
        message (the endpoint's prompt cache; a no-op for one without)."""
        return await self.llm.prefill([self._system()], self.tools.schemas() or None)

    async def aclose(self) -> None:
        """Cancel every response still being written (the server is stopping)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)

    # -- generation ----------------------------------------------------------------

    def _check_free(self, cid: str | None) -> None:
        if cid is not None and cid in self.running:
            raise ChatRefused(409, "a response is still being written in this conversation")
        if len(self._tasks) >= self.max_running:
            raise ChatRefused(503, "too many responses in progress; try again later")

    @contextlib.contextmanager
    def _key_held(self, caller: Caller) -> Iterator[None]:
        """Hold one of the key's responses from before the first await (so requests at
        the same moment cannot all pass the limit); a request that fails before its
        response starts gives it back, and a started response gives it back as it ends."""
        limit = self.max_running_per_key
        if not self.by_key.take(caller.principal, limit):
            if self.on_refused is not None:
                self.on_refused("per_key")
            raise ChatRefused(429, f"too many responses in progress for this key (limit {limit})")
        try:
            yield
        except BaseException:
            self.by_key.release(caller.principal)
            raise

    async def _launch(
        self, cid: str, user_message_id: int, text: str, owner: str | None, principal: str
    ) -> Response:
        resp = Response(new_id(), cid, user_message_id, text, owner=owner)
        self.running[cid] = resp.id
        try:
            await self.store.put_response(resp.id, cid, user_message_id)
            await self.events.create(resp.id)
        except BaseException:
            self.running.pop(cid, None)
            raise
        self.responses[resp.id] = resp
        while len(self.responses) > 10_000:  # ended ones first: dicts keep insertion order
            oldest = next(k for k, v in self.responses.items() if v.state != "running")
            del self.responses[oldest]
        resp.task = asyncio.get_running_loop().create_task(self._run(resp))
        self._tasks.add(resp.task)
        resp.task.add_done_callback(self._tasks.discard)
        resp.task.add_done_callback(lambda _: self.by_key.release(principal))
        return resp

    def _emit(self, resp: Response, event: str, **data: Any) -> None:
        self.events.append(resp.id, event, data)

    async def _run(self, resp: Response) -> None:
        t0 = self.clock.now()
        written: list[str] = []
        timings: dict[str, float | None] = {"first_status_ms": None, "first_token_ms": None}

        def ms(t: float) -> float:
            return round((t - t0) * 1000, 1)

        try:
            self._emit(resp, "status", phase="thinking", text="Thinking…")
            timings["first_status_ms"] = ms(self.clock.now())
            c0 = self.clock.now()
            messages = await self._context(resp)
            timings["context_ms"] = round((self.clock.now() - c0) * 1000, 1)
            rounds = ToolRounds(self.tools, messages, self.max_tool_rounds)
            while (request := rounds.request()) is not None:
                calls: list[ToolCall] = []
                reply = self.llm.stream(*request, owner=resp.conversation_id)
                async with contextlib.aclosing(reply) as stream:
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
            timings["total_ms"] = ms(self.clock.now())
            await _finish_anyway(self._finish(resp, written, "cancelled", timings))
            self._emit(
                resp, "done", finish_reason="cancelled", usage=_usage(written), timings=timings
            )
            self.events.close(resp.id)
            raise
        except Exception as exc:  # the detail goes to the log, never to the reader
            if not isinstance(exc, LLMError):
                log.error("chat response %s failed", resp.id, exc_info=exc)
            else:
                log.warning("chat response %s: %s", resp.id, exc)
            timings["total_ms"] = ms(self.clock.now())
            kept = await self._finish(resp, written, "failed", timings)
            self._emit(
                resp, "error", code="llm_failed",
                message="The language model failed while answering. Regenerate to try again.",
                partial_kept=kept,
            )  # fmt: skip
            self.events.close(resp.id)
            return
        timings["total_ms"] = ms(self.clock.now())
        await self._finish(resp, written, "done", timings)
        self._emit(resp, "done", finish_reason="stop", usage=_usage(written), timings=timings)
        self.events.close(resp.id)

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
            self._emit(resp, "status", phase="tool", text=known.status if known else "One moment.")
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

    def _system(self, extra: str | None = None) -> Message:
        note = tools_note(self.tools) if self.tools else None
        text = self.system_prompt(note)
        return {"role": "system", "content": text if extra is None else f"{text}\n\n{extra}"}

    async def _context(self, resp: Response) -> list[Message]:
        """The LLM's messages: the system prompt (with what the prefetch found), then the
        conversation up to the user message being answered. The history and the
        prefetch are read side by side."""
        hits: Awaitable[str | None] = self.prefetch(resp.user_text) if self.prefetch else _none()
        history, extra = await asyncio.gather(
            self.store.history(resp.conversation_id, resp.user_message_id), hits
        )
        out: list[Message] = [self._system(extra)]
        out.extend({"role": role, "content": content} for role, content in history)
        return fit_context(out, self.max_context_chars)

    async def _finish(
        self, resp: Response, written: list[str], state: str, timings: dict[str, Any]
    ) -> bool:
        """Store what was written; True when a (partial) reply was kept."""
        resp.state = state
        self.running.pop(resp.conversation_id, None)
        if self.on_end is not None:
            self.on_end(state)
        text = "".join(written).strip()
        try:
            await self.store.set_response_state(resp.id, state)
            if not text:
                return False
            await self.store.add_message(
                resp.conversation_id, "assistant", text, source="text", response_id=resp.id,
                incomplete=state == "failed", interrupted=state == "cancelled",
                timings=timings, tools=resp.tool_calls,
            )  # fmt: skip
        except StoreError as exc:
            log.error("chat response %s: the reply could not be stored: %s", resp.id, exc)
            return False
        return True


async def _none() -> None:
    return None


async def _finish_anyway(aw: Awaitable[Any]) -> None:
    """Store a cancelled reply even if a second cancel comes while it is being stored;
    the caller re-raises the first cancel once it is stored."""
    task = asyncio.ensure_future(aw)
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)


@contextlib.contextmanager
def _store_refusals() -> Iterator[None]:
    """A failing store (or event store) is a 503 for the client; the detail is logged."""
    try:
        yield
    except (StoreError, EventsUnavailable) as exc:
        log.error("chat: the conversation store failed: %r", exc)
        raise ChatRefused(503, "the conversation store is unavailable; try again") from None


def _usage(written: list[str]) -> dict[str, int]:
    """What the reply's stream carried (the endpoint's own token counts are not read)."""
    return {"token_events": len(written), "characters": len("".join(written))}
