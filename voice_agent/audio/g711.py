"""ITU-T G.711 μ-law and A-law ↔ 16-bit linear PCM, vectorised with numpy lookup tables.

The tables are built once from the G.711 segment rules, as ITU-T G.191's reference
code applies them: μ-law with a bias of 33 on 14-bit magnitudes (a negative sample's
magnitude is its one's complement) and the code word inverted; A-law on 13-bit
magnitudes with even bits inverted (XOR 0x55).
Encoding looks each int16 sample up in a 65536-entry table; decoding in a 256-entry one.
Python's ``audioop`` is gone in 3.13, so nothing here depends on it.
"""

from __future__ import annotations

import numpy as np

from voice_agent.audio.pcm import Pcm

_MU_BIAS = 0x84
_MU_CLIP = 32635


def _mu_encode_one(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    # a negative sample's magnitude is its one's complement, as in ITU-T G.191
    magnitude = min(~sample if sample < 0 else sample, _MU_CLIP) + _MU_BIAS
    exponent = max(0, magnitude.bit_length() - 8)  # segment: 0..7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _mu_decode_one(code: int) -> int:
    code = ~code & 0xFF
    exponent = (code >> 4) & 0x07
    magnitude = (((code & 0x0F) << 3) + _MU_BIAS) << exponent
    return _MU_BIAS - magnitude if code & 0x80 else magnitude - _MU_BIAS


def _a_encode_one(sample: int) -> int:
    if sample >= 0:
        mask, magnitude = 0xD5, sample >> 3
    else:
        mask, magnitude = 0x55, (-sample - 1) >> 3
    exponent = max(0, magnitude.bit_length() - 5)  # segment: 0..7 (8+ clips)
    if exponent > 7:
        return 0x7F ^ mask
    shift = 1 if exponent < 2 else exponent
    return ((exponent << 4) | ((magnitude >> shift) & 0x0F)) ^ mask


def _a_decode_one(code: int) -> int:
    code ^= 0x55
    t = (code & 0x0F) << 4
    segment = (code & 0x70) >> 4
    if segment == 0:
        t += 8
    elif segment == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (segment - 1)
    return t if code & 0x80 else -t


_SAMPLES = range(-32768, 32768)
_MU_ENC = np.array([_mu_encode_one(s) for s in _SAMPLES], dtype=np.uint8)
_A_ENC = np.array([_a_encode_one(s) for s in _SAMPLES], dtype=np.uint8)
_MU_DEC = np.array([_mu_decode_one(c) for c in range(256)], dtype=np.int16)
_A_DEC = np.array([_a_decode_one(c) for c in range(256)], dtype=np.int16)


def ulaw_encode(pcm: Pcm) -> bytes:
    """int16 samples → μ-law bytes (one byte a sample)."""
    return bytes(_MU_ENC[np.asarray(pcm, dtype=np.int16).astype(np.int32) + 32768])


def ulaw_decode(data: bytes) -> Pcm:
    """μ-law bytes → int16 samples."""
    return _MU_DEC[np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(pcm: Pcm) -> bytes:
    """int16 samples → A-law bytes."""
    return bytes(_A_ENC[np.asarray(pcm, dtype=np.int16).astype(np.int32) + 32768])


def alaw_decode(data: bytes) -> Pcm:
    """A-law bytes → int16 samples."""
    return _A_DEC[np.frombuffer(data, dtype=np.uint8)]
