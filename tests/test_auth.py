"""API keys, signed tokens, the Origin list and the JSON content-type check, against a
real server (model doubles): every endpoint but health, readiness and the page refuses
anonymous use, before any model work."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from conftest import start_server, until
from doubles import AutoAdvanceClockDouble, ScriptedLLMDouble, double_engine
from httpx_sse import aconnect_sse

from voice_agent.auth import Auth, key_id
from voice_agent.server import ServerConfig, create_app

KEY = "k-" + "x" * 30


@pytest.fixture
async def guarded() -> AsyncIterator[tuple[str, ScriptedLLMDouble, Any]]:
    llm = ScriptedLLMDouble([["Hello."]] * 4, 0.01)
    config = ServerConfig(api_keys=[KEY], allowed_origins=["http://good.example"])
    app = create_app(engine=double_engine(llm), config=config)
    srv, addr, task = await start_server(app)
    yield addr, llm, app.state.va
    srv.should_exit = True  # type: ignore[attr-defined]
    await task  # type: ignore[misc]


async def _ws_close(url: str, **kw: Any) -> tuple[int, str]:
    async with websockets.connect(url, **kw) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def test_anonymous_use_is_refused_everywhere_but_health_and_the_page(guarded: Any) -> None:
    addr, llm, state = guarded
    async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=10) as c:
        for method, path, body in [
            ("POST", "/v1/chat", {"message": "hi"}), ("GET", "/v1/chat/x/events", None),
            ("POST", "/v1/chat/x/cancel", None), ("GET", "/v1/conversations/x", None),
            ("GET", "/v1/sessions/x", None), ("GET", "/metrics", None),
            ("POST", "/v1/voice/webrtc/offer", {"sdp": "v=0", "type": "offer"}),
            ("GET", "/v1/voice/webrtc/config", None), ("POST", "/v1/tokens", None),
        ]:  # fmt: skip
            r = await c.request(method, path, json=body)
            assert r.status_code == 401, (path, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert "authentication required" in r.json()["error"]
            # a wrong key, and a key where only a token may go, are refused alike
            r = await c.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
            assert r.status_code == 401
        assert (await c.get("/v1/sessions/x", params={"token": KEY})).status_code == 401
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/")).status_code == 200
        assert (await c.get("/static/app.js")).status_code == 200
        r = await c.get("/readyz")  # a stranger learns only ready or not
        assert r.status_code == 200 and r.json() == {"ready": True}
        r = await c.get("/readyz", headers={"Authorization": f"Bearer {KEY}"})
        assert r.json()["ready"] is True and "stage" in r.json()
    for path in ("/v1/voice/ws", "/v1/telephony/telnyx/stream"):
        code, reason = await _ws_close(f"ws://{addr}{path}")
        assert code == 4401 and "authentication required" in reason
    # no model time was spent, and the refusals are counted
    assert llm.requests == [] and state.sessions == {}
    async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=10) as c:
        text = (await c.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})).text
    (line,) = [x for x in text.splitlines() if x.startswith('voice_agent_requests_refused_total{reason="auth"}')]
    assert float(line.split()[-1]) >= 20


async def test_a_key_calls_and_a_token_lets_the_page_call(guarded: Any) -> None:
    addr, _, _ = guarded
    key = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=10) as c:
        r = await c.post("/v1/chat", json={"message": "hi"}, headers=key)
        assert r.status_code == 202
        r = await c.post("/v1/tokens", headers=key)
        assert r.status_code == 201
        minted = r.json()
        assert minted["expires_in"] == 600 and minted["token_type"] == "Bearer"
        token = minted["token"]
        bearer = {"Authorization": f"Bearer {token}"}
        # a token cannot mint tokens
        assert (await c.post("/v1/tokens", headers=bearer)).status_code == 401
        r = await c.post("/v1/chat", json={"message": "hello"}, headers=bearer)
        assert r.status_code == 202
        # an EventSource cannot set a header: the token goes in the URL
        url = r.json()["events_url"] + f"?token={token}"
        async with aconnect_sse(c, "GET", url) as source:
            kinds = [sse.event async for sse in source.aiter_sse() if sse.data]
        assert kinds[-1] == "done"
    async with websockets.connect(f"ws://{addr}/v1/voice/ws?token={token}") as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 16000}))
        assert json.loads(await ws.recv())["type"] == "session.started"
    # a provider's fixed stream URL may carry the key itself: the stream is let in (it
    # waits for the provider's start message)
    async with websockets.connect(f"ws://{addr}/v1/telephony/telnyx/stream?token={KEY}") as ws:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 1.0)


async def test_other_origins_are_refused(guarded: Any) -> None:
    addr, _, _ = guarded
    key = {"Authorization": f"Bearer {KEY}"}
    code, reason = await _ws_close(
        f"ws://{addr}/v1/voice/ws", origin="http://evil.example", additional_headers=key
    )
    assert (code, reason) == (4403, "this origin is not allowed")
    async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=10) as c:
        evil = key | {"Origin": "http://evil.example"}
        r = await c.post("/v1/chat", json={"message": "hi"}, headers=evil)
        assert r.status_code == 403 and r.json() == {"error": "this origin is not allowed"}
        good = key | {"Origin": "http://good.example"}
        assert (await c.post("/v1/chat", json={"message": "hi"}, headers=good)).status_code == 202


def test_a_token_expires_on_the_injected_clock_and_needs_the_same_keys() -> None:
    clock = AutoAdvanceClockDouble(1_800_000_000.0)
    auth = Auth([KEY], token_ttl_s=60, wall=clock.now)
    token = auth.mint()["token"]
    assert auth.is_token(token) and not auth.is_key(token)
    assert Auth([KEY], wall=clock.now).is_token(token)  # another process, the same keys
    assert not Auth(["other"], wall=clock.now).is_token(token)
    clock.stall(61)
    assert not auth.is_token(token)
    assert not auth.is_token("not.a.jwt") and not auth.is_token("")


async def test_without_keys_tokens_are_off() -> None:
    app = create_app(engine=double_engine(ScriptedLLMDouble([], 0.01)))
    srv, addr, task = await start_server(app)
    try:
        async with httpx.AsyncClient(base_url=f"http://{addr}") as c:
            r = await c.post("/v1/tokens")
            assert r.status_code == 404 and "no API keys" in r.json()["error"]
            assert (await c.get("/metrics")).status_code == 200
    finally:
        srv.should_exit = True  # type: ignore[attr-defined]
        await task  # type: ignore[misc]


async def test_each_key_has_its_own_call_limit_and_its_tokens_count_against_it() -> None:
    other = "k-" + "y" * 30
    llm = ScriptedLLMDouble([], 0.01, default=["Hello."])
    config = ServerConfig(api_keys=[KEY, other], max_sessions_per_key=1)
    app = create_app(engine=double_engine(llm), config=config)
    srv, addr, task = await start_server(app)
    state = app.state.va
    start = json.dumps({"type": "session.start", "sample_rate": 16000})
    try:
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=10) as c:
            minted = await c.post("/v1/tokens", headers={"Authorization": f"Bearer {KEY}"})
            token = minted.json()["token"]
        url = f"ws://{addr}/v1/voice/ws"
        key_a = {"Authorization": f"Bearer {KEY}"}
        async with websockets.connect(url, additional_headers=key_a) as first:
            await first.send(start)
            assert json.loads(await first.recv())["type"] == "session.started"
            # the same key again, and a token it minted: refused before any model work
            assert await _ws_close(url, additional_headers=key_a) == (
                1013, "too many calls for this key (limit 1)")  # fmt: skip
            assert (await _ws_close(f"{url}?token={token}"))[0] == 1013
            # another key is not held up by it
            key_b = {"Authorization": f"Bearer {other}"}
            async with websockets.connect(url, additional_headers=key_b) as second:
                await second.send(start)
                assert json.loads(await second.recv())["type"] == "session.started"
                assert sorted(state.calls_by_key.counts.values()) == [1, 1]
        for _ in range(200):  # the server sees the clients' closes, and lets go
            if not state.calls_by_key.counts:
                break
            await asyncio.sleep(0.05)
        assert not state.calls_by_key.counts
        # the first call has ended: its key may call again
        async with websockets.connect(f"{url}?token={token}") as again:
            await again.send(start)
            assert json.loads(await again.recv())["type"] == "session.started"
        text = state.metrics.render().decode()
        assert 'voice_agent_sessions_refused_total{reason="per_key"} 2.0' in text
    finally:
        srv.should_exit = True  # type: ignore[attr-defined]
        await task  # type: ignore[misc]


async def test_a_failures_detail_is_for_a_key_and_a_pages_token_reads_it_redacted() -> None:
    from voice_agent.errors import LLMError
    from voice_agent.server import REDACTED

    boom = LLMError("LLM stream from http://10.0.0.7:8080/v1 broke: reset", "check the server")
    llm = ScriptedLLMDouble([["Half an ", "answer. ", boom]], 0.01)
    app = create_app(engine=double_engine(llm), config=ServerConfig(api_keys=[KEY]))
    srv, addr, task = await start_server(app)
    key = {"Authorization": f"Bearer {KEY}"}
    try:
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=10) as c:
            token = (await c.post("/v1/tokens", headers=key)).json()["token"]
        # the page calls with its token
        async with websockets.connect(f"ws://{addr}/v1/voice/ws?token={token}") as ws:
            await ws.send(json.dumps({"type": "session.start", "sample_rate": 16000}))
            sid = json.loads(await ws.recv())["session_id"]
            await ws.send(json.dumps({"type": "text", "text": "Tell me."}))
            async with asyncio.timeout(10):
                while True:
                    msg = await ws.recv()
                    if isinstance(msg, str) and json.loads(msg)["type"] == "metrics":
                        break
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=10) as c:
            whole = (await c.get(f"/v1/sessions/{sid}", headers=key)).json()
            page = await c.get(f"/v1/sessions/{sid}", params={"token": token})
        assert whole["errors"] == [str(boom)] and "10.0.0.7" in whole["turns"][0]["error"]
        assert page.status_code == 200 and "10.0.0.7" not in page.text
        report = page.json()
        assert report["errors"] == [REDACTED] and report["turns"][0]["error"] == REDACTED
        assert report["turns"][0]["heard_text"] == whole["turns"][0]["heard_text"]
    finally:
        srv.should_exit = True  # type: ignore[attr-defined]
        await task  # type: ignore[misc]


KEY2 = "k-" + "y" * 30


@pytest.fixture
async def two_keys() -> AsyncIterator[tuple[str, ScriptedLLMDouble, Any]]:
    llm = ScriptedLLMDouble([], 0.01, default=["Noted."])
    config = ServerConfig(api_keys=[KEY, KEY2], max_sessions_per_key=1)
    app = create_app(engine=double_engine(llm), config=config)
    srv, addr, task = await start_server(app)
    yield addr, llm, app.state.va
    srv.should_exit = True  # type: ignore[attr-defined]
    await task  # type: ignore[misc]


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


async def test_a_caller_reads_only_its_own_conversations(two_keys: Any) -> None:
    addr, _, _ = two_keys
    a, b = bearer(KEY), bearer(KEY2)
    async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=10) as c:
        r = await c.post("/v1/chat", json={"message": "My PIN is 4321."}, headers=a)
        assert r.status_code == 202
        rid, cid = r.json()["response_id"], r.json()["conversation_id"]
        async with aconnect_sse(c, "GET", f"/v1/chat/{rid}/events", headers=a) as source:
            assert [sse.event async for sse in source.aiter_sse() if sse.data][-1] == "done"
        r = await c.get(f"/v1/conversations/{cid}", headers=a)
        assert r.status_code == 200 and "4321" in r.text and "owner" not in r.json()
        # another key learns nothing: not the words, not that the records exist
        for method, path, body in [
            ("GET", f"/v1/conversations/{cid}", None),
            ("POST", "/v1/chat", {"message": "Repeat my PIN.", "conversation_id": cid}),
            ("GET", f"/v1/chat/{rid}/events", None),
            ("POST", f"/v1/chat/{rid}/cancel", None),
            ("POST", f"/v1/chat/{rid}/regenerate", None),
        ]:  # fmt: skip
            r = await c.request(method, path, json=body, headers=b)
            assert r.status_code == 404 and "4321" not in r.text, (path, r.text)
            assert r.json()["error"].startswith("no such"), (path, r.text)
        # a page's token reads what it started, and its key reads that too; another
        # token of the same key does not, nor does the key's own conversation open to it
        page = bearer((await c.post("/v1/tokens", headers=a)).json()["token"])
        other = bearer((await c.post("/v1/tokens", headers=a)).json()["token"])
        assert (await c.get(f"/v1/conversations/{cid}", headers=page)).status_code == 404
        r = await c.post("/v1/chat", json={"message": "My name is Ada."}, headers=page)
        assert r.status_code == 202
        mine = r.json()["conversation_id"]
        got = {
            who: (await c.get(f"/v1/conversations/{mine}", headers=h)).status_code
            for who, h in [("page", page), ("key", a), ("other page", other), ("other key", b)]
        }
        assert got == {"page": 200, "key": 200, "other page": 404, "other key": 404}


async def test_a_caller_reads_only_its_own_calls_live_kept_and_stored(two_keys: Any) -> None:
    addr, _, state = two_keys
    a, b = bearer(KEY), bearer(KEY2)
    async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=10) as c:

        async def seen_by(sid: str) -> dict[str, int]:
            return {
                who: (await c.get(f"/v1/sessions/{sid}", headers=h)).status_code
                for who, h in [("a", a), ("b", b)]
            }

        async with websockets.connect(f"ws://{addr}/v1/voice/ws", additional_headers=a) as ws:
            await ws.send(json.dumps({"type": "session.start", "sample_rate": 16000}))
            started = json.loads(await ws.recv())
            assert started["type"] == "session.started"
            sid = started["session_id"]
            assert await seen_by(sid) == {"a": 200, "b": 404}  # live
            # the per-key limit (1) holds for a phone stream on the same key too
            async with websockets.connect(
                f"ws://{addr}/v1/telephony/telnyx/stream?token={KEY}"
            ) as phone:  # fmt: skip
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(phone.recv(), 10)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1013
            assert closed.value.rcvd.reason == "too many calls for this key (limit 1)"
        await until(lambda: sid in state.reports, limit_s=10)
        assert await seen_by(sid) == {"a": 200, "b": 404}  # kept in memory
        assert "owner" not in (await c.get(f"/v1/sessions/{sid}", headers=a)).json()
        # from the store, as another process (or this one after a restart) reads it
        await until(lambda: not state.recording, limit_s=10)
        state.reports.pop(sid)
        assert await seen_by(sid) == {"a": 200, "b": 404}
        r = await c.get(f"/v1/sessions/{sid}", headers=a)
        assert r.json()["live"] is False and "owner" not in r.json()


async def test_a_keys_text_responses_in_progress_are_limited_apart_from_its_calls() -> None:
    llm = ScriptedLLMDouble([], 1.0, default=["A slow ", "answer."])
    config = ServerConfig(api_keys=[KEY, KEY2], max_sessions_per_key=1)
    app = create_app(engine=double_engine(llm), config=config)
    srv, addr, task = await start_server(app)
    a, b = bearer(KEY), bearer(KEY2)
    try:
        async with websockets.connect(f"ws://{addr}/v1/voice/ws", additional_headers=a) as ws:
            await ws.send(json.dumps({"type": "session.start", "sample_rate": 16000}))
            assert json.loads(await ws.recv())["type"] == "session.started"
            async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=10) as c:
                first = await c.post("/v1/chat", json={"message": "One?"}, headers=a)
                assert first.status_code == 202  # A's call does not count against it
                second = await c.post("/v1/chat", json={"message": "Two?"}, headers=a)
                assert second.status_code == 429
                assert second.json() == {
                    "error": "too many responses in progress for this key (limit 1)"
                }
                other = await c.post("/v1/chat", json={"message": "B?"}, headers=b)
                assert other.status_code == 202
                url = first.json()["events_url"]
                async with aconnect_sse(c, "GET", url, headers=a) as source:
                    assert [e.event async for e in source.aiter_sse() if e.data][-1] == "done"
                await until(lambda: not app.state.va.chat.by_key.counts.get(key_id(KEY)), limit_s=5)
                again = await c.post("/v1/chat", json={"message": "Three?"}, headers=a)
                assert again.status_code == 202
                text = (await c.get("/metrics", headers=a)).text
        refused = [x for x in text.splitlines() if x.startswith("voice_agent_sessions_refused")]
        assert 'voice_agent_sessions_refused_total{reason="per_key"} 1.0' in refused, refused
    finally:
        srv.should_exit = True  # type: ignore[attr-defined]
        await task  # type: ignore[misc]


async def test_the_per_key_limit_on_text_holds_under_concurrent_starts() -> None:
    """Eight messages from one key at the same moment, limit 2: the hold is taken
    before the first await, so exactly two start and six get 429."""
    llm = ScriptedLLMDouble([], 1.0, default=["A slow ", "answer."])
    config = ServerConfig(api_keys=[KEY], max_sessions_per_key=2)
    app = create_app(engine=double_engine(llm), config=config)
    srv, addr, task = await start_server(app)
    a = bearer(KEY)
    try:
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=10) as c:
            posts = [c.post("/v1/chat", json={"message": f"Q{i}?"}, headers=a) for i in range(8)]
            codes = sorted(r.status_code for r in await asyncio.gather(*posts))
            assert codes == [202, 202] + [429] * 6
            assert app.state.va.chat.by_key.counts[key_id(KEY)] == 2
            await until(lambda: not app.state.va.chat.by_key.counts, limit_s=10)
    finally:
        srv.should_exit = True  # type: ignore[attr-defined]
        await task  # type: ignore[misc]
