"""Injected time. Nothing in the package reads the wall clock directly.

A :class:`Clock` gives monotonic seconds and sleeps until an absolute deadline.
Pacing code sleeps *until* ``t0 + n * frame`` rather than *for* a frame, so
errors do not accumulate.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic time in seconds."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``now() >= deadline`` (at once if it already is)."""
        ...


class LoopClock:
    """The product clock: the running event loop's monotonic time."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - self.now()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)
