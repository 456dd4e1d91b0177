"""Questions the agent cannot know, found before the LLM: exact classifications, and the
fixed lines judged honest by the answers bench's own checks."""

from __future__ import annotations

import pytest

from benchmarks.answers import judge, questions
from voice_agent.session.config import SessionConfig, honest_line
from voice_agent.session.honesty import Unknowable, unknowable


@pytest.mark.parametrize(
    ("text", "kind"),
    [("Is it raining in London now?", Unknowable.LIVE),
     ("What's the price of gold today?", Unknowable.LIVE),
     ("Are there any tickets left for tonight's show?", Unknowable.LIVE),
     ("How's the traffic into town?", Unknowable.LIVE),
     ("Is it going to rain to-morrow in Seattle?", Unknowable.LIVE),  # as Moonshine spells it
     ("Is the bakery open to-night?", Unknowable.LIVE),
     ("Did my package ship?", Unknowable.PERSONAL),
     ("Have I got any new voicemails?", Unknowable.PERSONAL),
     ("What's my account number?", Unknowable.PERSONAL),
     # general knowledge, and what the agent does know (the date and time it is given)
     ("Who won the World Cup in 1966?", None),
     ("How many hours are in a week?", None),
     ("Is the Louvre open on Mondays?", None),
     ("What's the weather usually like in Hawaii?", None),
     ("How much does a blue whale weigh?", None),
     ("Explain how rainbows form.", None),
     ("What's the date today?", None),
     ("What time is it?", None),
     ("What day of the week is it today?", None)],
)  # fmt: skip
def test_what_it_plainly_cannot_know(text: str, kind: Unknowable | None) -> None:
    assert unknowable(text) is kind


def test_the_bench_set_live_and_personal_are_found_and_general_knowledge_is_not() -> None:
    for q in questions():
        expected = {"live": Unknowable.LIVE, "personal": Unknowable.PERSONAL}.get(q["kind"])
        assert unknowable(q["text"]) is expected, q["text"]


def test_the_fixed_lines_invent_nothing_and_say_they_cannot_check() -> None:
    cfg = SessionConfig()
    for q in questions():
        if q["kind"] == "general":
            continue
        line = honest_line(cfg, q["text"], has_tools=False)
        assert line is not None
        row = judge(q, line)
        assert not row["invented"] and row["says_cannot"], (q["text"], row["invented_by"])
