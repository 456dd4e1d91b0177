"""Blocking model work (STT, TTS) shared fairly by sessions, in bounded queues.

A :class:`FairWorker` runs one job at a time on its own thread (see ``threads``). Jobs wait in
the event loop, one queue per owner (a session), and owners take turns, so a
session that floods the worker delays another session by at most one job of
its own. Nothing waits in the thread pool's own queue.

- ``slot``: a job submitted with a slot replaces that owner's job in the same
  slot that has not started yet; the replaced one raises :class:`Superseded`.
  (A newer partial transcript makes an older one pointless.)
- ``runway_s``: how long the owner can wait before someone hears the gap (a reply's
  next sentence, with this much of its audio still queued). A job within ``slack_s``
  of its deadline, or with no runway given, is urgent; urgent owners go first, in
  turn; a job with runway to spare waits for them (earliest deadline first among
  such jobs). The worker never idles while a job waits.
- ``max_pending``: an owner with that many jobs waiting gets
  :class:`WorkQueueFull` instead of a longer queue.
- ``threads``: more than one lets urgent jobs of other owners run side by side
  (several callers' first sentences at once); a job with runway to spare runs
  only while no other job runs.
- Cancelling the awaiting task drops a job that has not started. A job that
  has started finishes in its thread (CTranslate2 and onnxruntime cannot be
  interrupted); its result is discarded and the worker stays busy until then,
  so a thread never has more than one job.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

Runner = Callable[[Callable[[], Any]], "asyncio.Future[Any]"]
"""Starts one blocking call and returns a future of its result (no task is created)."""


class Superseded(Exception):
    """A newer job of the same slot and owner replaced this one before it started."""


class WorkQueueFull(Exception):
    """The owner already has ``max_pending`` jobs waiting."""


@dataclass(eq=False)
class _Job:
    owner: Hashable
    slot: str | None
    turn: asyncio.Future[None] = field(repr=False)
    deadline: float | None = None
    """Loop time by which it must have run (None: as soon as possible)."""
    wanted: Callable[[], bool] | None = None
    """Asked when its turn comes: False drops it unrun (see FairWorker.submit)."""
    started: bool = False


class FairWorker:
    """One worker thread shared by many owners, who take turns (see the module docstring).

    ``runner`` replaces the thread (tests model compute time on a virtual clock).
    Call :meth:`submit` from the event loop only; :meth:`close` when done.
    """

    def __init__(
        self,
        name: str,
        runner: Runner | None = None,
        max_pending: int = 4,
        slack_s: float = 0.5,
        threads: int = 1,
    ) -> None:
        self.name = name
        self.threads = max(1, threads)
        self.max_pending = max_pending
        self.slack_s = slack_s
        """A job this close to its deadline is urgent (about one job's run time)."""
        self._executor: ThreadPoolExecutor | None = None
        if runner is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix=name)
            executor = self._executor

            def runner(fn: Callable[[], Any]) -> asyncio.Future[Any]:
                return asyncio.get_running_loop().run_in_executor(executor, fn)

        self._runner: Runner = runner
        self._queues: dict[Hashable, deque[_Job]] = {}
        """Owners with jobs waiting, in the order they came (dicts keep insertion order)."""
        self._served: dict[Hashable, int] = {}
        """When each owner was last served (a dispatch count); trimmed to the owners with
        jobs waiting once it grows past ``64 + 4 x`` their number."""
        self._running = 0
        """Jobs started and not finished (at most ``threads``)."""
        self._lock = threading.Lock()
        self.jobs_run = 0
        self.superseded = 0
        self.busy_s = 0.0
        """Seconds the worker's thread has spent running jobs (wall time, in the thread)."""

    @property
    def waiting(self) -> int:
        """Jobs queued and not started, over all owners."""
        return sum(len(q) for q in self._queues.values())

    def waiting_for(self, owner: Hashable) -> int:
        return len(self._queues.get(owner, ()))

    async def submit(
        self,
        owner: Hashable,
        fn: Callable[[], T],
        slot: str | None = None,
        runway_s: float | None = None,
        wanted: Callable[[], bool] | None = None,
    ) -> T:
        """Run ``fn()`` on the worker thread when it is ``owner``'s turn; return its result.

        Raises :class:`Superseded` if a newer job of the same ``slot`` replaced it before it
        started, or if ``wanted()`` says False when its turn comes (background work that
        has lost its point while it waited); :class:`WorkQueueFull` if ``owner`` already
        has ``max_pending`` jobs waiting; and whatever ``fn`` raises. Cancellation drops a
        job that has not started.
        """
        queue = self._queues.get(owner)
        if queue is None:
            queue = self._queues[owner] = deque()
        if slot is not None:
            for old in [j for j in queue if j.slot == slot]:
                queue.remove(old)
                self.superseded += 1
                old.turn.set_exception(Superseded(f"{self.name}: replaced by a newer job"))
        if len(queue) >= self.max_pending:
            raise WorkQueueFull(f"{self.name}: {self.max_pending} jobs already waiting")
        loop = asyncio.get_running_loop()
        deadline = None if runway_s is None else loop.time() + runway_s
        job = _Job(owner, slot, loop.create_future(), deadline, wanted)
        queue.append(job)
        self._dispatch()
        try:
            await job.turn
        except BaseException:
            if job.started:  # our turn came as we were cancelled: pass it on
                self._release()
            elif job in queue:
                queue.remove(job)
                self._prune(owner)
            raise
        try:
            future = self._runner(functools.partial(self._timed, fn))
        except BaseException:  # it never started (say, the executor is shut down)
            self._release()
            raise
        future.add_done_callback(lambda _: self._release())
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # the thread runs on; its result is dropped when it comes
            future.add_done_callback(_consume)
            raise

    def _timed(self, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            with self._lock:
                self.busy_s += time.perf_counter() - start

    @property
    def busy(self) -> bool:
        return self._running > 0

    def _dispatch(self) -> None:
        """Start the next job: among owners whose next job is urgent, the one served
        longest ago (never: first come); when none is, the earliest deadline."""
        while self._running < self.threads and self._queues:
            urgent = self._urgent()
            if self._running and not urgent:
                return  # a further thread is for urgent work only
            job = self._next(urgent)
            if job.turn.done():
                # its task was cancelled and has not yet run to take it off the queue
                # (setting the turn would raise InvalidStateError in this callback)
                continue
            if job.wanted is None or job.wanted():
                job.started = True
                self._running += 1
                job.turn.set_result(None)
                continue
            self.superseded += 1
            job.turn.set_exception(Superseded(f"{self.name}: no longer wanted"))

    def _urgent(self) -> list[Hashable]:
        """Owners whose next job is urgent (no runway, or within ``slack_s`` of it)."""
        soon = asyncio.get_running_loop().time() + self.slack_s
        return [
            o for o, q in self._queues.items() if q[0].deadline is None or q[0].deadline <= soon
        ]

    def _next(self, urgent: list[Hashable]) -> _Job:
        if urgent:
            owner = min(urgent, key=lambda o: self._served.get(o, -1))
        else:
            owner = min(self._queues, key=lambda o: self._queues[o][0].deadline or 0.0)
        queue = self._queues[owner]
        job = queue.popleft()
        self.jobs_run += 1
        self._served[owner] = self.jobs_run
        self._prune(owner)
        if len(self._served) > 64 + 4 * len(self._queues):
            self._served = {o: n for o, n in self._served.items() if o in self._queues}
        return job

    def _release(self) -> None:
        self._running -= 1
        self._dispatch()

    def _prune(self, owner: Hashable) -> None:
        if not self._queues.get(owner, True):
            del self._queues[owner]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


class WorkOwner:
    """Whose job it is (a call). The workers remember owners they served (``_served``),
    and the LLM's slots the owners they last held: a key this small keeps nothing of an
    ended call alive there."""

    __slots__ = ()


class Foreground:
    """The owners (calls) someone is waiting on right now: a caller who has stopped
    talking and has not yet heard the answer. Background work (a partial transcript, a
    prefill of the LLM's prompt cache) yields to them: on 2 cores it took the CPU from
    their STT pass, their LLM's first tokens and their TTS. Each owner joins with a
    predicate, read only when asked, so nothing has to be kept in step."""

    def __init__(self) -> None:
        self._owners: dict[Hashable, Callable[[], bool]] = {}

    def join(self, owner: Hashable, waiting: Callable[[], bool]) -> None:
        self._owners[owner] = waiting

    def leave(self, owner: Hashable) -> None:
        self._owners.pop(owner, None)

    def others_waiting(self, owner: Hashable) -> bool:
        """Someone other than ``owner`` is waiting for an answer."""
        return any(w() for o, w in self._owners.items() if o != owner)

    def __len__(self) -> int:
        return len(self._owners)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it as never retrieved
