"""The periodic spare check at scale, on the fake clock: a pool larger than `spares.read_rate` is read
evenly over N / read_rate seconds (capped at half the check interval), a small pool and an on-demand
check at once; the periodic check takes the health poll's young readings instead of reading those
BMCs again. The BMC reads are a recording PowerControl (the reads against real BMCs are the
integration tests')."""

from __future__ import annotations

import asyncio
import dataclasses

from adapters.redfish.poller import HealthPoller
from monitor.core.clock import FakeClock
from monitor.core.config import RedfishEventsConfig, SparesConfig
from monitor.core.errors import AdapterUnavailable
from monitor.core.metrics import Metrics
from monitor.core.model import BmcEndpoint, Health, Inventory, PowerState, Server
from monitor.core.ports import HealthReading
from monitor.pipeline.spare_pool import SparePool

WAIT = 5.0
STEP = 0.01
"""Fake-clock seconds per step: shorter than the gap between two reads, so each starts on time."""


class RecordingPower:
    """Reads every spare Off and OK, recording the clock time of each read; acts on nothing."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.reads: list[float] = []

    async def health(self, server: Server) -> HealthReading:
        self.reads.append(self.clock.monotonic())
        return HealthReading(PowerState.OFF, Health.OK, Health.OK, "Enabled")

    async def power_state(self, server: Server) -> PowerState:
        return PowerState.OFF

    async def force_off(self, server: Server) -> None:
        raise AssertionError("a spare check only reads")

    async def power_on(self, server: Server) -> None:
        raise AssertionError("a spare check only reads")

    async def close(self) -> None:
        return None


def inventory(spares: int) -> Inventory:
    servers = {}
    for i in range(spares):
        enc, bay = divmod(i, 16)
        s = Server(f"enc{enc + 1}-bay{bay + 1}", "dg1", "vcd1", f"enc{enc + 1}", bay + 1,
                   "ProLiant BL460c Gen9", spare=True)
        servers[s.id] = s
    return Inventory({}, {}, {}, servers, {})


def pool(clock: FakeClock, power: RecordingPower, spares: int, **config: float) -> SparePool:
    inv = inventory(spares)
    return SparePool(power=power, inventory=lambda: inv, clock=clock,
                     config=SparesConfig.model_validate(config), sinks=[], metrics=Metrics())


async def test_a_large_pool_is_read_evenly_at_read_rate() -> None:
    clock = FakeClock()
    power = RecordingPower(clock)
    p = pool(clock, power, 500, read_rate=50, check_interval=300)
    assert p.window(500) == 10.0
    t0 = clock.monotonic()
    check = asyncio.create_task(p.check(spread=True))
    while not check.done():
        await clock.advance(STEP)
        assert clock.monotonic() - t0 < 20, "the check did not end"
    report = await asyncio.wait_for(check, WAIT)
    assert len(report.spares) == 500 and all(s.ready for s in report.spares)
    offsets = [t - t0 for t in power.reads]
    assert max(offsets) >= 9.5 and max(offsets) < 10.0  # over the whole window
    per_second = [sum(1 for o in offsets if k <= o < k + 1) for k in range(10)]
    assert max(per_second) <= 51 and min(per_second) >= 49, per_second  # evenly, no burst


async def test_the_window_is_capped_at_half_the_check_interval() -> None:
    clock = FakeClock()
    p = pool(clock, RecordingPower(clock), 10, read_rate=5, check_interval=2)
    assert p.window(10) == 1.0
    assert p.window(5) == 0.0  # at most read_rate spares: at once


async def test_a_small_pool_and_an_on_demand_check_are_read_at_once() -> None:
    clock = FakeClock()
    power = RecordingPower(clock)
    small = pool(clock, power, 50, read_rate=50)
    await asyncio.wait_for(small.check(spread=True), WAIT)  # no clock advance needed
    assert len(power.reads) == 50 and set(power.reads) == {clock.monotonic()}
    power.reads.clear()
    large = pool(clock, power, 500, read_rate=50)
    await asyncio.wait_for(large.check(), WAIT)
    assert len(power.reads) == 500 and set(power.reads) == {clock.monotonic()}
    power.reads.clear()
    unpaced = pool(clock, power, 500, read_rate=0)
    await asyncio.wait_for(unpaced.check(spread=True), WAIT)
    assert len(power.reads) == 500 and set(power.reads) == {clock.monotonic()}


async def test_the_periodic_check_is_spread() -> None:
    clock = FakeClock()
    power = RecordingPower(clock)
    p = pool(clock, power, 200, read_rate=50, initial_delay=0, jitter=0, check_interval=300)
    stop = asyncio.Event()
    task = asyncio.create_task(p.run(stop))
    t0 = clock.monotonic()
    await asyncio.wait_for(clock.next_sleeper(), WAIT)
    for _ in range(500):
        await clock.advance(STEP)
    await asyncio.wait_for(p.wait_checks(1), WAIT)
    offsets = sorted(t - t0 for t in power.reads)
    assert len(offsets) == 200 and offsets[0] == 0.0 and 3.9 <= offsets[-1] < 4.0
    stop.set()
    await asyncio.wait_for(task, WAIT)


class PolledPower(RecordingPower):
    """Per server: the reading the BMC gives now (tests change it), or an error; counts reads per
    server so the health poll's and the spare check's are told apart."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.now: dict[str, HealthReading] = {}
        self.failing: set[str] = set()
        self.per_server: dict[str, int] = {}

    async def health(self, server: Server) -> HealthReading:
        self.per_server[server.id] = self.per_server.get(server.id, 0) + 1
        if server.id in self.failing:
            raise AdapterUnavailable(f"{server.id}: connection refused")
        return self.now.get(server.id, HealthReading(PowerState.OFF, Health.OK, Health.OK, "Enabled"))


def with_bmcs(spares: int) -> Inventory:
    inv = inventory(spares)
    bmc = BmcEndpoint("https://127.0.0.1:1", "u", "p")
    servers = {sid: dataclasses.replace(s, bmc=bmc) for sid, s in inv.servers.items()}
    return Inventory({}, {}, {}, servers, {})


async def test_the_periodic_check_uses_young_health_poll_readings_and_reads_the_rest() -> None:
    clock = FakeClock()
    power = PolledPower(clock)
    inv = with_bmcs(6)
    ids = sorted(inv.servers)
    power.failing.add(ids[0])  # its poll fails: the check must read it itself
    metrics = Metrics()
    poller = HealthPoller(RedfishEventsConfig(poll_interval=60), lambda: list(inv.servers.values()), power,
                          asyncio.Queue(), metrics, clock)
    assert not poller.cycle_done.is_set()
    await poller.poll_once()
    assert poller.cycle_done.is_set()  # what the subscriptions' first reconcile waits for
    power.failing.clear()
    # The poll saw ids[1] On and Critical: the check uses that reading, not a second read.
    power.now[ids[1]] = HealthReading(PowerState.OFF, Health.OK, Health.OK, "Enabled")
    poller._readings[ids[1]] = (clock.monotonic(),
                                HealthReading(PowerState.ON, Health.CRITICAL, Health.CRITICAL, "Enabled"))
    p = SparePool(power=power, inventory=lambda: inv, clock=clock, metrics=metrics, sinks=[],
                  config=SparesConfig(max_reading_age=60, read_rate=0), recent=poller.recent)
    await clock.advance(59)
    before = dict(power.per_server)
    report = await asyncio.wait_for(p.check(spread=True), WAIT)
    read = {sid for sid in ids if power.per_server.get(sid, 0) > before.get(sid, 0)}
    assert read == {ids[0]}  # only the one the poll could not read
    by_id = {s.server: s for s in report.spares}
    assert by_id[ids[0]].ready and by_id[ids[0]].reachable
    assert not by_id[ids[1]].ready and by_id[ids[1]].problems == ("powered On, not off", "health Critical")
    assert metrics.get("spare_readings_total", source="health_poll") == 5
    assert metrics.get("spare_readings_total", source="bmc") == 1

    # Older than max_reading_age: every BMC is read again (ids[0]'s own read is no poll reading).
    await clock.advance(2)
    before = dict(power.per_server)
    report = await asyncio.wait_for(p.check(spread=True), WAIT)
    assert all(power.per_server[sid] == before[sid] + 1 for sid in ids)
    assert all(s.ready for s in report.spares)

    # An on-demand check reads every BMC, however young the poll's readings.
    await poller.poll_once()
    before = dict(power.per_server)
    await asyncio.wait_for(p.check(), WAIT)
    assert all(power.per_server[sid] == before[sid] + 1 for sid in ids)

    # max_reading_age 0: the periodic check reads every BMC too.
    p0 = SparePool(power=power, inventory=lambda: inv, clock=clock, metrics=Metrics(), sinks=[],
                   config=SparesConfig(max_reading_age=0, read_rate=0), recent=poller.recent)
    before = dict(power.per_server)
    await asyncio.wait_for(p0.check(spread=True), WAIT)
    assert all(power.per_server[sid] == before[sid] + 1 for sid in ids)
