"""Errors that reach the user: one line that says what happened and what to do."""

from __future__ import annotations


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
    """The LLM endpoint refused, timed out or died."""
