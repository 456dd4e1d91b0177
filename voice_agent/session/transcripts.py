"""Which transcripts are the caller: the echo and noise filter. Pure, no awaits.

Two mistakes whisper makes on a live line, and how they are caught:

- **Noise.** whisper writes words into coughs and breaths ("I'm gonna go to the
  end"). A transcript over less than ``min_speech_s`` of speech (by the engine's
  speech detector) is noise.
- **Echo.** The agent's own voice, leaking back from a client without echo
  cancellation, transcribes as the agent's words. A transcript whose words are
  mostly the agent words *sent to play while the caller spoke* is echo. Only
  words sent from ``echo_reach_s`` before the caller's turn began count, so a
  caller quoting a finished line back later is heard. And only on a line that has
  shown it echoes (``line_echoes``: the echo guard found an echo path in this call):
  on a line without echo, a caller who says the agent's words *while* the agent says
  them (jfk's "ask what you can do for your country" over a reply that quotes it) is
  the caller.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from voice_agent.audio.pcm import FRAME_SAMPLES, SAMPLE_RATE
from voice_agent.audio.playout import Segment, words_spanning
from voice_agent.session.turns import content_words
from voice_agent.stt.base import Transcript


class TranscriptFilter:
    """Remembers the agent audio sent (by input sample) and judges transcripts against it."""

    def __init__(
        self,
        min_speech_s: float = 0.06,
        echo_reach_s: float = 0.6,
        unclear_logprob: float | None = None,
        line_echoes: Callable[[], bool] | None = None,
    ) -> None:
        self.min_speech_s = min_speech_s
        self.line_echoes = line_echoes
        """Has this line shown an echo? (None: no way to know, so any line may echo.)"""
        self.echo_reach_s = echo_reach_s
        self.unclear_logprob = unclear_logprob
        # agent frames sent, by the input sample they start playing at: (at, segment, end of
        # the frame in the segment); 60 s of them
        self._sent: deque[tuple[int, Segment, int]] = deque(maxlen=3000)

    def agent_frame(self, at_sample: int, seg: Segment) -> None:
        """A frame of ``seg`` (ending at ``seg.played``) was sent to play at input
        sample ``at_sample``."""
        self._sent.append((at_sample, seg, seg.played))

    def final(self, result: Transcript, turn_start: int) -> str:
        """The caller's words in a final transcript ("" for echo or noise)."""
        if self.is_noise(result) or self.is_echo(result.text, turn_start):
            return ""
        return result.text

    def check(self, result: Transcript, turn_start: int) -> tuple[str, bool]:
        """A barge-in check: (the caller's words, or "" when there is no proof either way;
        whether the words were the agent's own echo)."""
        echo = self.is_echo(result.text, turn_start)
        if echo or self.is_noise(result) or self.is_echo(result.text, turn_start, single=True):
            return "", echo  # a single word the agent just said proves nothing: check again
        return result.text, False

    def is_unclear(self, result: Transcript) -> bool:
        """Words whisper was unsure of (garbled speech, a bad line): ask for them again
        rather than answer a guess."""
        floor, score = self.unclear_logprob, result.avg_logprob
        return floor is not None and score is not None and score < floor

    def is_noise(self, result: Transcript) -> bool:
        """Words whisper wrote into a cough or noise: the speech detector found no speech."""
        return result.speech_s is not None and result.speech_s < self.min_speech_s

    def is_echo(self, text: str, turn_start: int, single: bool = False) -> bool:
        """Two words or more, mostly the agent's (with ``single``: exactly one such word),
        on a line that may echo."""
        if self.line_echoes is not None and not self.line_echoes():
            return False
        words = content_words(text)
        if len(words) != 1 if single else len(words) < 2:
            return False
        spoken = self.sent_words_since(turn_start - round(self.echo_reach_s * SAMPLE_RATE))
        if not spoken:
            return False
        return sum(w in spoken for w in words) / len(words) >= 0.7

    def sent_words_since(self, sample: int) -> set[str]:
        """Content words of the agent audio sent to play at or after input ``sample``
        (one word of slack either side of each sentence's span, its timing is estimated)."""
        spans: dict[int, tuple[Segment, int, int]] = {}
        for at, seg, end in reversed(self._sent):
            if at < sample:
                break
            lo = end - FRAME_SAMPLES
            _, a, b = spans.get(id(seg), (seg, lo, end))
            spans[id(seg)] = (seg, min(a, lo), max(b, end))
        words: set[str] = set()
        for seg, a, b in spans.values():
            words.update(content_words(" ".join(words_spanning(seg.text.split(), a, b, seg.total))))
        return words
