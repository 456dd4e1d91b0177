"""The whole embedded pipeline on real models: whisper tiny.en, piper, Qwen2.5-Coder-0.5B."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pytest
from conftest import JFK_REFERENCE, SAMPLES, until

from voice_agent.audio.files import load_audio_16k
from voice_agent.audio.pcm import SAMPLE_RATE, rms_dbfs
from voice_agent.core.clock import LoopClock
from voice_agent.replay import format_turns, replay
from voice_agent.session.record import context_messages

pytestmark = pytest.mark.models


def normalize(text: str) -> str:
    return jiwer.RemovePunctuation()(jiwer.ToLowerCase()(text)).strip()


def wer(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(normalize(reference), normalize(hypothesis)))


def pieces_at_pauses(pcm: np.ndarray, max_s: float) -> list[np.ndarray]:
    """Split speech at pauses (200 ms under -50 dBFS) into pieces of at most ~``max_s``."""
    frame = 320
    quiet = [rms_dbfs(pcm[i : i + frame]) < -50 for i in range(0, len(pcm) - frame + 1, frame)]
    cuts, run = [], 0
    for k, q in enumerate(quiet):
        run = run + 1 if q else 0
        if run == 10:  # the 200th ms of a pause
            cuts.append(k * frame)
    pieces, start = [], 0
    for i, cut in enumerate(cuts):
        nxt = cuts[i + 1] if i + 1 < len(cuts) else len(pcm)
        if nxt - start > max_s * SAMPLE_RATE:  # the next piece would be too long: cut here
            pieces.append(pcm[start:cut])
            start = cut
    pieces.append(pcm[start:])
    return [p for p in pieces if len(p) > frame]


def read_back(stt: Any, pcm: np.ndarray, max_s: float = 12.0) -> str:
    """What whisper reads out of agent audio as a caller heard it: each silence squeezed to
    200 ms (whisper tends to end its transcript at a long one: a gap between two replies,
    or a busy machine's late sentence), then transcribed in pieces of at most ~``max_s``
    cut at pauses."""
    frame = 320
    frames = [pcm[i : i + frame] for i in range(0, len(pcm) - frame + 1, frame)]
    kept, run = [], 0
    for f in frames:
        run = run + 1 if rms_dbfs(f) < -50 else 0
        if run <= 10:
            kept.append(f)
    if not kept:
        return ""
    squeezed = np.concatenate(kept)
    return " ".join(stt.transcribe(p).text for p in pieces_at_pauses(squeezed, max_s)).strip()


def word_overlap(reference: str, hypothesis: str) -> float:
    """Share of the reference's words that appear in the hypothesis (multiset)."""
    ref = normalize(reference).split()
    hyp = normalize(hypothesis).split()
    pool: dict[str, int] = {}
    for w in hyp:
        pool[w] = pool.get(w, 0) + 1
    hits = 0
    for w in ref:
        if pool.get(w, 0) > 0:
            hits += 1
            pool[w] -= 1
    return hits / max(1, len(ref))


def read_back_overlap(spoken: str, heard: str) -> float:
    """Share of the distinct words of what the agent said that whisper read back out of the
    audio. Distinct, because whisper writes a phrase the agent said over and over only
    once or twice (the 0.5B model sometimes repeats a sentence until its token limit)."""
    said = set(normalize(spoken).split())
    return len(said & set(normalize(heard).split())) / max(1, len(said))


@pytest.fixture(scope="module")
async def jfk_result(real_engine: Any, jfk_path: Path) -> Any:
    return await replay(real_engine, load_audio_16k(jfk_path), LoopClock())


async def test_jfk_transcript_within_10_percent_wer(jfk_result: Any) -> None:
    turns = jfk_result.report["turns"]
    # one turn expected; a long pause may end one early, and the words must still all be there
    assert 1 <= len(turns) <= 2, format_turns(jfk_result.report)
    transcript = " ".join(t["user_text"] for t in turns)
    assert wer(JFK_REFERENCE, transcript) <= 0.10


async def test_jfk_reply_is_spoken_and_not_silent(jfk_result: Any) -> None:
    turn = jfk_result.report["turns"][-1]
    assert turn["status"] == "completed"
    assert len(turn["reply_text"].split()) >= 2
    audio = jfk_result.agent_audio(turn["gen"])
    assert len(audio) >= 16000 * 0.5
    assert rms_dbfs(audio) > -35.0
    # the timeline is ordered and voice-to-voice is measured
    tl = turn["timeline_ms"]
    # the reply is prepared while the end of turn is still being timed (preemptive),
    # so two chains: the turn's, and the reply's; both end at the first audio out
    for order in (
        ["speech_start", "speech_end", "decided", "first_audio_out", "reply_done"],
        [
            "speech_end",
            "stt_final",
            "llm_request",
            "llm_first_token",
            "first_sentence",
            "tts_first_audio",
            "first_audio_out",
        ],
    ):
        values = [tl[k] for k in order]
        assert all(v is not None for v in values), tl
        assert values == sorted(values), (order, tl)
    assert turn["voice_to_voice_ms"] == pytest.approx(
        tl["first_audio_out"] - tl["speech_end"], abs=0.2
    )
    # the speech end the VAD saw is where the file's speech ends (10.5–11.1 s into jfk.flac)
    assert 10_300 <= tl["speech_end"] <= 11_200


async def test_agent_audio_transcribes_back_to_its_text(jfk_result: Any) -> None:
    from voice_agent.stt.whisper import WhisperSTT

    turn = jfk_result.report["turns"][-1]
    audio = jfk_result.agent_audio(turn["gen"])
    # what was spoken: the reply's sentences after markdown stripping (all heard, as it completed)
    spoken = turn["heard_text"]
    assert turn["status"] == "completed" and len(spoken.split()) >= 0.8 * len(
        turn["reply_text"].split()
    )
    # faster-whisper's own 30 s-window pass: this checks the voice, not our STT shortcuts.
    # A long reply is cut at its pauses into pieces of at most ~12 s: on one long window
    # of repetitive text tiny.en sometimes stops early ("… You're...") and drops the rest.
    stt = WhisperSTT("tiny-en", window="full")
    heard = " ".join(stt.transcribe(piece).text for piece in pieces_at_pauses(audio, 12.0))
    assert read_back_overlap(spoken, heard) >= 0.8, (spoken, heard)


async def test_conversation_wav_is_time_aligned(jfk_result: Any) -> None:
    """The stereo WAV lays each agent frame at the input position where it was sent, so the
    agent is heard after the caller, where the session sent it."""
    stereo = jfk_result.stereo()
    assert stereo.ndim == 2 and stereo.shape[1] == 2
    caller, agent = stereo[:, 0], stereo[:, 1]
    first_agent = int(np.argmax(np.abs(agent) > 500))
    last_caller = int(len(caller) - np.argmax(np.abs(caller[::-1]) > 2000))
    # the agent starts speaking after the caller stops
    assert first_agent > last_caller
    # exactly where the recorder placed the first loud frame (the input's own timeline)
    frames = jfk_result.recorder.frames
    pos, _gen, pcm = next((p, g, x) for p, g, x in frames if np.abs(x).max() > 500)
    assert first_agent == pos + int(np.argmax(np.abs(pcm) > 500))
    # and, within a generous bound, at the clock time the session sent the first audio
    # (the answer, or a filler played while it was prepared): the input feeder runs in
    # real time, a busy machine makes it lag a little
    turn = jfk_result.report["turns"][-1]
    starts = [f["at_ms"] for f in turn["fillers"]] + [turn["timeline_ms"]["first_audio_out"]]
    assert first_agent / 16000 == pytest.approx(min(starts) / 1000, abs=1.0)


async def test_two_utterances_two_turns_with_context(real_engine: Any) -> None:
    left = load_audio_16k(SAMPLES / "stereo_diarization.wav", channel=0)
    right = load_audio_16k(SAMPLES / "stereo_diarization.wav", channel=1)
    gap = np.zeros(2 * 16000, dtype=np.int16)
    pcm = np.concatenate([right[: int(3.2 * 16000)], gap, left])
    result = await replay(real_engine, pcm, LoopClock(), fast=True)
    turns = result.report["turns"]
    assert len(turns) == 2, format_turns(result.report)
    assert "horizon" in turns[0]["user_text"].lower()
    assert "wizard" in turns[1]["user_text"].lower()
    context = context_messages(result.report, turns[1])
    assert turns[1]["context"] == {"slices": [[0, 1], [1, 4]]}  # the history's, not a copy
    roles = [m["role"] for m in context]
    assert roles[:3] == ["system", "user", "assistant"]
    assert context[1]["content"] == turns[0]["user_text"]
    assert context[2]["content"].startswith(turns[0]["heard_text"] or turns[0]["reply_text"])
    assert context[-1] == {"role": "user", "content": turns[1]["user_text"]}


async def test_dead_llm_endpoint_is_a_clear_error(stt_tts: Any) -> None:
    import socket

    from doubles import CollectingOutput

    from voice_agent.llm.openai_compat import OpenAICompatLLM
    from voice_agent.session.driver import Session
    from voice_agent.session.engine import Engine
    from voice_agent.vad.webrtc import WebRtcVad

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    stt, tts = stt_tts
    llm = OpenAICompatLLM(f"http://127.0.0.1:{port}/v1", "none", first_token_timeout=5)
    engine = Engine(stt=stt, tts=tts, llm=llm, new_vad=WebRtcVad)  # type: ignore[arg-type]
    out = CollectingOutput()
    session = Session(engine, out, LoopClock())
    import asyncio

    async with asyncio.timeout(20):
        task = asyncio.create_task(session.run())
        session.send_text("Hello?")
        await until(lambda: bool(session.turns) and session.turns[0].status != "pending", 20)
        session.hangup()
        await task
    await llm.close()
    turn = session.turns[0]
    assert turn.status == "llm_error"
    assert turn.error is not None and "cannot reach the LLM" in turn.error
    assert "VOICE_AGENT_LLM_BASE_URL" in turn.error  # the fix, for the operator's report
    errors = [e for e in out.events if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["code"] == "llm_error"
    assert str(port) not in errors[0]["message"]  # no internal address reaches the client


async def test_whisper_base_is_selectable(jfk_path: Path) -> None:
    from voice_agent.stt.whisper import WhisperSTT

    base = WhisperSTT("base")
    assert base.language == "en" and base.directory.name == "base"
    text = base.transcribe(load_audio_16k(jfk_path)).text
    assert wer(JFK_REFERENCE, text) <= 0.10, text


async def test_tight_and_full_windows_agree_on_real_speech(
    stt_tts: Any, jfk_path: Path
) -> None:
    from voice_agent.stt.whisper import WhisperSTT

    pcm = load_audio_16k(jfk_path)
    full = WhisperSTT("tiny-en", window="full").transcribe(pcm)
    whisper = stt_tts[0]
    tight = whisper.transcribe(pcm)
    assert whisper.window == "tight"
    assert normalize(tight.text) == normalize(full.text)


async def test_preemptive_reply_dropped_at_a_mid_sentence_pause_leaves_no_trace(
    stt_tts: Any, jfk_path: Any
) -> None:
    """jfk.flac pauses ~0.5 s after "…can do for you": a reply is prepared there and dropped."""
    from doubles import ScriptedLLMDouble

    from voice_agent.audio.files import load_audio_16k
    from voice_agent.replay import replay
    from voice_agent.session.engine import Engine
    from voice_agent.vad.webrtc import WebRtcVad

    llm = ScriptedLLMDouble([[f"Reply {i}."] for i in range(1, 6)])
    stt, tts = stt_tts
    engine = Engine(stt=stt, tts=tts, llm=llm, new_vad=WebRtcVad)
    result = await replay(engine, load_audio_16k(jfk_path), LoopClock(), fast=True)
    session = result.session
    assert len(session.turns) == 1
    (turn,) = session.turns
    assert turn.status == "completed" and "ask what you can do" in turn.user_text
    # one or more replies were prepared and dropped at pauses before the one that played
    assert len(llm.requests) >= 2 and llm.closed_streams == len(llm.requests)
    assert session.prepared_dropped == len(llm.requests) - 1
    assert turn.reply_text == f"Reply {len(llm.requests)}."
    assert [m["role"] for m in session.history] == ["system", "user", "assistant"]
    played = {gen for _, gen, _ in result.recorder.frames}
    assert played == {turn.gen}
    finals = [e for e in result.recorder.events if e["type"] == "transcript.final"]
    assert [e["gen"] for e in finals] == [turn.gen]
    assert not [
        e for e in result.recorder.events if e["type"] == "reply.delta" and e["gen"] != turn.gen
    ]



async def test_the_local_llm_takes_prefills(real_engine: Any) -> None:
    """Being local (a prompt cache of its own, nothing billed), llama-server is sent
    prefills, and reads them."""
    before = real_engine.llm.prefills
    system = {"role": "system", "content": "You are a friendly voice assistant."}
    assert await real_engine.llm.prefill([system]) is True
    assert real_engine.llm.prefills == before + 1
