"""A real llama-server (the fast profile's 0.5B model) killed in the middle of a reply:
the reply fails at once with a clear LLMError, the supervisor starts the server again on
the same address with the system prompt in its slots, and the next request works."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest
from conftest import until

from voice_agent.errors import LLMError
from voice_agent.llm.base import TextDelta
from voice_agent.llm.local import LocalLlamaServer
from voice_agent.llm.openai_compat import OpenAICompatLLM

PROMPT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Count from one to one hundred, in words."},
]


async def test_a_killed_llama_server_fails_the_reply_and_is_restarted() -> None:
    server = LocalLlamaServer("fast", parallel=2)
    await server.start()
    told: list[str] = []
    try:
        server.supervise(lambda: server.fill_slots(PROMPT), told.append)
        llm = OpenAICompatLLM(server.base_url, server.model, max_tokens=200, idle_timeout=30)
        said: list[str] = []
        with pytest.raises(LLMError) as failed:
            async with contextlib.aclosing(llm.stream(PROMPT)) as stream:
                async for ev in stream:
                    if isinstance(ev, TextDelta):
                        said.append(ev.text)
                        if len(said) == 5:
                            assert server.pid is not None
                            os.kill(server.pid, signal.SIGKILL)  # in the middle of the reply
        assert len(said) >= 5  # what it said before it died was delivered
        assert "broke" in str(failed.value) or "reach" in str(failed.value)
        await until(lambda: server.restarts > 0, 180)
        assert told[0].startswith("llama-server exited with code -9; restarting it")
        assert told[-1] == "llama-server is back"
        # the same address: the LLM client needs no change
        words = []
        async with contextlib.aclosing(llm.stream(PROMPT)) as stream:
            async for ev in stream:
                if isinstance(ev, TextDelta):
                    words.append(ev.text)
        assert "one" in "".join(words).lower()
        await llm.close()
    finally:
        await server.stop()
    assert server.proc is None
