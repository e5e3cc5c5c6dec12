"""The fake clock, and group locks: FIFO by job number, durable, released on cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from monitor.clock import FakeClock
from monitor.locks import GroupLocks
from monitor.store import SqliteStore


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
async def locks(tmp_path: Path) -> AsyncIterator[GroupLocks]:
    store = SqliteStore(str(tmp_path / "l.db"))
    await store.open()
    yield GroupLocks(store, FakeClock())
    await store.close()


async def test_waiters_are_served_in_job_order(locks: GroupLocks) -> None:
    await locks.acquire("dg1", 5)
    order: list[int] = []
    got = asyncio.Condition()

    async def take(job: int) -> None:
        await locks.acquire("dg1", job)
        async with got:
            order.append(job)
            got.notify_all()

    tasks = [asyncio.create_task(take(j)) for j in (9, 7, 8)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert locks.waiting("dg1") == [7, 8, 9]
    for n, holder in enumerate((5, 7, 8), start=1):
        await locks.release("dg1", holder)
        async with got:
            await asyncio.wait_for(got.wait_for(lambda n=n: len(order) >= n), 5)  # type: ignore[misc]
    assert order == [7, 8, 9]
    await locks.release("dg1", 9)
    await asyncio.gather(*tasks)
    assert locks.held() == {}


async def test_other_groups_do_not_wait(locks: GroupLocks) -> None:
    await locks.acquire("dg1", 1)
    await asyncio.wait_for(locks.acquire("dg2", 2), 1)
    assert locks.held() == {"dg1": 1, "dg2": 2}


async def test_a_cancelled_waiter_does_not_block_the_group(locks: GroupLocks) -> None:
    await locks.acquire("dg1", 1)
    waiter = asyncio.create_task(locks.acquire("dg1", 2))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await locks.release("dg1", 1)
    await asyncio.wait_for(locks.acquire("dg1", 3), 1)
    assert locks.holder("dg1") == 3
