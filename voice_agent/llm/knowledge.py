"""Search over a local knowledge folder of markdown files, ranked with BM25 (bm25s).

:meth:`KnowledgeBase.load` reads every ``*.md`` file under the folder (at most
``max_files``, each at most ``max_file_bytes``), cuts each into passages (a heading's
paragraphs, up to about ``passage_words`` words) and indexes them. :meth:`search`
returns the best passages with their file names; :meth:`tool` is the
``search_knowledge`` tool the LLM calls, and :meth:`prefetch` the note of best hits
read ahead of a text reply (its time is in the reply's ``context_ms``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import bm25s

from voice_agent.llm.tools import Tool, tool

log = logging.getLogger("voice_agent.knowledge")
HEADING = re.compile(r"^#{1,6}\s+(.*)$")


@dataclass(frozen=True)
class Passage:
    file: str
    """The file's path under the knowledge folder."""
    heading: str
    text: str


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float

    def public(self) -> dict[str, object]:
        p = self.passage
        return {"file": p.file, "heading": p.heading, "text": p.text,
                "score": round(self.score, 3)}  # fmt: skip


def split_markdown(name: str, text: str, passage_words: int = 120) -> list[Passage]:
    """A file's passages: under each heading, its paragraphs joined up to about
    ``passage_words`` words (a longer paragraph is a passage of its own)."""
    out: list[Passage] = []
    heading = ""
    para: list[str] = []
    chunk: list[str] = []

    def flush_chunk() -> None:
        if chunk:
            out.append(Passage(name, heading, "\n\n".join(chunk)))
            chunk.clear()

    def end_paragraph() -> None:
        if not para:
            return
        text = " ".join(para).strip()
        para.clear()
        words = len(text.split())
        if chunk and sum(len(c.split()) for c in chunk) + words > passage_words:
            flush_chunk()
        chunk.append(text)

    in_code = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        m = None if in_code else HEADING.match(line)
        if m:
            end_paragraph()
            flush_chunk()
            heading = m.group(1).strip()
        elif not line.strip() and not in_code:
            end_paragraph()
        else:
            para.append(line.strip())
    end_paragraph()
    flush_chunk()
    return out


class KnowledgeBase:
    def __init__(self, passages: list[Passage], files: list[str]) -> None:
        self.passages = passages
        self.files = files
        self._index: bm25s.BM25 | None = None
        if passages:
            self._index = bm25s.BM25()
            self._index.index(self._tokens([_doc(p) for p in passages]), show_progress=False)

    @staticmethod
    def _tokens(texts: list[str]) -> object:
        return bm25s.tokenize(texts, stopwords="en", show_progress=False)

    @classmethod
    def load(
        cls,
        folder: Path,
        max_files: int = 10_000,
        max_file_bytes: int = 1_000_000,
        passage_words: int = 120,
    ) -> KnowledgeBase:
        """Read and index the folder (blocking: call it at startup, off the loop)."""
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"knowledge folder {root} is not a directory")
        passages: list[Passage] = []
        files: list[str] = []
        for path in sorted(root.rglob("*.md"))[:max_files]:
            if not path.is_file() or path.stat().st_size > max_file_bytes:
                log.warning("knowledge: skipped %s (not a file, or over %d bytes)",
                            path, max_file_bytes)  # fmt: skip
                continue
            name = path.relative_to(root).as_posix()
            text = path.read_text(encoding="utf-8", errors="replace")
            passages += split_markdown(name, text, passage_words)
            files.append(name)
        return cls(passages, files)

    def search(self, query: str, k: int = 3) -> list[Hit]:
        """The best ``k`` passages for ``query`` that share a word with it, best first."""
        if self._index is None or not query.strip():
            return []
        tokens = self._tokens([query])
        k = min(k, len(self.passages))
        try:
            docs, scores = self._index.retrieve(tokens, k=k, show_progress=False)
        except (ValueError, IndexError):  # a query of stopwords or unknown words only
            return []
        return [
            Hit(self.passages[int(i)], float(s))
            for i, s in zip(docs[0], scores[0], strict=True)
            if float(s) > 0
        ]

    def tool(self, k: int = 3) -> Tool:
        base = self

        @tool(
            status="Searching the knowledge base…", spoken="Let me look that up.",
            checks_live=False,
        )  # fmt: skip
        async def search_knowledge(
            query: Annotated[str, "What to look for, in a few words"],
        ) -> str:
            """Search the local knowledge base (the company's documents) for passages
            about a question. Use it for questions about the products, policies or
            facts those documents cover."""
            hits = await asyncio.to_thread(base.search, query, k)
            if not hits:
                return json.dumps({"results": [], "note": "nothing in the knowledge base"})
            return json.dumps({"results": [h.public() for h in hits]}, ensure_ascii=False)

        return search_knowledge

    async def prefetch(self, message: str, k: int = 2) -> str | None:
        """A system note with the best passages for a user's message; None if none."""
        hits = await asyncio.to_thread(self.search, message, k)
        if not hits:
            return None
        lines = ["Passages from the knowledge base that may answer the user (cite the file):"]
        for h in hits:
            where = h.passage.file + (f" — {h.passage.heading}" if h.passage.heading else "")
            lines.append(f"[{where}]\n{h.passage.text}")
        return "\n\n".join(lines)


def _doc(p: Passage) -> str:
    """What a passage is indexed by: its file's name and heading count as words too."""
    name = Path(p.file).stem.replace("-", " ").replace("_", " ")
    return f"{name} {p.heading}\n{p.text}"
