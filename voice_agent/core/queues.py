"""A bounded queue that never blocks its producer: when full, the oldest item is dropped."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Generic, TypeVar

T = TypeVar("T")


class DropOldestQueue(asyncio.Queue[T], Generic[T]):
    """``put_nowait`` never raises: a full queue drops its oldest item (counted in
    ``dropped``) to make room. Real-time input wants the newest audio, not the oldest."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.dropped = 0

    def put_nowait(self, item: T) -> None:
        while self.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.get_nowait()
                self.task_done()
                self.dropped += 1
        super().put_nowait(item)
