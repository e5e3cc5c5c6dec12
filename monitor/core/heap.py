"""`CollectorFreeze`: what the daemon keeps for its life is moved out of the garbage collector's sight,
and moved out again when a full collection grows slow.

A full collection walks every tracked object that is not frozen. At 10,009 BMCs the daemon holds about
400,000 of them once started (the inventory, a client, a lock and a TLS session per BMC, the rules;
bench/bench_scale.py): with those unfrozen a full collection was a 0.2-0.3 s pause of the event loop, 5-8
times a minute while polls and subscription reconciles allocate. `gc.freeze()` moves every object alive
now into the permanent generation, which no collection walks:

* at the first inventory (`freeze`): modules, config, rules, the inventory;
* again whenever a full collection took longer than `slow` (`run`; the first time at once, then at
  least `gap` after the last refreeze, a gap that doubles after each one up to `max_gap`: while the
  daemon builds its per-BMC state at start, several; once it is built, one an hour at most): what was
  built since (per-BMC clients, sessions, a changed inventory) is frozen too. Before freezing, a full
  collection of *everything* (`gc.unfreeze()` then `gc.collect()`) frees the cyclic garbage the last
  freeze caught: an object frozen while alive that later dies in a reference cycle is freed here, not
  kept for the process's life. Objects that die without a cycle are freed by their reference count,
  frozen or not.

A small site never sees a slow full collection, so it never refreezes. The daemon thaws at stop
(`thaw`), so several daemons in one process (tests) do not leave frozen objects to each other.
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
GAP = 60.0
"""Seconds at least between the first two refreezes (each is one full collection of the whole heap);
doubled after each refreeze, up to MAX_GAP."""
MAX_GAP = 3600.0
"""Seconds: the longest gap between two refreezes."""
CHECK = 5.0
"""Seconds between looks at whether a slow collection was seen."""


class CollectorFreeze:
    def __init__(self, clock: Clock, metrics: Metrics, *, slow: float = SLOW, gap: float = GAP,
                 max_gap: float = MAX_GAP, check: float = CHECK,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        """`timer` times the collections (real time: a collection holds the thread; injectable so a
        test can make one look slow)."""
        self._clock, self._metrics = clock, metrics
        self._slow, self._gap, self._max_gap, self._check, self._timer = slow, gap, max_gap, check, timer
        self._started: float | None = None
        self._slow_seen = False
        """A full collection took longer than `slow` since the last refreeze (set by the gc callback,
        from whichever thread collected; read and cleared on the loop)."""
        self._frozen = False
        self.refreezes = 0

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> None:
        """Freeze what is alive now (the first inventory is in); later calls do nothing."""
        if not self._frozen:
            self._frozen = True
            gc.freeze()

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

    def refreeze(self) -> float:
        """One full collection of everything, then freeze what survived; returns its seconds."""
        started = self._timer()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self._slow_seen = False  # this collection (slow itself) asks for no other
        self._frozen = True
        self.refreezes += 1
        took = self._timer() - started
        self._metrics.inc("collector_refreezes_total")
        log.info("garbage collector: a full collection took over %g s; everything alive is frozen "
                 "(refreeze %d: %.3f s)", self._slow, self.refreezes, took)
        return took

    async def run(self, stop: asyncio.Event) -> None:
        """Watch the full collections until `stop`; refreeze after a slow one (once frozen; the gaps
        between refreezes doubling from `gap` to `max_gap`)."""
        gc.callbacks.append(self._on_collection)
        last: float | None = None
        gap = self._gap
        try:
            while not await sleep_unless(self._clock, self._check, stop):
                now = self._clock.monotonic()
                if self._slow_seen and self._frozen and (last is None or now - last >= gap):
                    if last is not None:
                        gap = min(self._max_gap, gap * 2)
                    self.refreeze()
                    last = now
        finally:
            gc.callbacks.remove(self._on_collection)
