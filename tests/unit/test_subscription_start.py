"""The subscriptions' first reconcile at a large site waits for the health poll's first cycle (at most
`start_wait`), so the first reads of every BMC and the reconciles do not share the first minute; a
small site (at most `reconcile_rate` BMCs) reconciles at once. On the fake clock; the reconcile itself
is recorded, not run (the reconciles against BMCs are the integration tests')."""

from __future__ import annotations

import asyncio

from adapters.redfish.subscriptions import SubscriptionManager
from monitor.core.clock import FakeClock
from monitor.core.config import RedfishEventsConfig
from monitor.core.metrics import Metrics
from monitor.core.model import BmcEndpoint, Server

WAIT = 5.0


def servers(n: int) -> list[Server]:
    return [Server(f"enc{i // 16 + 1}-bay{i % 16 + 1}", "dg1", "vcd1", f"enc{i // 16 + 1}", i % 16 + 1,
                   "ProLiant BL460c Gen9", bmc=BmcEndpoint(f"https://127.0.0.1:{1000 + i}", "u", "p"))
            for i in range(n)]


class Started:
    """Stands in for reconcile_once: records the clock time of each call."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.at: list[float] = []
        self.called = asyncio.Event()

    async def __call__(self, *, spread: bool = False, quick: bool = False) -> dict[str, str]:
        self.at.append(self.clock.monotonic())
        self.called.set()
        return {"https://127.0.0.1:1000": "kept"}


def manager(clock: FakeClock, n: int, after: asyncio.Event | None) -> tuple[SubscriptionManager, Started]:
    cfg = RedfishEventsConfig.model_validate({
        "destination": "https://127.0.0.1:8443/api/v1/events/redfish", "secret": "s3cret-s3cret-s3cret",
        "reconcile_rate": 40, "check_interval": 300})
    listed = servers(n)
    m = SubscriptionManager(cfg, lambda: listed, Metrics(), clock, start_after=after, start_wait=60.0)
    started = Started(clock)
    m.reconcile_once = started  # type: ignore[method-assign]
    return m, started


async def run_until_called(clock: FakeClock, m: SubscriptionManager, started: Started,
                           *, set_at: float | None = None, after: asyncio.Event | None = None) -> float:
    """Run `m` on the fake clock, a second at a time, until it reconciles (setting `after` once
    `set_at` seconds have passed); the clock time of that reconcile after the start."""
    stop = asyncio.Event()
    task = asyncio.create_task(m.run(stop))
    t0 = clock.monotonic()
    try:
        while not started.called.is_set():
            if set_at is not None and after is not None and clock.monotonic() - t0 >= set_at:
                after.set()
                await asyncio.wait_for(started.called.wait(), WAIT)  # at once: no time passes
                break
            await clock.next_sleeper()
            await clock.advance(1.0)
            assert clock.monotonic() - t0 < 120, "no reconcile started"
        return started.at[0] - t0
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


async def test_a_large_site_reconciles_after_the_first_poll_cycle() -> None:
    clock, after = FakeClock(), asyncio.Event()
    m, started = manager(clock, 100, after)
    assert await run_until_called(clock, m, started, set_at=30, after=after) == 30.0


async def test_without_a_poll_cycle_it_waits_at_most_start_wait() -> None:
    clock, after = FakeClock(), asyncio.Event()
    m, started = manager(clock, 100, after)
    assert await run_until_called(clock, m, started) == 60.0


async def test_a_small_site_and_a_poll_already_done_reconcile_at_once() -> None:
    clock, after = FakeClock(), asyncio.Event()
    m, started = manager(clock, 40, after)  # a second's worth at reconcile_rate 40
    assert await run_until_called(clock, m, started) == 0.0
    clock, after = FakeClock(), asyncio.Event()
    after.set()
    m, started = manager(clock, 100, after)
    assert await run_until_called(clock, m, started) == 0.0
    clock = FakeClock()
    m, started = manager(clock, 100, None)  # no health poll: nothing to wait for
    assert await run_until_called(clock, m, started) == 0.0
