"""The job runner: numbered durable jobs, one active job per server, owned by one monitor at a time.

A job is created `queued`, becomes `running` when its task starts, and ends `completed` or `failed`.
Write-ahead: before every action the job's record naming it is committed to the store, under the job's
epoch (a save under an older epoch is refused: another monitor took the job over), and what an action
did is committed before another action depends on it. Commits are made only there: a job's progress
(a step started or done, a read-only check, an outcome) rides with its next commit, which is one
transaction with the job's own store writes (`JobWrites`: the group lock with the first record, the
rediscovery timer and the unlock with the final state). A lab failover commits 8 times: created, the
lock, the four write-aheads of power-off, spare flag, host record and move, the power-on's, the end.
The listeners (MQTT `jobs/N`, status followers) are told at every step change all the same, committed
or not (identical pictures once). Every outside action passes the job's gate (monitor.jobs.gate). A
step's failure is durable before anything else of the job's end when an undo is owed (then the undo,
the unlock and the final state); otherwise it is committed with the unlock and the final state, in one
transaction; either way a failed job is never resumed: after a crash it is only finished.
`unlock_group` runs whenever `lock_group` ran, also after a failure.

Cluster membership (monitor.jobs.membership) and the durable timers (monitor.jobs.timers) run on tasks
of their own; taking over the jobs of a monitor whose lease ran out is this module's: the adopter waits
the fence grace after that lease, then runs each job in its own task, which re-reads the world before
acting (resuming it, or failing it safe).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from monitor.core.clock import sleep_unless
from monitor.core.config import ClusterConfig
from monitor.core.errors import (
    AdapterError,
    FenceLost,
    LeaseLapsed,
    LeaseLost,
    LostOwnership,
    NotFound,
    Parked,
    ShuttingDown,
    StoreError,
    StoreUnavailable,
    UnknownServer,
)
from monitor.core.fencing import Fence, observing
from monitor.core.metrics import PHASES, Metrics
from monitor.core.model import STEP_SPECS, STEP_TABLE, Job, JobState, Server, StepSpec, StepState, iso
from monitor.jobs.flow import FailoverFlow, FlowDeps, StepFailed
from monitor.jobs.gate import Gate
from monitor.jobs.membership import Membership
from monitor.jobs.timers import DurableTimers
from monitor.store import JobWrites, Saved, Store, TimerWrite

log = logging.getLogger(__name__)

JobListener = Callable[[Job], Awaitable[None]]

_FAIL_SAFE_NOTE = "failed safe after a restart"
_RESTART_GAP = 2.0
"""Seconds before this monitor runs again a job of its own whose task ended without finishing it."""


class _Ledger:
    """A job's own store writes in its record's transaction (monitor.jobs.flow.Ledger)."""

    def __init__(self, runner: JobRunner, job: Job) -> None:
        self._runner = runner
        self._job = job

    async def lock(self, group: str) -> int | None:
        saved = await self._runner._save_job(self._job, JobWrites(lock=group))
        return saved.holder

    def timer(self, kind: str, server: str, due: float) -> None:
        self._runner._staged[self._job.id] = TimerWrite(kind, server, due)


class JobRunner:
    def __init__(self, deps: FlowDeps, metrics: Metrics, *, instance: str = "monitor-1",
                 cluster: ClusterConfig | None = None, discovery_timeout: float = 30.0,
                 action_timeout: float = 11.0) -> None:
        self.d = deps
        self.metrics = metrics
        self.cluster = cluster or ClusterConfig()
        self.action_timeout = action_timeout
        """The longest an outside action of a job may take (the adapters' own time limits)."""
        grace = self.cluster.fence_grace
        self.fence_grace = grace if grace is not None else action_timeout
        """Seconds an adopter waits after the old owner's lease before it acts."""
        self.membership = Membership(deps.store, deps.clock, instance, self.cluster, self.fence_grace,
                                     metrics)
        self.timers = DurableTimers(deps, metrics, self.membership, self._save_timer_job,
                                    discovery_timeout=discovery_timeout)
        self._listeners: list[JobListener] = []
        self._told: dict[int, dict[str, Any]] = {}
        """Per active job: the picture its listeners were last told (the same one is not told twice)."""
        self._staged: dict[int, TimerWrite] = {}
        """A job's timer, written with its next commit."""
        self._tg: asyncio.TaskGroup | None = None
        self._stopping = asyncio.Event()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._ended: dict[int, float] = {}
        self._recheck: set[int] = set()
        """Jobs whose task stopped at a lease lapse: run again at once if still ours (no restart gap)."""
        self._ready = asyncio.Event()
        self._adopting = asyncio.Lock()
        self._look = asyncio.Event()

    @property
    def store(self) -> Store:
        return self.d.store

    @property
    def instance(self) -> str:
        return self.membership.instance

    @property
    def timer_hold(self) -> float:
        return self.timers.hold

    def add_listener(self, listener: JobListener) -> None:
        self._listeners.append(listener)

    @property
    def running_jobs(self) -> list[int]:
        return sorted(self._running)

    def lease_valid(self, margin: float = 0.0) -> bool:
        """Whether this monitor's lease still holds `margin` seconds from now."""
        return self.membership.valid(margin)

    def timers_changed(self) -> None:
        self.timers.changed()

    # --- submission ------------------------------------------------------------------------------

    async def read_server(self, server_id: str) -> Server:
        """The manager's view of a server, as `submit` reads it (UnknownServer when it has none)."""
        try:
            return await self.d.manager.server(server_id)
        except NotFound:
            raise UnknownServer(server_id) from None

    async def submit(self, server_id: str, trigger: dict[str, Any], *, server: Server | None = None) -> Job:
        """Create and start a failover job. UnknownServer, ActiveJobExists or ShuttingDown otherwise.

        `server`: the manager's view, read by `read_server` just before (the pipeline reads it while the
        BMC confirms the fault); read here otherwise. Only its id and domain group are used: every step
        of the job reads the manager afresh."""
        if self._tg is None or self._stopping.is_set():
            raise ShuttingDown("the monitor is not accepting jobs")
        if server is None or server.id != server_id:
            server = await self.read_server(server_id)
        async with self._adopting:  # a job created here is started here, never also taken as an orphan
            if self._stopping.is_set():  # stopping began while the server was read
                raise ShuttingDown("the monitor is not accepting jobs")
            job = await self.store.create_job(server.id, server.domain_group, trigger, self.d.clock.now(),
                                              owner=self.instance, token=self.membership.token)
            self.metrics.inc("failover_jobs_created_total")
            log.info("job %s: failover of %s (%s) queued", job.id, server.id, trigger.get("kind"))
            await self._tell(job)  # "queued" goes out before the job's first step
            self._start(job)
        return job

    def _start(self, job: Job, *, adopted: bool = False) -> None:
        assert self._tg is not None
        task = self._tg.create_task(self._execute(job, adopted=adopted), name=f"job-{job.id}")
        self._running[job.id] = task
        job_id = job.id

        def forget(_task: asyncio.Task[None]) -> None:
            self._running.pop(job_id, None)
            self._ended[job_id] = self.d.clock.monotonic()
            if job_id in self._recheck:
                self._look.set()  # is it still ours? the adoption loop looks now

        task.add_done_callback(forget)

    # --- the long-lived part -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Join the cluster, take over jobs left by a crash (ours or a dead monitor's), run jobs and
        timers until `stop`, then park at safe points and leave. Raises DuplicateInstance (another live
        monitor has this name) or MembershipLost (it took the name while this one was cut off)."""
        await self.membership.join()
        released = await self.store.release_stale_locks()
        for group, job_id in released.items():
            log.warning("released domain group %s, left locked by finished job %s", group, job_id)
        halt = asyncio.Event()  # the heartbeat, adoption and timer tasks stop on it
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                await self._adopt()
                tg.create_task(self.membership.run(halt), name="cluster-heartbeat")
                tg.create_task(self._adoption_loop(halt), name="cluster-adoption")
                tg.create_task(self.timers.run(halt), name="rediscovery-timers")
                lost = tg.create_task(self.membership.lost.wait(), name="membership-lost")
                self._ready.set()
                await asyncio.wait([asyncio.ensure_future(stop.wait()), lost],
                                   return_when=asyncio.FIRST_COMPLETED)
                self._stopping.set()
                lost.cancel()
                clean = await self._park()
                halt.set()
        finally:
            self._tg = None
        await self.membership.leave(clean=clean)

    async def _park(self) -> bool:
        """Let running jobs finish their step or reach a safe point; cancel what overruns the grace.
        Returns whether nothing had to be cancelled (a clean stop: no action in flight)."""
        async with self._adopting:  # no submission or adoption is half-way: every started job is here
            jobs = list(self._running.values())
        self.d.locks.stop_waiting()  # a job waiting for its group parks at once
        if not jobs:
            return True
        if self.membership.lost.is_set():
            grace = 0.0
        else:
            grace = self.d.settings.shutdown_grace
            log.info("stopping: %d job(s) finish their step or reach a safe point", len(jobs))
        _done, pending = await asyncio.wait(jobs, timeout=grace)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending)
        return not pending

    @property
    def ready(self) -> bool:
        """Joined, recovered, and accepting jobs."""
        return self._ready.is_set() and not self._stopping.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    # --- taking over -------------------------------------------------------------------------------

    async def _next_look(self) -> float:
        """Seconds until another member's lease plus the fence grace runs out (its jobs may then be
        taken over), at most a heartbeat."""
        wait = self.cluster.heartbeat
        try:
            for m in await self.store.members():
                if m["incarnation"] == self.membership.token:
                    continue
                until_adoptable = float(m["lease_delta"]) + self.fence_grace
                if until_adoptable > 0:
                    wait = min(wait, until_adoptable + 0.05)
        except StoreError:
            pass
        return wait

    async def _adoption_loop(self, halt: asyncio.Event) -> None:
        while not halt.is_set():
            await sleep_unless(self.d.clock, await self._next_look(), halt, self._look)
            self._look.clear()
            if halt.is_set() or self._stopping.is_set():
                return
            try:
                await self._adopt()
            except StoreError as exc:
                self.metrics.inc("store_errors_total", part="adoption")
                log.warning("taking over jobs waits for the store: %s", exc)

    async def _adopt(self) -> None:
        """Take over the jobs of monitors whose lease (plus the fence grace) ran out, and run again this
        monitor's own jobs whose task ended unfinished (its lease had lapsed while the store was away)."""
        if not self.membership.valid(self.membership.margin) or self._stopping.is_set():
            return  # never take a job without a lease to act under
        async with self._adopting:
            adopted = await self.store.adopt_jobs(self.instance, self.membership.token, self.fence_grace)
            mono = self.d.clock.monotonic()
            taken = {j.id for j in adopted}
            orphans = [j for j in await self.store.active_jobs()
                       if j.owner_token == self.membership.token and j.id not in self._running
                       and j.id not in taken
                       and (j.id in self._recheck or mono - self._ended.get(j.id, -1e9) >= _RESTART_GAP)]
            # Those still ours are in `orphans`; the others are another's now.
            self._recheck = {j for j in self._recheck if j in self._running}
            if self._stopping.is_set():
                # Stopping began while the store was read: start nothing (what was taken stays ours
                # and resumes at the next start, or another monitor takes it once our lease is over).
                return
            # Started under the lock: the shutdown's park (which takes it too) sees every job started.
            for job in adopted:
                if job.id in self._running:  # cannot be: our own task's job has our token
                    continue
                note = f"{iso(self.d.clock.now())}: taken over by {self.instance} (epoch {job.epoch})"
                job.notes.append(note)
                log.warning("job %s: %s", job.id, note)
                self.metrics.inc("failover_jobs_taken_over_total")
                self._start(job, adopted=True)
            for job in orphans:
                job.notes.append(f"{iso(self.d.clock.now())}: run again by {self.instance} after its "
                                 "lease lapsed")
                self._start(job, adopted=True)

    # --- one job ---------------------------------------------------------------------------------

    async def _tell(self, job: Job) -> None:
        """Tell the listeners the job's picture (at every step change, committed or not), unless they
        were told this very picture last."""
        picture = job.public()
        if self._told.get(job.id) == picture:
            return
        if job.state.active:
            self._told[job.id] = picture
        else:
            self._told.pop(job.id, None)
        for listener in self._listeners:
            try:
                await listener(job)
            except Exception:  # a listener never breaks a job
                log.exception("job listener failed")

    async def _save_job(self, job: Job, also: JobWrites | None = None, *,
                        retry_all: bool = False) -> Saved:
        """Commit the job's record (write-ahead), with `also` and a staged timer in the same transaction,
        then tell the listeners. A store that is briefly away is waited for while the lease holds
        (`retry_all`: any store error, for the end that must unlock the group); LostOwnership when
        another monitor took the job over."""
        staged = self._staged.get(job.id)
        if staged is not None:
            also = JobWrites(also.lock if also else None, also.unlock if also else None, staged)
        delay = 0.2
        while True:
            try:
                saved = await self.store.save_job(job, also)
                break
            except StoreUnavailable as exc:
                if not self.membership.valid():
                    raise LeaseLost(f"job {job.id}: store unreachable past the lease: {exc}") from exc
                self.metrics.inc("store_retries_total")
                log.warning("job %s: store unavailable (%s); retrying", job.id, exc)
            except (LostOwnership, LeaseLost):
                raise
            except StoreError as exc:
                if not retry_all:
                    raise
                if not self.membership.valid():
                    raise LeaseLost(f"job {job.id}: store unreachable past the lease: {exc}") from exc
                log.error("job %s: its end (and unlock of %s) not recorded (%s); retrying", job.id,
                          job.group, exc)
            await self.d.clock.sleep(delay)
            delay = min(delay * 2, 2.0 if not retry_all else 30.0)
        if staged is not None:
            del self._staged[job.id]
            if saved.timer is not None and job.rediscovery is not None:
                job.rediscovery.update(state=saved.timer.state, attempts=saved.timer.attempts)
            self.timers.changed()
        await self._tell(job)
        return saved

    async def _save_timer_job(self, job: Job) -> None:
        """The timers' record of a rediscovery's outcome on its job."""
        await self._save_job(job)

    async def _execute(self, job: Job, *, adopted: bool = False) -> None:
        lost = asyncio.Event()
        gate = Gate(self.membership, self.d.clock, job, self.action_timeout, lost)
        flow = FailoverFlow(job, self.d, gate, _Ledger(self, job))
        try:
            # Reads carry the job's token (fencing.observing): a token-aware system learns this epoch
            # at this owner's first read, and refuses what a paused former owner sends after it.
            with observing(Fence(job.id, job.epoch, self.instance, lambda: True)):
                await self._run_job(job, flow, adopted)
        except (LostOwnership, FenceLost) as exc:
            # Another monitor took the job over, or may (our lease ran out): act no more here.
            lost.set()
            if isinstance(exc, LeaseLapsed):
                self._recheck.add(job.id)
            self.d.locks.forget(job.group, job.id)
            self.metrics.inc("failover_jobs_lost_total")
            log.error("job %s: %s; this monitor stops working on it", job.id, exc)
        except Parked as exc:
            log.info("job %s parked at a safe point for shutdown: %s", job.id, exc)
            await self._park_job(job)
        except asyncio.CancelledError:
            # Shutdown overran its grace period: the write-ahead record lets the next owner resume.
            lost.set()
            self.d.locks.forget(job.group, job.id)
            log.warning("job %s parked mid-step at shutdown; it resumes on the next start", job.id)
            raise
        except Exception:  # a bug or a store error: the job stays active and is run again later
            lost.set()
            self.d.locks.forget(job.group, job.id)
            self.metrics.inc("failover_job_errors_total")
            log.exception("job %s: internal error outside its steps; it is run again", job.id)
            self._look.set()
        finally:
            self._told.pop(job.id, None)
            self._staged.pop(job.id, None)

    async def _run_job(self, job: Job, flow: FailoverFlow, adopted: bool) -> None:
        clock = self.d.clock
        failed_step = next((s for s in job.steps if s.state is StepState.FAILED), None)
        if job.error is not None or failed_step is not None:
            # A failure is final: never resumed; only what its end still owes is done.
            await self._end_failed(job, flow, job.error or (failed_step.detail if failed_step else "failed"))
            return
        if adopted and self.d.settings.recovery == "fail_safe":
            await self._fail_safe(job, flow)
            return
        if adopted:
            where = next((s.step for s in job.steps if s.state in (StepState.RUNNING, StepState.PENDING)),
                         "end")
            note = f"{iso(clock.now())}: resumed after a restart at {where}"
            job.notes.append(note)
            log.warning("job %s: %s", job.id, note)
            self.metrics.inc("failover_jobs_resumed_total")
        if job.state is JobState.QUEUED:
            job.state = JobState.RUNNING
        await self._tell(job)  # committed with the first write ahead of an action (the lock)
        for spec in STEP_TABLE:
            if spec.always:
                continue
            step = job.step(spec.name)
            if step.state in (StepState.DONE, StepState.SKIPPED):
                continue
            if self._stopping.is_set() and step.state is not StepState.RUNNING:
                log.info("job %s parked at a safe point for shutdown", job.id)
                await self._park_job(job)
                return
            if step.state is not StepState.RUNNING or step.started is None:
                step.started = clock.now()
            step.state = StepState.RUNNING
            await self._tell(job)  # the step's own write-ahead (if it acts) commits it
            failure = await self._run_step(job, flow, spec)
            if failure is not None:
                await self._fail(job, flow, spec, failure)
                return
        await self._finish(job, flow)

    async def _run_step(self, job: Job, flow: FailoverFlow, spec: StepSpec) -> str | None:
        """Run one step to its end; returns None when it is done, else why it failed. A store that is
        away runs the step again once it is back (every step re-reads the world first)."""
        clock = self.d.clock
        step = job.step(spec.name)
        limit = self.d.settings.step_timeout(spec.name)

        async def note(text: str, *, durable: bool = True) -> None:
            step.detail = text
            if durable:
                await self._save_job(job)
            else:
                await self._tell(job)

        action = getattr(flow, spec.name)
        while True:
            try:
                async with clock.timeout(limit):
                    detail = await action(note)
            except TimeoutError:
                last = step.detail or "nothing recorded"
                return f"{spec.name} did not finish within {limit:g} s (last: {last})"
            except StepFailed as exc:
                return str(exc)
            except AdapterError as exc:  # an adapter error a step did not explain itself
                return f"{spec.name}: {exc}"
            except StoreUnavailable as exc:
                if not self.membership.valid():
                    raise LeaseLost(f"job {job.id}: store unreachable past the lease: {exc}") from exc
                log.warning("job %s: %s: store unavailable (%s); the step runs again", job.id, spec.name, exc)
                await clock.sleep(0.5)
                continue
            except (LostOwnership, FenceLost, Parked, asyncio.CancelledError):
                raise
            except Exception as exc:
                log.exception("job %s: internal error in %s", job.id, spec.name)
                return f"internal error: {type(exc).__name__}: {exc}"
            break
        step.state = StepState.DONE
        step.finished = clock.now()
        step.detail = detail
        await self._tell(job)  # committed with the next write-ahead (or the job's end)
        log.info("job %s: %s: %s", job.id, spec.name, detail)
        return None

    async def _park_job(self, job: Job) -> None:
        """Shutdown at a safe point: what the job did since its last commit, in one commit."""
        try:
            await self._save_job(job)
        except (LostOwnership, LeaseLost, StoreError) as exc:
            log.warning("job %s: parked without recording its last progress (%s); it resumes from its "
                        "last commit", job.id, exc)

    async def _fail(self, job: Job, flow: FailoverFlow, spec: StepSpec | None, failure: str) -> None:
        """A step failed: make the failure durable first (with the compensation still owed), then
        compensate, unlock and end the job."""
        clock = self.d.clock
        current = next((s for s in job.steps if s.state is StepState.RUNNING), None)
        if current is not None:
            current.state = StepState.FAILED
            current.finished = clock.now()
            current.detail = failure
        job.error = failure
        job.context.compensating = spec.name if spec is not None and spec.compensation else None
        if job.context.compensating is not None:
            await self._save_job(job)  # durable first: the failure and the undo still owed
        else:
            await self._tell(job)  # committed with the unlock and the final state, in one transaction
        log.warning("job %s: %s", job.id, failure)
        await self._end_failed(job, flow, failure)

    async def _end_failed(self, job: Job, flow: FailoverFlow, failure: str) -> None:
        """What a failed job's end still owes, in order: its compensation, the unlock, the final state."""
        job.error = job.error or failure
        owed = job.context.compensating
        if owed is not None:
            spec = STEP_SPECS[owed]
            assert spec.compensation is not None
            compensate = getattr(flow, spec.compensation)
            try:
                async with self.d.clock.timeout(self.d.settings.step_timeout(owed)):
                    job.error = await compensate(job.error)
            except (TimeoutError, AdapterError, StepFailed) as exc:
                job.error = f"{job.error}; undo not completed: {exc or type(exc).__name__}"
            job.context.compensating = None
            current = job.step(owed)
            current.detail = job.error
            # Committed with the unlock and the final state: a crash before it runs the undo again
            # (it reads where the profile is first, and each restore is idempotent).
            await self._tell(job)
        await self._finish(job, flow)

    async def _finish(self, job: Job, flow: FailoverFlow) -> None:
        clock = self.d.clock
        for s in job.steps[:-1]:
            if s.state is StepState.PENDING:
                s.state = StepState.SKIPPED
        unlock = job.step("unlock_group")
        lock_ran = job.step("lock_group").state in (StepState.DONE, StepState.FAILED, StepState.RUNNING) \
            or job.context.locked
        unlocking = lock_ran and unlock.state is not StepState.DONE
        if unlocking:
            unlock.state = StepState.RUNNING
            unlock.started = unlock.started or clock.now()
            await self._tell(job)
            unlock.detail = f"domain group {job.group} unlocked"
            unlock.state = StepState.DONE
            unlock.finished = clock.now()
            job.context.locked = False
        elif not lock_ran:
            unlock.state = StepState.SKIPPED
        # One transaction: the end, the unlock and the timer (a group must never stay locked: retried
        # while the lease holds; past it, the monitor taking the job over unlocks it). The end is saved
        # from a copy: a listener holding the job sees it ended only once that is committed.
        end = dataclasses.replace(job, state=JobState.FAILED if job.error else JobState.COMPLETED,
                                  finished=clock.now())
        saved = await self._save_job(end, JobWrites(unlock=job.group) if unlocking else None,
                                     retry_all=True)
        job.state, job.finished = end.state, end.finished
        if unlocking:
            held = self.d.locks.released(job.group, job.id)
            if not (held or saved.unlocked):
                log.info("job %s: domain group %s was not held at its end", job.id, job.group)
        self.metrics.inc("failover_jobs_finished_total", state=job.state.value)
        observe_durations(self.metrics, job)
        log.info("job %s %s%s", job.id, job.state.value, f": {job.error}" if job.error else "")

    async def _fail_safe(self, job: Job, flow: FailoverFlow) -> None:
        """End a job taken over mid-flight without acting further: profile where it is (undoing what an
        interrupted step did, when it has a compensation), group unlocked."""
        clock = self.d.clock
        running = next((s for s in job.steps if s.state is StepState.RUNNING), None)
        where = running.step if running else next(
            (s.step for s in job.steps if s.state is StepState.PENDING), "end")
        job.notes.append(f"{iso(clock.now())}: {_FAIL_SAFE_NOTE} at {where}")
        location = "unknown"
        if job.profile:
            try:
                location = (await self.d.manager.profile(job.profile)).server or "no server"
            except AdapterError as exc:
                location = f"unknown ({exc})"
        msg = f"{_FAIL_SAFE_NOTE} at {where}; profile {job.profile} is on {location}"
        if running is not None:
            running.state = StepState.FAILED
            running.finished = clock.now()
            running.detail = f"interrupted by a restart ({running.detail})"
        spec = STEP_SPECS.get(where)
        self.metrics.inc("failover_jobs_failed_safe_total")
        owes_undo = spec is not None and spec.compensation is not None and running is not None \
            and bool(job.profile and job.spare)
        # Durable first: the failure, and the undo still owed; then the undo, the unlock, the end.
        job.error = msg
        job.context.compensating = where if owes_undo else None
        if owes_undo:
            await self._save_job(job)  # durable first: the failure and the undo still owed
        else:
            await self._tell(job)  # committed with the unlock and the final state
        if owes_undo:
            assert spec is not None and spec.compensation is not None
            undo = getattr(flow, spec.compensation)
            try:
                async with clock.timeout(self.d.settings.step_timeout(where)):
                    job.error = f"{msg}; {await undo('interrupted by a restart')}"
            except (TimeoutError, AdapterError, StepFailed) as exc:
                job.error = f"{msg}; undo not completed: {exc or type(exc).__name__}"
            job.context.compensating = None
            await self._tell(job)  # committed with the unlock and the final state
        await self._finish(job, flow)


def observe_durations(metrics: Metrics, job: Job) -> None:
    """The ended job's phases (detect→fence, fence→move, move→boot: from its creation and its steps'
    finish times, where both ends happened) and its whole duration, in seconds."""
    def at(point: str) -> datetime | None:
        if point == "created":
            return job.created
        step = job.step(point)
        return step.finished if step.state is StepState.DONE else None

    for phase, start, end in PHASES:
        begin, finish = at(start), at(end)
        if begin is not None and finish is not None:
            metrics.observe("failover_phase_duration_seconds", (finish - begin).total_seconds(), phase=phase)
    if job.finished is not None:
        metrics.observe("failover_job_duration_seconds", (job.finished - job.created).total_seconds(),
                        state=job.state.value)
