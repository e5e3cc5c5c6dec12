"""`HealthPoller`: polls each BMC's `Status.Health`/`HealthRollup`; a change becomes an Event (source
`redfish-poll`, `message_key` "HealthChanged")."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from adapters.redfish.reader import HealthReader, host_of
from monitor.core.clock import Clock, sleep_unless
from monitor.core.config import RedfishEventsConfig
from monitor.core.errors import AdapterError
from monitor.core.events import Event, severity_rank
from monitor.core.metrics import Metrics
from monitor.core.model import Health, Server
from monitor.core.ports import HealthReading

log = logging.getLogger(__name__)


HEALTH_CHANGED = "HealthChanged"
"""`message_key` of a health-poll Event (`message_id` and `registry` stay null: it is not a BMC message)."""


def _combined(reading: HealthReading) -> Health | None:
    """The worse of Health and HealthRollup (Unknown ignored); None when the BMC gave neither."""
    known = [h for h in (reading.health, reading.health_rollup) if h is not Health.UNKNOWN]
    if not known:
        return None
    return max(known, key=lambda h: severity_rank(h.value))


class HealthPoller:
    """Every `poll_interval` seconds (0: off) reads each present server's health through its BMC
    (the worse of Status.Health and Status.HealthRollup) and, when it differs from the last reading,
    emits an Event: source `redfish-poll`, `message_key` "HealthChanged" (no message_id/registry),
    `event_type` "StatusChange", `health` and `previous_health`, `severity` = the new health, `server`
    and `sender` (the BMC's host), the raw reading in `attributes`. The first reading of a server only
    records it; a failed read changes nothing. At most `concurrency` reads run at once."""

    def __init__(
        self,
        config: RedfishEventsConfig,
        servers: Callable[[], list[Server]],
        power: HealthReader,
        queue: asyncio.Queue[Event],
        metrics: Metrics,
        clock: Clock,
        *,
        concurrency: int = 16,
        timeout: float = 30.0,
    ) -> None:
        self._config = config
        self._servers = servers
        self._power = power
        self._queue = queue
        self._metrics = metrics
        self._clock = clock
        self._semaphore = asyncio.Semaphore(max(1, concurrency))
        self._timeout = timeout
        self.last: dict[str, Health] = {}
        """Server id -> the last health read."""
        metrics.describe("redfish_health_polls_total", "Health reads of BMCs, by result")

    async def run(self, stop: asyncio.Event) -> None:
        if self._config.poll_interval <= 0:
            return
        while not stop.is_set():
            await self.poll_once()
            if await sleep_unless(self._clock, self._config.poll_interval, stop):
                return

    async def poll_once(self) -> list[Event]:
        """One round over every present server with a BMC; returns the Events emitted."""
        servers = [s for s in self._servers() if s.bmc is not None and s.present]
        results = await asyncio.gather(*(self._poll(s) for s in servers))
        current = {s.id for s in servers}
        for gone in set(self.last) - current:
            del self.last[gone]
        return [e for e in results if e is not None]

    async def _poll(self, server: Server) -> Event | None:
        async with self._semaphore:
            try:
                async with asyncio.timeout(self._timeout):
                    reading = await self._power.health(server)
            except (AdapterError, TimeoutError) as exc:
                self._metrics.inc("redfish_health_polls_total", result="error")
                log.info("health of %s not read: %s", server.id, exc)
                return None
            except Exception:
                self._metrics.inc("redfish_health_polls_total", result="error")
                log.exception("health of %s not read", server.id)
                return None
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
