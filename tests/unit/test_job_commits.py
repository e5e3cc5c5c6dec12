"""A failover job's store commits: how many (counted by the store's own `commits`), that the write-ahead
rule holds for every action all the same, that the listeners hear every step change, and that a crash
before or after any commit is carried on safely by the next monitor.

The world is the state machine's in-memory blade group (tests/unit/test_job_state_machine.py: s1 runs
profile p1, s2 and s3 are spares) on a real SqliteStore, with one more oracle: the write-ahead oracle
reads the job's **committed** row right before every outside action takes effect and records a
violation when that row does not name the action (or lacks the outcome the action depends on)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from monitor.core.fencing import current_fence
from monitor.core.model import Domain, Health, Job, JobState, PowerState, Server, StepState
from monitor.core.ports import HealthReading
from monitor.jobs import JobRunner
from monitor.store.rows import JOB_WRITES
from monitor.store.sqlite import SqliteStore
from tests.unit import test_job_state_machine as sm

JOB_TIMEOUT = 15.0


def job_commits(store: Any) -> int:
    return sum(store.commits[k] for k in JOB_WRITES)


def write_ahead_violation(what: str, job: Job, locks: dict[str, int]) -> str | None:
    """Why the committed `job` does not allow the action `what` now (None: it does)."""
    steps = {s.step: s for s in job.steps}
    ctx, m = job.context, job.context.move
    if locks.get(job.group) != job.id:
        return "the job does not hold its domain group in the store"
    off, move, on = steps["power_off_source"], steps["move_profile"], steps["power_on_spare"]
    if what.startswith("ForceOff "):
        server = what.split()[1]
        ok = (off.state is StepState.RUNNING and off.detail.startswith(f"about to power off {server}")
              and ctx.power_off is not None and ctx.power_off.attempt >= 1)
        return None if ok else f"power_off_source {off.state.value}: {off.detail!r}"
    if what.startswith("spare ") and what.endswith("=False"):
        ok = (m.spare_clearing and job.spare == what.split()[1].split("=")[0]
              and off.state is StepState.DONE and ctx.power_off is not None and ctx.power_off.confirmed)
        return None if ok else f"spare_clearing={m.spare_clearing}, spare {job.spare}, power-off {off.state}"
    if what.startswith("remove host "):
        ok = m.host_removing and m.spare_cleared and move.detail.endswith("host record from the management "
                                                                           "server")
        return None if ok else f"host_removing={m.host_removing}, detail {move.detail!r}"
    if what.startswith("move "):
        ok = m.moving and m.spare_cleared and m.host_removed and move.detail.startswith("about to move")
        return None if ok else f"moving={m.moving}, detail {move.detail!r}"
    if what.startswith("On "):
        ok = (ctx.power_on_announced and m.moved and move.state is StepState.DONE
              and on.detail.startswith(f"about to power on {what.split()[1]}"))
        return None if ok else f"power_on_announced={ctx.power_on_announced}, moved={m.moved}"
    if what.startswith(("restore host ", "spare ")):  # the undo of a failed move
        ok = ctx.compensating is not None and job.error is not None
        return None if ok else f"compensating={ctx.compensating}, error={job.error!r}"
    return f"an action the oracle does not know: {what}"


class World(sm.World):
    """The state machine's world, plus the write-ahead oracle and a few switches."""

    def __init__(self, store: SqliteStore, fault: str = "none") -> None:
        super().__init__(store, fault)
        self.domain_status = "ok"
        self.healthy = False
        self.write_ahead: list[str] = []

    async def _fenced(self, what: str) -> None:
        await super()._fenced(what)
        fence = current_fence()
        if fence is None:
            return
        job = await self.store.get_job(fence.job)
        assert job is not None
        why = write_ahead_violation(what, job, await self.store.group_locks())
        if why is not None:
            self.write_ahead.append(f"{what}: the committed job does not name it ({why})")

    async def domain(self, domain_id: str) -> Domain:
        return Domain(domain_id, "g", self.domain_status)

    async def health(self, server: Server) -> HealthReading:
        if self.healthy:
            return HealthReading(self.boxes[server.id].power, Health.OK, Health.OK, "Enabled")
        return await super().health(server)


class Pictures:
    """What a runner's listeners were told, in order."""

    def __init__(self, runner: JobRunner) -> None:
        self.told: list[dict[str, Any]] = []
        self.ended = asyncio.Event()
        runner.add_listener(self._on)

    async def _on(self, job: Job) -> None:
        self.told.append(job.public())
        if not job.state.active:
            self.ended.set()


class CommitCrash:
    """Freeze the monitor before or after its at-th job commit (create_job, save_job) took effect."""

    def __init__(self, at: int, after: bool) -> None:
        self.at, self.after = at, after
        self.count = 0
        self.hit = asyncio.Event()

    async def point(self, took_effect: bool) -> None:
        if self.hit.is_set():
            return
        if not took_effect:
            self.count += 1
        if self.count == self.at and took_effect == self.after:
            self.hit.set()
            await asyncio.Event().wait()  # the process is dead from here on


class CommitCrashingStore:
    """The store, with a crash point before and after each of the job's commits."""

    def __init__(self, store: SqliteStore, crash: CommitCrash) -> None:
        self._store = store
        self._crash = crash

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name not in ("create_job", "save_job"):
            return attr

        async def write(*args: Any, **kwargs: Any) -> Any:
            await self._crash.point(False)
            result = await attr(*args, **kwargs)
            await self._crash.point(True)
            return result

        return write


@contextlib.asynccontextmanager
async def running(store: SqliteStore, world: World, name: str = "m1", recovery: str = "resume",
                  crash: sm.Crash | CommitCrash | None = None) -> AsyncIterator[tuple[JobRunner, Pictures]]:
    """A monitor process on the store and the world; `crash`: at an action or write (sm.Crash, which
    the world must share) or at a job commit (CommitCrash)."""
    if isinstance(crash, CommitCrash):
        wrapped: Any = CommitCrashingStore(store, crash)
        body = sm.monitor(wrapped, world, name, recovery, sm.Crash(hit=crash.hit))
        hit = crash.hit
    else:
        body = sm.monitor(store, world, name, recovery, crash or sm.Crash())
        hit = (crash or sm.Crash()).hit
    async with body as runner:
        pictures = Pictures(runner)
        ready = asyncio.ensure_future(runner.wait_ready())
        dead = asyncio.ensure_future(hit.wait())
        await asyncio.wait([ready, dead], timeout=10, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        dead.cancel()
        yield runner, pictures


async def one_failover(store: SqliteStore, world: World,
                       trigger: dict[str, Any] | None = None) -> tuple[Job, int, Pictures]:
    """One job from submission to its end; its commits (the store's count)."""
    async with running(store, world) as (runner, pictures):
        before = job_commits(store)
        job = await runner.submit("s1", trigger or {"kind": "manual", "reason": "test"})
        await asyncio.wait_for(pictures.ended.wait(), JOB_TIMEOUT)
        commits = job_commits(store) - before
    ended = await store.get_job(job.id)
    assert ended is not None
    return ended, commits, pictures


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "c.db"))
    await s.open()
    yield s
    await s.close()


async def test_a_failover_commits_8_times_and_every_action_is_written_ahead(store: SqliteStore) -> None:
    world = World(store)
    job, commits, _ = await one_failover(store, world)
    assert job.state is JobState.COMPLETED, job
    assert world.boxes[job.spare or ""].profile == "p1" and world.boxes["s1"].profile is None
    assert world.violations == [] and world.write_ahead == [], (world.violations, world.write_ahead)
    # created; the lock; power-off, spare flag, host record, move; power-on; the end (timer, unlock)
    assert commits == 8, store.commits
    assert store.commits["lock_group"] == store.commits["unlock_group"] == store.commits["add_timer"] == 0
    assert await store.group_locks() == {}
    assert [t.job for t in await store.scheduled_timers()] == [job.id]
    assert job.rediscovery is not None and job.rediscovery["state"] == "scheduled"
    assert len(world.actions) == 5, world.actions


async def test_listeners_hear_every_step_change_not_only_commits(store: SqliteStore) -> None:
    world = World(store)
    job, commits, pictures = await one_failover(store, world)
    assert job.state is JobState.COMPLETED
    told = pictures.told
    assert len(told) > commits, (len(told), commits)
    for name in ("check_domain", "lock_group", "check_product", "power_off_source", "select_spare",
                 "move_profile", "power_on_spare", "schedule_rediscovery", "unlock_group"):
        states = {next(s["state"] for s in p["steps"] if s["step"] == name) for p in told}
        assert {"running", "done"} <= states, (name, states)
    assert told[0]["state"] == "queued" and told[-1]["state"] == "completed"
    assert all(a != b for a, b in itertools.pairwise(told)), "an identical picture told twice"
    moved = [p for p in told if any(s["detail"].startswith("profile p1 moved to") for s in p["steps"])]
    assert moved, "the move's outcome (carried by the power-on's write-ahead) was not told"


async def test_an_early_failure_commits_twice(store: SqliteStore) -> None:
    world = World(store)
    world.domain_status = "degraded"
    job, commits, _ = await one_failover(store, world)
    assert job.state is JobState.FAILED and "degraded" in (job.error or "")
    assert commits == 2, store.commits  # created; failed (nothing locked, nothing touched)
    assert world.actions == []


async def test_no_qualified_spare_commits_four_times(store: SqliteStore) -> None:
    world = World(store)
    for sid in ("s2", "s3"):
        world.boxes[sid].spare = False
    job, commits, _ = await one_failover(store, world)
    assert job.state is JobState.FAILED and "no qualified spare" in (job.error or ""), job.error
    # created; the lock; the power-off's write-ahead; failed with the unlock (no undo owed)
    assert commits == 4, store.commits
    assert await store.group_locks() == {}
    assert world.write_ahead == []


async def test_a_declined_rule_failover_commits_three_times(store: SqliteStore) -> None:
    world = World(store)
    world.healthy = True
    job, commits, _ = await one_failover(store, world, {"kind": "rule", "rule": "r", "confirm": True})
    assert job.state is JobState.FAILED and "requires confirmation" in (job.error or ""), job.error
    assert commits == 3, store.commits  # created; the lock; failed with the unlock
    assert world.actions == [] and await store.group_locks() == {}


async def test_a_failed_move_commits_its_failure_before_the_undo(store: SqliteStore) -> None:
    world = World(store, "move_error")
    job, commits, _ = await one_failover(store, world)
    assert job.state is JobState.FAILED and "stays on s1" in (job.error or ""), job.error
    # created, lock, four write-aheads (power-off, spare flag, host record, move), the failure with
    # the undo owed, the end with the undo's outcome and the unlock
    assert commits == 8, store.commits
    assert world.boxes["s1"].profile == "p1" and world.boxes["s1"].host is not None
    assert any(a.startswith("spare s2=True") for a in world.actions), world.actions
    assert world.write_ahead == [], world.write_ahead


async def test_a_job_parked_at_shutdown_saves_once(store: SqliteStore) -> None:
    world = World(store)
    async with running(store, world) as (runner, _pictures):
        stopping = runner._stopping
        parked: list[int] = []

        async def stop_after_select(job: Job) -> None:
            if job.step("select_spare").state is StepState.DONE and not parked:
                parked.append(job_commits(store))
                stopping.set()  # what the daemon's stop does first: the job parks at its next step

        runner.add_listener(stop_after_select)
        job = await runner.submit("s1", {"kind": "manual"})
        task = runner._running[job.id]
        await asyncio.wait_for(asyncio.shield(task), JOB_TIMEOUT)
        assert job_commits(store) - parked[0] == 1, store.commits
    saved = await store.get_job(job.id)
    assert saved is not None and saved.state is JobState.RUNNING
    assert saved.step("select_spare").state is StepState.DONE, saved.steps
    assert saved.step("move_profile").state is StepState.PENDING


@pytest.mark.slow
async def test_an_adopted_job_commits_twice_more(store: SqliteStore) -> None:
    """A monitor dies right after its power-on write-ahead (the spare turns On): the adopter commits
    the adoption and the end."""
    world = World(store)
    crash = sm.Crash(at=0)
    world.crash = crash  # the world's actions and the store's writes share it
    async with running(store, world, crash=crash) as (runner, _pictures):
        async def die_after_power_on(job: Job) -> None:
            if job.step("power_on_spare").detail.startswith("about to power on") and not crash.hit.is_set():
                crash.at, crash.after, crash.count = 1, True, 0  # freeze right after the next action

        runner.add_listener(die_after_power_on)
        await runner.submit("s1", {"kind": "manual"})
        await asyncio.wait_for(crash.hit.wait(), JOB_TIMEOUT)
    assert world.boxes["s2"].power is PowerState.ON or world.boxes["s3"].power is PowerState.ON
    world.crash = sm.Crash()
    before = job_commits(store) + store.commits["adopt_jobs"]
    async with running(store, world, "m2") as (_runner, pictures):
        await asyncio.wait_for(pictures.ended.wait(), JOB_TIMEOUT)
    assert job_commits(store) + store.commits["adopt_jobs"] - before == 2, store.commits
    job = (await store.list_jobs(limit=1))[0]
    assert job.state is JobState.COMPLETED, job
    assert world.write_ahead == [] and world.violations == []


COMMIT_POINTS = [(at, after) for at in range(1, 9) for after in (False, True)]


@pytest.mark.slow
@pytest.mark.parametrize(("at", "after"), COMMIT_POINTS,
                         ids=[f"{'after' if a else 'before'}-commit-{n}" for n, a in COMMIT_POINTS])
@pytest.mark.parametrize("recovery", ["resume", "fail_safe"])
async def test_a_crash_at_any_commit_is_carried_on_safely(store: SqliteStore, at: int, after: bool,
                                                          recovery: str) -> None:
    """The monitor dies before or after its at-th commit of the job (create_job, save_job); another
    monitor (after the lease) resumes it or fails it safe: the profile on exactly one server, nothing
    flagged spare that carries it, the group unlocked, the job ended true to the world."""
    world = World(store)
    crash = CommitCrash(at, after)
    async with running(store, world, crash=crash) as (runner, pictures):
        submit = asyncio.ensure_future(runner.submit("s1", {"kind": "manual"}))
        hit = asyncio.ensure_future(crash.hit.wait())
        ended = asyncio.ensure_future(pictures.ended.wait())
        await asyncio.wait([hit, ended], timeout=JOB_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        for f in (submit, hit, ended):
            f.cancel()
        assert crash.hit.is_set(), f"commit {at} never came"
    world.crash = sm.Crash()
    jobs = await store.list_jobs(limit=1)
    if jobs and jobs[0].state.active:
        async with running(store, world, "m2", recovery) as (_runner, pictures):
            await asyncio.wait_for(pictures.ended.wait(), JOB_TIMEOUT)
    jobs = await store.list_jobs(limit=1)
    holders = [s for s, b in world.boxes.items() if b.profile == "p1"]
    assert len(holders) == 1, holders
    assert not any(b.spare for b in world.boxes.values() if b.profile), world.boxes
    assert await store.group_locks() == {}
    assert world.violations == [] and world.write_ahead == [], (world.violations, world.write_ahead)
    if not jobs:
        assert (at, after) == (1, False)  # the crash came before the job was created
        return
    job = jobs[0]
    assert not job.state.active, job
    if job.state is JobState.COMPLETED:
        assert holders == [job.spare] and world.boxes[holders[0]].power is PowerState.ON
        assert world.boxes["s1"].power is PowerState.OFF
    else:
        assert job.error, job
        if holders == ["s1"]:
            assert "moved s1 ->" not in job.error or "stays on s1" in job.error, job.error
