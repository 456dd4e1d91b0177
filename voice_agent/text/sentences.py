"""Incremental sentence splitter for streamed LLM text.

Pure: :meth:`SentenceSplitter.feed` takes text as it arrives and returns the
chunks that are complete; :meth:`SentenceSplitter.flush` returns the rest at
the end of the stream. A sentence end is decided only once the next
non-space character is known, so "3.14", "Dr. Smith", "e.g. this" and
"U.S. law" are not split. The first chunk of a reply is kept short (it is
cut at a clause boundary once it has ``first_min_words`` words) because time
to first audio is the time to synthesize the whole first chunk. Markdown is
stripped from every chunk; fenced code blocks are not spoken.
"""

from __future__ import annotations

from voice_agent.text.speakable import speakable

TERMINALS = ".!?…"
CLOSERS = "\"'”’)]*_`"
CLAUSE = ",;:—"
ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof sr jr st vs etc e.g i.e eg ie inc ltd co no approx fig dept est
    u.s u.k a.m p.m jan feb mar apr jun jul aug sep sept oct nov dec mt ft ave blvd vol
    cf al ca min max""".split()
)


class SentenceSplitter:
    def __init__(
        self,
        first_min_words: int = 3,
        first_max_words: int = 8,
        max_words: int = 40,
    ) -> None:
        self.first_min_words = first_min_words
        self.first_max_words = first_max_words
        self.max_words = max_words
        self._buf = ""
        self._emitted = 0
        self._in_code = False

    def feed(self, text: str) -> list[str]:
        """Add streamed text; return the chunks completed by it (speakable, non-empty)."""
        self._buf += text
        return self._drain(final=False)

    def cut(self, min_words: int) -> list[str]:
        """Now, not at a sentence end: the buffered whole words (to the last space), if
        there are at least ``min_words`` of them (the voice would run dry before the
        sentence ends). Nothing inside a code block, nothing before the first chunk."""
        if self._in_code or self._emitted == 0:
            return []
        head = self._buf.lstrip(" \t\r")
        end = max(head.rfind(" "), head.rfind("\n"))
        if end <= 0 or "`" in head[:end] or len(head[:end].split()) < min_words:
            return []
        self._buf = head[end:]
        return self._emit(head[:end])

    def flush(self) -> list[str]:
        """End of stream: return whatever is left."""
        out = self._drain(final=True)
        rest = self._buf
        self._buf = ""
        if rest.strip():
            out.extend(self._emit(rest))
        return out

    # -- internals -----------------------------------------------------------

    def _drain(self, final: bool) -> list[str]:
        out: list[str] = []
        while True:
            self._buf = self._buf.lstrip(" \t\r")
            end = self._boundary(self._buf, final)
            if end is None:
                return out
            chunk, self._buf = self._buf[:end], self._buf[end:]
            out.extend(self._emit(chunk))

    def _emit(self, chunk: str) -> list[str]:
        stripped = chunk.strip()
        if stripped.startswith("```"):
            self._in_code = not self._in_code
            return []
        if self._in_code:
            return []
        text = speakable(stripped)
        if not text or not any(c.isalnum() for c in text):
            return []
        self._emitted += 1
        return [text]

    def _boundary(self, buf: str, final: bool) -> int | None:
        first = self._emitted == 0
        words = 0
        in_word = False
        n = len(buf)
        for i, ch in enumerate(buf):
            if ch.isspace():
                if in_word:
                    in_word = False
                    cap = self.first_max_words if first else self.max_words
                    if words >= cap and not self._in_code:
                        return i
            elif not in_word:
                in_word = True
                words += 1
            if ch == "\n":
                if buf[:i].strip():
                    return i + 1
                continue
            if self._in_code:
                continue
            if ch in TERMINALS:
                j = i + 1
                while j < n and (buf[j] in TERMINALS or buf[j] in CLOSERS):
                    j += 1
                if j == n:
                    return j if final else None
                if not buf[j].isspace():
                    continue
                k = j
                while k < n and buf[k] in " \t":
                    k += 1
                if k == n:
                    if final:
                        return j
                    return None
                if ch == "." and (self._abbreviation(buf, i) or self._list_number(buf, i)):
                    continue
                if buf[k].islower():
                    continue
                return j
            if (
                first
                and ch in CLAUSE
                and i + 1 < n
                and buf[i + 1].isspace()
                and words >= self.first_min_words
            ):
                return i + 1
            if (
                not first
                and ch in CLAUSE
                and i + 1 < n
                and buf[i + 1].isspace()
                and words >= self.max_words * 3 // 4
            ):
                return i + 1
        return None

    @staticmethod
    def _abbreviation(buf: str, dot: int) -> bool:
        start = dot
        while start > 0 and not buf[start - 1].isspace() and buf[start - 1] not in "(\"'“":
            start -= 1
        word = buf[start:dot].lower()
        if not word:
            return False
        if len(word) == 1 and word.isalpha():
            return True  # an initial: "J. K. Rowling"
        return word in ABBREVIATIONS

    @staticmethod
    def _list_number(buf: str, dot: int) -> bool:
        line_start = buf.rfind("\n", 0, dot) + 1
        head = buf[line_start:dot].strip()
        return head.isdigit() and len(head) <= 3
