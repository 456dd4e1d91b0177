"""The process's malloc arenas are capped (see voice_agent.core.memory): counted in
glibc's own report (malloc_info) after 8 threads allocate at once, in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import ctypes, ctypes.util, sys, tempfile, threading
from voice_agent.core.memory import limit_malloc_arenas
capped = limit_malloc_arenas() if sys.argv[1] == "cap" else False
barrier = threading.Barrier(8)
keep = []
def work():
    barrier.wait()  # all 8 allocate while the others hold their memory
    keep.append([bytearray(1000) for _ in range(500)])
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
path = tempfile.mktemp()
f = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(f))
libc.fclose(ctypes.c_void_p(f))
print(capped, open(path).read().count("<heap nr="))
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")


def arenas(mode: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], env=clean, capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout.split()  # fmt: skip
    return out[0], int(out[1])


def test_eight_allocating_threads_share_two_arenas_once_capped() -> None:
    assert arenas("cap") == ("True", 2)
    capped, n = arenas("none")
    assert capped == "False" and n > 2  # glibc's default: an arena per thread, up to 8/core


def test_an_arena_cap_the_environment_already_set_is_left_as_it_is() -> None:
    assert arenas("cap", MALLOC_ARENA_MAX="3") == ("False", 3)
