"""The failover flow of the VCEM white paper, as named steps (monitor.core.model.STEP_TABLE).

Each step records "about to …" in the store before it acts (write-ahead: `note(text)` commits the job
record, with everything the job learnt since its last commit, before the action it names), sends every
outside action through the job's gate (`Actor.act`: the owner's lease and fencing token), and ends
`done` with a detail or raises `StepFailed`. What only reports progress (`note(text, durable=False)`,
an outcome the next write-ahead carries) is told to the job's listeners without a commit of its own.
The job's own store writes (the group lock, the rediscovery timer) go through the `Ledger` when there
is one (the runner's: written in the job record's own transaction). Every step is safe to run again
after a crash or a takeover: it reads the world first and only does what is still to be done.

Compensation (the table's `compensation`, run by the runner on any failure of the step):
- power_off_source: none: fencing is final (a failed server stays off).
- move_profile: `undo_move` undoes only what this run did (the spare designation and the source's host
  record are restored) when the profile is known to be still on the source; once the profile is on the
  spare it stays there; when its place is unknown nothing is undone.
- power_on_spare: none: the profile stays on the spare, which an operator can power on once the source
  reads Off.

A manager whose move is an asynchronous task (`ports.TaskedMoves`: OneView, OME) gets the move's request
id (`MoveRecord.intent`) written ahead and its task (`MoveRecord.task`) written as soon as the request
returns it; the step then follows the task on the injectable clock. A new owner follows the recorded
task (or the one `find_move` names) and never sends the move while the manager holds one.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from monitor.core.clock import Clock
from monitor.core.config import FailoverConfig
from monitor.core.errors import (
    AdapterError,
    AdapterUnavailable,
    AuthenticationFailed,
    IdentityMismatch,
    NotFound,
    OperationRejected,
)
from monitor.core.fence_levels import BmcLevel, FenceLevel, FenceTopology, reads_off
from monitor.core.model import (
    FlowContext,
    HostRecord,
    Job,
    PowerOffRecord,
    PowerState,
    Server,
    identify_product,
    iso,
)
from monitor.core.ports import (
    DiscoveryService,
    PowerControl,
    ProfileManager,
    TaskedMoves,
    TaskState,
)
from monitor.jobs.locks import GroupLocks
from monitor.jobs.spares import needs_power_reading, select_spare
from monitor.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")

FORCE_OFF = {"bmc": "press and hold, ForceOff", "manager": "the manager's forced power-off",
             "oa": "poweroff server BAY force", "ipmi": "chassis power off"}
"""What each fence level sends, for the write-ahead note."""

UNDELIVERED = (AdapterUnavailable, AuthenticationFailed, IdentityMismatch, NotFound)
"""A forced power-off that failed with one of these did not reach the server: no point waiting for Off."""


class Actor(Protocol):
    """Runs one outside action of the job under its owner's lease and fencing token (jobs.gate.Gate)."""

    async def act(self, what: str, op: Callable[[], Awaitable[T]], timeout: float | None = None) -> T: ...


class StepFailed(Exception):
    """The step ended the job; the message says why, for the operator."""


@dataclass(frozen=True, slots=True)
class FlowDeps:
    store: Store
    manager: ProfileManager
    power: PowerControl
    discovery: DiscoveryService
    locks: GroupLocks
    clock: Clock
    settings: FailoverConfig
    enclosure_faults: Callable[[], set[str]] | None = None
    """The enclosures that report an enclosure-wide fault now (the rules' state): no spare is taken
    from them. None: no such source (a spare is then chosen on power and health alone)."""
    fence: FenceTopology | None = None
    """The fence levels tried in order to power the source off (None: the BMC through `power` alone)."""


class Note(Protocol):
    """Records the step's current detail. Durable (the default): committed to the store, with the whole
    job record, before the step acts (write-ahead). `durable=False`: progress or an outcome that the
    next durable note (or the step's end) carries; only told to the job's listeners now."""

    async def __call__(self, text: str, *, durable: bool = True) -> None: ...


class Ledger(Protocol):
    """The job's own store writes, in its record's transaction (the runner's `_Ledger`)."""

    async def lock(self, group: str) -> int | None:
        """Commit the job record and take `group` in one transaction: None when the job holds it now,
        else the job holding it or going first (the record is committed either way)."""
        ...

    def timer(self, kind: str, server: str, due: float) -> None:
        """Schedule the job's timer with its next commit (the record naming it, in one transaction)."""
        ...


def _err(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    endpoint = getattr(exc, "endpoint", None)
    return f"{text} ({endpoint})" if endpoint and endpoint not in text else text


class FailoverFlow:
    """The steps of one job. `job.context` carries what later steps (and a restart) need."""

    def __init__(self, job: Job, deps: FlowDeps, actor: Actor, ledger: Ledger | None = None) -> None:
        self.job = job
        self.d = deps
        self.actor = actor
        self.ledger = ledger
        """None: the lock and the timer are written on their own (the store's lock_group, add_timer)."""

    @property
    def ctx(self) -> FlowContext:
        return self.job.context

    async def _source(self) -> Server:
        try:
            return await self.d.manager.server(self.job.server)
        except AdapterError as exc:
            raise StepFailed(f"cannot read source {self.job.server} from the manager: {_err(exc)}") from exc

    # --- check_domain ------------------------------------------------------------------------

    async def check_domain(self, note: Note) -> str:
        source = await self._source()
        try:
            domain = await self.d.manager.domain(source.domain)
        except AdapterError as exc:
            raise StepFailed(f"cannot read domain {source.domain}: {_err(exc)}; nothing touched") from exc
        if not domain.normal:
            raise StepFailed(f"domain {domain.id} is {domain.status}: nothing touched")
        if self.job.profile is None:
            if not source.profile:
                raise StepFailed(f"{source.id} has no profile assigned: nothing to fail over")
            self.job.profile = source.profile
        self.ctx.domain = domain.id
        return f"domain {domain.id}: ok; source {source.id} carries profile {self.job.profile}"

    # --- lock_group --------------------------------------------------------------------------

    async def lock_group(self, note: Note) -> str:
        group = self.job.group

        async def waiting(other: int) -> None:
            await note(f"waiting for domain group {group} (job {other} goes first)")

        ledger = self.ledger
        take = (lambda: ledger.lock(group)) if ledger is not None else None
        await self.d.locks.acquire(group, self.job.id, waiting, take)
        self.ctx.locked = True
        # The domain may have changed while this job waited its turn: check it again under the lock.
        try:
            domain = await self.d.manager.domain(self.ctx.domain or (await self._source()).domain)
        except AdapterError as exc:
            raise StepFailed(f"cannot read domain after locking: {_err(exc)}; nothing touched") from exc
        if not domain.normal:
            raise StepFailed(f"domain {domain.id} became {domain.status} while waiting: nothing touched")
        return f"domain group {group} locked"

    # --- check_product -----------------------------------------------------------------------

    async def check_product(self, note: Note) -> str:
        source = await self._source()
        info = identify_product(source.product)
        if info is None:
            raise StepFailed(f"product {source.product!r} of {source.id} is not identified: job exits")
        span = info.span or source.span
        self.ctx.family = info.family
        self.ctx.model = info.model
        self.ctx.span = span
        if info.family == "integrity":
            how = f"Integrity: the spare must span the same {span} bay(s); power through the monarch BMC"
        elif info.family == "poweredge":
            how = f"Dell PowerEdge modular: the spare must span the same {span} slot(s)"
        else:
            how = "ProLiant"
        return f"{source.product}: {how}; model {info.model} (generation ignored)"

    # --- power_off_source --------------------------------------------------------------------

    def _levels(self, server: Server) -> list[FenceLevel]:
        """The fence levels of the server, in order (without a topology: the BMC alone)."""
        if self.d.fence is None:
            return [BmcLevel(self.d.power)]
        return self.d.fence.order(server)

    def _timing(self, level: FenceLevel) -> tuple[int, float]:
        s = self.d.settings
        if self.d.fence is None:
            return s.power_off_attempts, s.power_off_timeout
        return self.d.fence.timing(level.name, s.power_off_attempts, s.power_off_timeout)

    async def _poll_power(self, server: Server, want: PowerState, timeout: float,
                          level: FenceLevel | None = None) -> tuple[bool, str]:
        """Poll the BMC (or `level`) until it reads `want` or `timeout` passes. Returns (confirmed, last
        reading)."""
        read = level.power_state if level is not None else self.d.power.power_state
        deadline = self.d.clock.monotonic() + timeout
        last = "not read"
        while True:
            try:
                state = await read(server)
                last = state.value
                if state is want:
                    return True, last
            except AdapterError as exc:
                last = f"error: {_err(exc)}"
            remaining = deadline - self.d.clock.monotonic()
            if remaining <= 0:
                return False, last
            await self.d.clock.sleep(min(self.d.settings.poll_interval, remaining))

    async def power_off_source(self, note: Note) -> str:
        source = await self._source()
        levels = self._levels(source)
        started = self.d.clock.monotonic()
        first = levels[0]
        try:
            before = (await first.power_state(source)).value
            first_read = before
        except AdapterError as exc:
            before = f"unknown ({_err(exc)})"
            first_read = f"unreadable: {_err(exc)}"
        confirmation = await self._confirm(source)
        record = self.ctx.power_off or PowerOffRecord(before=before)
        self.ctx.power_off = record
        if before == PowerState.OFF.value:
            record.confirmed = True
            record.levels.append(f"{first.name}: ok after 0.0 s (reads Off)")
            return (f"{confirmation}{source.id} already Off (counts as confirmed, read by {first.name}); "
                    "no power action sent")
        done = len(record.levels)  # levels that ended before a restart are not tried again
        for level in levels[done:]:
            known = first_read if level is first else None  # already read just above
            confirmed, result = await self._fence_through(level, source, record, note, known)
            record.levels.append(result)
            if confirmed:
                took = self.d.clock.monotonic() - started
                record.confirmed = True
                return (f"{confirmation}{source.id} confirmed Off by {level.name} after {took:.1f} s "
                        f"(was {before}); fence levels: {'; '.join(record.levels)}")
            await note(f"{source.id} not confirmed Off by {level.name}: {result}", durable=False)
        raise StepFailed(
            f"power-off of {source.id} not confirmed by any fence level ({'; '.join(record.levels)}); "
            "the profile was not moved"
        )

    async def _fence_through(self, level: FenceLevel, source: Server, record: PowerOffRecord,
                             note: Note, known: str | None = None) -> tuple[bool, str]:
        """One fence level: a reading (Off already counts; `known`: read just before, not Off), then up to
        its attempts of a forced power-off through the gate, each followed by polling for Off. Returns
        (confirmed, the level's result: ok or failed, why, how long)."""
        attempts, timeout = self._timing(level)
        started = self.d.clock.monotonic()

        def result(ok: bool, why: str) -> str:
            took = self.d.clock.monotonic() - started
            return f"{level.name}: {'ok' if ok else 'failed'} after {took:.1f} s ({why})"

        if known is not None:
            was = known
        else:
            try:
                state = await level.power_state(source)
                if state is PowerState.OFF:
                    return True, result(True, "reads Off")
                was = state.value
            except AdapterError as exc:
                was = f"unreadable: {_err(exc)}"
        last = was
        for n in range(1, attempts + 1):
            record.attempt += 1
            sends = FORCE_OFF.get(level.name, "forced off")
            await note(f"about to power off {source.id} through {level.name} ({sends}; attempt {n} of "
                       f"{attempts}, was {was})")
            failure, undelivered = "", False
            try:
                await self.actor.act(f"ForceOff {source.id} via {level.name}",
                                     lambda: level.force_off(source))
            except AdapterError as exc:
                failure = f"ForceOff failed: {_err(exc)}"
                # Refused or unreachable: the command did not get through, so there is nothing to wait
                # for; one reading, then the next attempt.
                undelivered = isinstance(exc, UNDELIVERED)
                log.warning("job %s: %s via %s: %s", self.job.id, source.id, level.name, failure)
            confirmed, reading = await self._poll_power(source, PowerState.OFF, 0 if undelivered else timeout,
                                                        level)
            if confirmed:
                return True, result(True, f"confirmed Off, attempt {n}")
            last = f"{failure}; last read {reading}" if failure else f"last read {reading}"
        return False, result(False, f"{attempts} attempt(s) of {timeout:g} s; {last}")

    async def _confirm(self, source: Server) -> str:
        """Rule-triggered jobs: re-read the source's health from its BMC before fencing and record it.
        When the rule requires confirmation, a BMC that reads the server healthy ends the job here."""
        trigger = self.job.trigger
        if trigger.get("kind") != "rule":
            return ""
        if self.ctx.health_check is not None:  # already read before a restart
            return self.ctx.health_check
        try:
            reading = await self.d.power.health(source)
            said = (f"BMC health {reading.health.value}, rollup {reading.health_rollup.value}, "
                    f"power {reading.power.value}")
            healthy = reading.health.value == "OK" and reading.health_rollup.value in ("OK", "Unknown")
        except AdapterError as exc:
            said, healthy = f"BMC health unreadable ({_err(exc)})", False
        self.ctx.health_check = f"before fencing: {said}; "
        if trigger.get("confirm") and healthy:
            raise StepFailed(f"rule {trigger.get('rule')} requires confirmation and {source.id}'s {said}: "
                             "not fenced, nothing touched")
        return self.ctx.health_check

    # --- select_spare --------------------------------------------------------------------------

    async def _read_power(self, servers: list[Server]) -> dict[str, PowerState | str]:
        async def read(server: Server) -> tuple[str, PowerState | str]:
            try:
                return server.id, await self.d.power.power_state(server)
            except AdapterError as exc:
                return server.id, _err(exc)

        results = await asyncio.gather(*(read(s) for s in servers))
        return dict(results)

    async def select_spare(self, note: Note) -> str:
        try:
            members = await self.d.manager.group_servers(self.job.group)
        except AdapterError as exc:
            raise StepFailed(f"cannot read domain group {self.job.group}: {_err(exc)}") from exc
        source = next((s for s in members if s.id == self.job.server), None) or await self._source()
        info = identify_product(source.product)
        if info is None:
            raise StepFailed(f"product {source.product!r} not identified")
        span = int(self.ctx.span or info.span or source.span)
        group = [s for s in members if s.id != source.id]
        target = self.job.trigger.get("target")
        if target:  # a failback names its target: verify it qualifies instead of choosing
            group = [replace(s, spare=True) if self.job.trigger.get("allow_non_spare") else s
                     for s in group if s.id == target]
            if not group:
                raise StepFailed(f"target {target} is not in domain group {source.domain_group}")
        worth_reading = [s for s in group if needs_power_reading(source, s)]
        power = await self._read_power(worth_reading)
        faulted = self.d.enclosure_faults() if self.d.enclosure_faults is not None else set()
        choice = select_spare(source, info, span, group, power, faulted_enclosures=faulted)
        if choice.spare is None and target:
            why = "; ".join(r.reason for r in choice.rejected) or "not a candidate"
            raise StepFailed(f"target {target} does not qualify: {why}")
        if choice.spare is None:
            raise StepFailed(
                f"no qualified spare in domain group {source.domain_group}: {choice.explain()}"
            )
        self.job.spare = choice.spare.id
        self.ctx.spare = choice.spare.id
        passed = f"; passed over: {choice.explain()}" if choice.rejected else ""
        return f"{choice.spare.id} ({choice.spare.product}, Off){passed}"

    # --- move_profile --------------------------------------------------------------------------

    async def _where(self, profile: str) -> str | None:
        """The server the profile is on now (None: on no server); StepFailed when it cannot be read."""
        try:
            return (await self.d.manager.profile(profile)).server
        except AdapterError as exc:
            raise StepFailed(f"cannot read profile {profile}: {_err(exc)}") from exc

    async def _source_reads_off(self) -> tuple[bool, str]:
        """Read the source's power right now through every fence level: (Off confirmed, what each read).
        Off when at least one level answers and every level that answers reads Off; an unreadable level
        is not Off (monitor.fence_levels.reads_off)."""
        source = await self._source()
        check = await reads_off(self._levels(source), source)
        return check.off, check.text()

    async def move_profile(self, note: Note) -> str:
        profile = self.job.profile
        spare_id = self.job.spare
        source_id = self.job.server
        if profile is None or spare_id is None:
            raise StepFailed("internal: move_profile without a profile or a spare")
        m = self.ctx.move
        tasked = self.d.manager if isinstance(self.d.manager, TaskedMoves) else None
        if tasked is not None and m.moving and not m.moved:
            # A move request was announced before a restart or a takeover: follow its task; the move is
            # sent again only when the manager holds none (the request never took effect).
            await self._resume_move_task(tasked, note, profile, spare_id)
        where = await self._where(profile)
        if where == spare_id:
            m.moved = True  # a restart after the move itself: finish the bookkeeping below
        elif where != source_id:
            raise StepFailed(f"profile {profile} is on {where or 'no server'}, not on {source_id}: "
                             "the inventory changed under this job; nothing moved")
        if not m.moved:
            if not m.spare_cleared:
                m.spare_clearing = True
                await note(f"about to remove the spare designation from {spare_id}")
                await self.actor.act(f"clear the spare flag of {spare_id}",
                                     lambda: self.d.manager.set_spare(spare_id, False))
                m.spare_cleared = True
            if not m.host_removed:
                if not m.host_removing:
                    # Written ahead: what the record was, so that an undo can put it back even when a
                    # crash follows its removal.
                    record = (await self._source()).host
                    m.host_before = record.as_dict() if record else None
                    m.host_removing = True
                    await note(f"about to remove {source_id}'s host record from the management server")
                removed = await self.actor.act(f"remove the host record of {source_id}",
                                               lambda: self.d.discovery.remove_host(source_id))
                if removed is not None:
                    m.host_before = removed.as_dict()
                m.host_removed = True
            # The invariant, checked again right before the profile leaves: the source must read Off.
            off, reading = await self._source_reads_off()
            if not off:
                raise StepFailed(f"{source_id} no longer reads Off ({reading}): profile not moved")
            m.moving = True
            if tasked is not None:
                await self._start_move_task(tasked, note, profile, source_id, spare_id)
            else:
                await note(f"about to move profile {profile} from {source_id} to {spare_id}")
                await self.actor.act(f"move profile {profile} to {spare_id}",
                                     lambda: self.d.manager.move_profile(profile, source_id, spare_id))
                m.moved = True
                await note(f"profile {profile} moved to {spare_id}", durable=False)
        if m.spare_clearing and not m.spare_cleared:
            await self._retry(f"clear the spare flag of {spare_id}",
                              lambda: self.d.manager.set_spare(spare_id, False))
            m.spare_cleared = True
        host = m.host_before
        host_text = (f"host record {host['name']} ({host['ip']}) removed from the management server"
                     if host else "the management server had no host record for the source")
        return (f"profile {profile} moved {source_id} -> {spare_id}; {host_text}; "
                f"spare designation removed from {spare_id}")

    # A manager whose move is a task (ports.TaskedMoves): the request's intent is written ahead, the
    # task's reference as soon as the request returns it; then the task is followed (reads only) until
    # it ends or the step's time limit passes. A new owner follows the recorded task, or the one the
    # manager says the announced request started; it sends the move again only when there is none.

    async def _start_move_task(self, tasked: TaskedMoves, note: Note, profile: str, source_id: str,
                               spare_id: str) -> None:
        m = self.ctx.move
        intent = str(uuid.uuid1())  # time-based: a manager can tell this request from older ones
        m.intent, m.task = intent, None
        await note(f"about to move profile {profile} from {source_id} to {spare_id} (request {intent})")
        try:
            ref = await self.actor.act(
                f"move profile {profile} to {spare_id}",
                lambda: tasked.start_move(profile, source_id, spare_id, intent=intent))
        except OperationRejected as exc:
            if exc.status is not None and exc.status < 500:  # the manager answered no: nothing started
                raise StepFailed(f"the manager refused the move of profile {profile} to {spare_id}: "
                                 f"{_err(exc)}") from exc
            ref = await self._find_after_error(tasked, profile, spare_id, intent, exc)
        except AdapterError as exc:  # no clear answer (a timeout, a 5xx): the request may have started
            ref = await self._find_after_error(tasked, profile, spare_id, intent, exc)
        m.task = ref
        await note(f"move of profile {profile} to {spare_id} started: task {ref}")
        await self._follow_move_task(tasked, note, profile, spare_id)

    async def _find_after_error(self, tasked: TaskedMoves, profile: str, spare_id: str, intent: str,
                                error: AdapterError) -> str:
        try:
            found = await tasked.find_move(profile, spare_id, intent=intent)
        except AdapterError as exc:
            raise StepFailed(f"move of profile {profile} to {spare_id}: {_err(error)}; whether the manager "
                             f"started it cannot be read ({_err(exc)})") from exc
        if found is None:
            raise StepFailed(f"move of profile {profile} to {spare_id} not started: {_err(error)}") from error
        log.warning("job %s: the move request answered %s, yet the manager started task %s", self.job.id,
                    _err(error), found)
        return found

    async def _resume_move_task(self, tasked: TaskedMoves, note: Note, profile: str,
                                spare_id: str) -> None:
        m = self.ctx.move
        if m.task is None:
            try:
                found = await tasked.find_move(profile, spare_id, intent=m.intent or "")
            except AdapterError as exc:
                raise StepFailed(f"cannot ask the manager for the task of the move of profile {profile} "
                                 f"announced before a restart: {_err(exc)}; not sent again") from exc
            if found is None:  # the announced request never took effect: it may be sent (again)
                m.moving, m.intent = False, None
                return
            m.task = found
            await note(f"move of profile {profile} to {spare_id}, sent before a restart: task {found}")
        await self._follow_move_task(tasked, note, profile, spare_id)

    async def _follow_move_task(self, tasked: TaskedMoves, note: Note, profile: str,
                                spare_id: str) -> None:
        """Read the move's task until it ends (reads are not actions: no gate). A read that fails is
        tried again at the next poll; the step's time limit bounds the whole."""
        m = self.ctx.move
        ref = m.task
        assert ref is not None
        said = ""
        while True:
            try:
                status = await tasked.task(ref)
            except NotFound as exc:
                raise StepFailed(f"the manager no longer knows task {ref} of the move of profile {profile}: "
                                 f"{_err(exc)}") from exc
            except AdapterError as exc:
                log.warning("job %s: task %s not read: %s", self.job.id, ref, _err(exc))
                now = f"moving profile {profile} to {spare_id}: task {ref} not read ({_err(exc)})"
            else:
                if status.state is TaskState.COMPLETED:
                    where = await self._where(profile)
                    if where != spare_id:
                        raise StepFailed(f"task {ref} of the move ended {status.message or 'completed'} but "
                                         f"profile {profile} is on {where or 'no server'}, not on "
                                         f"{spare_id}")
                    m.moved = True
                    await note(f"profile {profile} moved to {spare_id} (task {ref}"
                               f"{': ' + status.message if status.message else ''})")
                    return
                if status.state is TaskState.FAILED:
                    raise StepFailed(f"the manager's task {ref} moving profile {profile} to {spare_id} "
                                     f"failed: {status.message or 'no reason given'}")
                percent = f", {status.percent}%" if status.percent is not None else ""
                message = f" ({status.message})" if status.message else ""
                now = f"moving profile {profile} to {spare_id}: task {ref} running{percent}{message}"
            if now != said:
                await note(now)
                said = now
            await self.d.clock.sleep(self.d.settings.poll_interval)

    async def _retry(self, what: str, op: Callable[[], Awaitable[None]]) -> None:
        last: AdapterError | None = None
        for _ in range(3):
            try:
                await self.actor.act(what, op)
                return
            except AdapterError as exc:
                last = exc
                await self.d.clock.sleep(self.d.settings.poll_interval)
        assert last is not None
        raise StepFailed(_err(last)) from last

    async def _move_in_flight(self, profile: str, spare_id: str) -> str | None:
        """Whether a manager's move task may still take effect (None: it cannot: no task was started,
        or it has ended). A task that cannot be read counts as in flight."""
        m = self.ctx.move
        manager = self.d.manager
        if not (m.moving and isinstance(manager, TaskedMoves)):
            return None
        ref = m.task
        try:
            if ref is None:
                ref = await manager.find_move(profile, spare_id, intent=m.intent or "")
                if ref is None:
                    return None  # the manager holds no task of this request: it never took effect
            status = await manager.task(ref)
        except AdapterError as exc:
            return f"the manager's move task {ref or '(not named)'} could not be read ({_err(exc)})"
        if status.state is TaskState.RUNNING:
            return f"the manager's move task {ref} is still running"
        return None

    async def undo_move(self, error: str) -> str:
        """move_profile's compensation, after any failure of it (its own, a timeout, a restart): find
        where the profile is, and undo what this run did — only when the profile is known to be still on
        the source. Returns the job's error message."""
        profile, source_id, spare_id = self.job.profile, self.job.server, self.job.spare
        m = self.ctx.move
        if profile is None or spare_id is None:
            return error
        try:
            where: str | None = (await self.d.manager.profile(profile)).server
            known = True
        except AdapterError as read_exc:
            where, known = None, False
            log.error("job %s: cannot read profile %s after a failed move: %s", self.job.id, profile,
                      _err(read_exc))
        if known and where == spare_id:
            m.moved = True
            return f"move reported an error ({error}) but profile {profile} is on {spare_id}"
        if not known or where != source_id:
            place = f"on {where}" if known and where else "on no server" if known else "in an unknown place"
            return (f"move of profile {profile} from {source_id} to {spare_id} failed: {error}; profile "
                    f"{profile} is {place}: the spare designation and host record are left as they are "
                    "(check by hand before anything is powered on)")
        in_flight = await self._move_in_flight(profile, spare_id)
        if in_flight is not None:
            # The profile is still on the source, but the manager's task may yet move it: undoing now
            # would flag as a spare a blade that is about to carry the profile.
            return (f"move of profile {profile} from {source_id} to {spare_id} failed: {error}; {in_flight}: "
                    "the spare designation and host record are left as they are (check the manager's "
                    "task by hand before anything is powered on)")
        undone: list[str] = []
        if m.host_removing and m.host_before:
            host = m.host_before
            try:
                record = HostRecord(host["name"], host["ip"])
                await self.actor.act(f"restore the host record of {source_id}",
                                     lambda: self.d.discovery.restore_host(source_id, record))
                undone.append(f"host record of {source_id} restored")
                m.host_removing = m.host_removed = False
            except AdapterError as e:
                undone.append(f"host record of {source_id} NOT restored ({_err(e)})")
        if m.spare_clearing:
            try:
                await self.actor.act(f"restore the spare flag of {spare_id}",
                                     lambda: self.d.manager.set_spare(spare_id, True))
                undone.append(f"{spare_id} is a spare again")
                m.spare_clearing = m.spare_cleared = False
            except AdapterError as e:
                undone.append(f"{spare_id} NOT restored as a spare ({_err(e)})")
        m.undone = True
        return (f"move of profile {profile} from {source_id} to {spare_id} failed: {error}; "
                f"{'; '.join(undone) or 'nothing to undo'}; profile {profile} stays on {source_id} "
                "(powered off)")

    # --- power_on_spare --------------------------------------------------------------------------

    async def power_on_spare(self, note: Note) -> str:
        spare_id = self.job.spare
        profile = self.job.profile
        assert spare_id is not None and profile is not None
        try:
            spare = await self.d.manager.server(spare_id)
        except AdapterError as exc:
            raise StepFailed(f"cannot read spare {spare_id}: {_err(exc)}") from exc
        started = self.d.clock.monotonic()
        try:
            state = await self.d.power.power_state(spare)
        except AdapterError:
            state = PowerState.UNKNOWN
        if state is not PowerState.ON:
            # The invariant, read again immediately before the spare boots the profile's SAN image: the
            # profile is on the spare, and the source reads Off (an operator, a BMC's auto power-on or a
            # stale request may have turned it back on since it was fenced).
            where = await self._where(profile)
            if where != spare_id:
                raise StepFailed(f"profile {profile} is on {where or 'no server'}, not on {spare_id}: "
                                 f"{spare_id} not powered on")
            off, reading = await self._source_reads_off()
            if not off:
                raise StepFailed(f"{self.job.server} does not read Off ({reading}): {spare_id} not powered "
                                 f"on, two servers would run {profile}; power {self.job.server} off, then "
                                 f"{spare_id} on by hand")
            self.ctx.power_on_announced = True
            await note(f"about to power on {spare_id} (boots the SAN image of {profile})")
            try:
                await self.actor.act(f"power on {spare_id}", lambda: self.d.power.power_on(spare))
            except AdapterError as exc:
                log.warning("job %s: power-on of %s: %s", self.job.id, spare_id, _err(exc))
        confirmed, reading = await self._poll_power(spare, PowerState.ON, self.d.settings.power_on_timeout)
        if not confirmed:
            raise StepFailed(
                f"{spare_id} not confirmed On within {self.d.settings.power_on_timeout:g} s (last read "
                f"{reading}); profile {profile} is on {spare_id}: power it on by hand"
            )
        return f"{spare_id} confirmed On after {self.d.clock.monotonic() - started:.1f} s"

    # --- schedule_rediscovery ----------------------------------------------------------------

    async def schedule_rediscovery(self, note: Note) -> str:
        spare_id = self.job.spare
        assert spare_id is not None
        delay = self.d.settings.rediscovery.delay
        due_at = await self.d.store.clock() + delay  # timers are due on the store's clock
        if self.ledger is not None:
            # Written with the job's next commit (its end), in one transaction with the record naming it.
            self.ledger.timer("rediscovery", spare_id, due_at)
            due_on, state, attempts = due_at, "scheduled", 0
        else:
            timer = await self.d.store.add_timer("rediscovery", self.job.id, spare_id, due_at)
            due_on, state, attempts = timer.due, timer.state, timer.attempts
        due = iso(datetime.fromtimestamp(due_on, UTC))
        self.job.rediscovery = {"server": spare_id, "due": due, "state": state, "attempts": attempts,
                                "detail": ""}
        return f"discovery of {spare_id} scheduled for {due} (in {delay:g} s)"

    # --- unlock_group ------------------------------------------------------------------------

    async def unlock_group(self, note: Note) -> str:
        held = await self.d.locks.release(self.job.group, self.job.id)
        self.ctx.locked = False
        return f"domain group {self.job.group} unlocked" + ("" if held else " (was not held)")
