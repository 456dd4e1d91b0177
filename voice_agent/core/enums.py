"""Small closed vocabularies shared by the session, its metrics and the transports.

They are ``StrEnum`` so that reports and events carry the same plain strings as before.
"""

from __future__ import annotations

from enum import StrEnum


class ReplyKind(StrEnum):
    """What a reply is: an answer from the LLM, or a fixed line (the purpose of a ``Say``)."""

    REPLY = "reply"
    IDLE_PROMPT = "idle_prompt"
    GOODBYE = "goodbye"
    SAY_AGAIN = "say_again"
    CANNOT_CHECK = "cannot_check"


class ReplyStatus(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    LLM_ERROR = "llm_error"


class BargeOutcome(StrEnum):
    """How caller speech over a live reply ended: still open, a real barge-in (the reply is
    cancelled), or not one (the reply resumed)."""

    PENDING = "pending"
    CONFIRMED = "confirmed"
    RECOVERED = "recovered"
