"""The bench corpus: real recordings from ``samples/``, espeak-ng and piper voices, and the
interjections, backchannels and noises of the barge-in bench."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voice_agent.audio.files import load_audio_16k
from voice_agent.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE, Pcm, rms_dbfs
from voice_agent.errors import VoiceAgentError
from voice_agent.tts.base import TTS

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
"""Real speech in the repository (sources and licences: samples/README.md)."""

JFK = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)
LEFT = (
    "He began a confused complaint against the wizard, "
    "who had vanished behind the curtain on the left."
)
RIGHT = "The horizon seems extremely distant."
ESPEAK_LINES = [
    "What is the capital of France?",
    "Can you recommend a good book for a long flight?",
    "How many minutes are there in one day?",
]
PIPER_LINES = [
    "Tell me a fun fact about octopuses.",
    "What should I cook for dinner tonight?",
    "Is it going to rain tomorrow in Seattle?",
]


PHONE_LINES = [
    "Please transfer me to the billing department.",
    "My account is under the name Johnson.",
    "I would like to book a table for six people on Friday.",
    "Cancel my subscription, please.",
    "What are your opening hours on Sunday?",
    "The package was supposed to arrive yesterday.",
]
"""More sentences for the 8 kHz against 16 kHz WER comparison (one word of the nine bench
utterances moves their mean WER by 1.6 points)."""


@dataclass
class Utterance:
    name: str
    source: str
    reference: str
    pcm: Pcm

    def with_lead(self, seconds: float = 0.5) -> Pcm:
        """The utterance after ``seconds`` of silence (the VAD needs a quiet start)."""
        return np.concatenate([np.zeros(int(seconds * SAMPLE_RATE), dtype=np.int16), self.pcm])


def sample(name: str, channel: int | None = None) -> Pcm:
    path = SAMPLES / name
    if not path.exists():
        raise VoiceAgentError(f"bench audio {path} not found", "run the bench from a checkout")
    return load_audio_16k(path, channel=channel)


def speech_end(pcm: Pcm, floor_db: float = 35.0) -> int:
    """Sample index where speech ends: the end of the last 20 ms frame within ``floor_db``
    of the loudest frame."""
    n = len(pcm) // FRAME_SAMPLES
    levels = [rms_dbfs(pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]) for i in range(n)]
    if not levels:
        return 0
    peak = max(levels)
    last = max(i for i, lv in enumerate(levels) if lv >= peak - floor_db)
    return (last + 1) * FRAME_SAMPLES


def onset(clip: Pcm, floor_db: float = 30.0) -> int:
    """Sample where a clip's sound begins: the first 10 ms within ``floor_db`` of its
    loudest 10 ms."""
    levels = [rms_dbfs(clip[i : i + 160]) for i in range(0, len(clip) - 159, 160)]
    peak = max(levels)
    return next(i for i, lv in enumerate(levels) if lv >= peak - floor_db) * 160


def espeak(text: str) -> Pcm:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise VoiceAgentError("espeak-ng is not installed", "apt-get install espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "u.wav"
        subprocess.run([exe, "-v", "en-us", "-s", "165", "-w", str(wav), text], check=True)
        return load_audio_16k(wav)


def utterances(tts: TTS, limit: int | None = None) -> list[Utterance]:
    """Questions for the latency benches: 3 recorded, 3 espeak-ng, 3 piper."""
    out = [
        Utterance("jfk", "recorded", JFK, sample("jfk.flac")),
        Utterance("diarization-left", "recorded", LEFT, sample("stereo_diarization.wav", 0)),
        Utterance("diarization-right", "recorded", RIGHT, sample("stereo_diarization.wav", 1)),
    ]
    for i, line in enumerate(ESPEAK_LINES, 1):
        out.append(Utterance(f"espeak-{i}", "espeak-ng", line, espeak(line)))
    for i, line in enumerate(PIPER_LINES, 1):
        out.append(Utterance(f"piper-{i}", "piper", line, tts.synthesize(line)))
    return out[:limit] if limit else out


def phone_lines(tts: TTS) -> list[Utterance]:
    """:data:`PHONE_LINES` in both synthetic voices."""
    out = []
    for i, line in enumerate(PHONE_LINES, 1):
        out.append(Utterance(f"phone-espeak-{i}", "espeak-ng", line, espeak(line)))
        out.append(Utterance(f"phone-piper-{i}", "piper", line, tts.synthesize(line)))
    return out


def interjections() -> list[tuple[str, Pcm]]:
    """Callers talking over the agent: real speech and espeak-ng lines."""
    jfk = sample("jfk.flac")
    clip = jfk[int(5.3 * SAMPLE_RATE) : int(7.8 * SAMPLE_RATE)].astype(np.float32)
    clip[:800] *= np.linspace(0, 1, 800)
    right = sample("stereo_diarization.wav", 1)
    return [
        ("jfk: what your country can do for you", clip.astype(np.int16)),
        ("recorded: the horizon seems extremely distant", right[: int(3.2 * 16000)]),
        ("espeak: wait, stop, I have a question", espeak("Wait, stop. I have a question.")),
        ("espeak: hold on, what about the price", espeak("Hold on, what about the price?")),
        ("espeak: sorry, can you repeat that", espeak("Sorry, can you repeat that?")),
    ]


def cough(ms: int, level: float, seed: int) -> Pcm:
    """A cough-like burst: noise with a fast attack and an exponential decay."""
    n = SAMPLE_RATE * ms // 1000
    rng = np.random.default_rng(seed)
    env = np.exp(-np.linspace(0, 5, n)) * (1 - np.exp(-np.linspace(0, 40, n)))
    x = np.convolve(rng.standard_normal(n) * env * level * 32767, np.ones(4) / 4, mode="same")
    return np.asarray(x, dtype=np.int16)


def breath(ms: int = 500, level: float = 0.05, seed: int = 3) -> Pcm:
    """A breath: low, smoothed noise with a slow rise and fall."""
    n = SAMPLE_RATE * ms // 1000
    rng = np.random.default_rng(seed)
    x = np.convolve(rng.standard_normal(n), np.ones(8) / 8, mode="same") * np.hanning(n)
    return np.asarray(x * level * 32767 * 3, dtype=np.int16)


def backchannels() -> list[tuple[str, Pcm]]:
    """Sounds that are not a barge-in: backchannels, coughs and a breath."""
    return [
        ("espeak: uh-huh", espeak("uh-huh")),
        ("espeak: yeah", espeak("yeah")),
        ("espeak: mm-hmm", espeak("mm-hmm")),
        ("espeak: right", espeak("right")),
        ("cough 300 ms", cough(300, 0.35, 7)),
        ("cough 500 ms, loud", cough(500, 0.6, 11)),
        ("breath 500 ms", breath()),
    ]
