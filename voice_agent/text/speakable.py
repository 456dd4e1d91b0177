"""Markdown → text that a TTS voice can say. Pure string functions."""

from __future__ import annotations

import re

_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+")
_BULLET = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+")
_QUOTE = re.compile(r"^\s*>\s?")
_HTML = re.compile(r"</?[A-Za-z][^>]*>")
_RULE = re.compile(r"\s*[-*_=|:]{3,}\s*")
_EMPHASIS = re.compile(r"(?<![\w*_])[*_]+(?=\S)|(?<=\S)[*_]+(?![\w*_])")
_SPACES = re.compile(r"\s+")
_BEFORE_STOP = re.compile(r"\s+([,.;:!?])")
_SLOT = re.compile(r"\[[^\]]*\]|\{[^}]*\}|<[^>]*>")
"""A template slot left in the text ("[insert the name here]", "{city}"): never spoken."""
_SYMBOLS = [
    (re.compile(r"(?<=\d)\s*%"), " percent"),
    (re.compile(r"(?<=\d)\s*°\s*F\b"), " degrees Fahrenheit"),
    (re.compile(r"(?<=\d)\s*°\s*C\b"), " degrees Celsius"),
    (re.compile(r"°"), " degrees"),
    (re.compile(r"(?<=[\d\s])=(?=[\s\d])"), " equals "),
    (re.compile(r"(?<=\d)\s*\+\s*(?=\d)"), " plus "),
    (re.compile(r"(?<=\d)\s*[×x*]\s*(?=\d)"), " times "),
    (re.compile(r"\s&\s"), " and "),
]
"""Symbols a voice would read literally, or not at all, as a person says them."""


def speakable(text: str) -> str:
    """Strip markdown markup, keeping the words.

    Links keep their text, list bullets and heading marks go, emphasis and
    code marks go, table pipes become spaces, a rule line becomes ``""``. Template
    slots ("[insert the name]") go, and %, °, =, +, × and & are said in words.
    """
    if _RULE.fullmatch(text):
        return ""
    t = _IMAGE.sub(r"\1", text)
    t = _LINK.sub(r"\1", t)
    t = _HEADING.sub("", t)
    t = _QUOTE.sub("", t)
    t = _BULLET.sub("", t)
    t = _HTML.sub("", t)
    t = t.replace("`", "").replace("~~", "").replace("|", " ")
    t = _EMPHASIS.sub("", t)
    t = _SLOT.sub("", t)
    for pattern, words in _SYMBOLS:
        t = pattern.sub(words, t)
    return _BEFORE_STOP.sub(r"\1", _SPACES.sub(" ", t)).strip()
