"""faster-whisper (CTranslate2) speech-to-text on the embedded tiny.en or base weights."""

from __future__ import annotations

import time

from faster_whisper import WhisperModel

from voice_agent.audio.pcm import Pcm, to_float32
from voice_agent.models import whisper_dir
from voice_agent.stt.base import Transcript


class WhisperSTT:
    """Loads a CTranslate2 whisper directory once; two threads may transcribe at once.

    Each pass re-transcribes the whole buffer it is given (streaming is done by
    the driver calling it on a growing buffer for partials, then once for the
    final). Greedy decoding, no timestamps: the fastest settings measured here.
    """

    def __init__(
        self,
        model: str = "tiny-en",
        threads: int = 2,
        compute_type: str = "int8",
        beam_size: int = 1,
        language: str | None = "en",
    ) -> None:
        self.name = f"faster-whisper:{model}"
        self.directory = whisper_dir(model)
        self.beam_size = beam_size
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

    def transcribe(self, pcm: Pcm) -> Transcript:
        t0 = time.perf_counter()  # measures compute only; session timing uses the injected clock
        segments, _info = self._model.transcribe(
            to_float32(pcm),
            language=self.language,
            beam_size=self.beam_size,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        text = " ".join(s.text.strip() for s in segments).strip()
        return Transcript(text=text, audio_samples=len(pcm), compute_s=time.perf_counter() - t0)
