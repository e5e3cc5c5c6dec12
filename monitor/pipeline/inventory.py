"""The daemon's view of the inventory: read from the profile manager every `refresh_interval`, and soon
after a job ends; the resolver, the API and the Redfish workers read it from here."""

from __future__ import annotations

import asyncio
import logging

from monitor.core.clock import Clock, sleep_unless
from monitor.core.errors import AdapterError
from monitor.core.heap import CollectorFreeze
from monitor.core.metrics import Metrics
from monitor.core.model import Inventory, Server
from monitor.core.ports import ProfileManager

log = logging.getLogger(__name__)

REFRESH_GAP = 2.0
"""Seconds: the inventory view is refreshed at most this often."""


class InventoryView:
    def __init__(self, clock: Clock, metrics: Metrics, *, timeout: float, interval: float,
                 collector: CollectorFreeze | None = None) -> None:
        self._clock = clock
        self._metrics = metrics
        self._timeout = timeout
        self._interval = interval
        self._inventory: Inventory | None = None
        self.error: str | None = None
        """Why the last refresh failed (None: it succeeded, or none ran yet)."""
        self.at: float | None = None
        """Clock time of the last successful refresh."""
        self._wake = asyncio.Event()
        self._collector = collector

    def current(self) -> Inventory | None:
        return self._inventory

    def servers(self) -> list[Server]:
        inv = self._inventory
        return list(inv.servers.values()) if inv else []

    def wake(self) -> None:
        """Refresh soon (a job ended, the inventory file was reread)."""
        self._wake.set()

    async def refresh(self, manager: ProfileManager) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                fresh = await manager.inventory()
            if fresh is not self._inventory and fresh != self._inventory:
                # An equal inventory keeps the current object: what is built on it (the resolver's
                # index, 10,009 servers: ~50 ms) is not rebuilt for a refresh that changed nothing.
                self._inventory = fresh
            self.error = None
            self.at = self._clock.time()
            if self._collector is not None:
                # What the daemon holds from its start (modules, config, rules, the first inventory)
                # lives as long as it does: moved out of the collector's sight, so a full collection
                # no longer walks it (it was pauses of 0.1-0.3 s under a trap storm).
                self._collector.freeze()
        except (AdapterError, TimeoutError) as exc:
            self.error = str(exc) or type(exc).__name__
            self._metrics.inc("inventory_refresh_errors_total")
            log.warning("inventory refresh failed: %s", self.error)

    async def run(self, manager: ProfileManager, stop: asyncio.Event) -> None:
        """Refresh every `interval`, and soon after `wake`; wake-ups within REFRESH_GAP of the last
        refresh are coalesced, so a burst of jobs costs one refresh."""
        gap = min(REFRESH_GAP, self._interval)
        while not stop.is_set():
            self._wake.clear()
            await self.refresh(manager)
            if not await sleep_unless(self._clock, gap, stop):
                await sleep_unless(self._clock, self._interval - gap, stop, self._wake)


def spare_counts(inventory: Inventory | None) -> dict[tuple[str, str], float]:
    """Designated spares (present, spare, no profile) per (domain group, model); every model a group
    holds is listed, with 0 where it has no spare, so an alert sees a pool that ran dry."""
    counts: dict[tuple[str, str], float] = {}
    for server in inventory.servers.values() if inventory else ():
        key = (server.domain_group, server.model)
        usable = server.spare and server.present and server.profile is None
        counts[key] = counts.get(key, 0.0) + (1.0 if usable else 0.0)
    return counts
