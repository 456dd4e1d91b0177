"""The system prompt: what the agent says it can and cannot do, and the date line read once
from an injected wall clock (never the session's timing clock)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from voice_agent.session.config import (
    DEFAULT_SYSTEM_PROMPT,
    SessionConfig,
    date_line,
    system_message,
)

TZ = timezone(timedelta(hours=-5))


@pytest.mark.parametrize(
    ("when", "line"),
    [
        (datetime(2026, 11, 25, 14, 5, tzinfo=TZ),
         "Today is Wednesday, November 25, 2026, and the local time is 2:05 in the afternoon."),
        (datetime(2026, 1, 1, 0, 30, tzinfo=TZ),
         "Today is Thursday, January 1, 2026, and the local time is 12:30 in the morning."),
        (datetime(2026, 7, 4, 19, 45, tzinfo=TZ),
         "Today is Saturday, July 4, 2026, and the local time is 7:45 in the evening."),
    ],
)  # fmt: skip
def test_the_date_line_says_the_time_as_a_person_would(when: datetime, line: str) -> None:
    assert date_line(when) == line


def test_the_system_message_is_the_prompt_then_the_date_line() -> None:
    when = datetime(2026, 11, 25, 9, 0, tzinfo=TZ)
    cfg = SessionConfig(wall_clock=lambda: when)
    message = system_message(cfg)
    # the prompt comes first and is byte-stable, so every call shares its cached prefix
    assert message == f"{DEFAULT_SYSTEM_PROMPT}\n{date_line(when)}"
    assert system_message(SessionConfig(wall_clock=None)) == DEFAULT_SYSTEM_PROMPT


def test_the_prompt_states_what_the_agent_cannot_know() -> None:
    prompt = DEFAULT_SYSTEM_PROMPT.lower()
    for phrase in ("cannot look anything up", "weather", "whether a place is open", "prices",
                   "accounts", "say plainly that you can't check it",
                   "never make up facts", "ask them to say it again"):  # fmt: skip
        assert phrase in prompt, phrase
