"""The failover flow of the VCEM white paper, as named steps.

Each step records "about to …" in the store before it acts (write-ahead), runs under a timeout, and
ends `done` with a detail or raises `StepFailed`. Every step is safe to run again after a crash: it reads
the world first and only does what is still to be done.

Compensation, per step that changes something:
- power_off_source: none: fencing is final (a failed server stays off).
- move_profile: its sub-steps undo only what this run did when a later sub-step fails (the spare
  designation and the source's host record are restored); once the profile is on the spare it stays there.
- power_on_spare: none: the profile stays on the spare, which an operator can power on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from monitor.clock import Clock
from monitor.config import FailoverConfig
from monitor.locks import GroupLocks
from monitor.model import HostRecord, Job, PowerState, Server, identify_product, iso
from monitor.ports import AdapterError, DiscoveryService, PowerControl, ProfileManager
from monitor.spares import needs_power_reading, select_spare
from monitor.stores import Store

log = logging.getLogger(__name__)


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
    enclosure_faults: list[Callable[[], set[str]]] = field(default_factory=list)
    """Sources of enclosures that report an enclosure-wide fault: no spare is taken from them."""


Note = Callable[[str], Awaitable[None]]
"""Write-ahead: records the step's current detail in the store before the step acts."""


def _err(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    endpoint = getattr(exc, "endpoint", None)
    return f"{text} ({endpoint})" if endpoint and endpoint not in text else text


class FailoverFlow:
    """The steps of one job. `job.context` carries what later steps (and a restart) need."""

    def __init__(self, job: Job, deps: FlowDeps) -> None:
        self.job = job
        self.d = deps

    @property
    def ctx(self) -> dict[str, Any]:
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
        self.ctx["domain"] = domain.id
        return f"domain {domain.id}: ok; source {source.id} carries profile {self.job.profile}"

    # --- lock_group --------------------------------------------------------------------------

    async def lock_group(self, note: Note) -> str:
        group = self.job.group

        async def waiting(other: int) -> None:
            await note(f"waiting for domain group {group} (job {other} goes first)")

        await self.d.locks.acquire(group, self.job.id, waiting)
        self.ctx["locked"] = True
        # The domain may have changed while this job waited its turn: check it again under the lock.
        try:
            domain = await self.d.manager.domain(self.ctx.get("domain") or (await self._source()).domain)
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
        self.ctx["family"] = info.family
        self.ctx["model"] = info.model
        self.ctx["span"] = span
        if info.family == "integrity":
            how = f"Integrity: the spare must span the same {span} bay(s); power through the monarch BMC"
        else:
            how = "ProLiant"
        return f"{source.product}: {how}; model {info.model} (generation ignored)"

    # --- power_off_source --------------------------------------------------------------------

    async def _poll_power(self, server: Server, want: PowerState, timeout: float) -> tuple[bool, str]:
        """Poll the BMC until it reads `want` or `timeout` passes. Returns (confirmed, last reading)."""
        deadline = self.d.clock.monotonic() + timeout
        last = "not read"
        while True:
            try:
                state = await self.d.power.power_state(server)
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
        s = self.d.settings
        started = self.d.clock.monotonic()
        try:
            before = (await self.d.power.power_state(source)).value
        except AdapterError as exc:
            before = f"unknown ({_err(exc)})"
        confirmation = await self._confirm(source)
        if before == PowerState.OFF.value:
            self.ctx["power_off"] = {"before": before, "confirmed": True}
            return f"{confirmation}{source.id} already Off (counts as confirmed); no power action sent"
        last = before
        for attempt in range(1, s.power_off_attempts + 1):
            self.ctx["power_off"] = {"before": before, "attempt": attempt}
            await note(f"about to power off {source.id} (press and hold, ForceOff; attempt {attempt}, "
                       f"was {before})")
            try:
                await self.d.power.force_off(source)
            except AdapterError as exc:
                last = f"ForceOff failed: {_err(exc)}"
                log.warning("job %s: %s: %s", self.job.id, source.id, last)
            confirmed, reading = await self._poll_power(source, PowerState.OFF, s.power_off_timeout)
            if confirmed:
                took = self.d.clock.monotonic() - started
                self.ctx["power_off"] = {"before": before, "attempt": attempt, "confirmed": True}
                return (f"{confirmation}{source.id} confirmed Off after {took:.1f} s (press and hold; "
                        f"was {before})")
            last = f"{last}; last read {reading}" if last.startswith("ForceOff failed") else reading
        raise StepFailed(
            f"power-off of {source.id} not confirmed after {s.power_off_attempts} attempt(s) of "
            f"{s.power_off_timeout:g} s (last: {last}); the profile was not moved"
        )

    async def _confirm(self, source: Server) -> str:
        """Rule-triggered jobs: re-read the source's health from its BMC before fencing and record it.
        When the rule requires confirmation, a BMC that reads the server healthy ends the job here."""
        trigger = self.job.trigger
        if trigger.get("kind") != "rule":
            return ""
        if "health_check" in self.ctx:  # already read before a restart
            return str(self.ctx["health_check"])
        try:
            reading = await self.d.power.health(source)
            said = (f"BMC health {reading.health.value}, rollup {reading.health_rollup.value}, "
                    f"power {reading.power.value}")
            healthy = reading.health.value == "OK" and reading.health_rollup.value in ("OK", "Unknown")
        except AdapterError as exc:
            said, healthy = f"BMC health unreadable ({_err(exc)})", False
        self.ctx["health_check"] = f"before fencing: {said}; "
        if trigger.get("confirm") and healthy:
            raise StepFailed(f"rule {trigger.get('rule')} requires confirmation and {source.id}'s {said}: "
                             "not fenced, nothing touched")
        return str(self.ctx["health_check"])

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
        span = int(self.ctx.get("span") or info.span or source.span)
        group = [s for s in members if s.id != source.id]
        worth_reading = [s for s in group if needs_power_reading(source, s)]
        power = await self._read_power(worth_reading)
        faulted: set[str] = set()
        for source_of_faults in self.d.enclosure_faults:
            faulted |= source_of_faults()
        choice = select_spare(source, info, span, group, power, faulted_enclosures=faulted)
        if choice.spare is None:
            raise StepFailed(
                f"no qualified spare in domain group {source.domain_group}: {choice.explain()}"
            )
        self.job.spare = choice.spare.id
        self.ctx["spare"] = choice.spare.id
        passed = f"; passed over: {choice.explain()}" if choice.rejected else ""
        return f"{choice.spare.id} ({choice.spare.product}, Off){passed}"

    # --- move_profile --------------------------------------------------------------------------

    async def move_profile(self, note: Note) -> str:
        profile = self.job.profile
        spare_id = self.job.spare
        source_id = self.job.server
        if profile is None or spare_id is None:
            raise StepFailed("internal: move_profile without a profile or a spare")
        m = self.ctx.setdefault("move", {})
        try:
            where = (await self.d.manager.profile(profile)).server
        except AdapterError as exc:
            raise StepFailed(f"cannot read profile {profile}: {_err(exc)}; nothing moved") from exc
        if where == spare_id:
            m["moved"] = True  # a restart after the move itself: finish the bookkeeping below
        elif where != source_id:
            raise StepFailed(f"profile {profile} is on {where or 'no server'}, not on {source_id}: "
                             "the inventory changed under this job; nothing moved")
        else:
            # The invariant, checked again right before the profile leaves: the source must read Off.
            source = await self._source()
            confirmed, reading = await self._poll_power(source, PowerState.OFF, 0)
            if not confirmed:
                raise StepFailed(f"{source_id} no longer reads Off ({reading}): profile not moved")
        try:
            if not m.get("moved"):
                if not m.get("spare_cleared"):
                    m["spare_clearing"] = True
                    await note(f"about to remove the spare designation from {spare_id}")
                    await self.d.manager.set_spare(spare_id, False)
                    m["spare_cleared"] = True
                if "host_removed" not in m:
                    await note(f"about to remove {source_id}'s host record from the management server")
                    removed = await self.d.discovery.remove_host(source_id)
                    m["host_removed"] = removed.as_dict() if removed else None
                await note(f"about to move profile {profile} from {source_id} to {spare_id}")
                await self.d.manager.move_profile(profile, source_id, spare_id)
                m["moved"] = True
                await note(f"profile {profile} moved to {spare_id}")
        except AdapterError as exc:
            raise StepFailed(await self._undo_move(profile, source_id, spare_id, m, _err(exc))) from exc
        if m.get("spare_clearing") and not m.get("spare_cleared"):
            await self._retry(lambda: self.d.manager.set_spare(spare_id, False))
            m["spare_cleared"] = True
        host = m.get("host_removed")
        host_text = (f"host record {host['name']} ({host['ip']}) removed from the management server"
                     if host else "the management server had no host record for the source")
        return (f"profile {profile} moved {source_id} -> {spare_id}; {host_text}; "
                f"spare designation removed from {spare_id}")

    async def _retry(self, op: Callable[[], Awaitable[None]]) -> None:
        last: AdapterError | None = None
        for _ in range(3):
            try:
                await op()
                return
            except AdapterError as exc:
                last = exc
                await self.d.clock.sleep(self.d.settings.poll_interval)
        assert last is not None
        raise StepFailed(_err(last)) from last

    async def undo_interrupted_move(self) -> str:
        """After a crash in move_profile, with recovery set to fail safe: undo what the move did."""
        assert self.job.profile and self.job.spare
        return await self._undo_move(
            self.job.profile, self.job.server, self.job.spare, self.ctx.setdefault("move", {}),
            "interrupted by a restart")

    async def _undo_move(
        self, profile: str, source_id: str, spare_id: str, m: dict[str, Any], error: str
    ) -> str:
        """A sub-step failed: find where the profile is, and undo what this run did if it did not move."""
        try:
            where = (await self.d.manager.profile(profile)).server
        except AdapterError as read_exc:
            where = None
            log.error("job %s: cannot read profile %s after a failed move: %s", self.job.id, profile,
                      _err(read_exc))
        if where == spare_id:
            m["moved"] = True
            return f"move reported an error ({error}) but profile {profile} is on {spare_id}"
        undone: list[str] = []
        host = m.get("host_removed")
        if host:
            try:
                await self.d.discovery.restore_host(source_id, HostRecord(host["name"], host["ip"]))
                undone.append(f"host record of {source_id} restored")
                m.pop("host_removed", None)
            except AdapterError as e:
                undone.append(f"host record of {source_id} NOT restored ({_err(e)})")
        if m.get("spare_clearing"):
            try:
                await self.d.manager.set_spare(spare_id, True)
                undone.append(f"{spare_id} is a spare again")
                m.pop("spare_clearing", None)
                m.pop("spare_cleared", None)
            except AdapterError as e:
                undone.append(f"{spare_id} NOT restored as a spare ({_err(e)})")
        place = f"profile {profile} stays on {where}" if where else f"profile {profile} location unknown"
        return (f"move of profile {profile} from {source_id} to {spare_id} failed: {error}; "
                f"{'; '.join(undone) or 'nothing to undo'}; {place} (powered off)")

    # --- power_on_spare --------------------------------------------------------------------------

    async def power_on_spare(self, note: Note) -> str:
        spare_id = self.job.spare
        assert spare_id is not None
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
            await note(f"about to power on {spare_id} (boots the SAN image of {self.job.profile})")
            try:
                await self.d.power.power_on(spare)
            except AdapterError as exc:
                log.warning("job %s: power-on of %s: %s", self.job.id, spare_id, _err(exc))
        confirmed, reading = await self._poll_power(spare, PowerState.ON, self.d.settings.power_on_timeout)
        if not confirmed:
            raise StepFailed(
                f"{spare_id} not confirmed On within {self.d.settings.power_on_timeout:g} s (last read "
                f"{reading}); profile {self.job.profile} is on {spare_id}: power it on by hand"
            )
        return f"{spare_id} confirmed On after {self.d.clock.monotonic() - started:.1f} s"

    # --- schedule_rediscovery ----------------------------------------------------------------

    async def schedule_rediscovery(self, note: Note) -> str:
        spare_id = self.job.spare
        assert spare_id is not None
        delay = self.d.settings.rediscovery.delay
        due_at = self.d.clock.time() + delay
        timer = await self.d.store.add_timer("rediscovery", self.job.id, spare_id, due_at)
        due = iso(datetime.fromtimestamp(timer.due, UTC))
        self.job.rediscovery = {"server": spare_id, "due": due, "state": timer.state,
                                "attempts": timer.attempts, "detail": ""}
        return f"discovery of {spare_id} scheduled for {due} (in {delay:g} s)"

    # --- unlock_group ------------------------------------------------------------------------

    async def unlock_group(self, note: Note) -> str:
        held = await self.d.locks.release(self.job.group, self.job.id)
        self.ctx["locked"] = False
        return f"domain group {self.job.group} unlocked" + ("" if held else " (was not held)")
