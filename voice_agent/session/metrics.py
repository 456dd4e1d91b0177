"""Per-turn timelines. Times are clock seconds; reports show ms from the session start."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from voice_agent.core.enums import BargeOutcome, ReplyKind, ReplyStatus

# The stages in the order they happen, as printed in the timeline.
STAGES = (
    ("speech_end", "end of user speech (VAD)"),
    ("decided", "end of turn decided"),
    ("stt_final", "STT final ready"),
    ("llm_request", "LLM request sent"),
    ("llm_first_token", "LLM first token"),
    ("first_sentence", "first sentence"),
    ("tts_first_audio", "TTS first audio"),
    ("first_audio_out", "first audio out"),
    ("reply_done", "reply audio done"),
)


@dataclass
class Interruption:
    """Caller speech that began while reply audio was live: the reply paused at once, then
    the barge-in was confirmed (the reply is cancelled) or dismissed (it resumed)."""

    onset: float
    """Caller speech onset in the input (clock time of its first speech frame)."""
    paused: float
    """When the session paused the reply."""
    last_sent: float | None
    """When the last frame of the reply's audio was handed to the transport."""
    sent_samples: int = 0
    outcome: BargeOutcome = BargeOutcome.PENDING
    resolved: float | None = None
    words: str = ""
    acks: list[tuple[float, int]] = field(default_factory=list)
    """The client's playout reports after the pause: (arrival time, samples played)."""

    def client_stop(self) -> float | None:
        """When the client confirmed its playback had stopped: the first report, after the
        pause, at the sample count where its cursor came to rest."""
        window = [(t, n) for t, n in self.acks if self.resolved is None or t <= self.resolved + 0.5]
        if not window:
            return None
        final = max(n for _, n in window)
        return next(t for t, n in window if n == final)

    def to_dict(self, t0: float) -> dict[str, Any]:
        def ms(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round((b - a) * 1000, 1)

        stop = None if self.last_sent is None else max(0.0, ms(self.onset, self.last_sent) or 0.0)
        return {
            "onset_ms": ms(t0, self.onset),
            "outcome": self.outcome,
            "words": self.words,
            "stop_latency_ms": stop,
            "client_stop_latency_ms": ms(self.onset, self.client_stop()),
            "decided_after_ms": ms(self.onset, self.resolved),
            "sent_ms_at_pause": round(self.sent_samples / 16.0, 1),
        }


@dataclass
class TurnMetrics:
    gen: int
    user_text: str
    speech_start: float | None = None
    speech_end: float | None = None
    decided: float | None = None
    stt_final: float | None = None
    llm_request: float | None = None
    stt_compute_s: float | None = None
    llm_first_token: float | None = None
    first_sentence: float | None = None
    tts_first_audio: float | None = None
    first_audio_out: float | None = None
    reply_done: float | None = None
    reply_text: str = ""
    heard_text: str = ""
    status: ReplyStatus = ReplyStatus.PENDING
    error: str | None = None
    tool_calls: list[str] = field(default_factory=list)
    context: list[dict[str, Any]] = field(default_factory=list)
    reply_samples: int = 0
    client_played_samples: int = 0
    """The client's own report of what it played (16 kHz samples), 0 if it never said."""
    committed: bool = False
    """False while the reply is prepared ahead of the end of turn (its audio held)."""
    parts: list[str] = field(default_factory=list)
    kind: ReplyKind = ReplyKind.REPLY
    audio_started: bool = False
    """Any audio of the reply (a filler included) has been sent."""
    heard_source: str = "sent"
    """What ``heard_text`` was cut at: the client's playout report, or the audio sent."""
    interruptions: list[Interruption] = field(default_factory=list)
    fillers: list[tuple[float, str]] = field(default_factory=list)
    end_p: float | None = None
    """The end-of-turn model's P(complete) at the pause that ended the turn (None: unscored)."""
    end_wait_s: float | None = None
    """The pause the endpoint policy asked of this turn."""
    underruns: int = 0
    """Gaps beyond real time in the reply's audio once its answer began to play (the
    next sentence was not ready in time, or the event loop fell behind)."""
    underrun_s: float = 0.0
    limit: str | None = None
    """A limit that cut this turn short (``llm_time``), if any."""

    @property
    def voice_to_voice(self) -> float | None:
        """End of the caller's speech → first agent audio out, in seconds."""
        if self.speech_end is None or self.first_audio_out is None:
            return None
        return self.first_audio_out - self.speech_end

    def ttfb(self) -> dict[str, float | None]:
        """Each stage's time to first byte, in ms, from the event that starts it."""

        def span(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round((b - a) * 1000, 1)

        return {
            "endpoint_ms": span(self.speech_end, self.decided),
            "stt_final_ms": round(self.stt_compute_s * 1000, 1) if self.stt_compute_s else None,
            "llm_first_token_ms": span(self.llm_request, self.llm_first_token),
            "first_sentence_ms": span(self.llm_request, self.first_sentence),
            "tts_first_audio_ms": span(self.first_sentence, self.tts_first_audio),
            "playout_ms": span(self.tts_first_audio, self.first_audio_out),
            "held_for_end_of_turn_ms": span(self.tts_first_audio, self.decided),
        }

    def to_dict(self, t0: float) -> dict[str, Any]:
        def rel(t: float | None) -> float | None:
            return None if t is None else round((t - t0) * 1000, 1)

        v2v = self.voice_to_voice
        return {
            "gen": self.gen,
            "user_text": self.user_text,
            "reply_text": self.reply_text,
            "heard_text": self.heard_text,
            "status": self.status,
            "error": self.error,
            "tool_calls": self.tool_calls,
            "timeline_ms": {
                "speech_start": rel(self.speech_start),
                "llm_request": rel(self.llm_request),
                **{name: rel(getattr(self, name)) for name, _ in STAGES},
            },
            "voice_to_voice_ms": None if v2v is None else round(v2v * 1000, 1),
            "ttfb_ms": self.ttfb(),
            "reply_audio_ms": round(self.reply_samples / 16.0, 1),
            "client_played_ms": round(self.client_played_samples / 16.0, 1),
            "kind": self.kind,
            "end_of_turn": {
                "p": None if self.end_p is None else round(self.end_p, 3),
                "wait_ms": None if self.end_wait_s is None else round(self.end_wait_s * 1000),
            },
            "heard_source": self.heard_source,
            "barge_in": [i.to_dict(t0) for i in self.interruptions],
            "fillers": [{"text": text, "at_ms": rel(at)} for at, text in self.fillers],
            "underruns": {"count": self.underruns, "ms": round(self.underrun_s * 1000, 1)},
            "limit": self.limit,
            "context": self.context,
        }
