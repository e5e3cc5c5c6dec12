"""monitor.core.bounded.bounded_map: the concurrency limit, per-item timeouts on the fake clock, errors
kept per item, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from monitor.core.bounded import bounded_map
from monitor.core.clock import FakeClock


async def test_limit_never_exceeded_and_no_task_per_item_up_front() -> None:
    active = 0
    peak = 0
    peak_tasks = 0
    gate = asyncio.Event()

    async def fn(i: int) -> int:
        nonlocal active, peak, peak_tasks
        active += 1
        peak = max(peak, active)
        peak_tasks = max(peak_tasks, len(asyncio.all_tasks()))
        if i < 5:
            await gate.wait()  # the first five hold their slots until released
        for _ in range(3):
            await asyncio.sleep(0)
        active -= 1
        return i * 2

    before = len(asyncio.all_tasks())
    run = asyncio.ensure_future(bounded_map(fn, range(200), 5))
    for _ in range(20):
        await asyncio.sleep(0)
    assert active == 5 and not run.done()  # held: nothing beyond the limit started
    gate.set()
    outcomes = await asyncio.wait_for(run, 5)
    assert peak == 5
    # the test task, the bounded_map task and at most `limit` item tasks
    assert peak_tasks <= before + 1 + 5
    assert [o.value for o in outcomes] == [i * 2 for i in range(200)]
    assert all(o.ok for o in outcomes)


async def test_timeout_is_per_item_on_the_clock() -> None:
    clock = FakeClock()

    async def fn(i: int) -> int:
        if i % 3 == 0:
            await clock.sleep(100)  # hangs past the timeout
        return i

    run = asyncio.ensure_future(bounded_map(fn, range(9), 9, timeout=5, clock=clock))
    await clock.next_sleeper()
    await clock.advance(5)
    outcomes = await asyncio.wait_for(run, 5)
    slow = [o.item for o in outcomes if isinstance(o.error, TimeoutError)]
    assert slow == [0, 3, 6]
    assert [o.value for o in outcomes if o.ok] == [1, 2, 4, 5, 7, 8]


async def test_an_error_stays_with_its_item() -> None:
    async def fn(i: int) -> int:
        await asyncio.sleep(0)
        if i == 2:
            raise ValueError("bad item")
        return i

    outcomes = await asyncio.wait_for(bounded_map(fn, range(6), 2), 5)
    assert isinstance(outcomes[2].error, ValueError)
    assert [o.value for o in outcomes if o.ok] == [0, 1, 3, 4, 5]


async def test_cancelling_the_caller_cancels_running_items_and_starts_no_more() -> None:
    started: list[int] = []
    cancelled: list[int] = []
    never = asyncio.Event()

    async def fn(i: int) -> None:
        started.append(i)
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.append(i)
            raise

    run = asyncio.ensure_future(bounded_map(fn, range(100), 3))
    for _ in range(10):
        await asyncio.sleep(0)
    assert started == [0, 1, 2]
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 5)
    assert sorted(cancelled) == [0, 1, 2]
    assert started == [0, 1, 2]


async def test_start_at_spreads_the_starts_on_the_clock() -> None:
    clock = FakeClock()
    seen: list[float] = []

    async def fn(i: int) -> None:
        seen.append(clock.monotonic())

    run = asyncio.ensure_future(bounded_map(fn, range(4), 4, clock=clock, start_at=lambda i: i * 10.0))
    await asyncio.wait_for(clock.next_sleeper(), 5)  # item 0 started, the feeder waits for item 1
    for _ in range(4):
        await clock.advance(10)
    await asyncio.wait_for(run, 5)
    assert seen == [0.0, 10.0, 20.0, 30.0]


def test_a_limit_below_one_is_refused() -> None:
    async def fn(i: int) -> int:
        return i

    with pytest.raises(ValueError):
        asyncio.run(bounded_map(fn, [1], 0))
