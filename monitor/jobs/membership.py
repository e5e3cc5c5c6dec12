"""This process's membership of the cluster: its name, its incarnation, and the lease that lets it act.

The lease lives on the store's clock (PostgreSQL's; one host's for SQLite). Locally the process keeps a
conservative monotonic deadline: the moment *before* it sent the renewal, plus the lease. The store's
lease ends no earlier than that, so an action that this process finishes (or abandons) before its local
deadline is over before any other monitor may take the job over (they also wait the fence grace).

A name is held by one incarnation at a time. Joining waits while another incarnation's lease (plus the
fence grace) runs — a crashed predecessor under the same name — and refuses to start when that holder
renews its lease meanwhile: a second live monitor with the same name.

The heartbeat runs on its own task and never waits behind recovery work.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid

from monitor.core.clock import Clock, sleep_unless
from monitor.core.config import ClusterConfig
from monitor.core.errors import DuplicateInstance, MembershipLost, StoreError
from monitor.core.metrics import Metrics
from monitor.store import Store

log = logging.getLogger(__name__)




class Membership:
    def __init__(self, store: Store, clock: Clock, instance: str, cluster: ClusterConfig, grace: float,
                 metrics: Metrics) -> None:
        self.store = store
        self.clock = clock
        self.instance = instance
        self.cluster = cluster
        self.grace = grace
        """Seconds another monitor waits after this one's lease before taking its jobs over."""
        self.metrics = metrics
        self.token = uuid.uuid4().hex
        """This process's incarnation: a restart under the same name is another owner."""
        self._until = -math.inf
        self.lost = asyncio.Event()
        """Set when another process took this name: stop acting, exit."""
        self.renewed = asyncio.Event()
        self.lapses = 0
        """Renewals that found the lease already over on the store's clock."""

    @property
    def margin(self) -> float:
        """Seconds kept between the end of any action and the end of the local lease."""
        return self.cluster.heartbeat / 2

    def left(self) -> float:
        """Seconds of local lease left (negative once over)."""
        if self.lost.is_set():
            return -math.inf
        return self._until - self.clock.monotonic()

    def valid(self, margin: float = 0.0) -> bool:
        return self.left() > margin

    async def join(self) -> None:
        """Take the name (waiting out a crashed predecessor's lease); DuplicateInstance when another
        live process holds it."""
        first_holder, first_until = "", 0.0
        told = False
        while True:
            sent = self.clock.monotonic()
            got = await self.store.join(self.instance, self.token, self.cluster.address, self.cluster.lease,
                                        self.grace)
            if got.joined:
                self._until = sent + self.cluster.lease
                return
            if got.holder == first_holder and got.lease_until > first_until + 1e-6:
                raise DuplicateInstance(
                    f"another live monitor is named {self.instance!r} (it renewed its lease while this one "
                    "waited to join): give each monitor its own `instance:` in its config")
            if got.holder != first_holder:
                first_holder, first_until = got.holder, got.lease_until
            if not told:
                told = True
                log.warning("instance name %s is held by another process whose lease (plus the %g s fence "
                            "grace) ends in %.1f s: waiting (a crashed predecessor, or a second monitor with "
                            "the same name)", self.instance, self.grace, got.wait)
            await self.clock.sleep(min(max(got.wait, 0.0) + 0.05, self.cluster.heartbeat))

    async def renew(self) -> None:
        """One heartbeat. StoreError when the store cannot be reached; MembershipLost (and `lost` set)
        when another process holds the name; a lease renewed after it had ended counts in `lapses`."""
        sent = self.clock.monotonic()
        try:
            lapsed = await self.store.heartbeat(self.instance, self.token, self.cluster.address,
                                                self.cluster.lease)
        except MembershipLost:
            self.lost.set()
            raise
        if lapsed:
            # Renewed after it had ended: whatever this process holds may have been taken over. Every
            # gate opened before now refuses to act (monitor.jobs.gate); the job runs again only if
            # the store still says it is ours (JobRunner's adoption of its own unfinished jobs).
            self.lapses += 1
            self.metrics.inc("cluster_lease_lapses_total")
            log.warning("the lease of %s had ended before this renewal (a pause, or the store away): its "
                        "jobs are checked again before anything more is done for them", self.instance)
        self._until = max(self._until, sent + self.cluster.lease)
        self.renewed.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeats every `cluster.heartbeat` seconds until `stop`; sooner again after a failure.
        Raises MembershipLost (the process must stop acting)."""
        while not stop.is_set():
            wait = self.cluster.heartbeat
            try:
                await self.renew()
            except MembershipLost:
                log.critical("instance name %s was taken by another process while this one could not "
                             "renew its lease: stopping", self.instance)
                raise
            except (StoreError, TimeoutError, OSError) as exc:
                self.metrics.inc("cluster_heartbeat_errors_total")
                log.error("heartbeat failed (%.1f s of lease left): %s", self.left(), exc)
                wait = min(wait, 0.5)
            await sleep_unless(self.clock, wait, stop)

    async def leave(self, *, clean: bool) -> None:
        """End the lease. After a clean stop (no action in flight) the others need not wait the grace."""
        try:
            await self.store.leave(self.instance, self.token, self.grace if clean else 0.0)
        except Exception as exc:
            log.warning("could not leave the cluster cleanly: %s", exc)
        self._until = -math.inf
