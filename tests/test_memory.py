"""The process's malloc (see voice_agent.core.memory): its arenas are capped, counted in
glibc's own report (malloc_info) after 8 threads allocate at once, in a fresh process;
memory freed inside a heap goes back to the system when asked, and the server asks
on a timer."""

from __future__ import annotations

import asyncio
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


RELEASE = r"""
from voice_agent.core.memory import release_free_memory
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
before = rss()
blocks = [bytearray(64 * 1024) for _ in range(3200)]  # 200 MiB from the heap
pin = bytearray(64 * 1024)  # above them: free() cannot give the heap's top back
held = rss()
del blocks
freed = rss()
released = release_free_memory()
print(held - before, freed - before, rss() - before, released)
"""


def test_memory_freed_inside_the_heap_goes_back_to_the_system_when_asked() -> None:
    out = subprocess.run(
        [sys.executable, "-c", RELEASE], capture_output=True, text=True, timeout=60,
        check=True,
    ).stdout.split()  # fmt: skip
    held, freed, after, released = int(out[0]), int(out[1]), int(out[2]), out[3]
    assert held >= 190  # MiB, the blocks (touched when zeroed)
    assert freed >= 190  # freed, but kept by the process
    assert after <= 20 and released == "True"


async def test_the_server_releases_freed_memory_on_a_timer_until_it_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from doubles import ScriptedLLMDouble, double_engine

    from voice_agent.core import memory
    from voice_agent.server import ServerConfig, create_app

    calls = 0
    three = asyncio.Event()

    def counted() -> bool:
        nonlocal calls
        calls += 1
        if calls == 3:
            three.set()
        return True

    monkeypatch.setattr(memory, "release_free_memory", counted)
    engine = double_engine(ScriptedLLMDouble([["Hi."]], 0.05))
    app = create_app(engine=engine, config=ServerConfig(release_memory_s=0.01))
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(three.wait(), timeout=30)
    seen = calls
    await asyncio.sleep(0.05)
    assert seen >= 3 and calls == seen  # none after the app stopped
