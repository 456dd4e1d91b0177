"""Each call's requests go to its own llama-server slot: ``SlotMap`` (pure) and what
``OpenAICompatLLM`` sends with slots, against a real socket server."""

from __future__ import annotations

import asyncio

import pytest
from test_llm_prefill import MESSAGES, Endpoint

from voice_agent.llm.base import TextDelta
from voice_agent.llm.openai_compat import OpenAICompatLLM
from voice_agent.llm.slots import SlotMap


def test_an_owner_keeps_its_slot_and_owners_get_different_ones() -> None:
    slots = SlotMap(3)
    a = slots.acquire("a")
    slots.release(a)  # type: ignore[arg-type]
    b = slots.acquire("b")
    slots.release(b)  # type: ignore[arg-type]
    assert a is not None and b is not None and a != b
    for _ in range(3):
        again = slots.acquire("a")
        assert again == a
        slots.release(a)
    assert slots.home("a") == a and slots.home("b") == b and slots.moves == 0


def test_a_busy_home_moves_the_request_to_the_idle_slot_used_longest_ago() -> None:
    slots = SlotMap(3)
    first = [slots.acquire(o) for o in ("a", "b", "c")]
    assert first == [0, 1, 2]
    for s in (1, 2):
        slots.release(s)
    # "a" is still busy in 0 (a request of its own, or another's taken by it)
    moved = slots.acquire("a")
    assert moved == 1 and slots.moves == 1
    assert slots.home("a") == 1 and slots.home("b") is None  # b's cache is a's now
    assert slots.busy == 2


def test_every_slot_busy_gives_no_slot_and_a_new_owner_takes_the_oldest() -> None:
    slots = SlotMap(2)
    assert slots.acquire("a") == 0 and slots.acquire("b") == 1
    assert slots.acquire("c") is None  # the server places it: it never waits for a slot
    slots.release(0)
    slots.release(1)
    assert slots.acquire("c") == 0  # slot 0 was taken longest ago
    assert slots.home("a") is None and slots.home("b") == 1
    with pytest.raises(ValueError):
        SlotMap(0)


async def test_a_calls_prefill_and_reply_go_to_its_slot_and_the_reply_closes_the_prefill() -> None:
    endpoint = Endpoint(hold_completions=True)
    async with endpoint as url:
        llm = OpenAICompatLLM(url, "m", prompt_cache=True, slots=4)
        try:
            other = llm.stream(MESSAGES, owner="b")  # another call's reply, in flight
            assert await anext(other) == TextDelta("Hello.")
            # with slots, a prefill goes beside another call's reply
            prefill = asyncio.create_task(llm.prefill(MESSAGES, owner="a"))
            await asyncio.wait_for(_bodies(endpoint, 2), 5)
            mine = llm.stream(MESSAGES, owner="a")
            assert await anext(mine) == TextDelta("Hello.")
            assert await asyncio.wait_for(prefill, 5) is False  # closed by a's reply
            await asyncio.wait_for(endpoint.closed_unanswered.wait(), 5)
            endpoint.release.set()
            assert [e async for e in mine] == [] and [e async for e in other] == []
            plain = llm.stream(MESSAGES)  # no owner: the server's choice
            assert [e async for e in plain] == [TextDelta("Hello.")]
        finally:
            await llm.close()
    slots = [(bool(b.get("stream")), b.get("id_slot")) for b in endpoint.bodies]
    b_slot, a_slot = slots[0][1], slots[1][1]
    assert isinstance(a_slot, int) and isinstance(b_slot, int) and a_slot != b_slot
    assert slots == [(True, b_slot), (False, a_slot), (True, a_slot), (True, None)]
    assert llm.slot_map is not None and llm.slot_map.busy == 0


async def test_with_one_slot_no_slot_is_named_and_prefills_keep_out_of_the_way() -> None:
    endpoint = Endpoint()
    async with endpoint as url:
        llm = OpenAICompatLLM(url, "m", prompt_cache=True, slots=1)
        try:
            stream = llm.stream(MESSAGES, owner="b")
            assert await anext(stream) == TextDelta("Hello.")
            assert await llm.prefill(MESSAGES, owner="a") is False  # one stream at a time
            endpoint.release.set()
            assert [e async for e in stream] == []
        finally:
            await llm.close()
    assert ["id_slot" in b for b in endpoint.bodies] == [False]


async def _bodies(endpoint: Endpoint, n: int) -> None:
    while len(endpoint.bodies) < n:
        endpoint.received.clear()  # (no await since the count was read)
        await endpoint.received.wait()
