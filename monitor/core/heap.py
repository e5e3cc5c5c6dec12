"""`CollectorFreeze`: what the daemon keeps for its life is moved out of the garbage collector's sight,
and what it builds later is moved out too whenever a full collection grows slow.

A full collection walks every tracked object that is not frozen. At 10,009 BMCs the daemon holds about
400,000 of them once started (the inventory, a client, a lock and a TLS session per BMC, the rules;
bench/bench_scale.py): with those unfrozen a full collection was a 0.2-0.3 s pause of the event loop, 5-8
times a minute while polls and subscription reconciles allocate. `gc.freeze()` moves every object alive
now into the permanent generation, which no collection walks:

* at the first inventory (`freeze`): modules, config, rules, the inventory;
* again after a full collection that took longer than `slow` (`refreeze`, at the next look, every
  `check` seconds): a collection of the young generations (what died since the full collection is
  freed), then `gc.freeze()`, which only relinks the generations' lists. The survivors of that slow
  collection (per-BMC clients, sessions, a changed inventory) are frozen within a few milliseconds, where
  a full collection of everything first was a 0.4-0.6 s pause of its own at 10,009 BMCs;
* now and then, after something was refrozen: `gc.unfreeze()`, a full collection of *everything*,
  `gc.freeze()` (`sweep`). An object frozen while alive that later dies in a reference cycle (a request
  in flight at a refreeze: its task, its exception and traceback) is freed there, not kept for the
  process's life; objects that die without a cycle are freed by their reference count, frozen or not.
  A sweep comes `sweep_gap` (10 min) at the soonest after the first freeze or the last sweep, and only
  once the frozen objects have grown by `sweep_growth` (a quarter) since — state built, or garbage
  frozen: the sweep tells them apart —, or `sweep` (an hour) after, whatever the growth. So what dies
  frozen is held at most ten minutes' worth, or a quarter of the heap, and the whole heap is walked
  (0.4-0.6 s at 10,009 BMCs) a few times in the first hour and at most hourly after.

A small site never sees a slow full collection, so it never refreezes nor sweeps. The daemon thaws at
stop (`thaw`), so several daemons in one process (tests) do not leave frozen objects to each other.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

from monitor.core.clock import Clock, sleep_unless
from monitor.core.metrics import Metrics

log = logging.getLogger(__name__)

SLOW = 0.05
"""Seconds: a full collection longer than this asks for a refreeze."""
SWEEP_GAP = 600.0
"""Seconds at least between two sweeps (each a full collection of the whole heap), and from the first
freeze to the first one."""
SWEEP_GROWTH = 0.25
"""A sweep after `SWEEP_GAP` once the frozen objects grew by this share since the last one..."""
SWEEP = 3600.0
"""...or after this many seconds, whatever the growth (something was refrozen since)."""
CHECK = 5.0
"""Seconds between looks at whether a slow collection was seen."""


class CollectorFreeze:
    def __init__(self, clock: Clock, metrics: Metrics, *, slow: float = SLOW, sweep_gap: float = SWEEP_GAP,
                 sweep_growth: float = SWEEP_GROWTH, sweep: float = SWEEP, check: float = CHECK,
                 timer: Callable[[], float] = time.perf_counter,
                 frozen_count: Callable[[], int] = gc.get_freeze_count) -> None:
        """`timer` times the collections (real time: a collection holds the thread; injectable so a
        test can make one look slow); `frozen_count` counts the frozen objects (injectable so a test
        can make them grow)."""
        self._clock, self._metrics = clock, metrics
        self._slow, self._check, self._timer = slow, check, timer
        self._sweep_gap, self._sweep_growth, self._sweep = sweep_gap, sweep_growth, sweep
        self._frozen_count = frozen_count
        self._swept_count = 0
        """Frozen objects after the first freeze, then after the last sweep."""
        self._started: float | None = None
        self._slow_seen = False
        """A full collection took longer than `slow` since the last refreeze (set by the gc callback,
        from whichever thread collected; read and cleared on the loop)."""
        self._frozen = False
        self._frozen_at: float | None = None
        """Clock time of the first freeze, then of the last sweep."""
        self._refrozen = False
        """Something was refrozen since the last sweep (or the first freeze)."""
        self.refreezes = 0
        self.sweeps = 0

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> None:
        """Freeze what is alive now (the first inventory is in); later calls do nothing."""
        if not self._frozen:
            self._frozen = True
            self._frozen_at = self._clock.monotonic()
            gc.freeze()
            self._swept_count = self._frozen_count()

    def thaw(self) -> None:
        gc.unfreeze()
        self._frozen = False

    def _on_collection(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = self._timer()
        elif self._started is not None:
            if self._timer() - self._started > self._slow:
                self._slow_seen = True
            self._started = None

    def refreeze(self) -> None:
        """Collect the young generations, then freeze what is alive."""
        started = self._timer()
        gc.collect(1)
        gc.freeze()
        self._slow_seen = False
        self._refrozen = True
        self.refreezes += 1
        took = self._timer() - started
        self._metrics.inc("collector_refreezes_total")
        log.debug("garbage collector: a full collection took over %g s; what is alive is frozen "
                  "(refreeze %d: %.3f s)", self._slow, self.refreezes, took)

    def sweep(self) -> None:
        """One full collection of everything, then freeze what survived."""
        started = self._timer()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self._slow_seen = False  # this collection (slow itself) asks for no refreeze
        self._refrozen = False
        self._frozen_at = self._clock.monotonic()
        self._swept_count = self._frozen_count()
        self.sweeps += 1
        took = self._timer() - started
        self._metrics.inc("collector_sweeps_total")
        log.info("garbage collector: the whole heap collected and frozen again (sweep %d: %.3f s)",
                 self.sweeps, took)

    def sweep_due(self) -> bool:
        """Something was refrozen since the last sweep, and `sweep_gap` has passed and the frozen
        objects grew by `sweep_growth`, or `sweep` has passed."""
        if not self._refrozen or self._frozen_at is None:
            return False
        since = self._clock.monotonic() - self._frozen_at
        grown = self._frozen_count() >= self._swept_count * (1 + self._sweep_growth)
        return since >= self._sweep or (since >= self._sweep_gap and grown)

    async def run(self, stop: asyncio.Event) -> None:
        """Watch the full collections until `stop`; once frozen, refreeze after a slow one, and sweep
        when `sweep_due()`."""
        gc.callbacks.append(self._on_collection)
        try:
            while not await sleep_unless(self._clock, self._check, stop):
                if not self._frozen:
                    self._slow_seen = False
                    continue
                if self._slow_seen:
                    self.refreeze()
                if self.sweep_due():
                    self.sweep()
        finally:
            gc.callbacks.remove(self._on_collection)
