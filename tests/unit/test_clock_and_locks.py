"""The fake clock, and group locks: FIFO by job number, durable, released on cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.core.clock import FakeClock, sleep_unless
from monitor.core.errors import Parked
from monitor.core.model import JobState, StepState
from monitor.jobs.locks import GroupLocks
from monitor.store.sqlite import SqliteStore
from tests.support.wait import eventually


async def test_fake_clock_sleep_and_timeout() -> None:
    clock = FakeClock()
    woke: list[float] = []

    async def sleeper(d: float) -> None:
        await clock.sleep(d)
        woke.append(clock.monotonic())

    tasks = [asyncio.create_task(sleeper(d)) for d in (5, 1, 3)]
    await asyncio.sleep(0)
    await clock.advance(2)
    assert woke == [1]
    await clock.advance(10)
    assert woke == [1, 3, 5]
    await asyncio.gather(*tasks)

    async def slow() -> None:
        async with clock.timeout(4):
            await clock.sleep(100)

    t = asyncio.create_task(slow())
    await asyncio.sleep(0)
    await clock.advance(4)
    with pytest.raises(TimeoutError):
        await t

    async def quick() -> str:
        async with clock.timeout(4):
            await clock.sleep(1)
        return "ok"

    q = asyncio.create_task(quick())
    await asyncio.sleep(0)
    await clock.advance(10)
    assert await q == "ok"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "l.db"))
    await s.open()
    yield s
    await s.close()


async def waiting_job(store: SqliteStore, server: str, group: str = "dg1") -> int:
    """A running job whose lock_group step runs (as the flow records it before it waits)."""
    job = await store.create_job(server, group, {}, datetime.now(UTC))
    job.state = JobState.RUNNING
    job.step("lock_group").state = StepState.RUNNING
    await store.save_job(job)
    return job.id


async def test_sleep_unless_ends_when_it_was_asked_to_even_if_time_moved_before_it_slept() -> None:
    """The end of a sleep_unless is fixed when it is called: its sleeping task starts a loop turn later,
    and a fake clock advanced meanwhile (or a busy loop) must not push it back."""
    clock = FakeClock()
    start = clock.time()
    wake = asyncio.Event()
    task = asyncio.create_task(sleep_unless(clock, 10, wake))
    await asyncio.sleep(0)  # sleep_unless ran up to its wait; its sleeping task has not run yet
    await clock.advance(3)
    assert clock.deadlines() == [pytest.approx(start + 10, abs=1e-6)]
    await clock.advance(7)
    assert await asyncio.wait_for(task, 1) is False


async def test_waiters_are_served_in_job_order(store: SqliteStore) -> None:
    clock = FakeClock()
    locks = GroupLocks(store, clock)
    first = await waiting_job(store, "s0")
    await locks.acquire("dg1", first)
    ids = [await waiting_job(store, f"s{i}") for i in (1, 2, 3)]
    order: list[int] = []
    got = asyncio.Condition()

    async def take(job: int) -> None:
        await locks.acquire("dg1", job)
        async with got:
            order.append(job)
            got.notify_all()

    tasks = [asyncio.create_task(take(j)) for j in reversed(ids)]  # they ask in reverse order
    await eventually(lambda: len(locks.waiting("dg1")) == 3, 5, interval=0)
    for n, holder in enumerate([first, *ids[:2]], start=1):
        await _finish(store, holder)
        await locks.release("dg1", holder)
        async with got:
            await asyncio.wait_for(got.wait_for(lambda n=n: len(order) >= n), 5)  # type: ignore[misc]
    assert order == ids
    await locks.release("dg1", ids[2])
    await asyncio.gather(*tasks)
    assert locks.held() == {}


async def _finish(store: SqliteStore, job_id: int) -> None:
    job = await store.get_job(job_id)
    assert job is not None
    job.state = JobState.COMPLETED
    await store.save_job(job)


async def test_other_groups_do_not_wait(store: SqliteStore) -> None:
    locks = GroupLocks(store, FakeClock())
    a, b = await waiting_job(store, "s1", "dg1"), await waiting_job(store, "s2", "dg2")
    await locks.acquire("dg1", a)
    await asyncio.wait_for(locks.acquire("dg2", b), 1)
    assert locks.held() == {"dg1": a, "dg2": b}


async def test_a_cancelled_waiter_does_not_block_the_group(store: SqliteStore) -> None:
    locks = GroupLocks(store, FakeClock())
    a, b, c = [await waiting_job(store, f"s{i}") for i in range(3)]
    await locks.acquire("dg1", a)
    waiter = asyncio.create_task(locks.acquire("dg1", b))
    await eventually(lambda: locks.waiting("dg1") == [b], 5, interval=0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await _finish(store, b)  # the cancelled job ends (its flow records the failure)
    await _finish(store, a)
    await locks.release("dg1", a)
    await asyncio.wait_for(locks.acquire("dg1", c), 1)
    assert locks.holder("dg1") == c


async def test_a_group_released_by_another_monitor_is_seen_by_polling(store: SqliteStore) -> None:
    clock = FakeClock()
    mine, theirs = GroupLocks(store, clock, poll=0.5), GroupLocks(store, clock, poll=0.5)
    a, b = await waiting_job(store, "s1"), await waiting_job(store, "s2")
    await theirs.acquire("dg1", a)
    task = asyncio.create_task(mine.acquire("dg1", b))
    await eventually(lambda: mine.waiting("dg1") == [b] and clock.pending > 0, 5, interval=0)
    await _finish(store, a)
    await store.unlock_group("dg1", a)  # the other monitor's release: no local wake-up here
    assert not task.done()
    await clock.advance(0.5)
    await asyncio.wait_for(task, 5)
    assert mine.holder("dg1") == b


async def test_at_shutdown_a_job_waiting_for_its_group_parks_at_once(store: SqliteStore) -> None:
    """Waiting for a group is a safe point: at shutdown the waiter stops with Parked, without waiting
    for the holder (which may be parked itself, holding the group until the next start) or the clock."""
    clock = FakeClock()
    locks = GroupLocks(store, clock)
    a, b = await waiting_job(store, "s1"), await waiting_job(store, "s2")
    await locks.acquire("dg1", a)
    waiter = asyncio.create_task(locks.acquire("dg1", b))
    await asyncio.wait_for(clock.next_sleeper(), 5)  # b waits (on a clock that never moves)
    locks.stop_waiting()
    with pytest.raises(Parked, match="dg1"):
        await asyncio.wait_for(waiter, 5)
    assert locks.waiting("dg1") == [] and locks.held() == {"dg1": a}
    c = await waiting_job(store, "s3")  # and a job that comes to the group later parks too
    with pytest.raises(Parked):
        await asyncio.wait_for(locks.acquire("dg1", c), 5)
