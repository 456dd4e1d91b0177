"""The page's text-chat pane in a real Chromium (Debian's, driven by playwright): markdown
rendered as it streams, the status line while a tool runs, and a connection cut in the
middle of a reply (by a TCP proxy between the browser and the server) that the page's
EventSource resumes with Last-Event-ID, so the text ends whole."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
from doubles import ScriptedLLMDouble, double_engine

from voice_agent.llm.base import ToolCall
from voice_agent.llm.tools import ToolRegistry, tool
from voice_agent.server import ServerConfig, create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip

REPLY = [
    "Here is ", "a table:\n\n", "| city | time |\n", "|---|---|\n", "| Tokyo ", "| 09:00 |\n",
    "| Paris | 01:00 |\n\n", "And some code:\n\n", "```python\n", "print(", "'<b>hi</b>')\n",
    "```\n\n", *[f"word{i} " for i in range(30)], "**done**.",
]  # fmt: skip


class CuttingProxy:
    """Forwards TCP connections to the server; :meth:`cut` aborts every open one (as a
    network drop does)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.open: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.cuts = 0

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        w.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(*self.target)
        self.open |= {w, uw}
        try:
            await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))
        finally:
            self.open -= {w, uw}

    def cut(self) -> None:
        self.cuts += 1
        for w in list(self.open):
            w.transport.abort()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@tool(status="Looking up the time…", spoken="Let me check.")
async def slow_time(city: str) -> str:
    """The time in a city."""
    await asyncio.sleep(0.5)
    return f"It is 09:00 in {city}."


@pytest.fixture(params=["open", "with a token"])
async def page_server(request: Any) -> AsyncIterator[Any]:
    import httpx
    from conftest import start_server
    from playwright.async_api import async_playwright

    llm = ScriptedLLMDouble([[ToolCall("c1", "slow_time", {"city": "Tokyo"})], REPLY], 0.05)
    engine = double_engine(llm)
    engine.tools = ToolRegistry([slow_time])
    keys = [] if request.param == "open" else ["operator-key-" + "k" * 20]
    app = create_app(engine=engine, config=ServerConfig(api_keys=keys))
    srv, addr, task = await start_server(app)
    host, port = addr.split(":")
    proxy = CuttingProxy((host, int(port)))
    front = await proxy.start()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            query = ""
            if keys:  # the operator's backend mints the page a token with its key
                async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
                    r = await client.post(
                        "/v1/tokens", headers={"Authorization": f"Bearer {keys[0]}"}
                    )
                query = f"?token={r.json()['token']}"
            await page.goto(f"http://{front}/{query}")
            yield page, proxy, errors, addr, keys
        finally:
            await browser.close()
            assert proxy.server is not None
            proxy.server.close()
            srv.should_exit = True  # type: ignore[attr-defined]
            await task  # type: ignore[misc]


async def test_a_reply_cut_mid_stream_resumes_and_renders_whole(page_server: Any) -> None:
    import httpx

    page, proxy, errors, addr, keys = page_server
    await page.fill("#chat-text", "What time is it in Tokyo? Show a table.")
    await page.click("#chat-form button")
    # the status line while the tool runs
    await page.wait_for_function(
        "document.getElementById('chat-status').textContent === 'Looking up the time…'",
        timeout=10_000,
    )
    # cut the connection once part of the reply has arrived (inside the code block)
    await page.wait_for_function(
        "Object.values(window.va.chat.texts).some(t => t.includes('print('))", timeout=15_000
    )
    partial_html = await page.evaluate("Object.values(window.va.chat.html)[0] || ''")
    proxy.cut()
    await page.wait_for_function(
        "Object.values(window.va.chat.done).length === 1", timeout=30_000
    )
    chat = await page.evaluate(
        "({texts: window.va.chat.texts, html: window.va.chat.html, done: window.va.chat.done,"
        " opens: window.va.chat.opens, cid: window.va.chat.conversationId,"
        " events: window.va.chat.events.map(e => e.event)})"
    )
    rid = next(iter(chat["texts"]))
    assert chat["done"] == {rid: "stop"}
    assert chat["opens"] >= 2  # it reconnected
    whole = "".join(REPLY)
    assert chat["texts"][rid] == whole  # no gap, no duplicate
    events = chat["events"]
    assert events[:3] == ["status", "status", "tool"] and events[-1] == "done"
    assert events.count("token") == len(REPLY)
    html = chat["html"][rid]
    assert "<table>" in html and "<td>Tokyo</td>" in html
    assert "<pre><code" in html and "&lt;b&gt;hi&lt;/b&gt;" in html  # shown, not markup
    assert "<strong>done</strong>" in html
    # before the cut, the half-written reply was already rendered: its table whole, its
    # open code block as code
    assert "<table>" in partial_html and "<pre><code" in partial_html
    # the page's text is the stored reply
    async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
        auth = {"Authorization": f"Bearer {keys[0]}"} if keys else {}
        conv = (await client.get(f"/v1/conversations/{chat['cid']}", headers=auth)).json()
    assert conv["messages"][-1]["content"] == whole.strip()
    assert errors == []
    rendered = await page.inner_text("#chat-log")
    assert "Tokyo" in rendered and "word29" in rendered and "<b>" in rendered
