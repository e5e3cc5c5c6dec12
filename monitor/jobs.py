"""The job runner: numbered durable jobs, one active job per server, recovery after a crash, and the
durable rediscovery timers.

A job is created `queued`, becomes `running` when its task starts, and ends `completed` or `failed`.
Every state change is committed to the store before the action it announces. `unlock_group` runs
whenever `lock_group` ran, also after a failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from monitor.clock import sleep_unless
from monitor.config import ClusterConfig
from monitor.flow import FailoverFlow, FlowDeps, StepFailed
from monitor.metrics import Metrics
from monitor.model import STEPS, Job, JobState, StepState, iso
from monitor.ports import AdapterError, NotFound
from monitor.store import LostOwnership, StoreError, StoreUnavailable, Timer
from monitor.stores import Store

log = logging.getLogger(__name__)

JobListener = Callable[[Job], Awaitable[None]]

# Steps after which a restart may resume the job without repeating a non-idempotent action. Every step
# re-reads the world before acting (see monitor.flow), so each is a safe point.
_FAIL_SAFE_NOTE = "failed safe after a restart"


class LeaseLost(Exception):
    """This monitor's lease ran out while the store was unreachable: stop acting; whoever holds the
    store next (another monitor, or this one once it is back) adopts the job."""


class UnknownServer(Exception):
    def __init__(self, server: str) -> None:
        super().__init__(f"unknown server {server}")
        self.server = server


class ShuttingDown(Exception):
    """The runner is stopping and accepts no new jobs."""


class JobRunner:
    def __init__(self, deps: FlowDeps, metrics: Metrics, *, instance: str = "monitor-1",
                 cluster: ClusterConfig | None = None, discovery_timeout: float = 30.0) -> None:
        self.d = deps
        self.metrics = metrics
        self.instance = instance
        self.cluster = cluster or ClusterConfig()
        # A timer is claimed for the whole discovery: the lease plus the discovery's own time limit.
        self.timer_hold = self.cluster.lease + discovery_timeout + self.cluster.heartbeat
        self._adopting = asyncio.Lock()
        self._listeners: list[JobListener] = []
        self._tg: asyncio.TaskGroup | None = None
        self._stopping = asyncio.Event()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._timer_wakeup = asyncio.Event()
        self._ready = asyncio.Event()
        self._lease_until = 0.0

    @property
    def store(self) -> Store:
        return self.d.store

    def add_listener(self, listener: JobListener) -> None:
        self._listeners.append(listener)

    @property
    def running_jobs(self) -> list[int]:
        return sorted(self._running)

    # --- submission ------------------------------------------------------------------------------

    async def submit(self, server_id: str, trigger: dict[str, Any]) -> Job:
        """Create and start a failover job. UnknownServer, ActiveJobExists or ShuttingDown otherwise."""
        if self._tg is None or self._stopping.is_set():
            raise ShuttingDown("the monitor is not accepting jobs")
        try:
            server = await self.d.manager.server(server_id)
        except NotFound:
            raise UnknownServer(server_id) from None
        async with self._adopting:  # a job created here is started here, never adopted as an orphan
            job = await self.store.create_job(server.id, server.domain_group, trigger,
                                              self.d.clock.now(), owner=self.instance)
            self.metrics.inc("failover_jobs_created_total")
            log.info("job %s: failover of %s (%s) queued", job.id, server.id, trigger.get("kind"))
            await self._emit(job)  # "queued" goes out before the job's first step
            self._start(job)
        return job

    def _start(self, job: Job, *, resumed: bool = False) -> None:
        assert self._tg is not None
        task = self._tg.create_task(self._execute(job, resumed=resumed), name=f"job-{job.id}")
        self._running[job.id] = task
        job_id = job.id

        def forget(_task: asyncio.Task[None]) -> None:
            self._running.pop(job_id, None)

        task.add_done_callback(forget)

    # --- the long-lived part -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Join the cluster, adopt jobs left by a crash (ours or a dead monitor's), run jobs and timers
        until `stop`, then park at safe points and leave."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            await self._heartbeat()
            await self._recover()
            timers = tg.create_task(self._timer_loop(), name="rediscovery-timers")
            members = tg.create_task(self._membership_loop(), name="cluster-membership")
            self._ready.set()
            await stop.wait()
            self._stopping.set()
            self._timer_wakeup.set()
            jobs = list(self._running.values())
            if jobs:
                log.info("stopping: %d job(s) finish their step or reach a safe point", len(jobs))
                _done, pending = await asyncio.wait(jobs, timeout=self.d.settings.shutdown_grace)
                for t in pending:
                    t.cancel()
            timers.cancel()
            members.cancel()
        self._tg = None
        try:
            await self.store.leave(self.instance)  # the others may adopt what is parked at once
        except Exception as exc:
            log.warning("could not leave the cluster cleanly: %s", exc)

    async def _heartbeat(self) -> None:
        now = self.d.clock.time()
        await self.store.heartbeat(self.instance, self.cluster.address, now, self.cluster.lease)
        self._lease_until = now + self.cluster.lease

    def lease_valid(self, margin: float = 0.0) -> bool:
        """Whether this monitor's lease still holds `margin` seconds from now."""
        return self.d.clock.time() + margin < self._lease_until

    async def _next_look(self) -> float:
        """Seconds until the next heartbeat, or until another monitor's lease runs out if sooner, so
        a dead monitor's jobs are taken over when its lease ends, not up to a heartbeat later."""
        now = self.d.clock.time()
        wait = self.cluster.heartbeat
        try:
            for m in await self.store.members():
                if m["instance"] != self.instance and m["lease_until"] > now:
                    wait = min(wait, m["lease_until"] - now + 0.05)
        except StoreError:
            pass
        return wait

    async def _membership_loop(self) -> None:
        """Heartbeats, and adoption of the jobs of monitors whose lease ran out."""
        while not self._stopping.is_set():
            await self.d.clock.sleep(await self._next_look())
            try:
                await self._heartbeat()
                await self._recover(adopting=True)
            except Exception as exc:  # the store restarting: keep trying, the lease covers a while
                self.metrics.inc("cluster_heartbeat_errors_total")
                log.error("heartbeat failed (lease until %s): %s", self._lease_until, exc)

    async def wait_ready(self) -> None:
        await self._ready.wait()

    # --- one job ---------------------------------------------------------------------------------

    async def _emit(self, job: Job) -> None:
        for listener in self._listeners:
            try:
                await listener(job)
            except Exception:  # a listener never breaks a job
                log.exception("job listener failed")

    async def _save(self, job: Job) -> None:
        """Save (write-ahead). A store that is briefly away is waited for while the lease holds."""
        delay = 0.2
        while True:
            try:
                await self.store.save_job(job)
                break
            except StoreUnavailable as exc:
                if not self.lease_valid():
                    raise LeaseLost(f"store unreachable past the lease: {exc}") from exc
                self.metrics.inc("store_retries_total")
                log.warning("job %s: store unavailable (%s); retrying", job.id, exc)
                await self.d.clock.sleep(delay)
                delay = min(delay * 2, 2.0)
        await self._emit(job)

    async def _ensure_lease(self) -> None:
        """Before an action: the lease must outlive a heartbeat; renew it, or stop if it cannot be."""
        delay = 0.2
        while not self.lease_valid(margin=self.cluster.heartbeat):
            try:
                await self._heartbeat()
            except StoreError as exc:
                if not self.lease_valid():
                    raise LeaseLost(f"lease ran out, store unreachable: {exc}") from exc
                await self.d.clock.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _execute(self, job: Job, *, resumed: bool = False) -> None:
        flow = FailoverFlow(job, self.d)
        clock = self.d.clock
        if job.state is JobState.QUEUED:
            job.state = JobState.RUNNING
            await self._save(job)
        failed: str | None = None
        parked = False
        try:
            for name in STEPS[:-1]:
                step = job.step(name)
                if step.state in (StepState.DONE, StepState.SKIPPED):
                    continue
                if self._stopping.is_set() and step.state is not StepState.RUNNING:
                    parked = True
                    break
                await self._ensure_lease()  # never start an action another monitor may take over
                if step.state is not StepState.RUNNING or step.started is None:
                    step.started = clock.now()
                step.state = StepState.RUNNING
                await self._save(job)

                async def note(text: str, _step: Any = step) -> None:
                    _step.detail = text
                    await self._save(job)

                action = getattr(flow, name)
                try:
                    async with clock.timeout(self.d.settings.step_timeout(name)):
                        detail = await action(note)
                except TimeoutError:
                    raise StepFailed(
                        f"{name} did not finish within {self.d.settings.step_timeout(name):g} s"
                        f" (last: {step.detail or 'nothing recorded'})"
                    ) from None
                except AdapterError as exc:  # an adapter error a step did not explain itself
                    raise StepFailed(f"{name}: {exc}") from exc
                step.state = StepState.DONE
                step.finished = clock.now()
                step.detail = detail
                await self._save(job)
                log.info("job %s: %s: %s", job.id, name, detail)
                if name == "schedule_rediscovery":
                    self.timers_changed()
        except StepFailed as exc:
            failed = str(exc)
            current = next((s for s in job.steps if s.state is StepState.RUNNING), None)
            if current is not None:
                current.state = StepState.FAILED
                current.finished = clock.now()
                current.detail = failed
            log.warning("job %s: %s", job.id, failed)
        except (LostOwnership, LeaseLost) as exc:
            # Another monitor adopted the job, or may (our lease ran out): act no more here.
            self.d.locks.forget(job.group, job.id)
            self.metrics.inc("failover_jobs_lost_total")
            log.error("job %s: %s; this monitor stops working on it", job.id, exc)
            return
        except asyncio.CancelledError:
            # Shutdown overran its grace period: the write-ahead record lets the next start resume.
            log.warning("job %s parked mid-step at shutdown; it resumes on the next start", job.id)
            raise
        except Exception as exc:
            failed = f"internal error: {type(exc).__name__}: {exc}"
            log.exception("job %s: internal error", job.id)
            current = next((s for s in job.steps if s.state is StepState.RUNNING), None)
            if current is not None:
                current.state = StepState.FAILED
                current.finished = clock.now()
                current.detail = failed
        if parked:
            log.info("job %s parked at a safe point for shutdown", job.id)
            return
        try:
            await self._finish(job, flow, failed)
        except (LostOwnership, LeaseLost) as exc:
            self.d.locks.forget(job.group, job.id)
            log.error("job %s: %s; this monitor stops working on it", job.id, exc)

    async def _finish(self, job: Job, flow: FailoverFlow, failed: str | None) -> None:
        clock = self.d.clock
        for s in job.steps[:-1]:
            if s.state is StepState.PENDING:
                s.state = StepState.SKIPPED
        unlock = job.step("unlock_group")
        lock_ran = job.step("lock_group").state in (StepState.DONE, StepState.FAILED) or job.context.get(
            "locked"
        )
        if lock_ran and unlock.state is not StepState.DONE:
            unlock.state = StepState.RUNNING
            unlock.started = clock.now()
            await self._save(job)
            unlock.detail = await self._unlock(flow)
            unlock.state = StepState.DONE
            unlock.finished = clock.now()
        elif not lock_ran:
            unlock.state = StepState.SKIPPED
        job.error = failed
        job.state = JobState.FAILED if failed else JobState.COMPLETED
        job.finished = clock.now()
        await self._save(job)
        self.metrics.inc(f"failover_jobs_{job.state.value}_total")
        log.info("job %s %s%s", job.id, job.state.value, f": {failed}" if failed else "")

    async def _unlock(self, flow: FailoverFlow) -> str:
        """Always unlock; retried until it is recorded, since a group must never stay locked."""
        delay = 0.5
        while True:
            try:
                return await flow.unlock_group(lambda _t: asyncio.sleep(0))
            except Exception as exc:
                log.error("job %s: unlock of %s failed (%s); retrying", flow.job.id, flow.job.group, exc)
                await self.d.clock.sleep(delay)
                delay = min(delay * 2, 30.0)

    # --- recovery ----------------------------------------------------------------------------------

    async def _recover(self, *, adopting: bool = False) -> None:
        """Jobs left active by a crash (this monitor's, or a monitor whose lease ran out) resume from
        their last safe point, or fail safe (configured)."""
        async with self._adopting:
            adopted = [j for j in await self.store.adopt_jobs(self.instance, self.d.clock.time())
                       if j.id not in self._running]
        if not adopting:
            active_ids = {j.id for j in await self.store.active_jobs()}
            for group, job_id in (await self.store.group_locks()).items():
                if job_id not in active_ids:
                    await self.store.unlock_group(group, job_id)
                    log.warning("released domain group %s, left locked by finished job %s", group, job_id)
        held = await self.store.group_locks()
        for job in adopted:
            if adopting:
                job.notes.append(f"{iso(self.d.clock.now())}: taken over by {self.instance}")
                self.metrics.inc("failover_jobs_taken_over_total")
            running = next((s.step for s in job.steps if s.state is StepState.RUNNING), None)
            where = running or next((s.step for s in job.steps if s.state is StepState.PENDING), "end")
            if job.group in held and held[job.group] == job.id:
                await self.d.locks.acquire(job.group, job.id)  # it holds the group: keep holding it
            if self._stopping.is_set():
                break
            if self.d.settings.recovery == "fail_safe":
                await self._fail_safe(job, where)
                continue
            note = f"{iso(self.d.clock.now())}: resumed after a restart at {where}"
            job.notes.append(note)
            log.warning("job %s: %s", job.id, note)
            self.metrics.inc("failover_jobs_resumed_total")
            await self._save(job)
            self._start(job, resumed=True)

    async def _fail_safe(self, job: Job, where: str) -> None:
        """End a job left mid-flight without acting further: profile where it is, group unlocked."""
        flow = FailoverFlow(job, self.d)
        job.notes.append(f"{iso(self.d.clock.now())}: {_FAIL_SAFE_NOTE} at {where}")
        location = "unknown"
        if job.profile:
            try:
                location = (await self.d.manager.profile(job.profile)).server or "no server"
            except AdapterError as exc:
                location = f"unknown ({exc})"
        msg = f"{_FAIL_SAFE_NOTE} at {where}; profile {job.profile} is on {location}"
        if where == "move_profile" and job.profile and job.spare:
            msg += "; " + await flow.undo_interrupted_move()
        for s in job.steps:
            if s.state is StepState.RUNNING:
                s.state = StepState.FAILED
                s.finished = self.d.clock.now()
                s.detail = f"interrupted by a restart ({s.detail})"
        self.metrics.inc("failover_jobs_failed_safe_total")
        await self._finish(job, flow, msg)

    # --- durable timers -----------------------------------------------------------------------------

    def timers_changed(self) -> None:
        self._timer_wakeup.set()

    async def _timer_loop(self) -> None:
        """Run due rediscovery timers; sleep until the next one is due or a new one is scheduled."""
        while not self._stopping.is_set():
            self._timer_wakeup.clear()
            now = self.d.clock.time()
            try:
                due = await self.store.claim_due_timers(self.instance, now, self.timer_hold)
            except StoreError as exc:  # the store is away: timers wait, they are durable
                self.metrics.inc("store_errors_total", part="timers")
                log.warning("timers wait for the store: %s", exc)
                await self.d.clock.sleep(self.cluster.heartbeat)
                continue
            for timer in due:
                # The claim (timer_hold) outlasts the discovery adapter's own time limit, so no other
                # monitor fires this timer meanwhile.
                try:
                    await self._fire(timer)
                except StoreError as exc:  # its claim runs out and it fires again
                    self.metrics.inc("store_errors_total", part="timers")
                    log.warning("rediscovery timer %s could not be recorded: %s", timer.id, exc)
            if due:
                continue  # firing may have rescheduled a retry: read the timers again
            # Another monitor may hold a due timer (or add one): look again within a heartbeat.
            upcoming = [t.due for t in await self.store.scheduled_timers() if t.due > now]
            upcoming.append(now + self.cluster.heartbeat)
            wait = max(0.0, min(upcoming) - self.d.clock.time())  # time passed while reading
            await sleep_unless(self.d.clock, wait, self._timer_wakeup)

    async def _fire(self, timer: Timer) -> None:
        cfg = self.d.settings.rediscovery
        attempts = timer.attempts + 1
        try:
            result = await self.d.discovery.discover(timer.server)
            found, detail = result.found, result.detail
            if result.found and result.host:
                detail = f"{timer.server} discovered as {result.host.name} ({result.host.ip})"
        except AdapterError as exc:
            found, detail = False, f"discovery of {timer.server} failed: {exc}"
        if found:
            state, due = "done", None
        elif attempts <= cfg.retries:
            # Back off: a slow boot (large memory) takes longer than the first wait.
            state, due = "scheduled", self.d.clock.time() + cfg.retry_interval * 2 ** (attempts - 1)
            detail += f"; retry {attempts}/{cfg.retries} at {iso(datetime.fromtimestamp(due, UTC))}"
        else:
            state, due = "failed", None
            detail += "; no retries left: rerun discovery once the OS has booted"
        if not await self.store.update_timer(timer.id, state=state, due=due, attempts=attempts,
                                             detail=detail, claimed_by=self.instance):
            log.warning("rediscovery timer %s was claimed by another monitor meanwhile", timer.id)
            return
        self.metrics.inc(f"rediscovery_{'found' if found else 'not_found'}_total")
        job = await self.store.get_job(timer.job)
        if job is not None:
            job.rediscovery = {
                "server": timer.server,
                "due": iso(datetime.fromtimestamp(due if due is not None else timer.due, UTC)),
                "state": state,
                "attempts": attempts,
                "detail": detail,
            }
            await self._save(job)
        log.info("job %s: rediscovery: %s", timer.job, detail)
