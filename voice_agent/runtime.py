"""Bring the embedded stack up (and down): models, VAD, and the LLM endpoint."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from voice_agent.audio.pcm import Pcm
from voice_agent.core.clock import LoopClock
from voice_agent.core.work import FairWorker
from voice_agent.llm.base import Message
from voice_agent.llm.builtin_tools import time_tool
from voice_agent.llm.failover import FailoverLLM
from voice_agent.llm.local import LocalLlamaServer
from voice_agent.llm.openai_compat import OpenAICompatLLM
from voice_agent.llm.tools import ToolRegistry
from voice_agent.session.engine import Engine, EngineConfig, TurnModel
from voice_agent.session.inbound import FrameClassifier
from voice_agent.stt.base import STT

Log = Callable[[str], None]


def load_stt(name: str, threads: int) -> STT:
    """The STT a name picks: a Moonshine manifest entry, else whisper (a manifest name
    or a CTranslate2 directory)."""
    from voice_agent.models import is_moonshine

    if is_moonshine(name):
        from voice_agent.stt.moonshine import MoonshineSTT

        return MoonshineSTT(name, threads=threads)
    from voice_agent.stt.whisper import WhisperSTT

    return WhisperSTT(name, threads=threads)


def _load_check_stt(cfg: EngineConfig) -> STT | None:
    """whisper tiny.en beside Moonshine, for speech over the agent's voice (see
    ``Engine.check_stt``); none beside whisper."""
    from voice_agent.models import is_moonshine

    if cfg.check_stt_model == "off" or not is_moonshine(cfg.stt_model):
        return None
    return load_stt(cfg.check_stt_model, cfg.stt_threads)


def load_tts(cfg: EngineConfig) -> object:
    from voice_agent.tts.piper import PiperTTS

    return PiperTTS(cfg.tts_voice, threads=cfg.tts_threads)


def _load_turn_model(cfg: EngineConfig) -> TurnModel | None:
    if cfg.turn_model == "off":
        return None
    from voice_agent.endpoint.smart_turn import SmartTurn
    from voice_agent.models import smart_turn_path

    return SmartTurn(smart_turn_path(cfg.turn_model))


def _vad_factory(cfg: EngineConfig) -> Callable[[], FrameClassifier]:
    if cfg.vad == "webrtc":
        from voice_agent.vad.webrtc import WebRtcVad

        return lambda: WebRtcVad(cfg.vad_aggressiveness)
    if cfg.vad in ("silero", "webrtc+silero"):
        from voice_agent.vad.silero import SileroSession, SileroVad
        from voice_agent.vad.webrtc import WebRtcVad

        model = SileroSession()
        if cfg.vad == "silero":
            return lambda: SileroVad(model)
        return lambda: BothVad(WebRtcVad(cfg.vad_aggressiveness), SileroVad(model))
    raise ValueError(f"unknown VAD {cfg.vad!r}: choose webrtc, silero or webrtc+silero")


def speech_seconds() -> Callable[[Pcm], float]:
    """Silero over a whole clip: how many seconds of it are speech."""
    from voice_agent.vad.silero import SileroSession, SpeechDetector

    return SpeechDetector(SileroSession()).speech_seconds


class BothVad:
    """Speech only where webrtcvad and Silero agree.

    webrtcvad alone takes steady background noise (a crowd, a fan) for speech;
    Silero rejects it. Both see every frame, so their states stay current.
    """

    name = "webrtc+silero"

    def __init__(self, a: FrameClassifier, b: FrameClassifier) -> None:
        self._a, self._b = a, b

    def is_speech(self, frame: Pcm) -> bool:
        a = self._a.is_speech(frame)
        b = self._b.is_speech(frame)
        return a and b


@contextlib.asynccontextmanager
async def open_engine(cfg: EngineConfig, log: Log = print) -> AsyncIterator[Engine]:
    """Load everything concurrently, warm it up, yield the engine, and stop the LLM server."""
    server: LocalLlamaServer | None = None
    llm: OpenAICompatLLM | FailoverLLM | None = None
    try:
        log(
            f"loading STT {cfg.stt_model}, TTS {cfg.tts_voice}, VAD {cfg.vad}, "
            f"end-of-turn model {cfg.turn_model}…"
        )
        stt_job = asyncio.create_task(asyncio.to_thread(load_stt, cfg.stt_model, cfg.stt_threads))
        check_job = asyncio.create_task(asyncio.to_thread(_load_check_stt, cfg))
        tts_job = asyncio.create_task(asyncio.to_thread(load_tts, cfg))
        turn_job = asyncio.create_task(asyncio.to_thread(_load_turn_model, cfg))
        if cfg.llm_base_url:
            base_url, model = cfg.llm_base_url, cfg.llm_model or "default"
            log(f"LLM: remote endpoint {base_url} model {model}")
        else:
            server = LocalLlamaServer(
                cfg.llm_profile, threads=cfg.llm_threads, parallel=cfg.llm_parallel
            )
            log(f"LLM: starting local llama-server with {server.model}…")
            base_url = await server.start()
            model = server.model
        stt, tts, turn_model = await stt_job, await tts_job, await turn_job
        check_stt = await check_job
        urls = [base_url, *cfg.llm_fallback_urls] if server is None else [base_url]
        endpoints = [
            OpenAICompatLLM(
                url,
                model,
                cfg.llm_api_key,
                first_token_timeout=cfg.llm_timeout_s,
                max_tokens=cfg.llm_max_tokens,
                prompt_cache=server is not None,
                slots=server.parallel if server is not None else 0,
            )
            for url in urls
        ]
        llm = endpoints[0] if len(endpoints) == 1 else FailoverLLM(endpoints, LoopClock())
        if len(endpoints) > 1:
            log(f"LLM: failing over to {', '.join(urls[1:])}")
        engine = Engine(
            stt=stt,
            check_stt=check_stt,
            tts=tts,  # type: ignore[arg-type]
            llm=llm,
            new_vad=_vad_factory(cfg),
            speech_seconds=speech_seconds(),
            turn_model=turn_model,
            tools=ToolRegistry([time_tool()] if cfg.offers_tools() else []),
            tts_worker=FairWorker("tts", threads=cfg.tts_jobs),
            stt_worker=FairWorker("stt", threads=cfg.stt_jobs),
            info={
                "stt": cfg.stt_model,
                "turn_model": cfg.turn_model,
                "tts": cfg.tts_voice,
                "vad": cfg.vad,
                "llm": model,
                "llm_base_url": base_url,
                "llm_local": server is not None,
                "llm_pid": server.pid if server else None,
            },
        )
        log("models loaded; warming up…")
        await warm_up(engine)
        if server is not None:
            local = server

            async def warm() -> None:
                await local.fill_slots(_warm_messages())

            if server.parallel > 1:
                await warm()
                log(f"LLM: the system prompt is in all {server.parallel} slots")
            server.supervise(warm, log)
        log("ready")
        yield engine
        engine.shutdown()
    finally:
        if llm is not None:
            await llm.close()
        if server is not None:
            await server.stop()


async def warm_up(engine: Engine) -> None:
    """One pass of each model, so the first caller doesn't pay for lazy initialisation.

    The LLM warm-up sends the system prompt, which the server keeps in its
    prompt cache for every request that starts with the same bytes.
    """
    import numpy as np

    from voice_agent.session.engine import FIXED_LINES

    await engine.run_stt(np.zeros(16_000, dtype=np.int16))
    if engine.check_stt is not None:
        await engine.run_stt(np.zeros(16_000, dtype=np.int16), over_agent=True)
    if engine.turn_model is not None:
        await engine.run_turn_score(np.zeros(16_000, dtype=np.int16))
    for line in FIXED_LINES:  # cached: they play without a TTS pass
        await engine.clip(line)
    async with contextlib.aclosing(engine.llm.stream(_warm_messages())) as stream:
        async for _ in stream:
            break


def _warm_messages() -> list[Message]:
    """A first request: the system prompt, which the server keeps in its prompt cache."""
    from voice_agent.session.driver import DEFAULT_SYSTEM_PROMPT

    return [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": "Hi."},
    ]
