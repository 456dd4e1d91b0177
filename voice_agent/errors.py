"""Errors that reach the user: one line that says what happened and what to do."""

from __future__ import annotations

from typing import Any


class VoiceAgentError(Exception):
    """An error with a fix the user can apply.

    ``str(err)`` is a single line: ``"<what happened> — <what to do>"``.
    """

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        line = f"{self.message} — {self.fix}" if self.fix else self.message
        return " ".join(line.split())


class ModelError(VoiceAgentError):
    """A model package is missing, or a model file fails its checksum."""


class AudioInputError(VoiceAgentError):
    """An input file is missing, empty, corrupt or in an unsupported format."""


class LLMError(VoiceAgentError):
    """The LLM endpoint refused, timed out or died.

    ``retryable``: another endpoint may well answer (the endpoint could not be
    reached, timed out, was overloaded (429) or failed (5xx)); a request the endpoint
    rejected as such (a bad key, an unknown model) is not."""

    def __init__(self, message: str, fix: str = "", retryable: bool = False) -> None:
        super().__init__(message, fix)
        self.retryable = retryable


def leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    """The exceptions inside (possibly nested) exception groups, in order."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        out += leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out
