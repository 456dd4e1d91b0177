"""Moonshine base: the tokenizer file, the model files' set-up, and the real model on real
speech (content and the exactness of draft reuse, never its speed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voice_agent import models
from voice_agent.audio.files import load_audio_16k
from voice_agent.errors import ModelError
from voice_agent.stt.moonshine import SPACE, MoonshineSTT, decode_pieces, read_pieces, token_cap
from voice_agent.stt.whisper import _words

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def test_tokenizer_file_is_length_prefixed_pieces(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.bin"
    marker = SPACE.encode()
    hi = bytes([len(marker) + 2]) + marker + b"hi"
    path.write_bytes(b"\x05<unk>\x00\x04</s>" + hi + b"\x01!")
    pieces = read_pieces(path)
    assert pieces == [b"<unk>", b"", b"</s>", marker + b"hi", b"!"]
    assert decode_pieces(pieces, [3, 4, 3]) == "hi! hi"
    assert decode_pieces(pieces, [3, 99]) == "hi"  # an id past the table is skipped


def test_token_cap_grows_with_the_audio() -> None:
    assert token_cap(0) == 10
    assert token_cap(16_000) == 16
    assert token_cap(16_001) == 17
    assert token_cap(3 * 16_000) == 28


def test_a_model_that_is_not_set_up_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOICE_AGENT_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match="moonshine-base is not set up") as err:
        models.moonshine_dir("moonshine-base")
    assert "scripts/install.sh" in str(err.value)


def test_a_converted_graph_that_changed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = models.moonshine_dir("moonshine-base")
    monkeypatch.setenv("VOICE_AGENT_CACHE", str(tmp_path))
    copy = tmp_path / "stt" / "moonshine-base"
    copy.mkdir(parents=True)
    for f in real.iterdir():
        (copy / f.name).symlink_to(f)
    models.moonshine_dir("moonshine-base")  # the copy verifies
    (copy / "encoder_model.onnx.sha256").unlink()
    (copy / "encoder_model.onnx.sha256").write_text("0" * 64 + "  encoder_model.onnx\n")
    with pytest.raises(ModelError, match="checksum mismatch for encoder_model.onnx"):
        models.moonshine_dir("moonshine-base")


def test_the_engine_default_is_moonshine() -> None:
    from voice_agent.session.engine import EngineConfig

    assert EngineConfig().stt_model == "moonshine-base"
    assert models.is_moonshine("moonshine-base")
    assert not models.is_moonshine("tiny-en")
    assert not models.is_moonshine(str(SAMPLES))


@pytest.fixture(scope="module")
def moonshine() -> MoonshineSTT:
    return MoonshineSTT()


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    return load_audio_16k(SAMPLES / "jfk.flac")


JFK = (
    "and so my fellow americans ask not what your country can do for you "
    "ask what you can do for your country"
)


def test_jfk_word_for_word(moonshine: MoonshineSTT, jfk: np.ndarray) -> None:
    result = moonshine.transcribe(jfk)
    assert " ".join(w for w in _words(result.text) if w) == JFK
    assert result.audio_samples == len(jfk)
    assert -0.7 < result.avg_logprob < 0


def test_a_growing_turn_reuses_its_drafts_and_gets_the_same_words(
    moonshine: MoonshineSTT, jfk: np.ndarray
) -> None:
    stt = moonshine
    stt._drafts.clear()
    audio = jfk.astype(np.float32) / 32768
    cold = {n: stt.decode(audio[: n * 16_000]) for n in (4, 8, 11)}
    stt._drafts.clear()
    before = stt.draft_tokens_kept
    warm = {n: stt.decode(audio[: n * 16_000]) for n in range(2, 12)}
    kept = stt.draft_tokens_kept - before
    for n, (ids, score) in cold.items():
        assert warm[n][0] == ids
        assert warm[n][1] == pytest.approx(score, abs=0.02)
    assert kept >= 40  # most of each pass came from the one before it


def test_another_turn_does_not_take_this_turns_draft(
    moonshine: MoonshineSTT, jfk: np.ndarray
) -> None:
    stt = moonshine
    other = load_audio_16k(SAMPLES / "stereo_diarization.wav", channel=1)
    stt.transcribe(jfk)
    before = stt.draft_tokens_kept
    text = stt.transcribe(other).text
    assert stt.draft_tokens_kept == before
    assert _words(text) == ["the", "horizon", "seems", "extremely", "distant"]


def test_very_short_and_silent_audio(moonshine: MoonshineSTT) -> None:
    short = moonshine.transcribe(np.zeros(160, dtype=np.int16))
    assert short.audio_samples == 160 and isinstance(short.text, str)
    silent = moonshine.transcribe(np.zeros(32_000, dtype=np.int16))
    assert len(silent.text.split()) <= 2


def test_moonshine_reads_clear_speech_as_sure_and_writes_nothing_for_noise(
    moonshine: MoonshineSTT, jfk: np.ndarray
) -> None:
    floor = moonshine.unclear_logprob
    assert floor == -0.5
    clear = moonshine.transcribe(jfk)
    assert clear.avg_logprob is not None and clear.avg_logprob > floor + 0.2
    backwards = moonshine.transcribe(jfk[::-1].copy())
    noise = np.random.default_rng(0).standard_normal(48_000) * 3000
    assert backwards.text == ""
    assert moonshine.transcribe(noise.astype(np.int16)).text == ""


def test_a_turn_ending_in_silence_is_not_read_as_empty(moonshine: MoonshineSTT) -> None:
    # beckett.flac cut 0.2 s after its last word: Moonshine's first pick is the end of text
    # (-0.42) over "Ever" (-1.14); the first word is taken
    beckett = load_audio_16k(SAMPLES / "beckett.flac")[: 9 * 16_000]
    turn = np.concatenate([beckett, np.zeros(3200, dtype=np.int16)])
    moonshine._drafts.clear()
    words = _words(moonshine.transcribe(turn).text)
    assert words[:2] == ["ever", "tried"] and words[-2:] == ["fail", "better"]


@pytest.mark.models
def test_no_model_on_onnxruntime_spins_its_threads(moonshine: MoonshineSTT) -> None:
    """Spinning worker threads take the 2 cores from llama-server, and memory patterns
    kept for each new input shape grew piper's RSS without end (voice_agent.core.onnxrt
    has the figures): Moonshine's and piper's loaded sessions have both off, with the
    threads they were asked for."""
    from voice_agent.tts.piper import PiperTTS

    piper = PiperTTS(threads=2)
    sessions = [moonshine._encoder, moonshine._decoder, piper._voice.session]
    for session in sessions:
        opts = session.get_session_options()
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (2, 1)
        assert opts.enable_mem_pattern is False
    # and the voice still speaks: "Paris." is about half a second of 16 kHz audio
    assert 4000 < len(piper.synthesize("Paris.")) < 16000
