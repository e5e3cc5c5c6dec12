"""The one gate every outside action of a job passes: power, profile move, spare flag, host record.

`Gate.act(what, op)` runs `op` only while this monitor owns the job with a lease that outlives the
action's deadline (plus a margin): it renews the lease first when it is too short, and refuses
(`LeaseLost`) when it cannot be renewed. The action gets that deadline as its time limit, and carries
the job's fencing token (`monitor.core.fencing`): adapters send it with each mutating request and check it
right before sending, so an action of a paused process is not sent once its deadline has passed.

A lease renewed after it had ended (the store says so: `Membership.lapses`) closes every gate opened
before: the job may have been taken over while this process was paused or cut off, and a renewal does
not give it back. The job's task ends (`LeaseLost`); the runner starts it again only if the store still
names this process its owner, and that run re-reads the world before acting.

The bound this gives: an action of an owner that lost its lease is over (done or abandoned) before that
lease ends on the store's clock; the adopter waits the fence grace on top before it acts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from monitor.core.clock import Clock
from monitor.core.errors import AdapterTimeout, LeaseLapsed, LeaseLost, StoreError
from monitor.core.fencing import Fence, acting
from monitor.core.model import Job
from monitor.jobs.membership import Membership

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_BUDGET = 0.2
"""Seconds: an action is not started with less time than this."""




class Gate:
    def __init__(self, membership: Membership, clock: Clock, job: Job, action_timeout: float,
                 lost: asyncio.Event) -> None:
        self.m = membership
        self.clock = clock
        self.job = job
        self.action_timeout = action_timeout
        self.lost = lost
        """Set when the job's ownership is known to be lost (a save was refused)."""
        self.lapses = membership.lapses
        """The lease lapses this gate was opened after: one more, and the job may be another's."""

    def _check_held(self) -> None:
        if self.lost.is_set() or self.m.lost.is_set():
            raise LeaseLost(f"job {self.job.id}: this monitor no longer owns it")
        if self.m.lapses != self.lapses:
            raise LeaseLapsed(f"job {self.job.id}: the lease ended before it was renewed; another monitor "
                              "may have taken the job over")

    async def budget(self, want: float) -> float:
        """Seconds this monitor may spend on an action: `want`, renewing the lease when it is too short
        for it; less only while the store cannot be reached, and LeaseLost once nothing is left."""
        margin = self.m.margin
        delay = 0.1
        renewed = False
        while True:
            self._check_held()
            left = self.m.left() - margin
            if left >= want:
                return want
            if not renewed:
                try:
                    await self.m.renew()
                    renewed = True
                    continue
                except StoreError as exc:
                    log.warning("job %s: lease renewal before an action failed: %s", self.job.id, exc)
            if left >= max(MIN_BUDGET, min(want, 1.0)):
                return left
            if left <= 0:
                raise LeaseLost(f"job {self.job.id}: lease ran out, the store cannot be reached")
            await self.clock.sleep(min(delay, left))
            delay = min(delay * 2, 1.0)
            renewed = False

    async def act(self, what: str, op: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        """Run one outside action under the job's fence. An overrun is an AdapterTimeout."""
        budget = await self.budget(self.action_timeout if timeout is None else timeout)
        deadline = self.clock.monotonic() + budget
        clock, lost, m, lapses = self.clock, self.lost, self.m, self.lapses

        def valid() -> bool:
            return (clock.monotonic() < deadline and not lost.is_set() and not m.lost.is_set()
                    and m.lapses == lapses)

        fence = Fence(self.job.id, self.job.epoch, m.instance, valid)
        with acting(fence):
            try:
                async with clock.timeout(budget):
                    return await op()
            except TimeoutError:
                raise AdapterTimeout(f"{what}: not done within {budget:.1f} s (the action's deadline)") \
                    from None
