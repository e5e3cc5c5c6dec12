"""A monitor whose lease lapsed while it was paused must not act on its old jobs once it runs again.

The nemesis found it (tests/e2e/test_nemesis.py, a OneView pause round, seed 521700921): the owner was
stopped right after committing "about to move profile", stayed stopped past lease + fence_grace, another
monitor took the job over (epoch 2) and moved the profile; the resumed owner's gate found its lease short,
renewed it — the store accepted the heartbeat of a lease long over — and sent the move again under
epoch 1. Only the manager's fencing refused it.

Here the pause is the whole process's store traffic held (its heartbeats and the reply of that commit,
as SIGSTOP does): the oracle is the state machine's world, which records every action whose epoch is not
the job's current one, refused or not."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from monitor.core.model import Job, JobState
from monitor.store.sqlite import SqliteStore
from tests.support.wait import eventually
from tests.unit import test_job_state_machine as sm
from tests.unit.test_job_commits import World

TIMEOUT = 15.0


class Pausable:
    """A process's view of the store: while paused, every call waits before it runs (a stopped
    process sends nothing), and the call that paused it waits for its reply."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.running = asyncio.Event()
        self.running.set()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            await self.running.wait()
            return await attr(*args, **kwargs)

        return call


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "c.db"))
    await s.open()
    yield s
    await s.close()


@contextlib.asynccontextmanager
async def monitor(store: Any, world: World, name: str) -> AsyncIterator[Any]:
    async with sm.monitor(store, world, name, "resume", sm.Crash()) as runner:
        await asyncio.wait_for(runner.wait_ready(), TIMEOUT)
        yield runner


async def test_a_paused_owner_does_not_act_after_its_job_was_taken_over(store: SqliteStore) -> None:
    world = World(store)
    paused = Pausable(store)
    resumed = asyncio.Event()
    stopped_at: list[str] = []

    async def pause_after_the_move_is_announced(job: Job) -> None:
        move = job.step("move_profile")
        if move.detail.startswith("about to move") and not stopped_at:
            stopped_at.append(move.detail)
            paused.running.clear()  # from here on nothing of m1 reaches the store
            await resumed.wait()  # and the job's task waits for the reply of that commit

    async with monitor(paused, world, "m1") as m1:
        m1.add_listener(pause_after_the_move_is_announced)
        job = await m1.submit("s1", {"kind": "manual", "reason": "test"})

        async def ended_elsewhere() -> bool:
            got = await store.get_job(job.id)
            return got is not None and got.owner == "m2" and got.state is JobState.COMPLETED

        async with monitor(store, world, "m2"):
            await eventually(lambda: stopped_at, TIMEOUT, "m1 to stop after the move's commit")
            await eventually(ended_elsewhere, TIMEOUT, "m2 to take the job over and complete it")
            acted = len(world.actions)
            paused.running.set()  # SIGCONT
            resumed.set()
            await eventually(lambda: m1.metrics.get("failover_jobs_lost_total") >= 1, TIMEOUT,
                             "m1 to give the job up")
        assert world.actions[acted:] == [], "the resumed former owner acted"
    assert world.refused == 0 and world.violations == [], (world.refused, world.violations, world.actions)
    final = await store.get_job(job.id)
    assert final is not None and final.state is JobState.COMPLETED and final.epoch == 2
    assert world.boxes["s1"].profile is None and [b for b in world.boxes.values() if b.profile == "p1"]


async def test_a_lapse_nobody_took_advantage_of_lets_the_owner_carry_on(store: SqliteStore) -> None:
    """Alone in the cluster, the same pause: the lease lapses, nobody takes the job; once resumed, the
    owner stops the gate it had open, runs the job again as its own (re-reading the world) and
    completes it, epoch unchanged."""
    world = World(store)
    paused = Pausable(store)
    resumed = asyncio.Event()
    stopped = asyncio.Event()

    async def pause_after_the_move_is_announced(job: Job) -> None:
        if job.step("move_profile").detail.startswith("about to move") and not stopped.is_set():
            stopped.set()
            paused.running.clear()
            await resumed.wait()

    async with monitor(paused, world, "m1") as m1:
        m1.add_listener(pause_after_the_move_is_announced)
        job = await m1.submit("s1", {"kind": "manual", "reason": "test"})
        await asyncio.wait_for(stopped.wait(), TIMEOUT)
        await eventually(lambda: m1.membership.left() < -0.1, TIMEOUT, "the lease to be over")
        paused.running.set()
        resumed.set()

        async def completed() -> bool:
            got = await store.get_job(job.id)
            return got is not None and got.state is JobState.COMPLETED

        await eventually(completed, TIMEOUT, "m1 to complete its job")
        assert m1.metrics.get("cluster_lease_lapses_total") == 1
    final = await store.get_job(job.id)
    assert final is not None and final.epoch == 1 and final.owner == "m1"
    assert any("after its lease lapsed" in n for n in final.notes), final.notes
    assert world.refused == 0 and world.violations == [] and world.write_ahead == [], world.actions
    assert world.boxes["s1"].profile is None and world.boxes["s2"].profile == "p1"
