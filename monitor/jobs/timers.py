"""Durable timers: the rediscovery a job schedules runs later, on whichever monitor claims it.

A due timer is claimed in the store (on the store's clock) for longer than the discovery's own time
limit, so no other monitor fires it meanwhile; only the claimant records the outcome. The claim is the
timer's lease: the discovery is given what is left of it (less a margin) as its deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from monitor.core.clock import sleep_unless
from monitor.core.errors import AdapterError, StoreError
from monitor.core.metrics import Metrics
from monitor.core.model import Job, iso
from monitor.jobs.flow import FlowDeps
from monitor.jobs.membership import Membership
from monitor.store.rows import Timer

log = logging.getLogger(__name__)


class DurableTimers:
    def __init__(self, deps: FlowDeps, metrics: Metrics, membership: Membership,
                 save: Callable[[Job], Awaitable[None]], *, discovery_timeout: float) -> None:
        self.d = deps
        self.metrics = metrics
        self.membership = membership
        self._save = save
        self.discovery_timeout = discovery_timeout
        cluster = membership.cluster
        # A timer is claimed for the whole discovery: the lease plus the discovery's own time limit.
        self.hold = cluster.lease + discovery_timeout + cluster.heartbeat
        self._wakeup = asyncio.Event()

    def changed(self) -> None:
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run due timers; sleep until the next one is due or a new one is scheduled."""
        clock = self.d.clock
        heartbeat = self.membership.cluster.heartbeat
        while not stop.is_set():
            self._wakeup.clear()
            try:
                claimed_at = clock.monotonic()
                due = await self.d.store.claim_due_timers(self.membership.instance, None, self.hold)
                now = await self.d.store.clock()
            except StoreError as exc:  # the store is away: timers wait, they are durable
                self.metrics.inc("store_errors_total", part="timers")
                log.warning("timers wait for the store: %s", exc)
                await sleep_unless(clock, heartbeat, stop)
                continue
            for timer in due:
                try:
                    await self._fire(timer, claimed_at + self.hold - self.membership.margin)
                except StoreError as exc:  # its claim runs out and it fires again
                    self.metrics.inc("store_errors_total", part="timers")
                    log.warning("rediscovery timer %s could not be recorded: %s", timer.id, exc)
            if due:
                continue  # firing may have rescheduled a retry: read the timers again
            # Another monitor may hold a due timer (or add one): look again within a heartbeat.
            try:
                upcoming = [t.due for t in await self.d.store.scheduled_timers() if t.due > now]
                asked = clock.monotonic()
                now = await self.d.store.clock()  # time passed while reading
                now += clock.monotonic() - asked  # and while the answer came back
            except StoreError as exc:  # look again within a heartbeat
                self.metrics.inc("store_errors_total", part="timers")
                log.warning("timers could not read what is scheduled: %s", exc)
                upcoming = []
            upcoming.append(now + heartbeat)
            await sleep_unless(clock, max(0.0, min(upcoming) - now), stop, self._wakeup)

    async def _fire(self, timer: Timer, claim_ends: float) -> None:
        """Run one claimed timer's discovery within its claim (a local monotonic deadline)."""
        clock = self.d.clock
        cfg = self.d.settings.rediscovery
        attempts = timer.attempts + 1
        budget = min(self.discovery_timeout + 1.0, claim_ends - clock.monotonic())
        if budget <= 0:
            log.warning("rediscovery timer %s: its claim ran out before it fired; it fires again", timer.id)
            return
        try:
            # The discovery is a network call (or a command): its limit is real time, as every network
            # call's. The budget is fixed now from the claim (on the injected clock); a fake clock
            # moved on meanwhile must not end a call still in flight.
            async with asyncio.timeout(budget):
                result = await self.d.discovery.discover(timer.server)
            found, detail = result.found, result.detail
            if result.found and result.host:
                detail = f"{timer.server} discovered as {result.host.name} ({result.host.ip})"
        except AdapterError as exc:
            found, detail = False, f"discovery of {timer.server} failed: {exc}"
        except TimeoutError:
            found, detail = False, f"discovery of {timer.server} did not answer within {budget:.1f} s"
        now = await self.d.store.clock()
        if found:
            state, due = "done", None
        elif attempts <= cfg.retries:
            # Back off: a slow boot (large memory) takes longer than the first wait.
            state, due = "scheduled", now + cfg.retry_interval * 2 ** (attempts - 1)
            detail += f"; retry {attempts}/{cfg.retries} at {iso(datetime.fromtimestamp(due, UTC))}"
        else:
            state, due = "failed", None
            detail += "; no retries left: rerun discovery once the OS has booted"
        if not await self.d.store.update_timer(timer.id, state=state, due=due, attempts=attempts,
                                               detail=detail, claimed_by=self.membership.instance):
            log.warning("rediscovery timer %s was claimed by another monitor meanwhile", timer.id)
            return
        self.metrics.inc(f"rediscovery_{'found' if found else 'not_found'}_total")
        job = await self.d.store.get_job(timer.job)
        if job is not None:
            job.rediscovery = {
                "server": timer.server,
                "due": iso(datetime.fromtimestamp(due if due is not None else timer.due, UTC)),
                "state": state,
                "attempts": attempts,
                "detail": detail,
            }
            await self._save(job)
        log.info("job %s: rediscovery: %s", timer.job, detail)
