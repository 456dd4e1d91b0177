"""G.711 μ-law and A-law against reference values.

- Decoder values from the G.711 tables (and CPython's audioop, a port of the Sun
  reference code, for all 256 codes of each law while it still exists in 3.11).
- A-law encoding: audioop for every int16 input.
- μ-law encoding: the ITU-T G.191 ``ulaw_compress`` rule, written out below, for every
  int16 input. (audioop floors negative inputs with ``x >> 2`` and so differs from it
  by one code on 508 of them, near segment edges; G.191 takes the one's complement.)
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from voice_agent.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

ALL = np.arange(-32768, 32768, dtype=np.int16)


def g191_ulaw_compress(x: int) -> int:
    """ITU-T G.191 (STL) ulaw_compress for one 16-bit sample."""
    absno = ((~x if x < 0 else x) >> 2) + 33
    absno = min(absno, 0x1FFF)
    i, segno = absno >> 6, 1
    while i:
        segno += 1
        i >>= 1
    high = 0x08 - segno
    low = 0x0F - ((absno >> segno) & 0x0F)
    out = (high << 4) | low
    return out | 0x80 if x >= 0 else out


@pytest.mark.parametrize(
    ("code", "ulaw", "alaw"),
    [
        (0x00, -32124, -5504),
        (0x80, 32124, 5504),
        (0xFF, 0, 848),
        (0x7F, 0, -848),
        (0xFE, 8, 880),
        (0xD5, 716, 8),
        (0x55, -716, -8),
        (0xAA, 5372, 32256),
        (0x2A, -5372, -32256),
    ],
)
def test_decoders_give_the_table_values(code: int, ulaw: int, alaw: int) -> None:
    assert int(ulaw_decode(bytes([code]))[0]) == ulaw
    assert int(alaw_decode(bytes([code]))[0]) == alaw


def test_ulaw_encoding_is_g191_for_every_sample() -> None:
    expected = bytes(g191_ulaw_compress(int(x)) for x in ALL)
    assert ulaw_encode(ALL) == expected
    assert ulaw_encode(np.array([0, -1, 32767, -32768], dtype=np.int16)) == b"\xff\x7f\x80\x00"


def test_against_audioop_where_it_is_the_reference() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # gone in Python 3.13
    codes = bytes(range(256))
    assert np.array_equal(ulaw_decode(codes), np.frombuffer(audioop.ulaw2lin(codes, 2), "<i2"))
    assert np.array_equal(alaw_decode(codes), np.frombuffer(audioop.alaw2lin(codes, 2), "<i2"))
    assert alaw_encode(ALL) == audioop.lin2alaw(ALL.tobytes(), 2)


def test_every_code_round_trips_and_the_error_is_within_half_a_step() -> None:
    for decode, encode in ((ulaw_decode, ulaw_encode), (alaw_decode, alaw_encode)):
        levels = decode(bytes(range(256)))
        again = encode(levels)
        # μ-law has two zeros (0x7F and 0xFF); every other code comes back as itself
        assert [c for c in range(256) if again[c] != c] in ([], [0x7F])
        # quantizing: the decoded sample is the level nearest the input (or a tie)
        x = np.array([-20000, -1234, -9, 0, 9, 1234, 20000], dtype=np.int16)
        y = decode(encode(x)).astype(np.int32)
        sorted_levels = np.unique(levels.astype(np.int32))
        for xi, yi in zip(x.astype(np.int32), y, strict=True):
            nearest = int(np.min(np.abs(sorted_levels - xi)))
            assert abs(yi - xi) <= nearest + 8 * (1 + abs(xi) // 256)


def test_byte_counts_and_shapes() -> None:
    frame = (np.sin(np.arange(160) / 5) * 12000).astype(np.int16)  # 20 ms at 8 kHz
    assert len(ulaw_encode(frame)) == len(alaw_encode(frame)) == 160
    assert ulaw_decode(ulaw_encode(frame)).dtype == np.int16
    assert ulaw_decode(b"").shape == (0,)
