"""The models a process loads once and shares across sessions."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

from voice_agent.audio.pcm import Pcm
from voice_agent.core.work import FairWorker, Foreground
from voice_agent.llm.base import LLM
from voice_agent.llm.tools import ToolRegistry
from voice_agent.session.inbound import FrameClassifier
from voice_agent.stt.base import STT, Transcript
from voice_agent.tts.base import TTS

FILLERS = ("Hmm.", "Okay.", "One moment.", "Let me check.")
"""Short clips played while the agent thinks or a tool runs; never part of the context."""
IDLE_PROMPT = "Are you still there?"
GOODBYE = "It seems you have stepped away. Goodbye!"
SAY_AGAIN = "Sorry, I didn't catch that. Could you say it again?"
LOST_THREAD = "Sorry, I lost my train of thought there."
"""Said when the LLM fails in the middle of a reply (what it had said is kept)."""
CANNOT_CHECK_LIVE = (
    "I can't check live information like that from here, so I'd rather not guess. A quick search "
    "or the place itself will have it, and I'm happy to help with anything else."
)
CANNOT_SEE_PERSONAL = (
    "I can't see your accounts, orders or messages from here. Your app, your phone or "
    "their customer service will have that, and I'm happy to help with anything else."
)
FIXED_LINES = (
    *FILLERS, IDLE_PROMPT, GOODBYE, SAY_AGAIN, LOST_THREAD, CANNOT_CHECK_LIVE,
    CANNOT_SEE_PERSONAL,
)  # fmt: skip
"""Every fixed line: synthesized once at start-up, so each plays without a TTS pass."""


@dataclass
class EngineConfig:
    """What to load. ``llm_base_url`` set → use that endpoint instead of the local server.

    Environment (one line points the LLM elsewhere)::

        VOICE_AGENT_LLM_BASE_URL=https://host/v1 VOICE_AGENT_LLM_MODEL=name \
        VOICE_AGENT_LLM_API_KEY=... voice-agent replay file.wav
    """

    stt_model: str = "moonshine-base"
    """Moonshine base (English, the default), or whisper: tiny-en, base (multilingual) or a
    CTranslate2 directory."""
    stt_threads: int = 1
    """Threads of each STT pass (and of the voice: ``tts_threads``). One: passes of
    different calls (a final, a partial, a voice job) then run side by side on the cores
    instead of taking turns on both. Measured (fast profile, 2 cores, 4 callers at once,
    6 rounds): answer p50 1882 -> 1252 ms, p95 2387 -> 1810 ms; one caller alone, 9 rounds:
    p50 901 -> 961 ms, p95 1221 -> 1182 ms."""
    stt_jobs: int = 2
    """Final passes (someone waits for each) of different calls run side by side."""
    check_stt_model: str = "tiny-en"
    """Beside Moonshine: hears speech over the agent's voice (``Engine.check_stt``);
    "off": Moonshine does."""
    tts_voice: str = "joe-medium"
    tts_threads: int = 1
    tts_jobs: int = 2
    """Voice jobs run side by side when they are urgent (several callers' first
    sentences at once); a later sentence with audio still queued runs alone."""
    vad: str = "webrtc"
    vad_aggressiveness: int = 2
    turn_model: str = "smart-turn-v3"
    """The end-of-turn model ("off": none)."""
    llm_profile: str = "quality"
    llm_threads: int = 2
    llm_base_url: str | None = None
    llm_fallback_urls: tuple[str, ...] = ()
    """More endpoints, asked in order when the one before fails before its first token."""
    llm_model: str | None = None
    llm_api_key: str = "not-needed"
    llm_timeout_s: float = 30.0
    llm_max_tokens: int = 160
    llm_parallel: int = 1
    """The local llama-server's slots: replies decoded together in one batch (continuous
    batching), so calls at once do not queue one behind another. ``serve`` sizes it from
    its session limit."""
    builtin_tools: bool | None = None
    """Offer the shipped tools that need no network (``current_time``) to the LLM. None:
    by the model, as measured: yes for the default profile's 1.5B model and for a
    remote endpoint; no for the fast profile's 0.5B model, which wrote calls of tools
    it made up ("country-can-do-for-you") for questions no tool answers."""

    def offers_tools(self) -> bool:
        if self.builtin_tools is not None:
            return self.builtin_tools
        return self.llm_base_url is not None or self.llm_profile != "fast"

    @classmethod
    def from_env(cls, **overrides: Any) -> EngineConfig:
        env = os.environ
        urls = [u.strip() for u in env.get("VOICE_AGENT_LLM_URLS", "").split(",") if u.strip()]
        cfg = cls(
            llm_base_url=env.get("VOICE_AGENT_LLM_BASE_URL") or (urls[0] if urls else None),
            llm_fallback_urls=tuple(urls[1:]),
            llm_model=env.get("VOICE_AGENT_LLM_MODEL") or None,
            llm_api_key=env.get("VOICE_AGENT_LLM_API_KEY")
            or env.get("OPENAI_API_KEY")
            or "not-needed",
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        return cfg


class TurnModel(Protocol):
    """An end-of-turn model (Smart Turn): P(the turn is complete) from its audio."""

    name: str

    def probability(self, pcm: Pcm) -> float: ...


def transcribe_checked(
    stt: STT, speech_seconds: Callable[[Pcm], float] | None, pcm: Pcm
) -> Transcript:
    """A pass (blocking), with how much of its audio is speech when it wrote words: STT
    writes words into a cough or a burst of noise, and the session trusts only words
    over speech."""
    result = stt.transcribe(pcm)
    if speech_seconds is not None and result.text:
        result = dataclasses.replace(result, speech_s=speech_seconds(pcm))
    return result


@dataclass
class Engine:
    """Loaded models plus the workers that run them off the event loop.

    Final STT passes, partial STT passes (and barge-in checks) and TTS each have a
    :class:`~voice_agent.core.work.FairWorker`: one thread each, shared by every
    session in turn, with bounded per-session queues. A partial pass never delays
    a final one, and one session's load never queues ahead of another session's
    next job. Each call names its ``owner`` (its ``WorkOwner`` key).
    """

    stt: STT
    tts: TTS
    llm: LLM
    new_vad: Callable[[], FrameClassifier]
    tools: ToolRegistry = field(default_factory=ToolRegistry)
    stt_worker: FairWorker = field(default_factory=lambda: FairWorker("stt"))
    partial_worker: FairWorker = field(default_factory=lambda: FairWorker("stt-partial"))
    tts_worker: FairWorker = field(default_factory=lambda: FairWorker("tts"))
    info: dict[str, Any] = field(default_factory=dict)
    speech_seconds: Callable[[Pcm], float] | None = None
    """Seconds of speech in a clip (Silero); None: transcripts are not checked."""
    clips: dict[str, Pcm] = field(default_factory=dict)
    """Fixed lines (fillers, the idle prompt, goodbye) synthesized once with the voice."""
    turn_model: TurnModel | None = None
    """Scores each pause (None: the transcript alone decides the end of turn)."""
    turn_worker: FairWorker = field(default_factory=lambda: FairWorker("turn"))
    foreground: Foreground = field(default_factory=Foreground)
    """The calls waiting for an answer: other calls' partial passes and prefills wait."""
    check_stt: STT | None = None
    """Hears speech that began over the agent's voice (the barge-in checks, and that
    turn's final pass); None: ``stt`` does. Moonshine writes words into a short
    backchannel ("mm-hmm" → "Amend them."), which would confirm a barge-in; whisper
    tiny.en does not (0 of 21 false barge-ins in ``bench --barge-in``)."""

    async def run_stt(
        self,
        pcm: Pcm,
        partial: bool = False,
        owner: Hashable = None,
        over_agent: bool = False,
        wanted: Callable[[], bool] | None = None,
        runway_s: float | None = None,
    ) -> Transcript:
        """Transcribe ``pcm`` (``over_agent``: speech that began while the agent talked, by
        ``check_stt`` when there is one). A newer request of the same kind (final, or
        partial) from the same ``owner`` supersedes one still waiting: that one raises
        :class:`~voice_agent.core.work.Superseded`, as does one whose ``wanted()`` is False
        when its turn comes. ``runway_s``: how long it can wait while other sessions' jobs
        with none (a barge-in's words check) go first."""
        worker = self.partial_worker if partial else self.stt_worker
        slot = "partial" if partial else "final"
        stt = self.check_stt if over_agent and self.check_stt is not None else self.stt
        job = functools.partial(transcribe_checked, stt, self.speech_seconds, pcm)
        return await worker.submit(owner, job, slot=slot, wanted=wanted, runway_s=runway_s)

    async def run_turn_score(self, pcm: Pcm, owner: Hashable = None) -> float:
        """P(the turn in ``pcm`` is complete), on its own thread beside the final STT pass.
        A newer request from the same ``owner`` supersedes one still waiting."""
        model = self.turn_model
        if model is None:
            raise RuntimeError("no end-of-turn model loaded")
        job = functools.partial(model.probability, pcm)
        return await self.turn_worker.submit(owner, job, slot="score")

    async def run_tts(
        self, text: str, owner: Hashable = None, runway_s: float | None = None
    ) -> Pcm:
        """Synthesize ``text``; ``runway_s``: seconds of the owner's audio still queued to
        play (another session's first sentence goes ahead of this one until it runs
        short; see FairWorker)."""
        job = functools.partial(self.tts.synthesize, text)
        return await self.tts_worker.submit(owner, job, runway_s=runway_s)

    async def clip(self, text: str, owner: Hashable = None) -> Pcm:
        """The audio of a fixed line: synthesized at start-up, or once on first use."""
        pcm = self.clips.get(text)
        if pcm is None:
            pcm = self.clips[text] = await self.run_tts(text, owner)
        return pcm

    def shutdown(self) -> None:
        for worker in (self.stt_worker, self.partial_worker, self.tts_worker, self.turn_worker):
            worker.close()
