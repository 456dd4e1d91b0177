"""faster-whisper (CTranslate2) speech-to-text on the embedded tiny.en or base weights."""

from __future__ import annotations

import time

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer

from voice_agent.audio.pcm import SAMPLE_RATE, Floats, Pcm, to_float32
from voice_agent.models import whisper_dir
from voice_agent.stt.base import Transcript

FULL_WINDOW = 3000  # mel frames: whisper's 30 s window
FRAMES_PER_S = 100


class WhisperSTT:
    """Loads a CTranslate2 whisper directory once; two threads may transcribe at once.

    Each pass transcribes the whole buffer it is given (the driver calls it on
    a growing buffer for partials, then once for the final). Greedy decoding,
    no timestamps.

    ``window="tight"`` (the default) runs the encoder on the audio plus
    ``pad_s`` of silence instead of whisper's fixed 30 s window: the encoder
    is most of a pass and its cost grows with the window (tiny.en on 2
    threads: ~320 ms for 30 s, ~55 ms for 12 s). A short window makes the
    decoder prone to repeating itself, so the number of tokens is capped by
    the audio's duration; a transcript that starts over ("What should I cook
    for dinner tonight? What should I") is cut where it starts over; and a
    pass that runs into the cap or still repeats itself is done again on the
    full window. ``window="full"`` uses faster-whisper's own
    ``transcribe``.
    """

    marks_sentence_ends = True
    unclear_logprob: float | None = -0.7
    """Measured with tiny.en: clear speech -0.03 to -0.5 (at 8 kHz down to -0.62 for a
    mostly right line); reversed speech -0.74 to -0.93, noise -1.97, garbled espeak -0.75
    to -1.4."""

    def __init__(
        self,
        model: str = "tiny-en",
        threads: int = 2,
        compute_type: str = "int8",
        beam_size: int = 1,
        language: str | None = "en",
        window: str = "tight",
        pad_s: float = 3.0,
    ) -> None:
        if window not in ("tight", "full"):
            raise ValueError(f"window must be 'tight' or 'full', got {window!r}")
        self.name = f"faster-whisper:{model}"
        self.directory = whisper_dir(model)
        self.beam_size = beam_size
        self.window = window
        self.pad_s = pad_s
        english_only = model.endswith("-en") or model.endswith(".en")
        self.language = "en" if english_only else language
        # two workers: a partial pass in flight never blocks the final pass
        self._model = WhisperModel(
            str(self.directory),
            device="cpu",
            compute_type=compute_type,
            cpu_threads=threads,
            num_workers=2,
        )
        self._tokenizer = Tokenizer(
            self._model.hf_tokenizer,
            self._model.model.is_multilingual,
            task="transcribe",
            language=self.language or "en",
        )
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        self.full_window_retries = 0

    def transcribe(self, pcm: Pcm) -> Transcript:
        t0 = time.perf_counter()  # measures compute only; session timing uses the injected clock
        audio = to_float32(pcm)
        if self.window == "full":
            text, score = self._transcribe_full(audio)
        else:
            text, hit_cap, score = self._decode(audio, tight=True)
            if not hit_cap:
                text = drop_repeated_opening(text)
            if hit_cap or looks_repeated(text):
                self.full_window_retries += 1
                text, _, score = self._decode(audio, tight=False)
        return Transcript(
            text=text,
            audio_samples=len(pcm),
            compute_s=time.perf_counter() - t0,
            avg_logprob=score,
        )

    def _decode(self, audio: Floats, tight: bool) -> tuple[str, bool, float | None]:
        """One encoder + greedy decoder pass; returns (text, ran into the token cap, the
        mean log-probability per token)."""
        seconds = len(audio) / SAMPLE_RATE
        if tight:
            pad = np.zeros(int(self.pad_s * SAMPLE_RATE), dtype=np.float32)
            audio = np.concatenate([audio, pad])
        feats = self._model.feature_extractor(audio)
        n = feats.shape[1]
        width = min(FULL_WINDOW, -(-n // 100) * 100) if tight else FULL_WINDOW
        x = np.zeros((feats.shape[0], width), dtype=np.float32)
        x[:, : min(n, width)] = feats[:, :width]
        encoded = self._model.model.encode(ctranslate2.StorageView.from_array(x[None]))
        cap = min(220, 10 + int(6 * seconds)) if tight else 220
        result = self._model.model.generate(
            encoded,
            [self._prompt],
            beam_size=self.beam_size,
            max_length=cap + len(self._prompt),
            suppress_blank=True,
            suppress_tokens=[-1],
            return_scores=True,
        )
        ids = [i for i in result[0].sequences_ids[0] if i < self._tokenizer.eot]
        text = self._tokenizer.decode(ids).strip()
        score = float(result[0].scores[0]) if result[0].scores else None
        return text, tight and len(ids) >= cap - 1, score

    def _transcribe_full(self, audio: Floats) -> tuple[str, float | None]:
        segments, _info = self._model.transcribe(
            audio,
            language=self.language,
            beam_size=self.beam_size,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        parts = list(segments)
        score = sum(s.avg_logprob for s in parts) / len(parts) if parts else None
        return " ".join(s.text.strip() for s in parts).strip(), score


def _words(text: str) -> list[str]:
    return ["".join(c for c in w.lower() if c.isalnum()) for w in text.split()]


def drop_repeated_opening(text: str, n: int = 3) -> str:
    """Cut a transcript where it repeats its own first ``n`` words after a sentence end."""
    raw = text.split()
    words = _words(text)
    for i in range(n, len(words) - n + 1):
        if words[i : i + n] == words[:n] and raw[i - 1].endswith((".", "?", "!")):
            return " ".join(raw[:i])
    return text


def looks_repeated(text: str, n: int = 3) -> bool:
    """Does a transcript repeat its own opening words, or any 4 words, later on?

    The typical failure of a short encoder window: "What should I cook for
    dinner tonight? What should I".
    """
    words = [w for w in _words(text) if w]
    if len(words) < 2 * n:
        return False
    head = words[:n]
    if any(words[i : i + n] == head for i in range(1, len(words) - n + 1)):
        return True
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    return len(grams) != len(set(grams))
