"""The knowledge-folder search (BM25 over markdown passages): how files are cut, what
ranks first, the tool's result, and the text chat reading the best passages ahead of
the LLM call."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from doubles import ScriptedLLMDouble

from voice_agent.llm.base import ToolCall
from voice_agent.llm.knowledge import KnowledgeBase, split_markdown

ROOT = Path(__file__).resolve().parents[1]
KNOWLEDGE = ROOT / "samples" / "knowledge"


def test_a_file_is_cut_into_passages_under_its_headings() -> None:
    text = "# Title\nIntro line one\nline two.\n\n## Part A\nFirst.\n\nSecond.\n\n```\n# not a heading\n```\n"
    got = split_markdown("doc.md", text, passage_words=100)
    assert [(p.heading, p.text) for p in got] == [
        ("Title", "Intro line one line two."),
        ("Part A", "First.\n\nSecond.\n\n``` # not a heading ```"),
    ]
    long = "## H\n" + "\n\n".join(["word " * 30] * 3)
    assert [len(p.text.split()) for p in split_markdown("x.md", long, passage_words=50)] == [30, 30, 30]


def test_the_best_passage_ranks_first_with_its_file() -> None:
    kb = KnowledgeBase.load(KNOWLEDGE)
    assert kb.files == ["README.md", "returns.md", "shipping.md"]
    hits = kb.search("how much does express shipping cost")
    assert (hits[0].passage.file, hits[0].passage.heading) == ("shipping.md", "Standard and express")
    hits = kb.search("when will my refund arrive")
    assert (hits[0].passage.file, hits[0].passage.heading) == ("returns.md", "Refund timing")
    assert all(a.score >= b.score > 0 for a, b in itertools.pairwise(hits))
    assert kb.search("the and of") == [] and kb.search("   ") == []
    assert kb.search("xylophone zebra") == []


async def test_the_tool_returns_passages_with_file_names(tmp_path: Path) -> None:
    kb = KnowledgeBase.load(KNOWLEDGE)
    t = kb.tool()
    assert t.name == "search_knowledge" and t.parameters["required"] == ["query"]
    out = json.loads(await t.handler({"query": "ship to PO boxes"}))
    assert out["results"][0]["file"] == "shipping.md"
    assert "PO boxes" in out["results"][0]["text"]
    none = json.loads(await t.handler({"query": "quantum chromodynamics"}))
    assert none == {"results": [], "note": "nothing in the knowledge base"}
    empty = KnowledgeBase.load(tmp_path)
    assert empty.passages == [] and empty.search("anything") == []


async def test_the_chat_reads_the_best_passages_before_the_llm(chat_server: Any) -> None:
    llm = ScriptedLLMDouble([["Five business days."]], 0.01)
    chat = await chat_server(llm, knowledge=KNOWLEDGE)
    ids = await chat.start("How long does a refund take?")
    events = await chat.events(ids["response_id"])
    assert events[-1][1] == "done"
    assert events[-1][2]["timings"]["context_ms"] >= 0
    system = llm.requests[0][0]["content"]
    assert "[returns.md — Refund timing]" in system and "5 business days" in system
    # the tool is offered too
    assert "search_knowledge" in [s["function"]["name"] for s in llm.tool_schemas[0]]


async def test_the_chat_calls_the_knowledge_tool(chat_server: Any) -> None:
    llm = ScriptedLLMDouble(
        [[ToolCall("k1", "search_knowledge", {"query": "express shipping"})], ["$12."]], 0.01
    )
    chat = await chat_server(llm, knowledge=KNOWLEDGE)
    ids = await chat.start("Tell me about fast delivery.")
    events = await chat.events(ids["response_id"])
    tool = [e[2] for e in events if e[1] == "tool"]
    assert [t["state"] for t in tool] == ["started", "finished"]
    assert [e[2]["text"] for e in events if e[1] == "status"][1] == "Searching the knowledge base…"
    result = json.loads(llm.requests[1][-1]["content"])
    assert result["results"][0]["file"] == "shipping.md"
