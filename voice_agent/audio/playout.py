"""The outbound audio buffer: segments of agent audio tagged by generation.

Pure and synchronous: the driver pushes synthesized sentences and a paced
writer pulls fixed-size frames. Each segment remembers how many of its
samples were sent, which is what "heard" is computed from.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from voice_agent.audio.pcm import FRAME_SAMPLES, Pcm

FILLER_FADE_FRAMES = 2
"""Frames over which a filler cut short by the answer fades out (40 ms)."""


@dataclass
class Segment:
    """One chunk of speech (usually one sentence) of generation ``gen``."""

    gen: int
    text: str
    pcm: Pcm
    played: int = 0
    filler: bool = False
    """A filler ("Hmm.") plays like any audio but its words are never "heard" text."""
    total: int = field(init=False)
    """Its length in samples (kept when its audio is let go)."""

    def __post_init__(self) -> None:
        self.total = len(self.pcm)

    def let_go(self) -> None:
        """Its samples are sent (or dropped) and never read again: free them. What was
        heard of it is reckoned from ``played`` and ``total``, which stay; the record of
        sent frames (``TranscriptFilter``) keeps the segment for a minute, and with its
        audio a 20-call soak grew by 2 MB a call."""
        self.pcm = self.pcm[:0].copy()


class Playout:
    """FIFO of agent audio pulled in frames of ``frame_samples``.

    Segments are zero-padded to a whole number of frames when pushed, so a
    frame never spans two sentences (at most one frame of silence is added at
    a sentence's end). ``capacity`` bounds the buffered samples: callers check
    :meth:`has_room` before :meth:`push`.
    """

    def __init__(self, frame_samples: int = FRAME_SAMPLES, capacity: int = 16_000 * 20) -> None:
        self.frame_samples = frame_samples
        self.capacity = capacity
        self._queue: deque[Segment] = deque()
        self._buffered = 0
        self.history: dict[int, list[Segment]] = {}

    @property
    def buffered(self) -> int:
        """Samples queued and not yet pulled."""
        return self._buffered

    def has_room(self) -> bool:
        return self._buffered < self.capacity

    def push(self, gen: int, pcm: Pcm, text: str, filler: bool = False) -> Segment:
        """Queue a segment. The answer's audio (not a filler) cuts short a filler of its
        generation still playing, and drops one not yet begun: a "Hmm." that began just
        before the answer was ready would hold it up for the rest of its length."""
        if not filler:
            self.cut_fillers(gen)
        pad = (-len(pcm)) % self.frame_samples
        if pad:
            pcm = np.concatenate([pcm, np.zeros(pad, dtype=np.int16)])
        seg = Segment(gen=gen, text=text, pcm=pcm, filler=filler)
        self._queue.append(seg)
        self._buffered += seg.total
        self.history.setdefault(gen, []).append(seg)
        return seg

    def cut_fillers(self, gen: int) -> int:
        """End ``gen``'s fillers: one begun fades out over ``FILLER_FADE_FRAMES`` frames
        from where it is, one not begun is dropped. Returns the samples dropped."""
        dropped = 0
        kept: deque[Segment] = deque()
        for seg in self._queue:
            if seg.gen != gen or not seg.filler:
                kept.append(seg)
                continue
            end = 0
            if seg.played > 0:
                end = min(seg.total, seg.played + FILLER_FADE_FRAMES * self.frame_samples)
            if end < seg.total:
                pcm = seg.pcm[:end].copy()  # the clip is shared: never written in place
                fade = pcm[seg.played :].astype(np.float32)
                fade *= np.linspace(1.0, 0.0, len(fade), dtype=np.float32)
                pcm[seg.played :] = fade.astype(np.int16)
                dropped += seg.total - end
                seg.pcm = pcm  # (a filler not begun keeps no audio: none of it is heard)
                seg.total = end
            if end > 0:
                kept.append(seg)
        self._queue = kept
        self._buffered -= dropped
        return dropped

    def pull(self) -> tuple[int, Pcm, Segment] | None:
        """Next frame as ``(gen, frame, segment)``, or None when nothing is queued."""
        while self._queue and self._queue[0].played >= self._queue[0].total:
            self._queue.popleft()
        if not self._queue:
            return None
        seg = self._queue[0]
        start = seg.played
        frame = seg.pcm[start : start + self.frame_samples]
        seg.played += len(frame)
        self._buffered -= len(frame)
        if seg.played >= seg.total:
            self._queue.popleft()
            seg.let_go()  # (the frame is a copy-free view: it keeps its own samples)
        return seg.gen, frame, seg

    def clear(self, gen: int | None = None) -> int:
        """Drop queued audio of generations ``<= gen`` (all when None). Returns samples dropped."""
        kept: deque[Segment] = deque()
        dropped = 0
        for seg in self._queue:
            if gen is None or seg.gen <= gen:
                dropped += seg.total - seg.played
                seg.let_go()
            else:
                kept.append(seg)
        self._queue = kept
        self._buffered -= dropped
        return dropped

    def head_gen(self) -> int | None:
        """Generation of the next frame :meth:`pull` would return."""
        for seg in self._queue:
            if seg.played < seg.total:
                return seg.gen
        return None

    def pending(self, gen: int) -> int:
        """Samples of ``gen`` still queued."""
        return sum(s.total - s.played for s in self._queue if s.gen == gen)

    def played_samples(self, gen: int) -> int:
        return sum(s.played for s in self.history.get(gen, []))

    def heard_text(self, gen: int, samples: int | None = None) -> str:
        """The words of ``gen`` heard: those whose audio was sent, or, with ``samples``,
        those within the first ``samples`` of the generation (the client's own playout
        report). See :func:`heard_text`."""
        return heard_text(self.history.get(gen, []), samples)

    def forget(self, gen: int) -> None:
        """Drop the bookkeeping for a finished generation."""
        self.history.pop(gen, None)


def heard_text(segments: list[Segment], samples: int | None = None) -> str:
    """Words whose audio was fully played.

    Sentence-accurate: a sentence counts whole once all its audio has played.
    Inside the sentence that was cut, word times are estimated in proportion to
    each word's length in characters (plus one for the gap after it): piper's
    phoneme durations are not exposed by piper-tts's Python API. A word counts
    only if its estimated end was played. Fillers take their place in the audio
    but their words are never part of the reply.
    """
    words: list[str] = []
    pos = 0
    for seg in segments:
        played = seg.played if samples is None else max(0, min(seg.total, samples - pos))
        pos += seg.total
        if seg.filler:
            if played < seg.total:
                break
            continue
        seg_words = seg.text.split()
        if played >= seg.total:
            words.extend(seg_words)
            continue
        if played > 0 and seg.total > 0:
            words.extend(words_within(seg_words, played / seg.total))
        break
    return " ".join(words)


def words_within(words: list[str], fraction: float) -> list[str]:
    """The leading words of a sentence that fit in ``fraction`` of its audio."""
    weights = [len(w) + 1 for w in words]
    total = sum(weights)
    out: list[str] = []
    end = 0
    for word, weight in zip(words, weights, strict=True):
        end += weight
        if end / total > fraction + 1e-9:
            break
        out.append(word)
    return out


def words_spanning(words: list[str], start: int, end: int, total: int) -> list[str]:
    """The words of a sentence whose estimated audio overlaps samples ``[start, end)`` of its
    ``total``, plus one word either side (the timing is estimated, as in
    :func:`words_within`)."""
    if not words or total <= 0 or end <= start:
        return []
    weights = [len(w) + 1 for w in words]
    scale = total / sum(weights)
    bounds = np.cumsum([0, *weights]) * scale
    inside = [i for i in range(len(words)) if bounds[i] < end and bounds[i + 1] > start]
    if not inside:
        return []
    return words[max(0, inside[0] - 1) : inside[-1] + 2]
