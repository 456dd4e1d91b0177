"""The tight encoder window's guard against a decoder that repeats itself."""

import pytest

from voice_agent.stt.whisper import drop_repeated_opening, looks_repeated


@pytest.mark.parametrize(
    ("text", "repeated"),
    [
        ("What should I cook for dinner tonight? What should I", True),
        ("is it going to rain is it going to rain", True),
        ("He began a confused complaint against the wizard.", False),
        (
            "And so my fellow Americans ask not what your country can do for you "
            "ask what you can do for your country.",
            False,
        ),
        ("no no no", False),
        ("", False),
        ("one two three four and then one two three four", True),
    ],
)
def test_looks_repeated(text: str, repeated: bool) -> None:
    assert looks_repeated(text) is repeated


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (
            "What should I cook for dinner tonight? What should I",
            "What should I cook for dinner tonight?",
        ),
        ("Is it going to rain? Is it going to rain?", "Is it going to rain?"),
        ("no no no", "no no no"),
        (
            "He said what should I do, what should I do",
            "He said what should I do, what should I do",
        ),
        ("Tell me more. Tell me about it.", "Tell me more. Tell me about it."),
    ],
)
def test_drop_repeated_opening(text: str, kept: str) -> None:
    assert drop_repeated_opening(text) == kept
