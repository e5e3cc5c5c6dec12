"""The health poller at scale, on the fake clock: a cycle's reads spread over poll_spread of the interval
at stable per-server offsets (no thundering herd at start), and a cycle longer than the interval
counted as an overrun. The BMC reads are a recording reader (the clock is the only thing faked; the
reads against real BMCs are tests/integration/test_redfish_events.py's)."""

from __future__ import annotations

import asyncio
from collections import Counter

from adapters.redfish.poller import HealthPoller, spread_offset
from monitor.core.clock import FakeClock
from monitor.core.config import RedfishEventsConfig
from monitor.core.events import Event
from monitor.core.metrics import Metrics
from monitor.core.model import BmcEndpoint, Health, PowerState, Server
from monitor.core.ports import HealthReading

WAIT = 5.0
N = 400


def servers(n: int = N) -> list[Server]:
    out = []
    for i in range(n):
        enc, bay = divmod(i, 16)
        out.append(Server(f"enc{enc + 1}-bay{bay + 1}", "dg1", "vcd1", f"enc{enc + 1}", bay + 1,
                          "ProLiant BL460c Gen9",
                          bmc=BmcEndpoint(f"https://127.64.{enc}.{bay + 1}", "u", "p")))
    return out


class RecordingReader:
    """Records the clock time of each read; `slow` servers take `slow_for` clock seconds."""

    def __init__(self, clock: FakeClock, slow: set[str] | None = None, slow_for: float = 0.0) -> None:
        self.clock = clock
        self.reads: list[tuple[str, float]] = []
        self.slow = slow or set()
        self.slow_for = slow_for

    async def health(self, server: Server) -> HealthReading:
        self.reads.append((server.id, self.clock.monotonic()))
        if server.id in self.slow:
            await self.clock.sleep(self.slow_for)
        return HealthReading(PowerState.ON, Health.OK, Health.OK, "Enabled")


def poller(clock: FakeClock, reader: RecordingReader, fleet: list[Server], metrics: Metrics,
           timeout: float = 30.0, **config: float) -> HealthPoller:
    cfg = RedfishEventsConfig.model_validate({"poll_interval": 60, "poll_spread": 0.5, **config})
    queue: asyncio.Queue[Event] = asyncio.Queue()
    return HealthPoller(cfg, lambda: fleet, reader, queue, metrics, clock, concurrency=8, timeout=timeout)


async def run_cycles(clock: FakeClock, p: HealthPoller, until: float, step: float = 1.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(p.run(stop))
    await asyncio.wait_for(clock.next_sleeper(), WAIT)
    t = 0.0
    while t < until:
        await clock.advance(step)
        t += step
    stop.set()
    await asyncio.wait_for(task, WAIT)


def test_offsets_are_stable_and_inside_the_window() -> None:
    ids = [s.id for s in servers()]
    offsets = [spread_offset(i, 30.0) for i in ids]
    assert offsets == [spread_offset(i, 30.0) for i in ids]  # the same on every call (and restart)
    assert all(0 <= o < 30.0 for o in offsets)
    assert len(set(offsets)) == len(offsets)
    assert spread_offset("enc1-bay1", 0) == 0.0


async def test_first_cycle_is_spread_over_the_window_with_no_herd() -> None:
    clock = FakeClock()
    fleet = servers()
    reader = RecordingReader(clock)
    p = poller(clock, reader, fleet, Metrics())
    await run_cycles(clock, p, until=59)
    assert p.cycles == 1 and len(reader.reads) == N
    times = dict(reader.reads)
    # each server read at its own offset after the start (start = monotonic 0), within the window
    for s in fleet:
        assert abs(times[s.id] - int(p.offset(s.id)) - 1) <= 1.0, s.id
    assert max(times.values()) <= 30.0
    # no thundering herd: no one-second slot holds more than 3x the even share (N / 30 s)
    per_second = Counter(int(t) for t in times.values())
    assert max(per_second.values()) <= 3 * N / 30
    assert len(per_second) >= 25  # nearly every second of the window has reads


async def test_each_server_keeps_its_slot_in_the_next_cycle() -> None:
    clock = FakeClock()
    fleet = servers(64)
    reader = RecordingReader(clock)
    p = poller(clock, reader, fleet, Metrics())
    await run_cycles(clock, p, until=119)
    assert p.cycles == 2 and p.overruns == 0
    firsts: dict[str, float] = {}
    for sid, t in reader.reads:
        if sid in firsts:
            assert abs(t - firsts[sid] - 60.0) <= 1.0  # one interval later, same offset
        else:
            firsts[sid] = t


async def test_a_cycle_longer_than_the_interval_is_an_overrun() -> None:
    clock = FakeClock()
    fleet = servers(32)
    metrics = Metrics()
    last = max(fleet, key=lambda s: spread_offset(s.id, 30.0))
    reader = RecordingReader(clock, slow={last.id}, slow_for=45.0)  # starts near 30 s, ends near 75 s
    p = poller(clock, reader, fleet, metrics, timeout=100.0)  # the slow read finishes: the cycle overruns
    await run_cycles(clock, p, until=80)
    assert p.cycles == 1 and p.overruns == 1
    assert metrics.get("redfish_health_poll_overruns_total") == 1
    assert p.last_cycle_seconds is not None and p.last_cycle_seconds > 60


async def test_a_cycle_within_the_interval_is_no_overrun() -> None:
    clock = FakeClock()
    fleet = servers(32)
    metrics = Metrics()
    reader = RecordingReader(clock, slow={fleet[0].id}, slow_for=20.0)
    p = poller(clock, reader, fleet, metrics)
    await run_cycles(clock, p, until=59)
    assert p.cycles == 1 and p.overruns == 0
    assert metrics.get("redfish_health_poll_overruns_total") == 0
