"""Questions the agent cannot answer truthfully, found before the LLM is asked.

The agent has no live information and cannot see the caller's records. The system
prompt says so, and the 1.5B model mostly listens; the 0.5B model does not (it gave a
weekend forecast for Denver, an Apple share price and a dentist appointment time,
14 of 18 in ``bench --answers``), and a note beside the question was read aloud rather
than followed. So a turn that plainly asks for live facts or the caller's own data is
answered with a fixed, honest line (a cached clip, so it also plays at once), and the
exchange enters the history like any other. Only while the agent has no tools: a tool
may be able to check.

The patterns favour precision: a question they miss still goes to the LLM with the
system prompt. Live facts need a topic that is always live (weather, traffic, news,
share prices, exchange rates) or a topic that can be live together with a word that
makes it so ("open … right now", "the score … last night"); "Who won the World Cup in
1966?" is general knowledge. Pure functions.
"""

from __future__ import annotations

import re
from enum import StrEnum

ALWAYS_LIVE = re.compile(
    r"\b(weather|forecast|traffic|headlines?|news today|today's news|latest news|"
    r"stock price|share price|(price|value) of .{0,20}\b(stock|shares?)|"
    r"stock market|exchange rate|flight status)\b",
    re.IGNORECASE,
)
LIVE_TOPIC = re.compile(
    r"\b(price|prices|cost|costs|open|opens|close|closes|closed|closing|hours|score|won|"
    r"win|winning|game|match|bus|train|flight|ferry|departs?|leaves?|arrives?|delayed|"
    r"on time|rain|raining|snow|snowing|sunny|temperature|news|happening|queue|wait|"
    r"available|availability|tickets?|sold out)\b",
    re.IGNORECASE,
)
LIVE_WHEN = re.compile(
    r"\b(now|right now|today|tonight|tomorrow|currently|current|latest|this (week|weekend|"
    r"morning|afternoon|evening|year)|last night|yesterday|next|at the moment|these days)\b",
    re.IGNORECASE,
)
TYPICAL = re.compile(
    r"\b(usually|typically|normally|generally|on average|in general|average)\b", re.IGNORECASE
)
"""What it is usually like (the climate, a typical price) is general knowledge."""
PERSONAL = re.compile(
    r"\b(my|our)(\s+[\w'-]+){0,2}?\s+(orders?|account|balance|bank|card|credit|debit|"
    r"appointments?|bookings?|reservations?|messages?|texts?|e-?mails?|inbox|mail|"
    r"voicemails?|calendar|meetings?|package|parcel|delivery|shipment|bill|invoice|"
    r"payments?|subscription|prescription|flight|ticket|claim|refund|plan|policy|points|"
    r"password|pin|statement|transactions?|results?)\b"
    r"|\b(did|have|has) (i|we|my [\w'-]+)( \w+)? (get|got|receive|received|send|sent|"
    r"order|ordered|buy|bought|book|booked|pay|paid|spend|spent)\b"
    r"|\b(do|did) (i|we) (have|owe)\b|\bcheck (my|on my|the status)\b",
    re.IGNORECASE,
)


class Unknowable(StrEnum):
    LIVE = "live"
    PERSONAL = "personal"


_OLD_SPELLING = re.compile(r"\bto-(day|night|morrow)\b", re.IGNORECASE)
"""Moonshine writes "to-morrow" and "to-night" (as in older books) now and then."""


def unknowable(text: str) -> Unknowable | None:
    """What ``text`` asks for that the agent cannot know, if it plainly does."""
    text = _OLD_SPELLING.sub(r"to\1", text)
    if PERSONAL.search(text):
        return Unknowable.PERSONAL
    if TYPICAL.search(text):
        return None
    if ALWAYS_LIVE.search(text) or (LIVE_TOPIC.search(text) and LIVE_WHEN.search(text)):
        return Unknowable.LIVE
    return None
