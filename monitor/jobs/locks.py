"""Domain-group locks: one job at a time per group, granted in job-number order, held in the store.

The store decides (so several monitors sharing one store agree): the group goes to the lowest-numbered
active job of the group waiting for it. A waiting job is woken when a job of this monitor releases the
group, and otherwise looks again every `poll` seconds (another monitor released it). Each job locks
exactly one group, so there is no lock ordering and no deadlock.

A job's runner takes the group in its job record's own commit (`acquire(..., take=…)`: the first attempt
writes the job row and the lock in one transaction, `Store.save_job` with `JobWrites.lock`) and releases
it with the job's final state (`JobWrites.unlock`, then `released`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from monitor.core.clock import Clock, sleep_unless
from monitor.core.errors import Parked
from monitor.store import Store

Waiting = Callable[[int], Awaitable[None]]
Take = Callable[[], Awaitable[int | None]]
"""The first attempt at the group, written with the job's record: None when granted, else the job
holding it or going first."""


class GroupLocks:
    def __init__(self, store: Store, clock: Clock, *, poll: float = 0.5) -> None:
        self._store = store
        self._clock = clock
        self._poll = poll
        self._held: dict[str, int] = {}
        self._waiting: dict[str, set[int]] = {}
        self._released: dict[str, asyncio.Event] = {}
        self._closing = asyncio.Event()

    def holder(self, group: str) -> int | None:
        """The job of this monitor holding `group`, if any."""
        return self._held.get(group)

    def held(self) -> dict[str, int]:
        return dict(self._held)

    def waiting(self, group: str) -> list[int]:
        return sorted(self._waiting.get(group, ()))

    def stop_waiting(self) -> None:
        """Shutdown: every job waiting for a group (now or later) stops waiting with `Parked`."""
        self._closing.set()

    async def acquire(self, group: str, job: int, on_wait: Waiting | None = None,
                      take: Take | None = None) -> None:
        """Wait until `job` holds `group` (recorded in the store before this returns). `on_wait` is
        told, once per new holder, which job the group waits for. `Parked` once `stop_waiting` is
        called while the group is held by another job (waiting is a safe point). `take`: the first
        attempt (the job's record and the lock in one commit); later ones are `Store.lock_group`."""
        told: int | None = None
        self._waiting.setdefault(group, set()).add(job)
        try:
            while True:
                event = self._released.setdefault(group, asyncio.Event())
                if take is not None:
                    other = await take()
                    take = None
                else:
                    other = await self._store.lock_group(group, job)
                if other is None:
                    self._held[group] = job
                    return
                if on_wait is not None and other != told:
                    told = other
                    await on_wait(other)
                if self._closing.is_set():
                    raise Parked(f"job {job} stopped waiting for domain group {group} (job {other} "
                                 "holds it): shutdown")
                await sleep_unless(self._clock, self._poll, event, self._closing)
        finally:
            waiters = self._waiting.get(group)
            if waiters is not None:
                waiters.discard(job)
                if not waiters:
                    del self._waiting[group]

    async def release(self, group: str, job: int) -> bool:
        """Release the group (durably). Returns whether the job held it."""
        recorded = await self._store.unlock_group(group, job)
        return self.released(group, job) or recorded

    def released(self, group: str, job: int) -> bool:
        """The store released the group of `job` (or it is released with the job's final state): forget
        it here and wake the jobs waiting for it. Returns whether this monitor held it for the job."""
        memory = self._held.get(group) == job
        if memory:
            del self._held[group]
        event = self._released.pop(group, None)
        if event is not None:
            event.set()
        return memory

    def forget(self, group: str, job: int) -> None:
        """Another monitor took the job over: this one no longer holds its group (the store says so)."""
        if self._held.get(group) == job:
            del self._held[group]
