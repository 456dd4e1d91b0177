"""Moonshine base (English) speech-to-text on onnxruntime: the default English STT.

The model files come out of the pinned ``moonshine-cpp`` wheel at setup
(:func:`voice_agent.models.moonshine_dir`); its own module is never imported.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from voice_agent.audio.pcm import SAMPLE_RATE, Floats, Pcm, to_float32
from voice_agent.core.onnxrt import session_options
from voice_agent.models import moonshine_dir
from voice_agent.stt.base import Transcript

START, END = 1, 2
SPACE = "\u2581"  # sentencepiece's word marker
MIN_SAMPLES = SAMPLE_RATE // 10
"""The encoder's convolutions need at least ~0.1 s; shorter audio is padded with silence."""
FIRST_WORD_LOGPROB = -2.0
"""Moonshine sometimes ends a pass before its first word on clear speech that ends in
silence (beckett.flac cut 0.2 s after its last word: end of text -0.42, "Ever" -1.14).
On noise, silence or speech played backwards the best word is far less likely (-3.1 to
-12). So at the first step a word at least this likely is taken over the end of text."""
DRAFT_KEY_SAMPLES = SAMPLE_RATE // 2
"""Passes whose audio starts with the same 0.5 s are passes over one growing turn."""
DRAFTS = 64
"""How many turns' last token ids are kept as drafts."""


def read_pieces(path: Path) -> list[bytes]:
    """``tokenizer.bin``: each piece as a length byte and its bytes (a zero length is an
    empty piece)."""
    raw = path.read_bytes()
    pieces: list[bytes] = []
    i = 0
    while i < len(raw):
        n = raw[i]
        pieces.append(raw[i + 1 : i + 1 + n])
        i += 1 + n
    return pieces


def decode_pieces(pieces: list[bytes], ids: list[int]) -> str:
    """Join the pieces' bytes (ids 3–258 are raw bytes) and turn the word marker into spaces."""
    text = b"".join(pieces[i] for i in ids if 0 <= i < len(pieces)).decode("utf-8", "replace")
    return text.replace(SPACE, " ").strip()


def token_cap(samples: int) -> int:
    """At most 10 tokens plus 6 per second of audio: a pass that runs away stops there."""
    return 10 + math.ceil(6 * samples / SAMPLE_RATE)


class MoonshineSTT:
    """Encoder once per pass, then greedy decoding with the merged decoder's KV cache.

    Its input is raw 16 kHz audio of any length (no mel features, no 30 s
    window), so a pass costs what the audio is long. The two onnxruntime
    sessions are shared: the final and the partial worker may run at once.

    The decoder is most of a pass (~8 ms a token), and a turn is transcribed
    again and again as it grows (partials, then the final pass). So each pass
    keeps its tokens as a *draft* for the next pass over the same turn (same
    first 0.5 s of audio): the next pass feeds the whole draft to the decoder
    in one step, keeps the longest prefix that greedy decoding would have
    produced itself, and decodes on from there. The result is the greedy
    result; only the number of decoder steps changes.
    """

    marks_sentence_ends = False
    """"…ask what you can do for your country" (jfk.flac, whole) has no full stop."""
    unclear_logprob: float | None = -0.5
    """Measured here: clear speech -0.02 to -0.22 (jfk.flac over an 8 kHz line -0.14);
    garbled espeak lines -0.54 and -0.69, French read as English -1.09. Moonshine writes
    nothing at all for noise and for speech played backwards."""

    def __init__(self, model: str = "moonshine-base", threads: int = 2) -> None:
        self.name = f"moonshine:{model}"
        self.directory = moonshine_dir(model)
        opts = session_options(threads)
        providers = ["CPUExecutionProvider"]
        self._encoder = ort.InferenceSession(
            str(self.directory / "encoder_model.onnx"), opts, providers=providers
        )
        self._decoder = ort.InferenceSession(
            str(self.directory / "decoder_model_merged.onnx"), opts, providers=providers
        )
        self._pieces = read_pieces(self.directory / "tokenizer.bin")
        names = [i.name for i in self._decoder.get_inputs()]
        self._past = [n for n in names if n.startswith("past_key_values.")]
        self._present = [o.name for o in self._decoder.get_outputs()][1:]
        shape = self._decoder.get_inputs()[names.index(self._past[0])].shape
        self._heads, self._head_dim = int(shape[1]), int(shape[3])
        self._drafts: OrderedDict[bytes, list[int]] = OrderedDict()
        self._lock = threading.Lock()
        self.draft_tokens_kept = 0
        """Tokens taken from drafts (and not decoded one step each), in all."""

    def transcribe(self, pcm: Pcm) -> Transcript:
        t0 = time.perf_counter()  # measures compute only; session timing uses the injected clock
        ids, score = self.decode(to_float32(pcm))
        return Transcript(
            text=decode_pieces(self._pieces, ids),
            audio_samples=len(pcm),
            compute_s=time.perf_counter() - t0,
            avg_logprob=score,
        )

    def decode(self, audio: Floats) -> tuple[list[int], float | None]:
        """Greedy token ids (without start and end) and their mean log-probability."""
        if len(audio) < MIN_SAMPLES:
            audio = np.concatenate([audio, np.zeros(MIN_SAMPLES - len(audio), np.float32)])
        key = self._key(audio)
        draft = self._draft(key)
        hidden = self._encoder.run(None, {"input_values": audio[None, :]})[0]
        cap = token_cap(len(audio))
        draft = draft[: cap - 1]
        empty = np.zeros((1, self._heads, 0, self._head_dim), dtype=np.float32)
        past = dict.fromkeys(self._past, empty)
        # the first step: the start token and the whole draft at once
        logits, presents = self._step([START, *draft], hidden, past, cached=False)
        picks = logits.argmax(axis=1)
        if picks[0] == END:
            word = int(np.argsort(logits[0])[-2])  # the likeliest token after END
            if _logprob(logits[0], word) >= FIRST_WORD_LOGPROB:
                picks[0] = word
        kept = 0
        while kept < len(draft) and int(picks[kept]) == draft[kept]:
            kept += 1
        ids = draft[:kept]
        logprobs = [_logprob(logits[i], int(picks[i])) for i in range(kept + 1)]
        token = int(picks[kept])
        for name, value in presents.items():
            past[name] = value[:, :, : kept + 1] if ".decoder." in name else value
        while token != END and len(ids) < cap:
            ids.append(token)
            logits, presents = self._step([token], hidden, past, cached=True)
            token = int(logits[-1].argmax())
            logprobs.append(_logprob(logits[-1], token))
            for name, value in presents.items():
                if ".decoder." in name:  # the cross-attention cache is the first step's
                    past[name] = value
        with self._lock:  # the final and the partial worker may both be here
            self.draft_tokens_kept += kept
            if key is not None:
                self._drafts[key] = ids
                self._drafts.move_to_end(key)
                while len(self._drafts) > DRAFTS:
                    self._drafts.popitem(last=False)
        return ids, sum(logprobs) / len(logprobs)

    def _step(
        self, tokens: list[int], hidden: Floats, past: dict[str, Floats], cached: bool
    ) -> tuple[Floats, dict[str, Floats]]:
        """One decoder call: the logits at each of ``tokens`` and the new caches by input name."""
        feeds = {
            "input_ids": np.array([tokens], dtype=np.int64),
            "encoder_hidden_states": hidden,
            "use_cache_branch": np.array([cached]),
            **past,
        }
        out = self._decoder.run(None, feeds)
        presents = {
            name.replace("present.", "past_key_values."): value
            for name, value in zip(self._present, out[1:], strict=True)
        }
        return out[0][0].astype(np.float64), presents

    @staticmethod
    def _key(audio: Floats) -> bytes | None:
        if len(audio) < DRAFT_KEY_SAMPLES:
            return None
        return hashlib.blake2b(audio[:DRAFT_KEY_SAMPLES].tobytes(), digest_size=16).digest()

    def _draft(self, key: bytes | None) -> list[int]:
        if key is None:
            return []
        with self._lock:
            return list(self._drafts.get(key, ()))


def _logprob(logits: Floats, token: int) -> float:
    """log softmax(logits)[token]."""
    top = float(logits.max())
    return float(logits[token]) - top - math.log(float(np.exp(logits - top).sum()))
