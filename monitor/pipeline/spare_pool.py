"""Spare pool health: every designated spare read through its BMC, capacity per (group, model) against N+k.

The periodic check reads a large pool at `spares.read_rate` spares a second (10,000 BMCs: 4,647 spares
over 93 s), so it is no burst beside the health polls; a spare that the health poll read within
`spares.max_reading_age` seconds is not read again: the poll's reading is used (an on-demand check,
`spares --fresh`, reads every BMC).

A spare is *ready* when it is present, has no profile, its BMC answers (within `spares.timeout`), reads
Off and reads health OK. A (domain group, model) pair exists for every model the group has servers of;
its capacity is the number of ready spares of that model (the generation ignored, as spare selection
does), wanted at least k (`spares.min_per_model`, or `spares.groups[G]`). A pair falling below k raises
one alert (`kind: spare_capacity_low`) through the alert sinks, and one `spare_capacity_ok` when it is
back (MQTT topic `alerts/spare-pool-{group}`); the `spare_capacity` and `spare_capacity_short` gauges
show it at every scrape. The check only reads.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.core.bounded import bounded_map
from monitor.core.clock import Clock, run_unless, sleep_unless
from monitor.core.config import SparesConfig
from monitor.core.errors import AdapterError, AdapterTimeout
from monitor.core.metrics import Metrics
from monitor.core.model import Health, Inventory, PowerState, Server, identify_product, iso
from monitor.core.ports import AlertSink, HealthReading, PowerControl
from monitor.jobs.spares import candidate_order

log = logging.getLogger(__name__)

INVENTORY_WAIT = 1.0
"""Seconds between looks for the inventory before the first check."""


def model_of(server: Server) -> str:
    """The model as spare selection compares it (generation ignored); the product text when unknown."""
    info = identify_product(server.product)
    return info.model if info is not None else server.product


@dataclass(frozen=True, slots=True)
class SpareHealth:
    server: str
    group: str
    enclosure: str
    model: str
    present: bool
    profile: str | None
    reachable: bool
    power: str | None
    health: str | None
    ready: bool
    problems: tuple[str, ...]

    def public(self) -> dict[str, Any]:
        return {"server": self.server, "domain_group": self.group, "enclosure": self.enclosure,
                "model": self.model, "present": self.present, "profile": self.profile,
                "reachable": self.reachable, "power": self.power, "health": self.health,
                "ready": self.ready, "problems": list(self.problems)}


async def check_spare(power: PowerControl, server: Server, timeout: float,
                      recent: Callable[[], HealthReading | None] | None = None) -> SpareHealth:
    """One spare through its BMC (a read, nothing acted on), at most `timeout` seconds of real time.
    `recent`: a reading the health poll made lately, asked for at the moment this spare is checked
    (None from it: the BMC is read)."""
    problems: list[str] = []
    if not server.present:
        problems.append("not physically present")
    if server.profile:
        problems.append(f"has profile {server.profile} assigned")
    reachable, pw, hl = False, None, None
    try:
        reading = recent() if recent is not None else None
        if reading is None:
            async with asyncio.timeout(timeout):
                reading = await power.health(server)
        reachable, pw, hl = True, reading.power.value, reading.health.value
        if reading.power is not PowerState.OFF:
            problems.append(f"powered {reading.power.value}, not off")
        if reading.health is not Health.OK:
            problems.append(f"health {reading.health.value}")
    except TimeoutError:
        problems.append(f"BMC unreachable (no answer within {timeout:g} s)")
    except AdapterError as exc:
        kind = "no answer" if isinstance(exc, AdapterTimeout) else str(exc) or type(exc).__name__
        problems.append(f"BMC unreachable ({kind})")
    return SpareHealth(server.id, server.domain_group, server.enclosure, model_of(server), server.present,
                       server.profile, reachable, pw, hl, not problems, tuple(problems))


@dataclass(slots=True)
class PoolReport:
    """The last complete check: each spare, and the capacity of each (group, model)."""

    time: str | None = None
    spares: list[SpareHealth] = field(default_factory=list)
    capacity: list[dict[str, Any]] = field(default_factory=list)

    def public(self, group: str | None = None) -> dict[str, Any]:
        return {"checked": self.time,
                "spares": [s.public() for s in self.spares if group is None or s.group == group],
                "capacity": [c for c in self.capacity if group is None or c["domain_group"] == group]}


def capacity(inventory: Inventory, spares: list[SpareHealth], config: SparesConfig) -> list[dict[str, Any]]:
    """Ready spares against k for every (group, model) that the group has servers (or spares) of."""
    pairs: dict[tuple[str, str], int] = {}
    for s in inventory.servers.values():
        if s.spare or (s.present and s.product):  # an empty bay has no model to cover
            pairs.setdefault((s.domain_group, model_of(s)), 0)
    for sp in spares:
        if sp.ready:
            pairs[(sp.group, sp.model)] = pairs.get((sp.group, sp.model), 0) + 1
    totals = Counter((sp.group, sp.model) for sp in spares)  # one pass (was a scan of every spare per pair)
    out = []
    for (group, model), ready in sorted(pairs.items()):
        want = config.groups.get(group, config.min_per_model)
        total = totals[(group, model)]
        out.append({"domain_group": group, "model": model, "ready": ready, "spares": total,
                    "min": want, "short": max(0, want - ready), "ok": ready >= want})
    return out


class SparePool:
    """The periodic check, a long-lived task of the daemon (`run`); `check` runs one on demand."""

    def __init__(self, *, power: PowerControl, inventory: Callable[[], Inventory | None], clock: Clock,
                 config: SparesConfig, sinks: list[AlertSink], metrics: Metrics,
                 rng: random.Random | None = None,
                 recent: Callable[[str, float], HealthReading | None] | None = None) -> None:
        self.power = power
        self.recent = recent
        """The health poll's reading of a server if it is at most that many seconds old (None: no health
        poll runs): the periodic check uses one younger than `spares.max_reading_age`."""
        self._inventory = inventory
        self.clock = clock
        self.config = config
        self.sinks = sinks
        self.metrics = metrics
        self._rng = rng or random.Random()
        self.report = PoolReport()
        self._short: set[tuple[str, str]] = set()
        self.checks = 0
        self._checked = asyncio.Condition()
        labels = ("domain_group", "model")
        metrics.gauge("spare_capacity", self._gauge("ready"),
                      "ready spares (present, Off, healthy, reachable, no profile) per group and model",
                      labels)
        metrics.gauge("spare_capacity_short", self._gauge("short"),
                      "spares missing to reach spares.min_per_model per domain group and model", labels)

    def _gauge(self, key: str) -> Callable[[], dict[tuple[str, str], float]]:
        def read() -> dict[tuple[str, str], float]:
            return {(c["domain_group"], c["model"]): float(c[key]) for c in self.report.capacity}
        return read

    def window(self, spares: int) -> float:
        """Seconds over which the periodic check reads `spares` spares (`read_rate`): 0, at once, for a
        pool of at most `read_rate` spares (a second's worth of reads is no burst)."""
        rate = self.config.read_rate
        if rate <= 0 or spares <= rate:
            return 0.0
        return min(spares / rate, self.config.check_interval / 2)

    async def check(self, *, spread: bool = False) -> PoolReport:
        """Read every spare (`spread`: over `window()`, as the periodic check does) and report."""
        inv = self._inventory()
        if inv is None:
            return self.report
        spares = sorted((s for s in inv.servers.values() if s.spare), key=candidate_order)
        t = self.config.timeout
        window = self.window(len(spares)) if spread else 0.0
        start_at = None
        if window > 0:
            started, step = self.clock.monotonic(), window / len(spares)
            start_at = lambda i: started + i * step  # noqa: E731
        # At most spares.max_concurrency reads at once (check_spare has its own timeout and never raises
        # for a BMC's fault; anything else is a bug and fails the check).
        outcomes = await bounded_map(lambda s: check_spare(self.power, s, t, self._reuse(s, spread)),
                                     spares, self.config.max_concurrency, clock=self.clock,
                                     start_at=start_at)
        results: list[SpareHealth] = []
        for outcome in outcomes:
            if outcome.error is not None:
                raise outcome.error
            assert outcome.value is not None
            results.append(outcome.value)
        report = PoolReport(iso(self.clock.now()), results, capacity(inv, results, self.config))
        self.report = report
        self._alert(report)
        self.checks += 1
        self.metrics.inc("spare_checks_total")
        async with self._checked:
            self._checked.notify_all()
        return report

    def _reuse(self, server: Server, periodic: bool) -> Callable[[], HealthReading | None] | None:
        """For the periodic check: the health poll's reading of `server` when it is young enough
        (counted by where each spare's reading came from). An on-demand check always reads the BMC."""
        recent, age = self.recent, self.config.max_reading_age
        if not periodic or recent is None or age <= 0:
            return None

        def reading() -> HealthReading | None:
            got = recent(server.id, age)
            self.metrics.inc("spare_readings_total", source="bmc" if got is None else "health_poll")
            return got

        return reading

    def _alert(self, report: PoolReport) -> None:
        for c in report.capacity:
            key = (c["domain_group"], c["model"])
            if not c["ok"] and key not in self._short:
                self._short.add(key)
                self._send("spare_capacity_low", "critical", c, report)
            elif c["ok"] and key in self._short:
                self._short.discard(key)
                self._send("spare_capacity_ok", "info", c, report)

    def _send(self, kind: str, severity: str, c: dict[str, Any], report: PoolReport) -> None:
        why = [f"{s.server}: {'; '.join(s.problems)}" for s in report.spares
               if s.group == c["domain_group"] and s.model == c["model"] and not s.ready]
        text = (f"domain group {c['domain_group']} has {c['ready']} ready {c['model']} spare(s), "
                f"wants {c['min']}" + (f" ({', '.join(why)})" if why else ""))
        (log.warning if kind == "spare_capacity_low" else log.info)("spare pool: %s", text)
        payload: dict[str, object] = {"kind": kind, "rule": kind, "action": "alert", "severity": severity,
                                      "guard": text, "time": report.time, **c, "not_ready": why}
        for sink in self.sinks:
            sink.alert(f"spare-pool-{c['domain_group']}", payload)

    async def wait_checks(self, n: int, timeout: float = 10.0) -> None:
        """Until `n` checks have completed (tests and the CLI's fresh read)."""
        async with self._checked:
            await asyncio.wait_for(self._checked.wait_for(lambda: self.checks >= n), timeout)

    async def _check_unless(self, stop: asyncio.Event) -> None:
        """One check, abandoned when `stop` is set meanwhile (a slow BMC never delays the shutdown)."""
        check = await run_unless(self.check(spread=True), stop)
        if check is None:
            return
        if (exc := check.exception()) is not None:  # one bad check never ends the task; the next runs
            self.metrics.inc("spare_check_errors_total")
            log.error("spare pool check failed", exc_info=exc)

    async def run(self, stop: asyncio.Event) -> None:
        """Check every `check_interval` (plus jitter) until `stop`; while the inventory is not loaded
        yet, look again every INVENTORY_WAIT seconds."""
        first = self.config.initial_delay * (1 + self.config.jitter * self._rng.random())
        if first > 0 and await sleep_unless(self.clock, first, stop):
            return
        while not stop.is_set():
            wait = self.config.check_interval * (1 + self.config.jitter * self._rng.random())
            if self._inventory() is None:
                wait = min(wait, INVENTORY_WAIT)
            else:
                await self._check_unless(stop)
            await sleep_unless(self.clock, wait, stop)
