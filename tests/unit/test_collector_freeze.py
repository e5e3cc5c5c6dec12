"""The garbage collector's freeze (monitor.core.heap): frozen at the first inventory, refrozen after a slow
full collection (at most once per gap), and what died while frozen is freed by the refreeze. The timer
that times collections is injected (a collection "takes" what the test says); the schedule runs on the
fake clock."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass

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


@pytest.fixture
async def kept() -> AsyncIterator[Kept]:
    gc.unfreeze()
    clock, metrics, pauses = FakeClock(), Metrics(), Pauses()
    keeper = CollectorFreeze(clock, metrics, slow=0.05, gap=60.0, max_gap=240.0, check=5.0,
                             timer=pauses)
    stop = asyncio.Event()
    task = asyncio.create_task(keeper.run(stop))
    await clock.next_sleeper()
    try:
        yield Kept(keeper, clock, metrics, pauses)
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


async def test_a_slow_full_collection_refreezes_and_frees_what_died_frozen(kept: Kept) -> None:
    dead = frozen_garbage(kept.keeper)
    kept.pauses.pause = 0.2
    gc.collect()  # slow: a refreeze at the next look
    assert kept.keeper.refreezes == 0
    await kept.clock.advance(5.0)
    assert kept.keeper.refreezes == 1 and kept.metrics.get("collector_refreezes_total") == 1
    assert dead() is None, "the refreeze collected everything before freezing again"
    assert gc.get_freeze_count() > 0 and kept.keeper.frozen

    # The refreeze's own full collection (slow too) does not ask for another one.
    kept.pauses.pause = 0.001
    await kept.clock.advance(400.0)
    assert kept.keeper.refreezes == 1


async def test_the_gaps_between_refreezes_double_up_to_the_longest(kept: Kept) -> None:
    """gap 60, max_gap 240, a look every 5 s: refreezes at 5, 65, 185, 425 and 665 s while every full
    collection is slow, none in between."""
    kept.keeper.freeze()
    kept.pauses.pause = 0.2
    begin = kept.clock.monotonic()
    at: list[float] = []
    while kept.clock.monotonic() - begin < 700:
        gc.collect()  # slow again at once, every look
        before = kept.keeper.refreezes
        await kept.clock.advance(5.0)
        if kept.keeper.refreezes != before:
            at.append(round(kept.clock.monotonic() - begin))
    assert at == [5, 65, 185, 425, 665]


async def test_fast_collections_never_refreeze(kept: Kept) -> None:
    dead = frozen_garbage(kept.keeper)
    for _ in range(3):
        gc.collect()
    await kept.clock.advance(900.0)
    assert kept.keeper.refreezes == 0 and kept.metrics.get("collector_refreezes_total") == 0
    assert dead() is not None  # still frozen: only a refreeze or the thaw at stop frees it
    kept.keeper.thaw()
    gc.collect()
    assert dead() is None and gc.get_freeze_count() == 0


async def test_nothing_is_refrozen_before_the_first_freeze(kept: Kept) -> None:
    kept.pauses.pause = 0.2
    gc.collect()
    await kept.clock.advance(10.0)
    assert kept.keeper.refreezes == 0 and not kept.keeper.frozen and gc.get_freeze_count() == 0
