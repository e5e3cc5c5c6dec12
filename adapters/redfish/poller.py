"""`HealthPoller`: polls each BMC's `Status.Health`/`HealthRollup`; a change becomes an Event (source
`redfish-poll`, `message_key` "HealthChanged").

At scale (10,000 BMCs) a cycle is spread over the interval: each server has a stable offset in
[0, poll_spread x poll_interval) (`spread_offset`, a hash of its id: the same every cycle and on every
restart, so each BMC is read about once per interval and a start does not read every BMC at once), the
reads run through `monitor.core.bounded.bounded_map` (at most `max_concurrency` at once, each with its
own timeout), and a cycle longer than the interval counts in `redfish_health_poll_overruns_total` (the
next one then starts at once)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable

from adapters.redfish.reader import HealthReader, host_of
from monitor.core.bounded import bounded_map
from monitor.core.clock import Clock, SystemClock, run_unless, sleep_unless
from monitor.core.config import RedfishEventsConfig
from monitor.core.errors import AdapterError
from monitor.core.events import Event, severity_rank
from monitor.core.metrics import Metrics
from monitor.core.model import Health, Server
from monitor.core.ports import HealthReading

log = logging.getLogger(__name__)


EMPTY_RETRY = 2.0
"""Seconds until the next look while the inventory lists no BMC to poll."""


HEALTH_CHANGED = "HealthChanged"
"""`message_key` of a health-poll Event (`message_id` and `registry` stay null: it is not a BMC message)."""


def _combined(reading: HealthReading) -> Health | None:
    """The worse of Health and HealthRollup (Unknown ignored); None when the BMC gave neither."""
    known = [h for h in (reading.health, reading.health_rollup) if h is not Health.UNKNOWN]
    if not known:
        return None
    return max(known, key=lambda h: severity_rank(h.value))


def spread_offset(server_id: str, window: float) -> float:
    """The stable offset of `server_id` in [0, window): a hash of the id, uniform over the window."""
    if window <= 0:
        return 0.0
    digest = hashlib.blake2b(server_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * window


class HealthPoller:
    """Every `poll_interval` seconds (0: off) reads each present server's health through its BMC
    (the worse of Status.Health and Status.HealthRollup) and, when it differs from the last reading,
    emits an Event: source `redfish-poll`, `message_key` "HealthChanged" (no message_id/registry),
    `event_type` "StatusChange", `health` and `previous_health`, `severity` = the new health, `server`
    and `sender` (the BMC's host), the raw reading in `attributes`. The first reading of a server only
    records it; a failed read changes nothing. At most `concurrency` (default: `max_concurrency`) reads run
at once; `run()` spreads each cycle's reads over `poll_spread` of the interval (see the module)."""

    def __init__(
        self,
        config: RedfishEventsConfig,
        servers: Callable[[], list[Server]],
        power: HealthReader,
        queue: asyncio.Queue[Event],
        metrics: Metrics,
        clock: Clock,
        *,
        concurrency: int | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._config = config
        self._servers = servers
        self._power = power
        self._queue = queue
        self._metrics = metrics
        self._clock = clock
        self._concurrency = max(1, concurrency if concurrency is not None else config.max_concurrency)
        self._timeout = timeout
        self._timeout_clock: Clock = SystemClock()
        """Times each read: network time is real time (the spread runs on `clock`)."""
        self.last: dict[str, Health] = {}
        """Server id -> the last health read."""
        self._readings: dict[str, tuple[float, HealthReading]] = {}
        """Server id -> (clock monotonic time, its last successful reading): `recent()`."""
        self.cycles = 0
        """Cycles completed."""
        self.overruns = 0
        """Cycles that took longer than the interval."""
        self.last_cycle_seconds: float | None = None
        """How long the last completed cycle took (clock seconds)."""
        self.cycle_done = asyncio.Event()
        """Set once a cycle has completed (every BMC read once): the subscriptions' first reconcile
        waits for it."""
        metrics.describe("redfish_health_polls_total", "Health reads of BMCs, by result")

    @property
    def window(self) -> float:
        """Seconds over which one cycle's reads are spread."""
        return max(0.0, self._config.poll_interval * self._config.poll_spread)

    def offset(self, server_id: str) -> float:
        """The server's stable start offset within a cycle."""
        return spread_offset(server_id, self.window)

    def recent(self, server_id: str, max_age: float) -> HealthReading | None:
        """The server's last successful reading if it was read at most `max_age` seconds ago (the
        spare pool's check uses it instead of reading the BMC again)."""
        got = self._readings.get(server_id)
        if got is None or self._clock.monotonic() - got[0] > max_age:
            return None
        return got[1]

    async def run(self, stop: asyncio.Event) -> None:
        interval = self._config.poll_interval
        if interval <= 0:
            return
        while not stop.is_set():
            if not any(s.bmc is not None and s.present for s in self._servers()):
                # No BMC known yet (the inventory's first load is under way): look again soon rather
                # than a whole interval later; an empty round is no cycle.
                if await sleep_unless(self._clock, min(interval, EMPTY_RETRY), stop):
                    return
                continue
            started = self._clock.monotonic()
            await run_unless(self.poll_once(spread=True), stop)
            if stop.is_set():
                return
            elapsed = self._clock.monotonic() - started
            if await sleep_unless(self._clock, max(0.0, interval - elapsed), stop):
                return

    async def poll_once(self, *, spread: bool = False) -> list[Event]:
        """One cycle over every present server with a BMC; returns the Events emitted. With `spread`,
        each read starts at its server's offset after the cycle's start (`poll_spread`); the cycle's
        duration is recorded and an overrun of `poll_interval` counted."""
        servers = [s for s in self._servers() if s.bmc is not None and s.present]
        started = self._clock.monotonic()
        start_at: Callable[[int], float] | None = None
        if spread and self.window > 0:
            offsets = {s.id: self.offset(s.id) for s in servers}
            servers.sort(key=lambda s: offsets[s.id])
            start_at = lambda i: started + offsets[servers[i].id]  # noqa: E731
        outcomes = await bounded_map(self._poll, servers, self._concurrency, timeout=self._timeout,
                                     clock=self._clock, start_at=start_at,
                                     timeout_clock=self._timeout_clock)
        current = {s.id for s in servers}
        for gone in set(self.last) - current:
            del self.last[gone]
        for gone in set(self._readings) - current:
            del self._readings[gone]
        elapsed = self._clock.monotonic() - started
        self.last_cycle_seconds = elapsed
        self.cycles += 1
        self.cycle_done.set()
        self._metrics.inc("redfish_health_poll_cycles_total")
        self._metrics.observe("redfish_health_poll_cycle_seconds", elapsed)
        interval = self._config.poll_interval
        if interval > 0 and elapsed > interval:
            self.overruns += 1
            self._metrics.inc("redfish_health_poll_overruns_total")
            log.warning("health poll cycle over %d servers took %.1f s, more than poll_interval %g s",
                        len(servers), elapsed, interval)
        events: list[Event] = []
        for outcome in outcomes:
            if outcome.error is not None:
                self._metrics.inc("redfish_health_polls_total", result="error")
                server = outcome.item
                if isinstance(outcome.error, AdapterError | TimeoutError):
                    log.info("health of %s not read: %s", server.id, outcome.error or "timed out")
                else:
                    log.error("health of %s not read", server.id, exc_info=outcome.error)
            elif outcome.value is not None:
                events.append(outcome.value)
        return events

    async def _poll(self, server: Server) -> Event | None:
        """Read one server's health (errors propagate to `poll_once`, which counts them)."""
        reading = await self._power.health(server)
        self._readings[server.id] = (self._clock.monotonic(), reading)
        health = _combined(reading)
        if health is None:
            self._metrics.inc("redfish_health_polls_total", result="unknown")
            return None
        self._metrics.inc("redfish_health_polls_total", result="ok")
        previous = self.last.get(server.id)
        self.last[server.id] = health
        if previous is None or previous is health:
            return None
        assert server.bmc is not None
        event = Event(
            source="redfish-poll",
            time=self._clock.now(),
            sender=host_of(server.bmc.url),
            server=server.id,
            message_key=HEALTH_CHANGED,
            message=f"Health of {server.id} changed from {previous.value} to {health.value}",
            message_args=[previous.value, health.value],
            severity=health.value,
            event_type="StatusChange",
            health=health.value,
            previous_health=previous.value,
            attributes={
                "Health": reading.health.value,
                "HealthRollup": reading.health_rollup.value,
                "PowerState": reading.power.value,
                "State": reading.state,
            },
        )
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._metrics.inc("redfish_events_dropped_total", reason="queue_full")
            return None
        self._metrics.inc("redfish_events_received_total", source="redfish-poll")
        log.info("%s", event.message)
        return event
