"""What a failover of one server would do now, touching nothing (`failover-monitor plan`, as crm_simulate).

Everything here reads: the server and its group from the manager, the failover rules whose server
conditions hold for it and the live guards (on a copy of the running rule state), the confirmation the
pipeline would make (the source's BMC health read), the spare spare selection would pick with every spare
passed over and why (the candidates' power read from their BMCs, as the flow's select_spare step does),
every fence level's reading of the source's power, and the chosen spare's BMC. No request that changes
anything is sent: the plan never passes a job's gate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Set
from dataclasses import dataclass
from typing import Any

from monitor.core.clock import Clock
from monitor.core.config import FailoverConfig
from monitor.core.errors import AdapterError, NotFound, UnknownServer
from monitor.core.events import Event
from monitor.core.fence_levels import BmcLevel, FenceLevel, FenceTopology, describe, read_level
from monitor.core.model import PowerState, Server, identify_product
from monitor.core.ports import PowerControl, ProfileManager
from monitor.jobs.spares import needs_power_reading, select_spare
from monitor.pipeline import confirmation
from monitor.store import Store
from rules.engine import Decider, RuleState, server_attribute


@dataclass(frozen=True, slots=True)
class PlanDeps:
    manager: ProfileManager
    power: PowerControl
    store: Store
    clock: Clock
    failover: FailoverConfig
    decider: Callable[[], Decider | None]
    """The running decider (None: no rules pipeline)."""
    fence: FenceTopology | None = None
    enclosure_faults: Callable[[], Set[str]] | None = None
    timeout: float = 10.0
    """Seconds each read may take."""


def _rules_for(decider: Decider, server: Server) -> tuple[list[dict[str, Any]], int]:
    """The failover rules whose server conditions hold for `server`, and how many others do not."""
    held, others = [], 0
    for rule in decider.ruleset.rules.values():
        if rule.spec.action != "failover":
            continue
        why = next((f"server {name} {server_attribute(server, name)!r} is not {m.text}"
                    for name, m in rule.server if not m.test(server_attribute(server, name))), None)
        if why is None:
            held.append({"rule": rule.id, "description": rule.spec.description,
                         "severity": rule.spec.severity})
        else:
            others += 1
    return held, others


async def _read_power(power: PowerControl, servers: list[Server],
                      timeout: float) -> dict[str, PowerState | str]:
    async def read(s: Server) -> tuple[str, PowerState | str]:
        try:
            async with asyncio.timeout(timeout):
                return s.id, await power.power_state(s)
        except TimeoutError:
            return s.id, f"no answer within {timeout:g} s"
        except AdapterError as exc:
            return s.id, describe(exc)

    return dict(await asyncio.gather(*(read(s) for s in servers)))


async def _fence_levels(d: PlanDeps, source: Server) -> list[dict[str, Any]]:
    levels: list[FenceLevel] = d.fence.order(source) if d.fence is not None else [BmcLevel(d.power)]

    async def one(level: FenceLevel) -> dict[str, Any]:
        try:
            async with asyncio.timeout(d.timeout):
                r = await read_level(level, source)
        except TimeoutError:
            return {"level": level.name, "answers": False, "power": None,
                    "error": f"no answer within {d.timeout:g} s"}
        return {"level": r.level, "answers": r.state is not None,
                "power": r.state.value if r.state is not None else None, "error": r.error or None}

    return list(await asyncio.gather(*(one(level) for level in levels)))


async def plan(d: PlanDeps, server_id: str, *, rule: str | None = None) -> dict[str, Any]:
    """What a failover of `server_id` would do now. UnknownServer when the manager does not know it,
    ValueError for an unknown `rule`, an AdapterError when the manager cannot be read."""
    try:
        async with asyncio.timeout(d.timeout):
            source = await d.manager.server(server_id)
    except NotFound:
        raise UnknownServer(server_id) from None
    now = d.clock.now()
    blockers: list[str] = []
    active = (await d.store.active_by_server()).get(source.id)
    if active is not None:
        blockers.append(f"{source.id} already has active job {active}")
    if not source.profile:
        blockers.append(f"{source.id} has no profile: nothing to move")
    locks = await d.store.group_locks()
    lock = {"group": source.domain_group, "locked_by": locks.get(source.domain_group)}
    if lock["locked_by"] is not None:
        lock["note"] = f"a job would wait for job {lock['locked_by']} to unlock {source.domain_group}"

    # Rules, live guards and the confirmation of an automatic failover.
    automatic: dict[str, Any] = {"rules": [], "other_failover_rules": 0, "rule": None, "guards": None,
                                 "confirmation": None}
    decider = d.decider()
    if decider is not None:
        held, others = _rules_for(decider, source)
        automatic["rules"], automatic["other_failover_rules"] = held, others
        chosen = rule or (held[0]["rule"] if held else None)
        if chosen is not None and chosen not in decider.ruleset.rules:
            raise ValueError(f"unknown rule {chosen}")
        if chosen is not None:
            copy = Decider(decider.ruleset, decider.guards, [], RuleState.restore(decider.state.snapshot()))
            copy.silences = decider.silences
            copy.paused = decider.paused
            event = Event.model_validate({"source": "file", "time": now, "server": source.id})
            inv_size = None
            try:
                async with asyncio.timeout(d.timeout):
                    inv_size = len(await d.manager.group_servers(source.domain_group))
            except (AdapterError, TimeoutError):
                inv_size = None
            guarded = copy.guard(chosen, source, event, inv_size)
            automatic["rule"] = chosen
            automatic["guards"] = {"action": guarded.action, "guard": guarded.guard,
                                   "paused": decider.paused}
            spec = decider.ruleset.rules[chosen].spec
            reading: confirmation.Reading = None
            if confirmation.needs_reading(d.failover.confirm, spec):
                reading = await confirmation.read(d.power, source, d.failover.confirm_timeout)
            verdict = confirmation.decide(policy=d.failover.confirm, rule_id=chosen, rule=spec, event=event,
                                          reading=reading)
            automatic["confirmation"] = {
                **verdict.public(), "requirement": confirmation.requirement(d.failover.confirm, chosen, spec)}

    # Fence levels of the source.
    fence = await _fence_levels(d, source)
    if not any(f["answers"] for f in fence):
        blockers.append("no fence level answers: the power-off could not be confirmed, the profile would "
                        "not move")

    # The spare.
    spare_out: dict[str, Any] = {"spare": None, "passed_over": [], "bmc": None}
    info = identify_product(source.product)
    if info is None:
        blockers.append(f"product {source.product!r} not identified")
    else:
        try:
            async with asyncio.timeout(d.timeout):
                members = await d.manager.group_servers(source.domain_group)
        except (AdapterError, TimeoutError) as exc:
            blockers.append(f"cannot read domain group {source.domain_group}: {exc or 'timeout'}")
            members = []
        if members:
            group = [s for s in members if s.id != source.id]
            power = await _read_power(d.power, [s for s in group if needs_power_reading(source, s)],
                                      d.timeout)
            faulted = d.enclosure_faults() if d.enclosure_faults is not None else set()
            choice = select_spare(source, info, info.span or source.span, group, power,
                                  faulted_enclosures=faulted)
            spare_out["passed_over"] = [{"server": r.server, "reason": r.reason} for r in choice.rejected
                                        if r.reason != "not a designated spare"]
            spare_out["not_spares"] = sum(1 for r in choice.rejected if r.reason == "not a designated spare")
            spare_out["power_read"] = {k: v.value if isinstance(v, PowerState) else v
                                       for k, v in power.items()}
            if choice.spare is None:
                blockers.append(f"no qualified spare in domain group {source.domain_group}: "
                                f"{choice.explain()}")
            else:
                spare = choice.spare
                spare_out["spare"] = spare.id
                r = await confirmation.read(d.power, spare, d.timeout)
                spare_out["bmc"] = {"answers": not isinstance(r, AdapterError),
                                    **(confirmation.reading_public(r) or {})}
    return {
        "server": source.id, "domain_group": source.domain_group, "enclosure": source.enclosure,
        "product": source.product, "profile": source.profile, "planned_at": now.isoformat(),
        "would_fail_over": not blockers, "blockers": blockers, "active_job": active, "lock": lock,
        "automatic": automatic,
        "manual": "failover-monitor failover starts the job directly: no rules, guards or confirmation",
        "fence_levels": fence, "spare": spare_out,
        "touched": "nothing: every call above is a read",
    }
