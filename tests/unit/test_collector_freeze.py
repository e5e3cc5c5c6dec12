"""The garbage collector's freeze (monitor.core.heap): frozen at the first inventory; after a slow full
collection, what is alive is frozen again without a full collection of its own (a refreeze); what died
frozen is freed by a sweep, after the sweep gap once the frozen objects grew, or after the longest gap
whatever the growth. The timer that times collections is injected (a collection "takes" what the test
says), and so is the count of frozen objects; the schedule runs on the fake clock."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from monitor.core.clock import FakeClock
from monitor.core.heap import CollectorFreeze
from monitor.core.metrics import Metrics


@dataclass
class Pauses:
    """A timer under which every collection takes `pause` seconds."""

    pause: float = 0.001
    _t: float = 0.0

    def __call__(self) -> float:
        self._t += self.pause / 2  # called at a collection's start and at its end
        return self._t


@dataclass
class Count:
    """The frozen objects' count, as the test says."""

    value: int = 1000

    def __call__(self) -> int:
        return self.value


@dataclass
class Generations:
    """The generations collected, through gc.callbacks."""

    seen: list[int] = field(default_factory=list)

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.seen.append(info["generation"])


class Cycle:
    """Garbage only the collector frees: it refers to itself."""

    def __init__(self) -> None:
        self.me = self


@dataclass
class Kept:
    keeper: CollectorFreeze
    clock: FakeClock
    metrics: Metrics
    pauses: Pauses
    count: Count


@pytest.fixture
async def kept() -> AsyncIterator[Kept]:
    gc.unfreeze()
    clock, metrics, pauses, count = FakeClock(), Metrics(), Pauses(), Count()
    keeper = CollectorFreeze(clock, metrics, slow=0.05, sweep_gap=600.0, sweep_growth=0.25, sweep=3600.0,
                             check=5.0, timer=pauses, frozen_count=count)
    stop = asyncio.Event()
    task = asyncio.create_task(keeper.run(stop))
    await clock.next_sleeper()
    try:
        yield Kept(keeper, clock, metrics, pauses, count)
    finally:
        stop.set()
        await clock.advance(5.0)
        await asyncio.wait_for(task, 5)
        keeper.thaw()
        gc.collect()


def frozen_garbage(keeper: CollectorFreeze) -> weakref.ref[Cycle]:
    """A cycle alive at the freeze, dropped after it: a full collection does not see it."""
    node = Cycle()
    dead = weakref.ref(node)
    keeper.freeze()
    del node
    gc.collect()
    assert dead() is not None, "a frozen cycle survives a full collection"
    return dead


def is_frozen(obj: object) -> bool:
    """gc.get_objects() lists the generations, not the permanent one."""
    return gc.is_tracked(obj) and all(o is not obj for o in gc.get_objects())


async def slow_then_look(kept: Kept) -> None:
    """A slow full collection, then the keeper's next look."""
    kept.pauses.pause = 0.2
    gc.collect()
    kept.pauses.pause = 0.001
    await kept.clock.advance(5.0)


async def test_a_slow_full_collection_refreezes_what_is_alive_without_a_full_collection(kept: Kept) -> None:
    dead_frozen = frozen_garbage(kept.keeper)
    kept.pauses.pause = 0.2
    gc.collect()  # slow: a refreeze at the next look
    kept.pauses.pause = 0.001
    alive = Cycle()
    young = Cycle()
    dead_young = weakref.ref(young)
    del young
    assert kept.keeper.refreezes == 0 and not is_frozen(alive)
    generations = Generations()
    gc.callbacks.append(generations)
    try:
        await kept.clock.advance(5.0)
    finally:
        gc.callbacks.remove(generations)
    assert kept.keeper.refreezes == 1 and kept.metrics.get("collector_refreezes_total") == 1
    assert 2 not in generations.seen, f"a refreeze collects the young generations only: {generations.seen}"
    assert is_frozen(alive), "what was alive at the refreeze is frozen"
    assert dead_young() is None, "the young garbage was collected before the freeze"
    assert dead_frozen() is not None, "what died frozen waits for a sweep"
    assert kept.keeper.sweeps == 0

    # One refreeze per slow collection: fast ones after it ask for none.
    for _ in range(3):
        gc.collect()
    await kept.clock.advance(100.0)
    assert kept.keeper.refreezes == 1


async def test_a_sweep_frees_what_died_frozen_once_the_gap_passed_and_the_frozen_grew(kept: Kept) -> None:
    dead = frozen_garbage(kept.keeper)  # frozen at t=0, 1,000 objects
    await slow_then_look(kept)
    kept.count.value = 1249  # under a quarter more: no sweep before the longest gap
    await kept.clock.advance(700.0)
    assert kept.keeper.sweeps == 0 and dead() is not None
    kept.count.value = 1250
    generations = Generations()
    gc.callbacks.append(generations)
    kept.pauses.pause = 0.2
    try:
        await kept.clock.advance(5.0)
    finally:
        gc.callbacks.remove(generations)
        kept.pauses.pause = 0.001
    assert kept.keeper.sweeps == 1 and kept.metrics.get("collector_sweeps_total") == 1
    assert 2 in generations.seen and dead() is None, "the sweep collected the whole heap, frozen included"
    assert gc.get_freeze_count() > 0 and kept.keeper.frozen
    # The sweep's own full collection (slow itself) asks for no refreeze, and nothing refrozen since
    # means no sweep, however long.
    refreezes = kept.keeper.refreezes
    kept.count.value = 5000
    await kept.clock.advance(4000.0)
    assert kept.keeper.refreezes == refreezes and kept.keeper.sweeps == 1


async def test_the_gaps_between_sweeps(kept: Kept) -> None:
    """sweep_gap 600, sweep 3600, a look every 5 s: the frozen count steady, the sweep after a refreeze
    comes 3,600 s after the freeze; grown by a quarter, 600 s after the last sweep; not grown since,
    3,600 s after it again."""
    kept.keeper.freeze()
    begin = kept.clock.monotonic()
    at: list[float] = []
    while kept.clock.monotonic() - begin < 5000:
        await slow_then_look(kept)  # a refreeze every look
        if kept.keeper.sweeps != len(at):
            at.append(round(kept.clock.monotonic() - begin))
            if len(at) == 1:
                kept.count.value = 2000  # grew by a quarter since the first sweep
    assert at == [3600, 4200]


async def test_fast_collections_never_refreeze_nor_sweep(kept: Kept) -> None:
    dead = frozen_garbage(kept.keeper)
    for _ in range(3):
        gc.collect()
    kept.count.value = 10_000
    await kept.clock.advance(4000.0)
    assert kept.keeper.refreezes == 0 and kept.metrics.get("collector_refreezes_total") == 0
    assert kept.keeper.sweeps == 0 and kept.metrics.get("collector_sweeps_total") == 0
    assert dead() is not None  # still frozen: only a sweep or the thaw at stop frees it
    kept.keeper.thaw()
    gc.collect()
    assert dead() is None and gc.get_freeze_count() == 0


async def test_nothing_is_refrozen_before_the_first_freeze(kept: Kept) -> None:
    kept.pauses.pause = 0.2
    gc.collect()
    await kept.clock.advance(10.0)
    assert kept.keeper.refreezes == 0 and not kept.keeper.frozen and gc.get_freeze_count() == 0
    # A slow collection before the first freeze asks for no refreeze after it.
    kept.pauses.pause = 0.001
    kept.keeper.freeze()
    await kept.clock.advance(10.0)
    assert kept.keeper.refreezes == 0
