"""Return to service, after a repair: designate a blade as a spare again, and fail a profile back.

`designate_spare` is an operator action, not a job: it changes one flag at the manager and moves no
profile, powers nothing, so it has no fencing token of its own (the fence belongs to a job's owner). What
keeps it safe instead:
- it is refused while the server, or its domain group, has an active job (queued or running) or the
  group is locked: it never changes the candidates under a job that is choosing or using a spare;
- the blade is read first, fresh: from the manager (present, no profile assigned, identified product)
  and from its own BMC (power Off, health OK): a blade that reads On, unhealthy or not at all is refused;
- it is recorded in the audit log with its author and those readings.
A job created in the instant between the check and the flag can at most find one more candidate, one that
was just read Off, healthy and empty, and whose power `select_spare` reads again before taking it.

`failback` is a normal numbered job through `JobRunner.submit`, the same flow and the same fencing: its
source is where the profile is now (the earlier job's spare), and its trigger names the target (the
earlier job's source): `select_spare` then verifies that target instead of choosing (designated spare, no
profile, present, same model, Off at its BMC; `allow_non_spare` waives only the spare flag). Since the
flow fences its source (the server running the profile now) before `select_spare`, the target is checked
the same way before the job is created: a target that does not qualify is refused with nothing touched.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from monitor.core.errors import AdapterError, NotFound, OperatorRefused, UnknownServer
from monitor.core.model import Health, Job, JobState, PowerState, identify_product
from monitor.jobs.runner import JobRunner
from monitor.jobs.spares import needs_power_reading, select_spare

log = logging.getLogger(__name__)

READ_TIMEOUT = 10.0
"""Seconds for each reading (manager, BMC) a return to service makes."""


async def _busy(runner: JobRunner, server: str, group: str) -> str | None:
    """Why the server cannot be touched now (an active job on it or its group, the group locked)."""
    for job in await runner.store.active_jobs():
        if job.server == server or job.group == group or job.spare == server:
            return f"job {job.id} ({job.server}) is active in domain group {group}"
    held = (await runner.store.group_locks()).get(group)
    if held is not None:
        return f"domain group {group} is locked by job {held}"
    return None


async def designate_spare(runner: JobRunner, server_id: str, *, author: str,
                          comment: str = "") -> dict[str, Any]:
    """Check the blade at the manager and its BMC and mark it a spare; OperatorRefused else."""
    deps = runner.d
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            server = await deps.manager.server(server_id)
    except NotFound:
        raise OperatorRefused(f"unknown server {server_id}", 404) from None
    except (AdapterError, TimeoutError) as exc:
        raise OperatorRefused(f"the manager cannot be read: {exc or 'timeout'}", 503) from exc
    if (why := await _busy(runner, server.id, server.domain_group)) is not None:
        raise OperatorRefused(f"{server.id} not designated: {why}")
    if server.spare:
        raise OperatorRefused(f"{server.id} is already a designated spare")
    if not server.present or identify_product(server.product) is None:
        raise OperatorRefused(f"{server.id} is not present or its product {server.product!r} is not known")
    if server.profile:
        raise OperatorRefused(f"{server.id} has profile {server.profile} assigned")
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            reading = await deps.power.health(server)
    except (AdapterError, TimeoutError) as exc:
        raise OperatorRefused(f"{server.id}'s BMC cannot be read: {exc or 'timeout'}", 503) from exc
    if reading.power is not PowerState.OFF:
        raise OperatorRefused(f"{server.id} reads {reading.power.value} at its BMC, not Off")
    if reading.health is not Health.OK:
        raise OperatorRefused(f"{server.id} reads health {reading.health.value} at its BMC, not OK")
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            await deps.manager.set_spare(server.id, True)
    except (AdapterError, TimeoutError) as exc:
        raise OperatorRefused(f"the manager refused the spare flag: {exc or 'timeout'}", 503) from exc
    detail = {"power": reading.power.value, "health": reading.health.value, "comment": comment,
              "product": server.product, "group": server.domain_group, "monitor": runner.instance}
    await runner.store.add_audit(author, "spare", server.id, detail)
    log.warning("%s designated a spare again by %s (BMC: %s, %s)", server.id, author, reading.power.value,
                reading.health.value)
    return {"server": server.id, "spare": True, "group": server.domain_group, **detail, "author": author}


async def _target_qualifies(runner: JobRunner, source_id: str, target_id: str, allow_non_spare: bool) -> None:
    """Check the target before any job exists: the flow fences its source (the profile's running server)
    before `select_spare` verifies the target, so a target that cannot take the profile must be refused
    here, with nothing touched. `select_spare` checks it again, under the job's lock."""
    deps = runner.d
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            source = await deps.manager.server(source_id)
            target = await deps.manager.server(target_id)
    except NotFound as exc:
        raise OperatorRefused(f"failback: {exc}", 404) from None
    except (AdapterError, TimeoutError) as exc:
        raise OperatorRefused(f"the manager cannot be read: {exc or 'timeout'}", 503) from exc
    info = identify_product(source.product)
    if info is None:
        raise OperatorRefused(f"product {source.product!r} of {source.id} not identified")
    candidate = replace(target, spare=True) if allow_non_spare else target
    power: dict[str, PowerState | str] = {}
    if needs_power_reading(source, candidate):
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                power[target.id] = await deps.power.power_state(target)
        except (AdapterError, TimeoutError) as exc:
            power[target.id] = str(exc) or "timeout"
    faulted = deps.enclosure_faults() if deps.enclosure_faults is not None else set()
    choice = select_spare(source, info, int(info.span or source.span), [candidate], power,
                          faulted_enclosures=faulted)
    if choice.spare is None:
        why = "; ".join(r.reason for r in choice.rejected) or "not a candidate"
        raise OperatorRefused(f"failback target {target.id} does not qualify: {why} (nothing was touched)")


async def failback(runner: JobRunner, job_id: int, *, author: str, reason: str = "",
                   allow_non_spare: bool = False) -> Job:
    """A new job moving job `job_id`'s profile back from its spare to its original server."""
    earlier = await runner.store.get_job(job_id)
    if earlier is None:
        raise OperatorRefused(f"unknown job {job_id}", 404)
    if earlier.state is not JobState.COMPLETED or not earlier.spare:
        raise OperatorRefused(f"job {job_id} is {earlier.state.value}: only a completed failover fails back")
    await _target_qualifies(runner, earlier.spare, earlier.server, allow_non_spare)
    trigger = {"kind": "failback", "of_job": job_id, "target": earlier.server, "profile": earlier.profile,
               "by": author, "reason": reason, "allow_non_spare": allow_non_spare}
    try:
        job = await runner.submit(earlier.spare, trigger)
    except UnknownServer:
        raise OperatorRefused(f"job {job_id}'s spare {earlier.spare} is no longer known", 404) from None
    await runner.store.add_audit(author, "failback", earlier.server,
                                 {"of_job": job_id, "job": job.id, "from": earlier.spare, "reason": reason,
                                  "allow_non_spare": allow_non_spare})
    log.warning("job %s: failback of job %s (%s -> %s) by %s", job.id, job_id, earlier.spare,
                earlier.server, author)
    return job
