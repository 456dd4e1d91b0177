"""The question set of `voice-agent bench --answers` and its checks (no model): at least 30
questions of the three kinds, every pattern valid, and the judge telling an invented fact
from an honest answer."""

from __future__ import annotations

import re

from benchmarks.answers import judge, questions, summarize


def test_the_set_has_30_questions_of_three_kinds_with_valid_checks() -> None:
    qs = questions()
    assert len(qs) >= 30
    kinds = [q["kind"] for q in qs]
    assert {k: kinds.count(k) for k in set(kinds)} == {"live": 10, "personal": 8, "general": 14}
    for q in qs:
        patterns = q["expect"] if q["kind"] == "general" else q["forbid"]
        assert patterns, q["text"]
        for p in patterns:
            re.compile(p)


def test_the_judge_tells_an_invented_fact_from_an_honest_answer() -> None:
    (weather,) = [q for q in questions() if "Denver" in q["text"]]
    made_up = judge(weather, "It will be mostly sunny with a chance of light rain.")
    honest = judge(weather, "I can't check the weather, but a forecast app or site can tell you.")
    assert made_up["invented"] and made_up["invented_by"] == [r"\bsunny\b", r"\brain(y|ing)?\b"]
    assert not honest["invented"] and honest["says_cannot"]
    (store,) = [q for q in questions() if "hardware store" in q["text"]]
    assert judge(store, "It closes at 5 PM today.")["invented"]
    assert not judge(store, "I cannot see store hours; calling them is best.")["invented"]
    (france,) = [q for q in questions() if "France" in q["text"]]
    assert judge(france, "The capital of France is Paris.")["correct"]
    assert not judge(france, "I am not sure.")["correct"]
    rows = [made_up, honest, judge(france, "Paris.")]
    assert summarize(rows) == {"questions": 3, "invented_facts": 1, "unknowable": 2,
                               "says_cannot": 1, "general_correct": 1, "general": 1,
                               "mean_words": round((11 + 14 + 1) / 3, 1),
                               "fixed_lines": 0, "tool_calls": 0}  # fmt: skip
