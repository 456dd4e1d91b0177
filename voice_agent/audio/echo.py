"""Echo guard for callers without echo cancellation (raw WebSocket, telephony).

The agent's own outbound audio is the far-end reference. Both streams are
indexed in *input samples*: each burst of agent audio is anchored once, where
the caller's input stream stands when the burst starts, and its frames follow
at exact 20 ms steps, so the offset between a far-end sample and its echo is
constant for the whole burst. The echo path is then found by cross-correlation
(numpy FFT) of the last ``window_s`` of input with the reference over lags up to
``max_delay_s``: its delay, its gain (least squares) and how well it explains the
input (normalised correlation). When the input is mostly echo (correlation at
least ``min_corr``) the path is adopted, and each input frame has the delayed,
scaled reference subtracted before the VAD and STT see it. When the caller
talks over the agent the correlation falls and the last good path is kept, so
the caller's voice passes through while the echo is still removed.

Each new burst re-anchors the reference, so the path is re-checked (every
frame until found). Until it is, energy gating stands in: while the far end
is sounding, input quieter than the loudest far-end audio that could be
echoing now, less ``gate_margin_db``, is taken for echo and silenced. Gating
applies while the path is being (re)found: always once this call has shown an
echo, and otherwise for the first ``probe_s`` of each burst, with two
exceptions that keep a caller's own voice from being cut:

- the caller was already talking when the burst began (sound before a burst
  cannot be its echo; bursts start mid-speech when playout resumes, or when a
  slow TTS leaves gaps between sentences);
- the call has shown it has no echo: a burst's whole probe went by with the
  input at least ``echo_free_db`` below the far end (a browser that cancels
  its echo, headphones, a WebSocket client that never plays the audio back).

What it does not do: model reverberation or non-linear (codec) echo paths. A
residue left by those is the second line of defence's job: transcripts that
match what the agent just said are rejected by the session.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voice_agent.audio.pcm import SAMPLE_RATE, Pcm

_SOUND = 103.6
"""-50 dBFS in int16 units: a frame above this is sound, not silence."""


@dataclass
class EchoPath:
    delay: int
    """Input samples between a far-end sample and its echo."""
    gain: float
    corr: float


class EchoGuard:
    def __init__(
        self,
        rate: int = SAMPLE_RATE,
        max_delay_s: float = 0.6,
        window_s: float = 0.5,
        update_every_s: float = 0.1,
        min_corr: float = 0.8,
        history_s: float = 4.0,
        gate_margin_db: float = 6.0,
        probe_s: float = 0.6,
        echo_free_db: float = 30.0,
    ) -> None:
        self.rate = rate
        self.max_delay = int(max_delay_s * rate)
        self.window = int(window_s * rate)
        self.update_every = int(update_every_s * rate)
        self.min_corr = min_corr
        self.size = int(history_s * rate)
        self._ref = np.zeros(self.size, dtype=np.float32)
        self._inp = np.zeros(self.size, dtype=np.float32)
        self._ref_end = 0  # one past the last reference sample written (input index)
        self._inp_end = 0  # one past the last input sample seen
        self._since_update = 0
        self.path: EchoPath | None = None
        self.verified = False
        """The path was (re)found in the current burst."""
        self.had_echo = False
        self.gate = 10 ** (-gate_margin_db / 20)
        self.probe = int(probe_s * rate)
        self._burst_start = 0
        self._talk_at_start = False
        self.echo_free = False
        """A burst's probe passed with the input far below the far end: no echo here."""
        self._echo_free_ratio = 10 ** (-echo_free_db / 20)
        self._probe_checked = True
        self._sounding = False  # the guard's last output frame was above -50 dBFS
        self.bursts = 0
        self.gated_frames = 0
        self.removed_energy = 0.0
        """Sum of squares taken out of the input (for reports and tests)."""

    # -- far end ---------------------------------------------------------------

    def far_end(self, frame: Pcm, at_input_sample: int) -> None:
        """Agent audio that starts playing when the input stream reaches ``at_input_sample``."""
        n = len(frame)
        if n == 0 or at_input_sample + n <= self._inp_end - self.size + self.max_delay:
            return
        if at_input_sample != self._ref_end or not self.bursts:  # a new burst, own anchor
            self.bursts += 1
            self._burst_start = at_input_sample
            self.verified = False
            self._talk_at_start = self._sounding
            self._probe_checked = False
        idx = (np.arange(at_input_sample, at_input_sample + n)) % self.size
        self._ref[idx] = frame.astype(np.float32)
        self._ref_end = max(self._ref_end, at_input_sample + n)

    # -- near end ---------------------------------------------------------------

    def near_end(self, frame: Pcm) -> Pcm:
        """The caller's frame with the agent's echo removed (the next input samples)."""
        start, n = self._inp_end, len(frame)
        x = frame.astype(np.float32)
        idx = np.arange(start, start + n) % self.size
        self._inp[idx] = x
        self._inp_end += n
        # the reference ahead of the input is not heard yet; clear what falls out of range
        self._since_update += n
        # every frame while a burst's path is being found, then every ``update_every_s``
        # (a caller with no echo to find costs one correlation per 100 ms, not per frame)
        probing = not self.verified and start - self._burst_start < self.probe
        if probing or self._since_update >= self.update_every:
            self._since_update = 0
            self._update_path()
        if not self._probe_checked and start + n - self._burst_start >= self.probe:
            self._probe_checked = True
            self._check_echo_free()
        out = x
        if self.path is not None and self.verified:
            echo = np.float32(self.path.gain) * self._ref_at(start - self.path.delay, n)
            if np.any(echo):
                out = x - echo
                self.removed_energy += float(np.sum(x * x) - np.sum(out * out))
        elif self._gating(start):
            far = self._ref_at(start - self.max_delay, self.max_delay + n)
            loudest = float(np.sqrt(np.max(np.convolve(far * far, np.ones(n) / n, "valid"))))
            if float(np.sqrt(np.mean(x * x))) < loudest * self.gate:
                self.gated_frames += 1
                out = np.zeros(n, dtype=np.float32)
        self._forget(start - self.max_delay - self.window, n)
        self._sounding = bool(np.mean(out * out) > _SOUND**2)
        return np.clip(np.round(out), -32768, 32767).astype(np.int16)

    def _gating(self, start: int) -> bool:
        if self._ref_end <= start - self.max_delay:
            return False  # the far end is silent: nothing can be echoing
        if self.had_echo:
            return True
        if self.echo_free or self._talk_at_start:
            return False
        return start - self._burst_start < self.probe

    def _check_echo_free(self) -> None:
        """At the end of a burst's probe with no path found: was the input silent under it?"""
        if self.had_echo or self.verified:
            return
        b, p = self._burst_start, self.probe
        far = self._ref_at(b, p)
        if self._inp_end - b < p or float(np.mean(far * far)) < _SOUND**2:
            return  # too little far-end sound to learn anything from
        x = self._inp[np.arange(b, b + p) % self.size]
        if float(np.mean(x * x)) < float(np.mean(far * far)) * self._echo_free_ratio**2:
            self.echo_free = True

    def _ref_at(self, begin: int, n: int) -> np.ndarray:
        if begin + n <= 0 or begin >= self._ref_end:
            return np.zeros(n, dtype=np.float32)
        idx = np.arange(begin, begin + n) % self.size
        out = self._ref[idx].copy()
        if begin < 0:
            out[:-begin] = 0
        return out

    def _forget(self, begin: int, n: int) -> None:
        """Zero reference samples too old to echo any more (so a wrap never replays them)."""
        if begin + n <= 0:
            return
        idx = np.arange(max(0, begin), begin + n) % self.size
        self._ref[idx] = 0

    def _update_path(self) -> None:
        end = self._inp_end
        w = min(self.window, end, max(end - self._burst_start, 0))
        if w < 0.15 * self.rate:
            return
        x = self._inp[np.arange(end - w, end) % self.size]
        span = w + self.max_delay
        r = self._ref_at(end - span, span)  # r[j] = ref at input index end - span + j
        ref_energy = float(np.sum(r * r))
        x_energy = float(np.sum(x * x))
        if ref_energy <= 1e-3 * span or x_energy <= 1e-3 * w:
            return
        # a path fitted on the first few ms of an echo's onset is often wrong: wait for at
        # least 100 ms of sound in the window (frames above -50 dBFS)
        frames = x[: w - w % 320].reshape(-1, 320)
        if int(np.sum(np.mean(frames * frames, axis=1) > _SOUND**2)) < 5:
            return
        # c[lag] = sum_k x[k] * ref[end - w + k - lag], lag in [0, max_delay]
        size = 1 << int(np.ceil(np.log2(span + w)))
        c = np.fft.irfft(np.fft.rfft(r, size) * np.conj(np.fft.rfft(x, size)), size)
        # index m of the correlation = offset of x inside r; lag = max_delay - m
        m = np.arange(0, self.max_delay + 1)
        corr = c[m]
        # energy of each lagged reference window, for normalisation
        csum = np.concatenate([[0.0], np.cumsum(r.astype(np.float64) ** 2)])
        seg = csum[m + w] - csum[m]
        # lags whose reference window is (nearly) silent explain nothing
        valid = (seg >= 100.0 * w) & (seg >= 0.05 * float(seg.max()))
        if not valid.any():
            return
        score = np.where(valid, corr / np.sqrt(np.maximum(seg, 1e-9) * x_energy), -1.0)
        best = int(np.argmax(score))
        rho = float(score[best])
        if rho < self.min_corr:
            return
        gain = float(corr[best] / seg[best])
        if not 0.0 < gain <= 4.0:
            return
        self.path = EchoPath(delay=self.max_delay - best, gain=gain, corr=rho)
        self.verified = self.had_echo = True
