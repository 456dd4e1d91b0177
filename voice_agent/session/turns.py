"""The sans-I/O TurnMachine: events with timestamps in, commands out. Never awaits.

The caller and the agent each have a state (full duplex):

- user: QUIET → SPEAKING → PAUSED → (SPEAKING again | turn ends → QUIET)
- agent: IDLE → THINKING → SPEAKING → IDLE, tagged with a generation ``gen``

End of turn is decided here. When the VAD reports a pause the machine asks
for a transcript of the turn so far. A transcript that reads as a finished
sentence (ends in . ? !) ends the turn once ``min_silence_s`` of silence has
passed; otherwise the turn ends at ``max_silence_s`` of silence. Speech that
resumes first continues the same turn. A turn whose transcript is empty
(noise) is dropped.

Preemptive replies: when the transcript of a pause arrives and the agent
is idle, the machine does not wait for the end of turn to start the reply:
it sends ``PrepareReply`` at once, so the LLM and TTS work while the silence
is still being timed. The prepared reply's audio is held until
``CommitReply`` (the turn is over); if the caller speaks again first,
``CancelReply`` drops it and nobody hears anything.

A new turn while a reply is still live cancels that reply: ``CancelReply``
and ``ClearPlayout`` for the old generation, then ``StartReply`` for the
next generation. Interrupting *during* the caller's speech (barge-in) belongs to
the duplex policy built on top of this.

Deadlines are data: :meth:`next_deadline` says when the driver must call
:meth:`handle` with a :class:`Tick`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class UserState(Enum):
    QUIET = "quiet"
    SPEAKING = "speaking"
    PAUSED = "paused"


class AgentState(Enum):
    IDLE = "idle"
    THINKING = "thinking"
    SPEAKING = "speaking"


# -- events ------------------------------------------------------------------


@dataclass(frozen=True)
class SpeechStarted:
    t: float
    at: float
    """When speech began (clock time of the onset, before the VAD confirmed it)."""


@dataclass(frozen=True)
class SpeechStopped:
    t: float
    at: float
    """When speech ended (clock time of the first silent frame)."""


@dataclass(frozen=True)
class TranscriptReady:
    t: float
    request: int
    text: str


@dataclass(frozen=True)
class TextInput:
    t: float
    text: str


@dataclass(frozen=True)
class ReplyAudioStarted:
    t: float
    gen: int


@dataclass(frozen=True)
class ReplyFinished:
    t: float
    gen: int


@dataclass(frozen=True)
class Tick:
    t: float


@dataclass(frozen=True)
class Interrupt:
    """The client asked the agent to stop talking (a push-to-interrupt button)."""

    t: float


@dataclass(frozen=True)
class Hangup:
    t: float


Event = (
    SpeechStarted
    | SpeechStopped
    | TranscriptReady
    | TextInput
    | ReplyAudioStarted
    | ReplyFinished
    | Tick
    | Interrupt
    | Hangup
)

# -- commands ----------------------------------------------------------------


@dataclass(frozen=True)
class RequestTranscript:
    request: int
    """Transcribe the current turn's audio; answer with TranscriptReady(request=...)."""


@dataclass(frozen=True)
class DiscardTurn:
    """The turn held no words: drop its audio."""


@dataclass(frozen=True)
class StartReply:
    gen: int
    text: str
    speech_end: float | None
    """When the caller stopped speaking (None for typed input)."""
    decided: float
    """When the machine decided the turn was over."""


@dataclass(frozen=True)
class PrepareReply:
    gen: int
    text: str
    speech_end: float
    """Start generating now; hold the audio until CommitReply (or drop it on CancelReply)."""


@dataclass(frozen=True)
class CommitReply:
    gen: int
    decided: float
    """The turn is over: the prepared reply may play."""


@dataclass(frozen=True)
class CancelReply:
    gen: int


@dataclass(frozen=True)
class ClearPlayout:
    gen: int


@dataclass(frozen=True)
class Close:
    pass


Command = (
    RequestTranscript
    | DiscardTurn
    | StartReply
    | PrepareReply
    | CommitReply
    | CancelReply
    | ClearPlayout
    | Close
)

_FINAL_PUNCT = (".", "?", "!", "…")


def looks_finished(text: str) -> bool:
    """Does a transcript read as a finished sentence?"""
    t = text.rstrip().rstrip("\"'”’)")
    return t.endswith(_FINAL_PUNCT)


class TurnMachine:
    def __init__(
        self,
        min_silence_s: float = 0.6,
        max_silence_s: float = 1.0,
        preemptive: bool = True,
        prepare_after_s: float = 0.25,
    ) -> None:
        if not 0 <= min_silence_s <= max_silence_s:
            raise ValueError("need 0 <= min_silence_s <= max_silence_s")
        self.min_silence_s = min_silence_s
        self.max_silence_s = max_silence_s
        self.preemptive = preemptive
        self.prepare_after_s = prepare_after_s
        self.user = UserState.QUIET
        self.agent = AgentState.IDLE
        self.gen = 0
        """The generation that may play (the last committed or started reply)."""
        self.prepared: int | None = None
        """A reply being generated ahead of the end of turn, its audio held."""
        self._last_gen = 0
        self.closed = False
        self._request = 0
        self._pause_at: float | None = None
        self._text: str | None = None
        self._deadline: float | None = None
        self._prepare_at: float | None = None

    def next_deadline(self) -> float | None:
        times = [t for t in (self._deadline, self._prepare_at) if t is not None]
        return min(times) if times else None

    def handle(self, event: Event) -> list[Command]:
        if self.closed:
            return []
        match event:
            case SpeechStarted():
                cmds = self._drop_prepared()
                if self.user is UserState.PAUSED:
                    self._text = None
                    self._deadline = None
                    self._prepare_at = None
                self.user = UserState.SPEAKING
                return cmds
            case SpeechStopped(at=at):
                if self.user is not UserState.SPEAKING:
                    return []
                self.user = UserState.PAUSED
                self._pause_at = at
                self._text = None
                self._request += 1
                self._deadline = at + self.max_silence_s
                return [RequestTranscript(self._request)]
            case TranscriptReady(t=t, request=req, text=text):
                if req != self._request or self.user is not UserState.PAUSED:
                    return []
                return self._on_transcript(t, text.strip())
            case TextInput(t=t, text=text):
                if not text.strip():
                    return []
                self._deadline = None
                self._prepare_at = None
                self.user = UserState.QUIET
                return self._drop_prepared() + self._end_turn(t, text.strip(), speech_end=None)
            case ReplyAudioStarted(gen=gen):
                if gen == self.gen and self.agent is AgentState.THINKING:
                    self.agent = AgentState.SPEAKING
                return []
            case ReplyFinished(gen=gen):
                if gen == self.gen:
                    self.agent = AgentState.IDLE
                return []
            case Tick(t=t):
                return self._on_tick(t)
            case Interrupt():
                cmds = self._drop_prepared()
                if self.agent is not AgentState.IDLE:
                    cmds += [CancelReply(self.gen), ClearPlayout(self.gen)]
                    self.agent = AgentState.IDLE
                return cmds
            case Hangup():
                self.closed = True
                self._deadline = None
                self._prepare_at = None
                cmds = self._drop_prepared()
                if self.agent is not AgentState.IDLE:
                    cmds += [CancelReply(self.gen), ClearPlayout(self.gen)]
                    self.agent = AgentState.IDLE
                return [*cmds, Close()]
        return []

    def _on_transcript(self, t: float, text: str) -> list[Command]:
        assert self._pause_at is not None
        if not text:
            self.user = UserState.QUIET
            self._deadline = None
            self._prepare_at = None
            return [DiscardTurn()]
        self._text = text
        wait = self.min_silence_s if looks_finished(text) else self.max_silence_s
        self._deadline = self._pause_at + wait
        cmds: list[Command] = []
        if self.preemptive and self.agent is AgentState.IDLE:
            self._prepare_at = self._pause_at + self.prepare_after_s
            cmds += self._maybe_prepare(t)
        if t >= self._deadline:
            cmds += self._finish(t)
        return cmds

    def _maybe_prepare(self, t: float) -> list[Command]:
        """Prepare once the pause has lasted ``prepare_after_s``: gaps between words are
        shorter, and a reply started and dropped still costs the LLM its prompt reading."""
        if self._prepare_at is None or t < self._prepare_at or self._text is None:
            return []
        self._prepare_at = None
        assert self._pause_at is not None
        self._last_gen += 1
        self.prepared = self._last_gen
        return [PrepareReply(self.prepared, self._text, speech_end=self._pause_at)]

    def _on_tick(self, t: float) -> list[Command]:
        prepared = self._maybe_prepare(t) if self.user is UserState.PAUSED else []
        if self._deadline is None or t < self._deadline:
            return prepared
        if prepared:
            return prepared + self._finish(t)
        if self.user is UserState.PAUSED:
            if self._text is None:
                self._deadline = None  # the transcript is late; the turn ends when it arrives
                return []
            return self._finish(t)
        self._deadline = None
        return []

    def _finish(self, t: float) -> list[Command]:
        text, speech_end = self._text or "", self._pause_at
        self.user = UserState.QUIET
        self._deadline = None
        self._prepare_at = None
        self._text = None
        if self.prepared is not None:
            self.gen, self.prepared = self.prepared, None
            self.agent = AgentState.THINKING
            return [CommitReply(self.gen, decided=t)]
        return self._end_turn(t, text, speech_end)

    def _drop_prepared(self) -> list[Command]:
        if self.prepared is None:
            return []
        gen, self.prepared = self.prepared, None
        return [CancelReply(gen)]

    def _end_turn(self, t: float, text: str, speech_end: float | None) -> list[Command]:
        if not text:
            return []
        cmds: list[Command] = []
        if self.agent is not AgentState.IDLE:
            cmds += [CancelReply(self.gen), ClearPlayout(self.gen)]
        self._last_gen += 1
        self.gen = self._last_gen
        self.agent = AgentState.THINKING
        cmds.append(StartReply(self.gen, text, speech_end=speech_end, decided=t))
        return cmds
