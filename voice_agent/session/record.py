"""What a session keeps of a call: the history the LLM sees, each turn's metrics, its
interruptions and errors. Pure: the driver reports what happened, with clock times."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from voice_agent.audio.playout import Segment
from voice_agent.core.enums import BargeOutcome
from voice_agent.llm.base import Message
from voice_agent.session.metrics import Interruption, TurnMetrics
from voice_agent.session.writer import FRAME_S

FALSE_START_WORDS = 3
"""A reply the caller cut off after fewer words than this is a false start (the agent
began at a pause in the middle of their sentence): the history keeps none of it, and
the caller's next words join their message before it. Kept, a one-word fragment such
as "You're" is copied by the LLM as its whole next answer (the 0.5B model did so 3 times
in 20, and copied a bracketed "interrupted" mark, which the history once carried, 14
times in 20)."""
UNDERRUN_S = 0.06
"""A frame of a playing answer sent this much later than real time is an underrun: a
client's jitter buffer (typically 40-60 ms) has run dry by then."""

MessageSink = Callable[[str, str, dict[str, Any]], None]
"""Told of each message the call keeps: (role, content, flags), the flags being
``interrupted``, ``incomplete`` and ``timings`` (the turn's metrics)."""


class CallRecord:
    def __init__(self, system_prompt: str, t0: float) -> None:
        self.t0 = t0
        self.sink: MessageSink | None = None
        """Where the kept messages also go (the conversation store), if anywhere."""
        self.observer: Callable[[TurnMetrics], None] | None = None
        """Told of each answered turn as it ends (the server's Prometheus metrics)."""
        self.history: list[Message] = [{"role": "system", "content": system_prompt}]
        self.turns: list[TurnMetrics] = []
        """The turns the caller heard an answer to (or began to), in order."""
        self.errors: list[str] = []
        self.prepared_dropped = 0
        self._by_gen: dict[int, TurnMetrics] = {}
        self._last_sent: dict[int, float] = {}
        self._due: dict[int, float] = {}
        """When each playing answer's next frame is due, in real time (underruns)."""

    def track(self, m: TurnMetrics) -> None:
        """A reply of generation ``m.gen`` started (prepared or committed)."""
        self._by_gen[m.gen] = m

    def commit(self, m: TurnMetrics) -> None:
        """The caller's turn is answered by ``m``: it enters the history."""
        m.committed = True
        self.turns.append(m)
        if m.user_text:
            # only the tail changes: not a copy of the whole history each turn
            self.history[-2:] = with_user(self.history[-2:], m.user_text)
            if self.sink is not None:
                self.sink("user", m.user_text, {})

    def ended(self, m: TurnMetrics, heard: Message | None, interrupted: bool = False) -> None:
        """A reply's task is over; ``heard`` is the assistant message the caller heard
        (``interrupted``: the caller cut it off)."""
        if m.error:
            self.errors.append(m.error)
        if m.committed and self.observer is not None:
            self.observer(m)
        if not m.committed:  # a prepared reply the caller never heard leaves no trace
            self.prepared_dropped += 1
            self._by_gen.pop(m.gen, None)
        elif heard is not None:
            self.history.append(heard)
            if self.sink is not None:
                # the turn's timings, not its context: every turn's copy of the whole
                # history would make the store grow with the square of the turns
                timings = {k: v for k, v in m.to_dict(self.t0).items() if k != "context"}
                self.sink(
                    "assistant",
                    m.heard_text if interrupted else m.reply_text,
                    {"interrupted": interrupted, "incomplete": m.error is not None,
                     "timings": timings},
                )  # fmt: skip
        self._last_sent.pop(m.gen, None)
        self._due.pop(m.gen, None)

    def playout_ack(self, gen: int, samples: int, now: float) -> None:
        """The client reports ``samples`` (16 kHz) of ``gen`` played."""
        m = self._by_gen.get(gen)
        if m is None:
            return
        m.client_played_samples = max(m.client_played_samples, samples)
        if m.interruptions and len(m.interruptions[-1].acks) < 500:
            m.interruptions[-1].acks.append((now, samples))

    def paused(self, gen: int, onset: float, now: float, sent_samples: int) -> None:
        """Caller speech from ``onset`` paused reply ``gen``."""
        if (m := self._by_gen.get(gen)) is not None:
            last = self._last_sent.get(gen)
            m.interruptions.append(Interruption(onset, now, last, sent_samples))
        self._due.pop(gen, None)  # a held reply's silence is no underrun

    def resolved(self, gen: int, outcome: BargeOutcome, words: str, now: float) -> None:
        m = self._by_gen.get(gen)
        if m is not None and m.interruptions:
            last = m.interruptions[-1]
            if last.outcome is BargeOutcome.PENDING:
                last.outcome, last.words, last.resolved = outcome, words, now

    def first_frame(self, gen: int, seg: Segment, now: float) -> bool:
        """A frame of ``gen`` is about to go out: True if it is the reply's first audio."""
        m = self._by_gen.get(gen)
        if m is None:
            return False
        if m.first_audio_out is None and not seg.filler:
            m.first_audio_out = now
        started, m.audio_started = m.audio_started, True
        return not started

    def answer_heard(self, gen: int) -> bool:
        """The answer of ``gen`` has sent audio (a filler is not the answer)."""
        m = self._by_gen.get(gen)
        return m is not None and m.first_audio_out is not None

    def frame_sent(self, gen: int, now: float, paused: bool) -> None:
        self._last_sent[gen] = now
        m = self._by_gen.get(gen)
        if paused and m is not None and m.interruptions:
            m.interruptions[-1].last_sent = now  # the frame in flight
        if m is None or m.first_audio_out is None or paused:
            return  # before the answer's audio (a filler, then the wait for the answer)
        due = self._due.get(gen)
        if due is not None and now - due > UNDERRUN_S:
            m.underruns += 1
            m.underrun_s += now - due
        # real time runs from the later of the schedule and this frame (audio paced
        # ahead of real time is never owed back)
        self._due[gen] = max(due or now, now) + FRAME_S

    def report(self, dropped_input_frames: int) -> dict[str, Any]:
        """The call so far. The history is kept once: each turn's context is the slices
        of it the turn's LLM request was made of (see :func:`context_messages`), not a
        copy, which would make a long call's report grow with the square of its turns."""
        turns = []
        for m in self.turns:
            turn = m.to_dict(self.t0)
            turn["context"] = history_slices(self.history, m.context)
            turns.append(turn)
        return {
            "turns": turns,
            "history": self.history,
            "errors": self.errors,
            "dropped_input_frames": dropped_input_frames,
            "preemptive_replies_dropped": self.prepared_dropped,
        }


def with_user(history: list[Message], text: str) -> list[Message]:
    """``history`` and then the caller's ``text``: a message of its own, or joined to the
    caller's last message when no answer of the agent's follows it (a false start)."""
    if len(history) > 1 and history[-1]["role"] == "user":
        joined = f"{history[-1]['content']} {text}".strip()
        return [*history[:-1], {"role": "user", "content": joined}]
    return [*history, {"role": "user", "content": text}]


def history_slices(history: list[Message], context: list[Message]) -> dict[str, Any]:
    """``context`` as ``{"slices": [[start, end], ...]}`` of ``history`` when it is the
    system prompt and then a run of the history (as ``fit_context`` makes it); else as
    ``{"messages": context}`` (a request the history does not hold)."""
    if not context:
        return {"slices": []}
    if context[0] == history[0]:
        rest = context[1:]
        if not rest:
            return {"slices": [[0, 1]]}
        for start in range(len(history) - len(rest), 0, -1):  # the newest match
            if history[start : start + len(rest)] == rest:
                return {"slices": [[0, 1], [start, start + len(rest)]]}
    return {"messages": context}


def context_messages(report: dict[str, Any], turn: dict[str, Any]) -> list[Message]:
    """The messages of a reported turn's LLM request."""
    ctx = turn["context"]
    if "messages" in ctx:
        return list(ctx["messages"])
    history = report["history"]
    return [m for start, end in ctx["slices"] for m in history[start:end]]
