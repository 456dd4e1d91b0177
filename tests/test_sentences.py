"""Sentence splitter: table-driven, no event loop."""

import pytest

from voice_agent.text.sentences import SentenceSplitter
from voice_agent.text.speakable import speakable


def split(parts: list[str]) -> list[str]:
    s = SentenceSplitter()
    out: list[str] = []
    for p in parts:
        out += s.feed(p)
    return out + s.flush()


CASES = [
    # (name, streamed parts, expected chunks)
    (
        "two sentences",
        ["Hello there. How are", " you today? I am fine."],
        ["Hello there.", "How are you today?", "I am fine."],
    ),
    ("decimal", ["Pi is 3", ".", "14 or so. Next."], ["Pi is 3.14 or so.", "Next."]),
    (
        "abbreviation",
        ["Hi. Dr. Smith met Mr. Jones at 5 p.m. today. Bye."],
        ["Hi.", "Dr. Smith met Mr. Jones at 5 p.m. today.", "Bye."],
    ),
    (
        "e.g. and U.S.",
        ["Some, e.g. this one. The U.S. Senate voted."],
        ["Some, e.g. this one.", "The U.S. Senate voted."],
    ),
    ("initials", ["J. K. Rowling wrote it. Yes."], ["J. K. Rowling wrote it.", "Yes."]),
    (
        "money and thousands",
        ["It costs $3.50 for 2,000 units. Cheap!"],
        ["It costs $3.50 for 2,000 units.", "Cheap!"],
    ),
    (
        "number ends sentence",
        ["I counted to 5. Then I stopped."],
        ["I counted to 5.", "Then I stopped."],
    ),
    (
        "lowercase after dot is no boundary",
        ["It is approx. five miles."],
        ["It is approx. five miles."],
    ),
    (
        "first chunk cut at a clause",
        ["The capital of France, as you know, is Paris. It is old."],
        ["The capital of France,", "as you know, is Paris.", "It is old."],
    ),
    ("short clause not cut", ["Sure, Paris is lovely."], ["Sure, Paris is lovely."]),
    (
        "markdown stripped",
        ["**Sure!** Here are *two* options:\n1. Paris is nice.\n2. `Rome` too."],
        ["Sure!", "Here are two options:", "Paris is nice.", "Rome too."],
    ),
    (
        "code block not spoken",
        ["Run this:\n```python\nprint(1)\n```\nDone."],
        ["Run this:", "Done."],
    ),
    ("link keeps its text", ["See [the docs](http://x.y/z) now."], ["See the docs now."]),
    ("quote closes sentence", ['He said "stop." Then left.'], ['He said "stop."', "Then left."]),
    ("ellipsis and ?!", ["Wait... Really?! Yes."], ["Wait...", "Really?!", "Yes."]),
    ("no terminal punctuation", ["just words"], ["just words"]),
    ("empty", [""], []),
    (
        "long first chunk capped",
        [
            "one two three four five six seven eight nine ten eleven twelve "
            "thirteen fourteen fifteen sixteen."
        ],
        [
            "one two three four five six seven eight",
            "nine ten eleven twelve thirteen fourteen fifteen sixteen.",
        ],
    ),
]


@pytest.mark.parametrize(("parts", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_split(parts: list[str], expected: list[str]) -> None:
    assert split(parts) == expected


@pytest.mark.parametrize(("parts", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_split_char_by_char_matches(parts: list[str], expected: list[str]) -> None:
    assert split(list("".join(parts))) == expected


def test_sentence_is_held_until_next_char_known() -> None:
    s = SentenceSplitter()
    assert s.feed("It is 3.") == []  # could be 3.14
    assert s.feed(" Next") == ["It is 3."]
    assert s.flush() == ["Next"]


@pytest.mark.parametrize(
    ("markdown", "spoken"),
    [
        ("## Heading here", "Heading here"),
        ("- item one", "item one"),
        ("* **bold** and _it_", "bold and it"),
        ("---", ""),
        ("| a | b |", "a b"),
        ("snake_case_name stays", "snake_case_name stays"),
        ("2 * 3 = 6", "2 times 3 equals 6"),
        ("It is 75°F, with 40% rain.", "It is 75 degrees Fahrenheit, with 40 percent rain."),
        ("Hi [insert the caller's name], how can I help?", "Hi, how can I help?"),
        ("Welcome to {city}.", "Welcome to."),
        ("A 3x4 grid, 2 + 2, R&D & more", "A 3 times 4 grid, 2 plus 2, R&D and more"),
        ("about 20 °C", "about 20 degrees Celsius"),
        ("![alt text](img.png)", "alt text"),
        ("> quoted", "quoted"),
    ],
)
def test_speakable(markdown: str, spoken: str) -> None:
    assert speakable(markdown) == spoken


def test_cut_speaks_the_whole_words_so_far_but_never_the_first_chunk_or_code() -> None:
    s = SentenceSplitter(first_max_words=3)
    assert s.cut(3) == []  # before the first chunk: its own rule decides
    assert s.feed("Octopuses are small creatures that live in the oce") == [
        "Octopuses are small"
    ]
    assert s.cut(7) == []  # only five whole words ("oce" is not one yet)
    assert s.cut(3) == ["creatures that live in the"]
    assert s.feed("an and swim. Then") == ["ocean and swim."]
    assert s.flush() == ["Then"]
    code = SentenceSplitter(first_max_words=3)
    code.feed("Here it is now.\n```\nprint(1) and more words here ")
    assert code.cut(2) == []
