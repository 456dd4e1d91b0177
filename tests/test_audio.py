"""PCM, resampling, playout and audio-file helpers: exact values, no event loop."""

from pathlib import Path

import numpy as np
import pytest

from voice_agent.audio.files import load_audio, load_audio_16k, write_wav
from voice_agent.audio.pcm import from_bytes, rms_dbfs, split_frames, to_float32, to_int16, to_mono
from voice_agent.audio.playout import Playout
from voice_agent.audio.resample import StreamResampler, resample
from voice_agent.errors import AudioInputError


def tone(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return to_int16(amp * np.sin(2 * np.pi * freq * t))


def dominant_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    return float(np.argmax(spectrum) * rate / len(pcm))


def test_bytes_roundtrip_and_odd_length() -> None:
    pcm = np.array([0, 1, -1, 32767, -32768], dtype=np.int16)
    assert from_bytes(pcm.tobytes()).tolist() == [0, 1, -1, 32767, -32768]
    with pytest.raises(ValueError, match="even byte count, got 3"):
        from_bytes(b"\x00\x01\x02")


def test_float_conversion_clips() -> None:
    assert to_int16(np.array([0.0, 0.5, 1.0, 2.0, -2.0])).tolist() == [
        0,
        16384,
        32767,
        32767,
        -32768,
    ]
    assert to_float32(np.array([16384, -32768], dtype=np.int16)).tolist() == [0.5, -1.0]


def test_rms_dbfs() -> None:
    assert rms_dbfs(np.zeros(100, dtype=np.int16)) == -120.0
    assert rms_dbfs(tone(1000, 16000, 1.0, amp=1.0)) == pytest.approx(-3.01, abs=0.05)


def test_to_mono_select_and_mix() -> None:
    stereo = np.array([[100, 300], [-100, -300]], dtype=np.int16)
    assert to_mono(stereo, 0).tolist() == [100, -100]
    assert to_mono(stereo, 1).tolist() == [300, -300]
    assert to_mono(stereo, None).tolist() == [200, -200]
    with pytest.raises(ValueError, match="out of range"):
        to_mono(stereo, 2)


def test_split_frames_pads_last() -> None:
    frames = split_frames(np.ones(700, dtype=np.int16))
    assert [len(f) for f in frames] == [320, 320, 320]
    assert int(frames[2].sum()) == 60


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resample_keeps_duration_and_pitch(rate: int) -> None:
    out = resample(tone(440, rate, 1.0), rate, 16000)
    assert abs(len(out) - 16000) <= 1
    assert dominant_hz(out, 16000) == pytest.approx(440, abs=2)


def test_stream_resampler_matches_whole_clip_length() -> None:
    src = tone(1000, 48000, 1.0)
    rs = StreamResampler(48000, 16000)
    parts = [rs.process(src[i : i + 960]) for i in range(0, len(src), 960)] + [rs.flush()]
    out = np.concatenate(parts)
    assert abs(len(out) - 16000) <= 2
    assert dominant_hz(out, 16000) == pytest.approx(1000, abs=2)
    assert StreamResampler(16000, 16000).process(src[:10]) is not None


@pytest.mark.parametrize("rates", [(8000, 16000), (16000, 8000), (48000, 16000), (16000, 48000)])
def test_stream_resampler_gives_back_each_20_ms_at_once(rates: tuple[int, int]) -> None:
    """Live audio: every 20 ms chunk comes back as 20 ms (after the first, which the
    filter's delay shortens), so nothing waits in the resampler for a block to fill."""
    rin, rout = rates
    src = tone(440, rin, 1.0)
    rs = StreamResampler(rin, rout)
    lens = [len(rs.process(src[i : i + rin // 50])) for i in range(0, len(src), rin // 50)]
    assert lens[1:] == [rout // 50] * 49
    held_ms = (rout - sum(lens)) * 1000 / rout
    assert 0 < held_ms <= 2.0
    assert len(rs.flush()) == rout - sum(lens)


def test_playout_frames_generations_and_heard_text() -> None:
    p = Playout(frame_samples=320, capacity=10_000)
    p.push(1, np.ones(640, dtype=np.int16), "One two.")
    p.push(1, np.ones(500, dtype=np.int16), "Three four five six.")  # padded to 640
    assert p.buffered == 1280
    pulled = [p.pull() for _ in range(3)]
    assert [(g, len(f)) for g, f, _ in pulled if True] == [(1, 320)] * 3
    # half of the second sentence sent: "Three" (6 of 21 weighted characters) ends inside
    # that half, "four" (11 of 21) does not
    assert p.heard_text(1) == "One two. Three"
    assert p.clear(1) == 320
    assert p.pull() is None and p.buffered == 0
    assert p.played_samples(1) == 960


def test_heard_text_from_the_clients_playout_report_skips_filler_words() -> None:
    p = Playout(frame_samples=320)
    p.push(4, np.ones(640, dtype=np.int16), "Hmm.", filler=True)
    assert p.pull() is not None and p.pull() is not None  # the filler played out
    p.push(4, np.ones(960, dtype=np.int16), "The answer is seven.")
    p.push(4, np.ones(640, dtype=np.int16), "Anything else?")
    while p.pull() is not None:
        pass  # all of it was sent
    assert p.heard_text(4) == "The answer is seven. Anything else?"
    # the client reports less: the filler, then 2/3 of the answer (weights 4,7,3,7 of 21)
    assert p.heard_text(4, samples=640 + 640) == "The answer is"
    assert p.heard_text(4, samples=640 + 960) == "The answer is seven."
    assert p.heard_text(4, samples=320) == ""  # still inside the filler
    assert p.heard_text(4, samples=0) == ""


def test_the_answer_cuts_a_filler_short_and_drops_one_not_begun() -> None:
    p = Playout(frame_samples=320)
    clip = np.full(3200, 1000, dtype=np.int16)  # a shared fixed clip: never written
    p.push(2, clip, "Hmm.", filler=True)
    p.push(1, clip, "Okay.", filler=True)  # another generation's: left alone
    for _ in range(3):
        p.pull()
    p.push(2, np.full(640, 7, dtype=np.int16), "Yes.")
    # "Hmm." had 960 samples sent: it ends after two more frames, faded to silence
    hmm = p.history[2][0]
    assert hmm.total == 960 + 640 and p.buffered == 640 + 3200 + 640
    assert hmm.pcm[960] == 1000 and hmm.pcm[-1] == 0 and 0 < hmm.pcm[1280] < 1000
    assert (clip == 1000).all()
    frames = []
    while (pulled := p.pull()) is not None:
        frames.append((pulled[0], pulled[2].text))
    assert frames == [(2, "Hmm.")] * 2 + [(1, "Okay.")] * 10 + [(2, "Yes.")] * 2
    assert p.heard_text(2) == "Yes."
    # a filler not begun is dropped whole, and takes no place in what is heard
    p.push(3, clip, "Hmm.", filler=True)
    p.push(3, np.full(320, 7, dtype=np.int16), "No.")
    assert p.buffered == 320 and p.pull()[2].text == "No."  # type: ignore[index]
    assert p.heard_text(3) == "No."


def test_a_segment_lets_its_audio_go_once_sent_or_dropped_and_keeps_its_length() -> None:
    """The record of sent frames keeps segments for a minute; their samples are not
    kept with them. What was heard is still reckoned from the lengths."""
    p = Playout(frame_samples=320)
    first = p.push(1, np.ones(640, dtype=np.int16), "One two.")
    second = p.push(1, np.ones(960, dtype=np.int16), "Three four five.")
    frames = [p.pull() for _ in range(3)]
    assert first.played == first.total == 640 and len(first.pcm) == 0
    assert all(len(f[1]) == 320 and (f[1] == 1).all() for f in frames if f is not None)
    assert len(second.pcm) == 960  # still playing
    assert p.clear(1) == 640
    assert len(second.pcm) == 0 and second.total == 960 and second.played == 320
    # a third of "Three four five." was sent (word ends at 6, 11, 17 of 17): no word of it
    assert p.heard_text(1) == "One two."
    # the client's report of two thirds: "Three four"
    assert p.heard_text(1, samples=640 + 640) == "One two. Three four"


def test_playout_clear_keeps_newer_generation() -> None:
    p = Playout(frame_samples=320)
    p.push(1, np.ones(320, dtype=np.int16), "old")
    p.push(2, np.ones(320, dtype=np.int16), "new")
    assert p.clear(1) == 320
    item = p.pull()
    assert item is not None and item[0] == 2


def test_load_audio_errors(tmp_path: Path) -> None:
    with pytest.raises(AudioInputError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioInputError, match="empty"):
        load_audio(empty)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(AudioInputError, match="cannot read junk.wav") as err:
        load_audio(junk)
    assert "use a WAV or FLAC file" in str(err.value)
    assert "\n" not in str(err.value)


def test_load_audio_channels_and_rate(tmp_path: Path) -> None:
    left, right = tone(300, 44100, 0.5), tone(1200, 44100, 0.5)
    path = tmp_path / "st.wav"
    write_wav(path, np.stack([left, right], axis=1), 44100)
    pcm, rate = load_audio(path, channel=1)
    assert rate == 44100 and pcm.tolist() == right.tolist()
    out = load_audio_16k(path, channel=0)
    assert abs(len(out) - 8000) <= 1
    assert dominant_hz(out, 16000) == pytest.approx(300, abs=3)
    with pytest.raises(AudioInputError, match="channel 5 out of range"):
        load_audio(path, channel=5)


def test_real_speech_file_loads() -> None:
    pcm = load_audio_16k(Path(__file__).parents[1] / "samples" / "jfk.flac")
    assert len(pcm) == pytest.approx(11 * 16000, abs=16000)
    assert rms_dbfs(pcm) > -40


def test_words_spanning_a_range_of_a_sentences_audio_with_a_word_of_slack() -> None:
    from voice_agent.audio.playout import words_spanning

    words = "aa bb cc dd".split()  # each word is 3 of 12 weights: 0-100, 100-200, ...
    assert words_spanning(words, 0, 50, 400) == ["aa", "bb"]
    assert words_spanning(words, 150, 250, 400) == ["aa", "bb", "cc", "dd"]
    assert words_spanning(words, 310, 400, 400) == ["cc", "dd"]
    assert words_spanning(words, 200, 200, 400) == []
    assert words_spanning([], 0, 10, 400) == []


def test_frame_cutter_streams_whole_frames_and_drains_the_rest_padded() -> None:
    from voice_agent.audio.pcm import FrameCutter

    cut = FrameCutter(4)
    x = np.arange(1, 11, dtype=np.int16)
    assert [f.tolist() for f in cut.cut(x[:3])] == []
    assert [f.tolist() for f in cut.cut(x[3:])] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert [f.tolist() for f in cut.drain()] == [[9, 10, 0, 0]]
    assert cut.drain() == []
    cut.cut(x[:3])
    cut.clear()
    assert [f.tolist() for f in cut.cut(x[:4])] == [[1, 2, 3, 4]]
