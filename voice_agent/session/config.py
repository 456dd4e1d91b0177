"""How a session behaves: end of turn, duplex, echo and noise rules, fixed lines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from voice_agent.session.engine import (
    CANNOT_CHECK_LIVE,
    CANNOT_SEE_PERSONAL,
    FILLERS,
    GOODBYE,
    IDLE_PROMPT,
    SAY_AGAIN,
)
from voice_agent.session.honesty import Unknowable, unknowable
from voice_agent.session.turns import DuplexPolicy, EndpointPolicy

VOICE_STYLE = (
    "You are a friendly voice assistant on a phone call. Everything you write is spoken "
    "aloud, so answer in one to three short sentences of plain, conversational English, "
    "with no lists, markdown, code, emoji, brackets or symbols. Write numbers, dates and "
    "units the way a person would say them.\n"
)
TEXT_STYLE = (
    "You are a friendly assistant in a text chat. Answer clearly and briefly; markdown "
    "is shown to the reader, so use it where it helps (a short list, a code block).\n"
)
CAPABILITIES = (
    "You cannot look anything up: you have no internet and no live information, and you "
    "cannot see anyone's accounts, orders, bookings, calendar, email or messages. So you "
    "never know the weather, the news, traffic, prices, stock quotes, sports results, "
    "timetables, or whether a place is open, and you never make up facts, names, numbers "
    "or times. When asked for something like that, say plainly that you can't check it, "
    "and suggest where to find it. Asked \"When does the bakery close today?\", you say: "
    "\"I can't check that from here, but their website or a quick call will tell you.\" "
    "Asked \"Did I get any new messages?\", you say: \"I can't see your messages from "
    "here, but your phone will show them.\" Asked \"What is the capital of Italy?\", you "
    "say: \"The capital of Italy is Rome.\"\n"
    "You can answer general knowledge questions and help the caller think things through. "
    "If the caller's words do not make sense, ask them to say it again."
)
DEFAULT_SYSTEM_PROMPT = VOICE_STYLE + CAPABILITIES
CHAT_SYSTEM_PROMPT = TEXT_STYLE + CAPABILITIES


def local_now() -> datetime:
    return datetime.now().astimezone()


def date_line(now: datetime, with_time: bool = True) -> str:
    """The current date and time as the system prompt states them (once per call, last,
    so every call shares the prompt's cached prefix). Without the time, for prompts
    read again at each reply: a line that changed every minute would make the LLM read
    all that follows it again (the tool definitions come after the system prompt)."""
    if not with_time:
        return f"Today is {now:%A}, {now:%B} {now.day}, {now.year}."
    hour = now.hour % 12 or 12
    half = "in the morning" if now.hour < 12 else "in the afternoon" if now.hour < 18 else (
        "in the evening")  # fmt: skip
    return (
        f"Today is {now:%A}, {now:%B} {now.day}, {now.year}, and the local time is "
        f"{hour}:{now.minute:02d} {half}."
    )


@dataclass
class SessionConfig:
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    wall_clock: Callable[[], datetime] | None = local_now
    """Read once at the start of a call for the date line of the system prompt (None: no
    date line). The session's timing never reads it: that is the injected Clock."""
    vad_start_ms: int = 60
    vad_stop_ms: int = 120
    # Without an end-of-turn score (no model, or its score not in yet), a turn whose
    # transcript reads as finished ends after min_silence_s of silence, any other after
    # max_silence_s. Whisper often puts a full stop at a mid-sentence pause (jfk.flac:
    # "…can do for you." at a 540 ms pause), so min_silence_s stays above common pauses.
    min_silence_s: float = 0.6
    max_silence_s: float = 1.0
    speculate_ms: int | None = 40
    """Start the final STT pass this far into a pause, before the VAD confirms it (at
    ``vad_stop_ms``); if the caller goes on, the pass is dropped (None: at the stop)."""
    preroll_ms: int = 300
    max_turn_s: float = 28.0
    partial_interval_s: float = 0.8
    inbound_queue_frames: int = 500
    playout_capacity_s: float = 20.0
    paced: bool = True
    max_tool_rounds: int = 3
    first_chunk_words: int = 5
    """The most words of a reply's first spoken chunk (it ends sooner at a clause mark
    after 3 words): the caller hears nothing until the LLM has written it and the voice
    has said it. 5 rather than 8: the first chunk came ~160 ms sooner at p50 in
    ``voice-agent bench`` (default profile, README)."""
    preemptive: bool = True
    """Start the reply during the pause, once its transcript is in, the end-of-turn policy
    leans complete and the pause has lasted ``prepare_after_s``; play it once the turn is
    over (drop it unheard if the caller goes on)."""
    prepare_after_s: float = 0.25
    """Gaps between phrases are often shorter (a reply started and dropped still costs the
    LLM its prompt reading while the caller talks on). 0 (as soon as the policy leans
    complete) was tried: the reply's request came no sooner in ``voice-agent bench``, whose
    turns wait for the end-of-turn score, which arrives about when the 0.2 s end of a
    complete turn does (README)."""
    prefill: bool = True
    """Give the LLM a head start on each reply's prompt: the call's system prompt when
    it starts, and the caller's words so far at each partial transcript while the agent
    is idle, so the reply's request reads only the words that came after. Only sent
    where the endpoint keeps a prompt cache (the local llama-server; see
    ``LLM.prefill``)."""
    endpoint: EndpointPolicy = field(default_factory=EndpointPolicy)
    """When a pause ends the turn: transcript cues and the end-of-turn model's score (used
    when the engine has one), then ``min_silence_s``/``max_silence_s`` by the transcript."""
    duplex: DuplexPolicy | None = field(default_factory=DuplexPolicy)
    """Barge-in, false-interruption recovery, fillers and idle handling (None: off)."""
    echo_guard: bool = True
    """Remove the agent's own voice from the caller's input (for clients without AEC)."""
    min_speech_s: float = 0.06
    """A transcript over less speech than this (by the engine's speech detector) is noise."""
    echo_reach_s: float = 0.6
    """How long after its audio is sent an agent word can come back as echo: a caller's
    transcript is compared with the agent words sent from this long before the caller's
    turn began until now."""
    fillers: tuple[str, ...] = FILLERS
    idle_prompt: str = IDLE_PROMPT
    goodbye: str = GOODBYE
    say_again: str = SAY_AGAIN
    """Said, without the LLM, to a turn whose transcript is too unsure to answer."""
    unclear_logprob: float | None = None
    """A final transcript whose mean token log-probability is below this is unclear. None:
    the STT's own floor (``STT.unclear_logprob``: whisper -0.7, Moonshine -0.5, each
    measured on its own scale); ``float("-inf")``: never."""
    max_context_chars: int = 8000
    """The most characters of history (past the system prompt) a reply's LLM request
    carries; older turns are dropped (llm.context). The local model's window is 4096
    tokens, about 16,000 characters, with the prompt and the tools in it too."""
    max_text_chars: int = 2000
    """The longest typed message a call takes (a longer one is an error event)."""
    max_llm_turn_s: float | None = 20.0
    """The longest one reply may keep the LLM (its rounds of tool calls included): what it
    said by then is spoken, and the turn is marked ``limit: llm_time``. None: no limit."""
    max_duration_s: float | None = 3600.0
    """A call ends after this long (``session.ending`` with reason ``time_limit``); None:
    never."""
    honesty_guard: bool = True
    """A turn that plainly asks for live facts or the caller's own data is answered with
    ``cannot_check_live`` or ``cannot_see_personal``, without the LLM, while the agent has
    no tools (see :mod:`voice_agent.session.honesty`)."""
    cannot_check_live: str = CANNOT_CHECK_LIVE
    cannot_see_personal: str = CANNOT_SEE_PERSONAL


def honest_line(cfg: SessionConfig, text: str, has_tools: bool) -> str | None:
    """The fixed line that answers ``text`` when the agent cannot know what it asks (None:
    the LLM answers)."""
    if not cfg.honesty_guard or has_tools:
        return None
    kind = unknowable(text)
    if kind is None:
        return None
    return cfg.cannot_check_live if kind is Unknowable.LIVE else cfg.cannot_see_personal


def system_message(cfg: SessionConfig, tools: str | None = None, with_time: bool = True) -> str:
    """The call's system prompt: the configured one, the date line, then the tools the
    agent has (``tools``, a line that names them; last, as in the chat's prompt).
    ``with_time`` False: the date only, for an agent with a time tool (the 1.5B model
    read "What time is it in Tokyo?" off the prompt's local time instead of calling it)."""
    prompt = cfg.system_prompt
    if cfg.wall_clock is not None:
        prompt = f"{prompt}\n{date_line(cfg.wall_clock(), with_time=with_time)}"
    return f"{prompt}\n{tools}" if tools else prompt


def chat_system_message(cfg: SessionConfig, tools: str | None = None) -> str:
    """The text chat's system prompt (read at each response): its own style, the same
    statement of what the agent can and cannot do, the date line, then the tools it has
    (``tools``, a line that names them)."""
    prompt = CHAT_SYSTEM_PROMPT
    if cfg.wall_clock is not None:  # the date only: the time tool tells the time
        prompt = f"{prompt}\n{date_line(cfg.wall_clock(), with_time=False)}"
    # last: placed before the statement of what it cannot do, the 1.5B model refused
    # every question its tools answer
    return f"{prompt}\n{tools}" if tools else prompt
