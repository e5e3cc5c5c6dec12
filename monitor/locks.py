"""Domain-group locks: one job at a time per group, granted in job-number order, recorded durably.

In-process waiting is fair: when a group is released, the waiting job with the lowest number gets it.
Each job locks exactly one group, so there is no lock ordering and no deadlock.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from monitor.clock import Clock
from monitor.store import SqliteStore


@dataclass
class _Group:
    holder: int | None = None
    waiters: dict[int, asyncio.Future[None]] = field(default_factory=dict)


class GroupLocks:
    def __init__(self, store: SqliteStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._groups: dict[str, _Group] = {}

    def holder(self, group: str) -> int | None:
        g = self._groups.get(group)
        return g.holder if g else None

    def held(self) -> dict[str, int]:
        return {name: g.holder for name, g in self._groups.items() if g.holder is not None}

    async def acquire(self, group: str, job: int) -> None:
        """Wait until `job` holds `group`, then record it in the store before returning."""
        g = self._groups.setdefault(group, _Group())
        if g.holder == job:
            return
        if g.holder is not None or g.waiters:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            g.waiters[job] = fut
            try:
                if g.holder is None:
                    self._grant_next(g)
                await fut
            except BaseException:
                if g.waiters.pop(job, None) is None and g.holder == job:
                    g.holder = None
                    self._grant_next(g)
                raise
        else:
            g.holder = job
        try:
            other = await self._store.lock_group(group, job, self._clock.time())
        except BaseException:
            self._release_memory(group, job)
            raise
        if other is not None:
            # Only possible if the store was changed behind our back: refuse rather than share.
            self._release_memory(group, job)
            raise RuntimeError(f"group {group} is recorded as held by job {other}")

    async def release(self, group: str, job: int) -> bool:
        """Release the group (durably first). Returns whether the job held it."""
        recorded = await self._store.unlock_group(group, job)
        memory = self._release_memory(group, job)
        return recorded or memory

    def _release_memory(self, group: str, job: int) -> bool:
        g = self._groups.get(group)
        if g is None or g.holder != job:
            return False
        g.holder = None
        self._grant_next(g)
        if g.holder is None and not g.waiters:
            del self._groups[group]
        return True

    @staticmethod
    def _grant_next(g: _Group) -> None:
        while g.waiters and g.holder is None:
            job = min(g.waiters)
            fut = g.waiters.pop(job)
            if fut.done():
                continue
            g.holder = job
            fut.set_result(None)

    def waiting(self, group: str) -> list[int]:
        g = self._groups.get(group)
        return sorted(g.waiters) if g else []
