"""One injectable clock: wall time, monotonic time, sleeping and timeouts.

`SystemClock` is the real one. `FakeClock` moves only when a test calls `advance`, so timers, polls
and timeouts are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Protocol, TypeVar


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch (UTC)."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        """Like asyncio.timeout(seconds): raises TimeoutError when the body overruns."""


async def _sleep_until(clock: Clock, deadline: float) -> None:
    await clock.sleep(deadline - clock.monotonic())


T = TypeVar("T")


async def run_unless(awaitable: Awaitable[T], stop: asyncio.Event) -> asyncio.Future[T] | None:
    """Run `awaitable` until it ends or `stop` is set, whichever comes first (a stop cancels it, so
    slow work never delays a shutdown). Returns the ended future (read its result or exception), or
    None when it was cancelled."""
    work = asyncio.ensure_future(awaitable)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([work, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not work.done():
            work.cancel()
        await asyncio.gather(work, stopped, return_exceptions=True)
    return None if work.cancelled() else work


async def sleep_unless(clock: Clock, seconds: float, *events: asyncio.Event) -> bool:
    """Sleep `seconds` on `clock`, ending early when any of `events` is set. Returns whether an event
    ended it (or was set already). The end is fixed now, not when the sleeping task first runs (time
    may move in between: a fake clock's `advance`, or a busy loop)."""
    if any(e.is_set() for e in events):
        return True
    deadline = clock.monotonic() + seconds
    me = asyncio.current_task()
    sleeper = asyncio.get_running_loop().create_task(
        _sleep_until(clock, deadline), name=f"{me.get_name() if me else '?'} (sleep_unless)")
    tasks = [sleeper,
             *(asyncio.ensure_future(e.wait()) for e in events)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return any(e.is_set() for e in events)


class SystemClock:
    def time(self) -> float:
        return time.time()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout(seconds)


class FakeClock:
    """A clock that stands still until `advance` moves it."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self._t = start
        self._start = start
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._who: dict[int, str] = {}
        """Per pending entry: the task that registered it and its await chain (for failure messages)."""
        self._seq = itertools.count()
        self._cancelled: set[int] = set()
        self.sleepers_changed = asyncio.Event()

    def time(self) -> float:
        return self._t

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._t, UTC)

    def monotonic(self) -> float:
        return self._t - self._start

    @property
    def pending(self) -> int:
        """How many sleeps and timeouts wait on this clock."""
        return sum(1 for _, seq, _ in self._heap if seq not in self._cancelled)

    def _call_at(self, when: float, callback: Callable[[], None]) -> int:
        seq = next(self._seq)
        heapq.heappush(self._heap, (when, seq, callback))
        self._who[seq] = _describe(asyncio.current_task())
        self.sleepers_changed.set()
        return seq

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:  # nothing to wait for: like asyncio.sleep(0), it only yields
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        seq = self._call_at(self._t + max(0.0, seconds), wake)
        try:
            await fut
        finally:
            self._cancelled.add(seq)

    @asynccontextmanager
    async def _timeout(self, seconds: float) -> AsyncIterator[None]:
        task = asyncio.current_task()
        assert task is not None
        fired = False

        def fire() -> None:
            nonlocal fired
            fired = True
            task.cancel()

        seq = self._call_at(self._t + seconds, fire)
        try:
            yield
        except asyncio.CancelledError:
            if fired and task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            self._cancelled.add(seq)

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        if seconds is None:
            return _null()
        return self._timeout(seconds)

    def deadlines(self) -> list[float]:
        """The wall times at which pending sleeps and timeouts fall due, earliest first."""
        return sorted(when for when, seq, _ in self._heap if seq not in self._cancelled)

    def sleepers(self) -> list[tuple[float, str]]:
        """The pending sleeps and timeouts, earliest first: when each falls due, and who waits (the
        task's name and its chain of awaits when it began waiting)."""
        return sorted((when, self._who.get(seq, "?")) for when, seq, _ in self._heap
                      if seq not in self._cancelled)

    async def wait_for_deadline(self, when: float) -> None:
        """Wait (without time passing) until something sleeps until `when` (to the microsecond)."""
        while not any(abs(d - when) < 1e-6 for d in self.deadlines()):
            self.sleepers_changed.clear()
            await self.sleepers_changed.wait()

    async def next_sleeper(self) -> None:
        """Wait (without time passing) until something sleeps or waits on this clock."""
        while self.pending == 0:
            self.sleepers_changed.clear()
            await self.sleepers_changed.wait()

    async def advance(self, seconds: float) -> None:
        """Move time forward, running every sleep and timeout that falls due, in order."""
        target = self._t + seconds
        while self._heap and self._heap[0][0] <= target:
            when, seq, callback = heapq.heappop(self._heap)
            self._who.pop(seq, None)
            if seq in self._cancelled:
                self._cancelled.discard(seq)
                continue
            self._t = max(self._t, when)
            callback()
            for _ in range(5):
                await asyncio.sleep(0)
        self._t = target
        for _ in range(5):
            await asyncio.sleep(0)


def _describe(task: asyncio.Task[object] | None) -> str:
    """The waiting task's name and the functions of its step that led here, innermost first (the
    clock's own left out; a sleep_unless is named after the task that sleeps)."""
    names: list[str] = []
    frame = sys._getframe(2)
    while frame is not None and len(names) < 6 and "asyncio" not in frame.f_code.co_filename:
        if frame.f_code.co_filename != __file__:
            names.append(frame.f_code.co_qualname)
        frame = frame.f_back  # type: ignore[assignment]
    return f"{task.get_name() if task else '(no task)'}: {' < '.join(names)}"


@asynccontextmanager
async def _null() -> AsyncIterator[None]:
    yield
