"""FairWorker: owners take turns, superseded and cancelled jobs never run, queues are bounded.

On virtual time, with a modeled runner (each job takes 1 s, no thread)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from doubles import modeled_runner, run_virtual

from voice_agent.core.work import FairWorker, Superseded, WorkQueueFull


def job(log: list[str], name: str) -> Any:
    def fn() -> str:
        log.append(name)
        return name

    return fn


def test_owners_take_turns_so_a_flood_delays_another_owner_by_one_job() -> None:
    async def main() -> tuple[list[str], dict[str, float]]:
        w = FairWorker("w", modeled_runner(1.0), max_pending=10)
        log: list[str] = []
        done: dict[str, float] = {}
        loop = asyncio.get_running_loop()

        async def run(owner: str, name: str) -> None:
            await w.submit(owner, job(log, name))
            done[name] = loop.time() - 1000.0

        flood = [asyncio.create_task(run("a", f"a{i}")) for i in range(5)]
        await asyncio.sleep(0.5)  # a0 is running, a1..a4 wait
        await run("b", "b0")
        await asyncio.gather(*flood)
        return log, done

    log, done = run_virtual(main())
    assert log == ["a0", "b0", "a1", "a2", "a3", "a4"]
    assert done == {"a0": 1.0, "b0": 2.0, "a1": 3.0, "a2": 4.0, "a3": 5.0, "a4": 6.0}


def test_a_newer_job_in_the_same_slot_supersedes_the_waiting_one() -> None:
    async def main() -> tuple[list[str], list[str], int]:
        w = FairWorker("w", modeled_runner(1.0))
        log: list[str] = []
        results: list[str] = []

        async def run(name: str, slot: str | None) -> None:
            try:
                results.append(await w.submit("a", job(log, name), slot=slot))
            except Superseded:
                results.append(f"{name} superseded")

        tasks = [asyncio.create_task(run(n, "final")) for n in ("f0", "f1", "f2")]
        tasks.append(asyncio.create_task(run("other", None)))
        await asyncio.gather(*tasks)
        return log, results, w.superseded

    log, results, superseded = run_virtual(main())
    # f0 started at once; f1 waited and was replaced by f2; a job with no slot is kept
    assert log == ["f0", "f2", "other"]
    assert results == ["f1 superseded", "f0", "f2", "other"]
    assert superseded == 1


def test_an_owner_with_max_pending_jobs_waiting_is_refused() -> None:
    async def main() -> tuple[int, int]:
        w = FairWorker("w", modeled_runner(1.0), max_pending=2)
        log: list[str] = []
        tasks = [asyncio.create_task(w.submit("a", job(log, f"a{i}"))) for i in range(3)]
        await asyncio.sleep(0)  # a0 runs, a1 and a2 wait
        with pytest.raises(WorkQueueFull):
            await w.submit("a", job(log, "a3"))
        other = await w.submit("b", job(log, "b0"))  # another owner is not refused
        assert other == "b0"
        await asyncio.gather(*tasks)
        return len(log), w.waiting

    assert run_virtual(main()) == (4, 0)


def test_a_cancelled_waiting_job_never_runs_and_a_running_one_holds_the_worker() -> None:
    async def main() -> tuple[list[str], float]:
        w = FairWorker("w", modeled_runner(1.0))
        log: list[str] = []
        loop = asyncio.get_running_loop()
        running = asyncio.create_task(w.submit("a", job(log, "a0")))
        waiting = asyncio.create_task(w.submit("a", job(log, "a1")))
        await asyncio.sleep(0.5)
        waiting.cancel()
        running.cancel()
        await asyncio.wait({waiting, running})
        assert w.waiting == 0
        # the running job goes on in its thread: the next job starts when it ends (t = 1 s)
        await w.submit("b", job(log, "b0"))
        return log, loop.time() - 1000.0

    log, t = run_virtual(main())
    assert log == ["a0", "b0"] and t == 2.0


def test_a_runner_that_cannot_start_a_job_does_not_wedge_the_worker() -> None:
    calls: list[str] = []

    def refusing(fn: Any) -> Any:
        calls.append("refused")
        raise RuntimeError("cannot schedule new futures after shutdown")

    async def main() -> str:
        w = FairWorker("w", refusing)
        with pytest.raises(RuntimeError):
            await w.submit("a", lambda: "x")
        w._runner = modeled_runner(1.0)
        return await w.submit("b", lambda: "y")  # the worker is free again

    assert run_virtual(main()) == "y"


def test_a_job_with_audio_still_queued_waits_for_a_job_someone_is_waiting_on() -> None:
    """TTS: a reply's next sentence with 5 s of its audio still to play goes after another
    session's first sentence (a caller hears silence until it is done), though it came
    first; with only 1.2 s to spare (within the slack) it keeps its turn."""

    async def main(runway: float) -> tuple[list[str], dict[str, float]]:
        w = FairWorker("w", modeled_runner(1.0), slack_s=0.5)
        log: list[str] = []
        done: dict[str, float] = {}
        loop = asyncio.get_running_loop()

        async def run(owner: str, name: str, runway_s: float | None) -> None:
            await w.submit(owner, job(log, name), runway_s=runway_s)
            done[name] = round(loop.time() - 1000.0, 3)

        busy = asyncio.create_task(run("c", "c0", None))
        await asyncio.sleep(0.1)
        later = asyncio.create_task(run("a", "a-next", runway))
        await asyncio.sleep(0.1)
        await asyncio.gather(busy, later, run("b", "b-first", None))
        return log, done

    log, done = run_virtual(main(5.0))
    assert log == ["c0", "b-first", "a-next"]
    assert done == {"c0": 1.0, "b-first": 2.0, "a-next": 3.0}
    log, done = run_virtual(main(1.2))  # deadline 1.3 s: urgent when c0 ends at 1.0 s
    assert log == ["c0", "a-next", "b-first"]


def test_jobs_with_runway_to_spare_go_earliest_deadline_first_and_never_idle_the_worker() -> None:
    async def main() -> list[str]:
        w = FairWorker("w", modeled_runner(1.0), slack_s=0.5)
        log: list[str] = []
        busy = asyncio.create_task(w.submit("c", job(log, "c0")))
        await asyncio.sleep(0.1)
        await asyncio.gather(
            busy,
            w.submit("a", job(log, "a-9s"), runway_s=9.0),
            w.submit("b", job(log, "b-4s"), runway_s=4.0),
        )
        return log

    assert run_virtual(main()) == ["c0", "b-4s", "a-9s"]


def test_a_job_no_longer_wanted_when_its_turn_comes_is_dropped_unrun() -> None:
    """``wanted`` is asked at the job's turn, not when it is submitted: a partial pass
    queued before another call began to wait is dropped, and the next job runs at once."""

    async def main() -> tuple[list[str], list[str], list[float], int]:
        w = FairWorker("w", modeled_runner(1.0))
        log: list[str] = []
        results: list[str] = []
        asked: list[float] = []
        busy = {"other call waits": False}
        loop = asyncio.get_running_loop()

        def wanted() -> bool:
            asked.append(loop.time() - 1000.0)
            return not busy["other call waits"]

        async def run(owner: str, name: str, preview: bool) -> None:
            try:
                results.append(
                    await w.submit(owner, job(log, name), wanted=wanted if preview else None)
                )
            except Superseded:
                results.append(f"{name} dropped")

        tasks = [asyncio.create_task(run("a", "a0", True))]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(run(o, f"{o}0", True)) for o in ("b", "c")]
        tasks.append(asyncio.create_task(run("d", "d0", False)))
        await asyncio.sleep(0.5)
        busy["other call waits"] = True  # b and c were wanted when they were submitted
        await asyncio.sleep(1.0)
        busy["other call waits"] = False
        tasks.append(asyncio.create_task(run("e", "e0", True)))
        await asyncio.gather(*tasks)
        return log, results, asked, w.superseded

    log, results, asked, superseded = run_virtual(main())
    assert log == ["a0", "d0", "e0"]
    assert sorted(results) == ["a0", "b0 dropped", "c0 dropped", "d0", "e0"]
    assert asked == [0.0, 1.0, 1.0, 2.0]  # at each one's turn: a at once, b and c at 1 s
    assert superseded == 2



def test_a_job_cancelled_in_the_tick_its_turn_comes_is_skipped_and_the_worker_goes_on() -> None:
    # A finishes, and in the same tick B (queued next) is cancelled: the worker's release
    # runs before B's task can take B off the queue. B is skipped, not started (setting
    # its cancelled turn raised InvalidStateError in the release callback), and C runs.
    async def main() -> tuple[list[str], list[Any], list[tuple[Any, Any]], FairWorker]:
        loop = asyncio.get_running_loop()
        errors: list[Any] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        held: list[tuple[Any, Any]] = []

        def runner(fn: Any) -> Any:  # the test finishes each job by hand
            future = loop.create_future()
            held.append((fn, future))
            return future

        w = FairWorker("w", runner)
        log: list[str] = []
        a = asyncio.create_task(w.submit("a", job(log, "a")))
        b = asyncio.create_task(w.submit("b", job(log, "b")))
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(held) == 1 and w.waiting == 1  # A runs, B waits
        fn, future = held[0]
        future.set_result(fn())  # A's release callback is queued first ...
        b.cancel()  # ... then B's wake-up, with its turn already cancelled
        assert await a == "a"
        with pytest.raises(asyncio.CancelledError):
            await b
        c = asyncio.create_task(w.submit("c", job(log, "c")))
        for _ in range(3):
            await asyncio.sleep(0)
        fn, future = held[-1]
        future.set_result(fn())
        assert await c == "c"
        loop.set_exception_handler(None)
        return log, errors, held, w

    log, errors, held, w = run_virtual(main())
    assert log == ["a", "c"] and len(held) == 2
    assert errors == []
    assert w.waiting == 0 and not w.busy


def test_a_second_thread_runs_only_urgent_jobs_side_by_side() -> None:
    # a (urgent) runs from 0; b (urgent, from 0.5 s) takes the second thread at once; c,
    # with 10 s of runway, runs only once no other job runs (background work never adds
    # to the load beside another job)
    async def main() -> dict[str, float]:
        w = FairWorker("w", modeled_runner(1.0), threads=2)
        log: list[str] = []
        done: dict[str, float] = {}
        loop = asyncio.get_running_loop()

        async def run(owner: str, runway: float | None, delay: float) -> None:
            await asyncio.sleep(delay)
            await w.submit(owner, job(log, owner), runway_s=runway)
            done[owner] = loop.time() - 1000.0

        await asyncio.gather(run("a", None, 0.0), run("c", 10.0, 0.1), run("b", None, 0.5))
        return done

    assert run_virtual(main()) == {"a": 1.0, "b": 1.5, "c": 2.5}
