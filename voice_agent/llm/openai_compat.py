"""Streaming chat completions from any OpenAI-compatible endpoint (``openai.AsyncOpenAI``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable
from typing import Any, TypeVar

import openai

from voice_agent.errors import LLMError
from voice_agent.llm.base import LLMEvent, Message, TextDelta, ToolCall
from voice_agent.llm.slots import SlotMap
from voice_agent.llm.tools import ContentToolCallParser

T = TypeVar("T")


class OpenAICompatLLM:
    """One endpoint, one model. Every await on the network has a deadline.

    ``first_token_timeout`` bounds the wait for the first streamed chunk
    (prompt reading on a small CPU can take seconds); ``idle_timeout`` bounds
    each later gap. A structured ``tool_calls`` delta and a tool call written
    as JSON in the content both come out as :class:`ToolCall`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "not-needed",
        *,
        connect_timeout: float = 5.0,
        first_token_timeout: float = 30.0,
        idle_timeout: float = 15.0,
        temperature: float = 0.4,
        max_tokens: int = 160,
        prompt_cache: bool = False,
        slots: int = 0,
    ) -> None:
        self.name = f"openai-compat:{model}@{base_url}"
        self.base_url = base_url
        self.model = model
        self.first_token_timeout = first_token_timeout
        self.idle_timeout = idle_timeout
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.prompt_cache = prompt_cache
        self.prefills = 0
        """Prefills the endpoint has read."""
        self.slot_map = SlotMap(slots) if slots > 1 else None
        """The server's slots (a local llama-server with several): each owner's requests
        go to its own slot, whose cache holds its words (see :mod:`voice_agent.llm.slots`)."""
        self._active = 0
        self._prefilling: asyncio.Future[Any] | None = None
        self._prefill_by: dict[Hashable, tuple[asyncio.Future[Any], int]] = {}
        """With slots: each owner's prefill in flight, and its slot."""
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key,
            max_retries=0,
            timeout=openai.Timeout(first_token_timeout, connect=connect_timeout),
        )

    async def close(self) -> None:
        await self._client.close()

    async def wait_ready(self, within_s: float) -> None:
        """Poll the endpoint's model list until it answers (used right after a server starts)."""
        async with asyncio.timeout(within_s):
            while True:
                try:
                    await self._client.models.list(timeout=2.0)
                    return
                except (openai.APIConnectionError, openai.APIStatusError, openai.APITimeoutError):
                    await asyncio.sleep(0.1)

    async def prefill(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        owner: Hashable = None,
    ) -> bool:
        """Read ``messages`` (and ``tools``, which the chat template puts in the system
        prompt) into the endpoint's prompt cache: a request for one token. Cancelling it
        closes the request; the endpoint keeps what it had read.

        With slots and an ``owner``, it goes to the owner's slot when that one or another
        is free (other calls' replies go on beside it, in the same batches), and the
        owner's next reply goes to the same slot and cancels it. Without, it is sent only
        when nothing else of ours is in flight, and a reply that starts meanwhile (any
        session's) closes it, so a prefill never holds a reply up for long."""
        if not self.prompt_cache:
            return False
        slots = self.slot_map if owner is not None else None
        slot: int | None = None
        if slots is not None:
            if owner in self._prefill_by:
                return False
            slot = slots.acquire(owner)
            if slot is None:
                return False
        elif self._active:
            return False
        self._active += 1
        create = functools.partial(
            self._client.chat.completions.create,
            model=self.model,
            messages=messages,
            max_tokens=1,
            temperature=0.0,
            timeout=self.first_token_timeout,
            **({"tools": tools} if tools else {}),
            **_slot_body(slot),
        )
        request = asyncio.ensure_future(_once_more_if_unsent(create))
        entry = (request, slot if slot is not None else -1)
        if slot is not None:
            self._prefill_by[owner] = entry
        else:
            self._prefilling = request
        try:
            await request
        except openai.APIError:
            return False  # the reply will read the prompt itself, and report a failure
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our caller was cancelled
            return False  # a reply started (see stream): it reads on from here
        finally:
            self._active -= 1
            if slot is not None:
                if self._prefill_by.get(owner) is entry:
                    del self._prefill_by[owner]
                    self._release(slot)
            else:
                self._prefilling = None
        self.prefills += 1
        return True

    def _release(self, slot: int) -> None:
        if self.slot_map is not None:
            self.slot_map.release(slot)

    async def _create(
        self, messages: list[Message], kwargs: dict[str, Any]
    ) -> openai.AsyncStream[Any]:
        """Send the streamed request (once more if it never left: see below)."""
        create = functools.partial(
            self._client.chat.completions.create,
            model=self.model,
            messages=messages,
            stream=True,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            **kwargs,
        )
        response = await _once_more_if_unsent(create)
        assert isinstance(response, openai.AsyncStream)
        return response

    async def stream(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        owner: Hashable = None,
    ) -> AsyncGenerator[LLMEvent, None]:
        known = {t["function"]["name"] for t in tools} if tools else None
        parser = ContentToolCallParser(known)
        kwargs: dict[str, Any] = {}
        if tools:
            kwargs["tools"] = tools
        slot: int | None = None
        if self.slot_map is not None and owner is not None:
            own = self._prefill_by.pop(owner, None)
            if own is not None:  # the owner's prefill: its slot holds what it read
                own[0].cancel()
                self._release(own[1])
            slot = self.slot_map.acquire(owner)
            kwargs.update(_slot_body(slot))
        elif self._prefilling is not None:
            self._prefilling.cancel()
        self._active += 1
        try:
            async with contextlib.aclosing(self._stream(messages, kwargs, parser)) as events:
                async for event in events:
                    yield event
        finally:
            self._active -= 1
            if slot is not None:
                self._release(slot)

    async def _stream(
        self, messages: list[Message], kwargs: dict[str, Any], parser: ContentToolCallParser
    ) -> AsyncGenerator[LLMEvent, None]:
        try:
            async with asyncio.timeout(self.first_token_timeout):
                response = await self._create(messages, kwargs)
        except TimeoutError as exc:
            raise LLMError(
                f"LLM at {self.base_url} did not answer within {self.first_token_timeout:.0f}s",
                "check that the server is up, or raise --llm-timeout",
                retryable=True,
            ) from exc
        except openai.APIStatusError as exc:
            raise LLMError(
                f"LLM at {self.base_url} refused the request: HTTP {exc.status_code} {exc.message}",
                "check the model name and API key (VOICE_AGENT_LLM_MODEL, VOICE_AGENT_LLM_API_KEY)",
                retryable=exc.status_code == 429 or exc.status_code >= 500,
            ) from exc
        except openai.APIError as exc:
            raise LLMError(
                f"cannot reach the LLM at {self.base_url}: {exc}",
                "start the server or fix VOICE_AGENT_LLM_BASE_URL",
                retryable=True,
            ) from exc

        structured: dict[int, dict[str, str]] = {}
        first = True
        try:
            iterator = response.__aiter__()
            while not parser.done:
                limit = self.first_token_timeout if first else self.idle_timeout
                try:
                    async with asyncio.timeout(limit):
                        chunk = await anext(iterator)
                except StopAsyncIteration:
                    break
                first = False
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                for tc in delta.tool_calls or []:
                    slot = structured.setdefault(tc.index, {"id": "", "name": "", "args": ""})
                    if tc.id:
                        slot["id"] = tc.id
                    if tc.function and tc.function.name:
                        slot["name"] += tc.function.name
                    if tc.function and tc.function.arguments:
                        slot["args"] += tc.function.arguments
                if delta.content:
                    for event in parser.feed(delta.content):
                        yield event
        except TimeoutError as exc:
            raise LLMError(
                f"LLM stream from {self.base_url} stalled for {limit:.0f}s",
                "check the server's load and logs",
                retryable=True,
            ) from exc
        except openai.APIError as exc:
            raise LLMError(
                f"LLM stream from {self.base_url} broke: {exc}", "check the server", retryable=True
            ) from exc
        finally:
            await response.close()
        for event in parser.finish():
            yield event
        for i, slot in sorted(structured.items()):
            try:
                args = json.loads(slot["args"]) if slot["args"].strip() else {}
            except (ValueError, RecursionError):
                args = {}
            yield ToolCall(id=slot["id"] or f"call_{i}", name=slot["name"], arguments=args)


def _slot_body(slot: int | None) -> dict[str, Any]:
    """llama-server's ``id_slot``: the slot a request runs in (none: the server's choice)."""
    return {} if slot is None else {"extra_body": {"id_slot": slot}}


async def _once_more_if_unsent(send: Callable[[], Awaitable[T]]) -> T:
    """``send()``, and once more at once if the connection failed before the request was
    sent: a pooled keep-alive connection the server has just closed fails that way
    (llama-server closes one idle for 5 s), and the request never reached it."""
    try:
        return await send()
    except openai.APITimeoutError:  # a connection error too, but the request was sent
        raise
    except openai.APIConnectionError:
        return await send()


__all__ = ["OpenAICompatLLM", "TextDelta", "ToolCall"]
