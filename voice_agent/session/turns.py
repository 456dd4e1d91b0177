"""The sans-I/O TurnMachine: events with timestamps in, commands out. Never awaits.

The caller and the agent each have a state (full duplex):

- user: QUIET → SPEAKING → PAUSED → (SPEAKING again | turn ends → QUIET)
- agent: IDLE → THINKING → SPEAKING → IDLE, tagged with a generation ``gen``

End of turn is decided here, by an :class:`EndpointPolicy`. When the VAD reports a
pause the machine asks for a transcript of the turn so far (``RequestTranscript``)
and, with an end-of-turn model, for its probability that the turn is complete
(``ScoreTurn`` → :class:`TurnScore`). The pause ends the turn once it has lasted:

- ``max_wait_s`` when the transcript trails off (a last word such as "and", "um",
  "for", "my", or a comma): the caller is mid-sentence, whatever else says;
- with the model's score: ``complete_wait_s`` when it is ``complete_p`` or above and
  the transcript reads as a finished sentence, ``max_wait_s`` when neither says so, and
  ``unsure_wait_s`` when they disagree;
- without it (no model, or its score not in yet): ``min_silence_s`` for a transcript
  that reads as a finished sentence (ends in . ? !), else ``max_silence_s``. A score
  that arrives later moves the deadline.

Speech that resumes first continues the same turn. A turn whose transcript is
empty (noise) is dropped.

Preemptive replies: when the transcript of a pause arrives and the agent
is idle, the machine does not wait for the end of turn to start the reply:
it sends ``PrepareReply`` at once, so the LLM and TTS work while the silence
is still being timed. The prepared reply's audio is held until
``CommitReply`` (the turn is over); if the caller speaks again first,
``CancelReply`` drops it and nobody hears anything.

A new turn while a reply is still live cancels that reply: ``CancelReply``
and ``ClearPlayout`` for the old generation, then ``StartReply`` for the
next generation.

Full duplex (with a :class:`DuplexPolicy`):

- Barge-in. Caller speech onset while the agent thinks or speaks *pauses* the
  reply at once (``PausePlayout``: nothing more is sent, nothing is dropped).
  Once the speech has lasted ``barge_in_min_s`` its words are checked
  (``CheckBargeIn`` → :class:`BargeInTranscript`), again every ``recheck_s``
  while the caller talks, and at the end of the caller's turn. Enough words
  that are not a backchannel ("uh-huh", "yeah") confirm it: ``ConfirmBargeIn``,
  ``CancelReply`` and ``ClearPlayout``. No such words within
  ``false_interruption_s`` of the onset, or a turn whose transcript is empty or
  only a backchannel (a cough, noise, "mm-hmm"), resumes the reply where it
  paused (``ResumePlayout``): nothing is lost. While the caller talks, two words
  are needed (a word cut off half-way is often misheard); one word heard and the
  caller still talking at the end of the window also confirms, and so do two words
  that say nothing alone ("and so my": a sentence's start).
- Fillers. No reply audio ``filler_after_s`` after the end of turn →
  ``PlayFiller`` (once per reply).
- Idle. ``idle_prompt_s`` of silence with nothing going on → ``Say`` a prompt
  ("Are you still there?"), once; ``idle_end_s`` more → ``Say`` goodbye, then
  ``Close`` when it has played.

Deadlines are data: :meth:`next_deadline` says when the driver must call
:meth:`handle` with a :class:`Tick`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from voice_agent.core.enums import ReplyKind


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
class TurnScore:
    """The end-of-turn model's answer to ``ScoreTurn(request)``."""

    t: float
    request: int
    p: float
    """P(the turn is complete)."""


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


@dataclass(frozen=True)
class BargeInTranscript:
    """The words heard so far in speech that began while the agent was talking."""

    t: float
    request: int
    text: str
    echo: bool = False
    """The words were the agent's own voice coming back: not a barge-in."""


Event = (
    SpeechStarted
    | SpeechStopped
    | TranscriptReady
    | TurnScore
    | TextInput
    | ReplyAudioStarted
    | ReplyFinished
    | Tick
    | Interrupt
    | Hangup
    | BargeInTranscript
)

# -- commands ----------------------------------------------------------------


@dataclass(frozen=True)
class RequestTranscript:
    request: int
    """Transcribe the current turn's audio; answer with TranscriptReady(request=...)."""


@dataclass(frozen=True)
class ScoreTurn:
    request: int
    """Score the current turn's audio with the end-of-turn model; answer with
    TurnScore(request=...)."""


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


@dataclass(frozen=True)
class PausePlayout:
    gen: int
    onset: float
    """Caller speech began at ``onset`` while reply ``gen`` was live: hold its audio."""


@dataclass(frozen=True)
class ResumePlayout:
    gen: int
    """It was not a barge-in: play the held audio on from where it paused."""


@dataclass(frozen=True)
class CheckBargeIn:
    request: int
    """Transcribe the speech since the onset; answer with BargeInTranscript(request=...)."""


@dataclass(frozen=True)
class ConfirmBargeIn:
    gen: int
    text: str
    """The caller really is talking over reply ``gen`` (CancelReply and ClearPlayout follow)."""


@dataclass(frozen=True)
class PlayFiller:
    gen: int
    """No reply audio yet: play a short filler as part of ``gen`` (never in the history)."""


@dataclass(frozen=True)
class Say:
    gen: int
    purpose: ReplyKind
    """Speak a fixed line as reply ``gen``: the idle prompt or goodbye."""


Command = (
    RequestTranscript
    | ScoreTurn
    | DiscardTurn
    | StartReply
    | PrepareReply
    | CommitReply
    | CancelReply
    | ClearPlayout
    | Close
    | PausePlayout
    | ResumePlayout
    | CheckBargeIn
    | ConfirmBargeIn
    | PlayFiller
    | Say
)

BACKCHANNELS = frozenset(
    "uh huh uh-huh mm mhm mm-hmm mmhmm hmm hm yeah yep yup yes ok okay right sure uh um ah oh "
    "aha i see got it cool nice great wow".split()
)


FUNCTION_WORDS = frozenset(
    "a an the and or but so then than that this these those of to in on at by for with from "
    "as is are was were be been am do does did have has had it its i me my you your he him his "
    "she her we us our they them their there here if".split()
)
"""Words that say nothing on their own. Whisper writes strings of them into sounds that are
not words (a hum cut off mid-way: "And then the"), so they never confirm a barge-in alone."""


_HESITATION = re.compile(r"^(m+|h*m+h*m*|u+h*|u+m+|a+h+|o+h+|e+r+m*|h+u+h+|a+h*a+)$")


def content_words(text: str) -> list[str]:
    """The words of ``text`` that are not backchannels or hesitations, lower-cased."""
    words = [w.strip(".,!?;:…\"'()-").lower() for w in text.replace("-", " - ").split()]
    words = [w for w in words if w and w != "-"]
    joined = " ".join(words)
    for phrase in ("i see", "got it", "uh huh", "mm hmm"):
        joined = joined.replace(phrase, "")
    return [w for w in joined.split() if w not in BACKCHANNELS and not _HESITATION.match(w)]


@dataclass(frozen=True)
class DuplexPolicy:
    """How the agent shares the line with the caller (times in seconds; None: off)."""

    barge_in: bool = True
    barge_in_min_s: float = 0.2
    """Speech must last this long after its onset before its words are checked."""
    barge_in_words: int = 1
    """Distinct words (not counting backchannels) that confirm a barge-in once the caller's
    turn is over; 0: the duration alone."""
    barge_in_partial_words: int = 2
    """The same while the caller is still talking: the transcript of a word cut off half-way
    is often a wrong word ("uh-hu…" → "Earth"), so one is not enough there."""
    recheck_s: float = 0.3
    false_interruption_s: float = 1.5
    """No confirming words this long after the onset: resume the paused reply."""
    filler_after_s: float | None = 1.2
    """No reply audio this long after the end of turn: a filler. About the p95 of the default
    profile's answer time after the end of turn (README), so most turns need none."""
    check_grace_s: float = 1.0
    """A words check still running at the ``false_interruption_s`` mark is waited for up
    to this much longer (a loaded CPU makes whisper slow; giving up on it would resume the
    agent over a caller who is talking)."""
    idle_prompt_s: float | None = 15.0
    idle_end_s: float | None = 15.0
    """After the idle prompt, this much more silence ends the session (with a goodbye)."""


TRAILING = frozenset(
    "and or but so because cause um uh er erm like the a an my your our their his her its "
    "this that for to of with in on at from by about into is are was were if than then "
    "when which who whose where".split()
)
"""Last words after which a sentence cannot be over (whisper often writes a full stop at
the pause anyway: "I'd like a table for." )."""


def trails_off(text: str, marks: bool = True) -> bool:
    """Does the transcript stop mid-sentence: a comma, an ellipsis, or a last word from
    ``TRAILING`` (a question mark says otherwise: "What is it for?")? ``marks`` False: the
    STT's punctuation at the end says nothing (Moonshine ends a finished request with a
    comma as often as an unfinished one), only the last word counts."""
    t = text.rstrip().rstrip("\"'”’)")
    if not t or t.endswith(("?", "!")):
        return False
    if marks and t.endswith((",", ";", ":", "-", "—", "...", "…")):  # whisper's "...": more
        return True
    words = t.rstrip(".…,;:-—").split()
    return bool(words) and words[-1].strip(".,!?;:…\"'()").lower() in TRAILING


@dataclass(frozen=True)
class EndpointPolicy:
    """When a pause ends the turn (seconds of silence from the caller's last word; see
    the module docstring). The VAD's own stop (``vad_stop_ms``) comes first."""

    scored: bool = True
    """Ask the end-of-turn model (when the engine has one)."""
    complete_p: float = 0.7
    """The model's score from which a turn reads complete. Chosen by ``voice-agent bench
    --turns`` (README): 0.5 cut off more, 0.9 waited longer at more true ends."""
    complete_wait_s: float = 0.2
    """The model and the transcript agree the turn is complete (a finished sentence)."""
    unsure_wait_s: float = 1.0
    """They disagree: a finished sentence the model doubts (it scores synthetic voices and
    noisy tails low), or an unfinished one it calls complete."""
    max_wait_s: float = 2.0
    """Both say incomplete, or the transcript trails off: the caller is thinking."""
    cues: bool = True
    """A transcript that trails off waits ``max_wait_s``."""
    model_alone: bool = False
    """Ignore the transcript's punctuation: the score alone picks ``complete_wait_s`` or
    ``max_wait_s`` (the bench's comparison)."""
    unmarked_abstains: bool = False
    """The STT does not mark every finished sentence (Moonshine leaves a long one without
    its full stop): a transcript without final punctuation says nothing either way, and
    the score decides (complete: ``complete_wait_s``; not: ``unsure_wait_s``). Set by the
    session from ``STT.marks_sentence_ends``."""
    unmarked_commas: bool = True
    """With ``unmarked_abstains``: a comma (or other mark) at the end of the transcript is
    no cue either, only a trailing word is (Moonshine wrote "Tell me a fun fact about
    octopuses," for a finished request, and the turn waited 2 s)."""


@dataclass
class _Barge:
    gen: int
    onset: float
    check_at: float
    give_up_at: float
    request: int | None = None
    words: str = ""
    """The most telling words a check has heard so far (most distinct content words)."""
    heard: bool = False
    """A check has heard something (words, or only a backchannel)."""


_FINAL_PUNCT = (".", "?", "!", "…")


def looks_finished(text: str) -> bool:
    """Does a transcript read as a finished sentence?"""
    t = text.rstrip().rstrip("\"'”’)")
    return t.endswith(_FINAL_PUNCT)


class TurnMachine:
    """Who holds the floor, as a pure state machine (see the module docstring).

    Calling contract: one driver calls :meth:`handle` with events in the order they
    happened (their ``t`` never decreases) and carries out the returned commands in
    order; it calls :meth:`next_deadline` after each :meth:`handle` and sends a
    :class:`Tick` once that time has come. Nothing here awaits, blocks, reads a clock
    or does I/O.
    """

    def __init__(
        self,
        min_silence_s: float = 0.6,
        max_silence_s: float = 1.0,
        preemptive: bool = True,
        prepare_after_s: float = 0.25,
        duplex: DuplexPolicy | None = None,
        t0: float = 0.0,
        endpoint: EndpointPolicy | None = None,
    ) -> None:
        if not 0 <= min_silence_s <= max_silence_s:
            raise ValueError("need 0 <= min_silence_s <= max_silence_s")
        self.min_silence_s = min_silence_s
        self.max_silence_s = max_silence_s
        self.preemptive = preemptive
        self.prepare_after_s = prepare_after_s
        self.endpoint = endpoint or EndpointPolicy(scored=False)
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
        self._score: float | None = None
        self.wait_s: float | None = None
        """The pause the current turn needs before it ends (None until its transcript)."""
        self._deadline: float | None = None
        self._prepare_at: float | None = None
        self.duplex = duplex
        self.barge: _Barge | None = None
        """Speech that began while the agent was live, not yet confirmed or dismissed."""
        self._barge_request = 0
        self._filler_at: float | None = None
        self._idle_since: float | None = t0
        self._prompted = False
        self._goodbye: int | None = None

    def next_deadline(self) -> float | None:
        """When the driver must call :meth:`handle` with a :class:`Tick` (clock seconds), or
        None if nothing is timed. It only changes inside :meth:`handle`, so ask again after
        each call. A deadline already past means "tick now". Never raises."""
        times = [self._deadline, self._prepare_at, self._filler_at, self._idle_deadline()]
        if self.barge is not None:
            grace = self.duplex.check_grace_s if self.duplex else 0.0
            b = self.barge
            running = b.request is not None  # nothing happens until it answers
            times.append(b.give_up_at + (grace if running or self._looking(b) else 0.0))
            if self.barge.request is None and self.user is not UserState.QUIET:
                times.append(self.barge.check_at)
        live = [t for t in times if t is not None]
        return min(live) if live else None

    def _idle_deadline(self) -> float | None:
        d = self.duplex
        if d is None or self._idle_since is None or self._goodbye is not None:
            return None
        if not self._prompted:
            return None if d.idle_prompt_s is None else self._idle_since + d.idle_prompt_s
        return None if d.idle_end_s is None else self._idle_since + d.idle_end_s

    def handle(self, event: Event) -> list[Command]:
        """Feed one event; returns the commands to carry out, in order.

        Stale answers (a transcript or barge-in check whose ``request`` is not the
        latest, a generation that is not current) are ignored. After :class:`Close` has
        been returned the machine is closed and every later event returns ``[]``.
        Raises nothing for any event in any state; ``ValueError`` only comes from the
        constructor (bad silence settings).
        """
        if self.closed:
            return []
        match event:
            case SpeechStarted(t=t, at=at):
                cmds = self._drop_prepared()
                if self.user is UserState.PAUSED:
                    self._text = self._score = self.wait_s = None
                    self._deadline = None
                    self._prepare_at = None
                self.user = UserState.SPEAKING
                self._idle_since = None
                self._prompted = False
                return cmds + self._maybe_pause(t, at)
            case SpeechStopped(at=at):
                if self.user is not UserState.SPEAKING:
                    return []
                self.user = UserState.PAUSED
                self._pause_at = at
                self._text = self._score = self.wait_s = None
                self._request += 1
                self._deadline = at + self.max_silence_s
                if self.endpoint.scored:
                    return [RequestTranscript(self._request), ScoreTurn(self._request)]
                return [RequestTranscript(self._request)]
            case TranscriptReady(t=t, request=req, text=text):
                if req != self._request or self.user is not UserState.PAUSED:
                    return []
                return self._on_transcript(t, text.strip())
            case TurnScore(t=t, request=req, p=p):
                if req != self._request or self.user is not UserState.PAUSED:
                    return []
                self._score = p
                if self._text is None:
                    return []  # decided once the transcript is in
                return self._schedule(t)
            case BargeInTranscript(t=t, request=req, text=text):
                b = self.barge
                if b is None or b.request != req:
                    return []
                if event.echo:
                    self.barge = None
                    return [ResumePlayout(b.gen)]
                late = t >= b.give_up_at  # the answer to a check that ran past the window
                if self._confirms(text, partial=not late):
                    return self._confirm(text)
                if len(set(content_words(text))) > len(set(content_words(b.words))):
                    b.words = text
                b.heard = b.heard or bool(text.strip())
                b.request = None
                if late:  # decide now, by the give-up rule
                    return self._duplex_tick(t)
                b.check_at = t + (self.duplex.recheck_s if self.duplex else 0.3)
                return []
            case TextInput(t=t, text=text):
                if not text.strip():
                    return []
                self._deadline = None
                self._prepare_at = None
                self.user = UserState.QUIET
                self.barge = None
                return self._drop_prepared() + self._end_turn(t, text.strip(), speech_end=None)
            case ReplyAudioStarted(gen=gen):
                if gen == self.gen and self.agent is AgentState.THINKING:
                    self.agent = AgentState.SPEAKING
                return []
            case ReplyFinished(t=t, gen=gen):
                if gen == self.gen:
                    self.agent = AgentState.IDLE
                    self._filler_at = None
                    if self.barge is not None and self.barge.gen == gen:
                        self.barge = None
                    if self._goodbye == gen:
                        self.closed = True
                        return [Close()]
                    if self.user is UserState.QUIET and self.prepared is None:
                        self._idle_since = t
                return []
            case Tick(t=t):
                return self._on_tick(t)
            case Interrupt():
                self.barge = None
                self._filler_at = None
                cmds = self._drop_prepared()
                if self.agent is not AgentState.IDLE:
                    cmds += [CancelReply(self.gen), ClearPlayout(self.gen)]
                    self.agent = AgentState.IDLE
                return cmds
            case Hangup():
                self.closed = True
                self._deadline = None
                self._prepare_at = None
                self.barge = None
                self._filler_at = None
                self._idle_since = None
                cmds = self._drop_prepared()
                if self.agent is not AgentState.IDLE:
                    cmds += [CancelReply(self.gen), ClearPlayout(self.gen)]
                    self.agent = AgentState.IDLE
                return [*cmds, Close()]
        return []

    def _on_transcript(self, t: float, text: str) -> list[Command]:
        assert self._pause_at is not None
        cmds: list[Command] = []
        if self.barge is not None:
            if self._confirms(text):
                cmds += self._confirm(text)
            else:  # a cough, noise or a backchannel: the reply plays on
                cmds.append(ResumePlayout(self.barge.gen))
                self.barge = None
                text = ""
        elif self.duplex is not None and self.agent is not AgentState.IDLE:
            if not content_words(text):
                text = ""  # "uh-huh" while the agent talks is not a turn
        if not text:
            self.user = UserState.QUIET
            self._deadline = None
            self._prepare_at = None
            if self.agent is AgentState.IDLE and self.prepared is None:
                self._idle_since = t
            return [*cmds, DiscardTurn()]
        self._text = text
        return cmds + self._schedule(t)

    def _trails_off(self, text: str) -> bool:
        e = self.endpoint
        return e.cues and trails_off(text, marks=not (e.unmarked_abstains and e.unmarked_commas))

    def turn_wait(self, text: str, score: float | None) -> float:
        """How long a pause ends a turn whose transcript is ``text`` (and whose score is
        ``score``, None when unknown)."""
        e = self.endpoint
        if self._trails_off(text):
            return max(e.max_wait_s, self.max_silence_s)
        finished = looks_finished(text)
        if score is None or not e.scored:
            return self.min_silence_s if finished else self.max_silence_s
        complete = score >= e.complete_p
        if e.model_alone:
            return e.complete_wait_s if complete else e.max_wait_s
        if e.unmarked_abstains and not finished:
            return e.complete_wait_s if complete else e.unsure_wait_s
        if complete == finished:
            return e.complete_wait_s if complete else e.max_wait_s
        return e.unsure_wait_s

    def _schedule(self, t: float) -> list[Command]:
        """The transcript (and perhaps the score) is in: set the turn's deadline, prepare
        the reply when the turn leans complete, and end it if the pause is long enough."""
        assert self._pause_at is not None and self._text is not None
        e = self.endpoint
        self.wait_s = self.turn_wait(self._text, self._score)
        self._deadline = self._pause_at + self.wait_s
        leans = not e.scored or (self._score is not None and self.wait_s < e.max_wait_s)
        cmds: list[Command] = []
        if self.preemptive and self.agent is AgentState.IDLE and self.prepared is None:
            if leans and not self._trails_off(self._text):
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
        duplex = self._duplex_tick(t)
        return duplex + self._turn_tick(t)

    def _duplex_tick(self, t: float) -> list[Command]:
        d = self.duplex
        if d is None:
            return []
        cmds: list[Command] = []
        b = self.barge
        # past the window, within the grace: a check still running is waited for, and a
        # caller still talking of whom no check has heard anything yet is looked at again
        # (on a busy CPU the first check may have read only the first 200 ms: "")
        waiting = (
            b is not None
            and t < b.give_up_at + d.check_grace_s
            and (b.request is not None or self._looking(b))
        )
        if b is not None and t >= b.give_up_at and not waiting:
            if b.words and (self._confirms(b.words) or self._still_saying(b.words)):
                return self._confirm(b.words)  # words, and still going: a real barge-in
            self.barge = None  # no words in time: it was not a barge-in
            cmds.append(ResumePlayout(b.gen))
        elif (
            b is not None
            and b.request is None
            and self.user is not UserState.QUIET
            and t >= b.check_at
        ):
            if d.barge_in_words == 0:
                return self._confirm("")
            self._barge_request += 1
            b.request = self._barge_request
            cmds.append(CheckBargeIn(b.request))
        if self._filler_at is not None and t >= self._filler_at:
            self._filler_at = None
            if self.agent is AgentState.THINKING and self.barge is None:
                cmds.append(PlayFiller(self.gen))
        idle = self._idle_deadline()
        if idle is not None and t >= idle:
            if self.user is not UserState.QUIET or self.agent is not AgentState.IDLE:
                self._idle_since = None  # something is going on; the clock restarts after it
            elif self.prepared is None:
                cmds += self._say(ReplyKind.GOODBYE if self._prompted else ReplyKind.IDLE_PROMPT)
        return cmds

    def _say(self, purpose: ReplyKind) -> list[Command]:
        self._last_gen += 1
        self.gen = self._last_gen
        self.agent = AgentState.THINKING
        self._idle_since = None
        if purpose is ReplyKind.GOODBYE:
            self._goodbye = self.gen
        else:
            self._prompted = True
        return [Say(self.gen, purpose)]

    def _maybe_pause(self, t: float, at: float) -> list[Command]:
        d = self.duplex
        if d is None or not d.barge_in or self.agent is AgentState.IDLE or self.barge:
            return []
        if self._goodbye is not None:
            return []
        self.barge = _Barge(
            self.gen, onset=at, check_at=at + d.barge_in_min_s,
            give_up_at=at + d.false_interruption_s,
        )  # fmt: skip
        self._filler_at = None
        cmds: list[Command] = [PausePlayout(self.gen, onset=at)]
        if d.barge_in_words == 0 and t >= self.barge.check_at:
            cmds += self._confirm("")
        return cmds

    def _confirms(self, text: str, partial: bool = False) -> bool:
        d = self.duplex or DuplexPolicy()
        if d.barge_in_words == 0:
            return True
        need = max(d.barge_in_words, d.barge_in_partial_words) if partial else d.barge_in_words
        words = set(content_words(text))
        return len(words) >= need and not words <= FUNCTION_WORDS

    def _looking(self, b: _Barge) -> bool:
        """A caller still talking of whom no check has heard anything yet: within the
        grace, looked at again rather than resumed over."""
        return self.user is UserState.SPEAKING and not b.heard

    def _still_saying(self, text: str) -> bool:
        """Two words or more, if only words that say nothing alone, from a caller still
        talking at the end of the window: the start of a sentence. whisper tiny.en hears
        jfk's "And so my fellow Americans" as "and so", then "And so my" up to 1.4 s in;
        resuming there put the agent back over a caller in mid-sentence (the soak: 72 of 77
        talk-overs resumed, then cut by the caller's turn). A backchannel is over by then,
        and a lone hallucinated word is one word."""
        return self.user is UserState.SPEAKING and len(set(content_words(text))) >= 2

    def _confirm(self, text: str) -> list[Command]:
        b = self.barge
        assert b is not None
        self.barge = None
        if self.agent is AgentState.IDLE or b.gen != self.gen:
            return []
        self.agent = AgentState.IDLE
        self._filler_at = None
        return [ConfirmBargeIn(b.gen, text.strip()), CancelReply(b.gen), ClearPlayout(b.gen)]

    def _turn_tick(self, t: float) -> list[Command]:
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
        self._text = self._score = None
        if self.prepared is not None:
            self.gen, self.prepared = self.prepared, None
            self.agent = AgentState.THINKING
            self._arm_filler(t)
            return [CommitReply(self.gen, decided=t)]
        return self._end_turn(t, text, speech_end)

    def _arm_filler(self, t: float) -> None:
        d = self.duplex
        self._idle_since = None
        if d is not None and d.filler_after_s is not None:
            self._filler_at = t + d.filler_after_s

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
        self._arm_filler(t)
        cmds.append(StartReply(self.gen, text, speech_end=speech_end, decided=t))
        return cmds
