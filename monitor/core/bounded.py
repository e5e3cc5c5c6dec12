"""`bounded_map`: run one coroutine per item with bounded concurrency, each under its own timeout.

At most `limit` item tasks exist at any time (inside one TaskGroup): the next item's task is created only
when a slot frees, so 10,000 items never mean 10,000 tasks (or coroutines) up front. Every item gets an
`Outcome`: its value, or the exception it raised (a timeout is a `TimeoutError`); one item failing never
cancels the others. Cancelling the caller cancels the running items and creates no new ones.

An optional `start_at(index)` gives the monotonic time (on `clock`) at which an item may start, for
spreading work over an interval: the feeder sleeps on the clock until then (items must come in
non-decreasing `start_at` order for the spread to be exact; an earlier one simply starts at once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from monitor.core.clock import Clock, SystemClock

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["Outcome", "bounded_map"]


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T, R]):
    """One item's result: `value` when `error` is None."""

    item: T
    value: R | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


async def bounded_map(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T],
    limit: int,
    *,
    timeout: float | None = None,
    clock: Clock | None = None,
    start_at: Callable[[int], float] | None = None,
    timeout_clock: Clock | None = None,
    on_done: Callable[[Outcome[T, R]], None] | None = None,
) -> list[Outcome[T, R]]:
    """`fn(item)` for every item, at most `limit` at once, each within `timeout` seconds (on `clock`).

    Returns the outcomes in the items' order. `on_done` (if given) is called as each item ends.
    `timeout_clock` (default `clock`) times the items: network calls take real time even where the
    spread (`start_at`) runs on a test's fake clock."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if timeout is not None and timeout <= 0:
        raise ValueError("timeout must be positive")
    clk: Clock = clock if clock is not None else SystemClock()
    tclk: Clock = timeout_clock if timeout_clock is not None else clk
    outcomes: dict[int, Outcome[T, R]] = {}
    slots = asyncio.Semaphore(limit)

    async def one(index: int, item: T) -> None:
        try:
            try:
                async with tclk.timeout(timeout):
                    value = await fn(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an item's error is its outcome, never the group's
                outcome: Outcome[T, R] = Outcome(item, None, exc)
            else:
                outcome = Outcome(item, value, None)
            outcomes[index] = outcome
            if on_done is not None:
                on_done(outcome)
        finally:
            slots.release()

    async with asyncio.TaskGroup() as group:
        for index, item in enumerate(items):
            if start_at is not None:
                delay = start_at(index) - clk.monotonic()
                if delay > 0:
                    await clk.sleep(delay)
            await slots.acquire()
            group.create_task(one(index, item))
    return [outcomes[i] for i in sorted(outcomes)]
