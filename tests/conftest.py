from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]
SHARED_AUDIO = ROOT.parent / "shared" / "audio"
JFK_REFERENCE = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)


@pytest.fixture(scope="session")
def jfk_path() -> Path:
    shared = SHARED_AUDIO / "jfk.flac"
    return shared if shared.exists() else ROOT / "samples" / "jfk.flac"


@pytest.fixture(scope="session")
def stt_tts() -> Iterator[tuple[object, object]]:
    """The real embedded whisper tiny.en and piper voice, loaded once."""
    from voice_agent.stt.whisper import WhisperSTT
    from voice_agent.tts.piper import PiperTTS

    yield WhisperSTT("tiny-en"), PiperTTS("joe-medium")


@pytest_asyncio.fixture(scope="session")
async def real_engine() -> AsyncIterator[object]:
    """The whole embedded stack on the fast LLM profile (Qwen2.5-Coder-0.5B)."""
    from voice_agent.runtime import open_engine
    from voice_agent.session.engine import EngineConfig

    cfg = EngineConfig(llm_profile="fast", llm_max_tokens=80)
    async with open_engine(cfg, log=lambda _m: None) as engine:
        yield engine
