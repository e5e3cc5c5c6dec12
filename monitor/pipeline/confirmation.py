"""Confirmation before a failover job: the source's BMC, read again, must agree that the server is down.

A pure decision (`decide`) from the policy (`failover.confirm`: always | rule | never), the rule that
fired, the event, the BMC's reading (a HealthReading, or the AdapterError when the BMC could not be read)
and, when there is one, the declined failover still open for the server. The pipeline reads the BMC
(`read`, with a timeout) before it creates a job, and stores the verdict with the decision and the job's
trigger.

What confirms (`confirm_by: unhealthy`, the default): Health Warning or Critical, HealthRollup Critical
(a rollup Warning alone is a degraded part, a fan or a supply, not the server), the server Off, or its
State Absent / UnavailableOffline. `confirm_by: powered_off` (the server's own power is lost):
PowerState Off only. An unreachable BMC confirms for rules marked `confirm_unreachable` (the fault
named takes the BMC's view with it: the board's power, the whole blade), or when the server's other
fence levels (`failover.fencing`: the manager, the OA, IPMI), read instead, read it Off; otherwise it
declines, since the BMC itself may be what hung. Within the window of a declined failover, a second
signal or a health change confirms, except for `confirm_by: powered_off` rules, whose condition is the
power reading itself.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from monitor.core.clock import Clock
from monitor.core.errors import AdapterError, AdapterTimeout
from monitor.core.events import Event
from monitor.core.fence_levels import FenceTopology, OffCheck, reads_off
from monitor.core.model import Health, PowerState, Server
from monitor.core.ports import HealthReading, PowerControl
from rules.schema import RuleSpec

Policy = Literal["always", "rule", "never"]
Verdict = Literal["confirmed", "declined"]
Reading = HealthReading | AdapterError | None
"""What the BMC said: a reading, the error that stopped the read, or None (not read)."""

DOWN_STATES = {"absent", "unavailableoffline"}


@dataclass(frozen=True, slots=True)
class Confirmation:
    verdict: Verdict
    reason: str
    """One line, for the operator: what was read and why it confirms or declines."""
    reading: dict[str, Any] | None
    """The reading as stored ({"power", "health", "health_rollup", "state"} or {"error"}); None when the
    BMC was not read."""

    @property
    def confirmed(self) -> bool:
        return self.verdict == "confirmed"

    def public(self) -> dict[str, Any]:
        return {"reading": self.reading, "verdict": self.verdict, "reason": self.reason}


def needs_reading(policy: Policy, rule: RuleSpec) -> bool:
    """Whether the BMC is read at all for this rule under this policy."""
    if rule.confirm_by == "powered_off":
        return True  # the rule's condition is the server's power
    if policy == "never":
        return False
    return policy == "always" or rule.confirm


def reading_public(reading: Reading) -> dict[str, Any] | None:
    if reading is None:
        return None
    if isinstance(reading, AdapterError):
        kind = "timeout" if isinstance(reading, AdapterTimeout) else type(reading).__name__
        return {"error": _err(reading), "kind": kind}
    return {"power": reading.power.value, "health": reading.health.value,
            "health_rollup": reading.health_rollup.value, "state": reading.state}


def describe(reading: Reading) -> str:
    if reading is None:
        return "BMC not read"
    if isinstance(reading, AdapterError):
        return f"BMC unreachable ({_err(reading)})"
    state = f", state {reading.state}" if reading.state else ""
    return (f"BMC reads health {reading.health.value}, rollup {reading.health_rollup.value}, "
            f"power {reading.power.value}{state}")


def _unhealthy(r: HealthReading) -> str | None:
    """Why the reading says the server is down or unhealthy, or None."""
    if r.health in (Health.WARNING, Health.CRITICAL):
        return f"health {r.health.value}"
    if r.health_rollup is Health.CRITICAL:
        return "health rollup Critical"
    if r.power is PowerState.OFF:
        return "the server is Off"
    if r.state and r.state.strip().lower() in DOWN_STATES:
        return f"state {r.state}"
    return None


def decide(*, policy: Policy, rule_id: str, rule: RuleSpec, event: Event, reading: Reading,
           reopened: dict[str, Any] | None = None, others: OffCheck | None = None) -> Confirmation:
    """Confirmed or declined, with a one-line reason. Pure: no I/O, no clock. `others`: when the BMC
    could not be read, the server's other fence levels (the manager, the OA, IPMI), read instead: a
    server they read Off is down."""
    stored = reading_public(reading)
    if not needs_reading(policy, rule):
        why = ("failover.confirm is never" if policy == "never"
               else f"rule {rule_id} does not ask for it (failover.confirm: rule)")
        return Confirmation("confirmed", f"no confirmation: {why}", None)
    said = describe(reading)
    again = ""
    if reopened:
        again = (f"{'a health change' if reopened.get('by') == 'health change' else 'a second signal'} "
                 f"within the window of the failover declined at {reopened.get('at')} "
                 f"({reopened.get('rule')})")
    if reading is None:
        return Confirmation("declined", f"{said}: nothing confirms the fault", stored)
    if isinstance(reading, AdapterError):
        if rule.confirm_unreachable:
            return Confirmation("confirmed", f"{said}: {rule_id} names a fault that takes the BMC's view "
                                             "with it", stored)
        if others is not None and others.off:
            return Confirmation("confirmed", f"{said}; the other fence levels read the server Off "
                                             f"({others.text()})", stored)
        if again and rule.confirm_by != "powered_off":
            return Confirmation("confirmed", f"{said}; confirmed by {again}", stored)
        seen = f"; the other fence levels: {others.text()}" if others is not None else ""
        return Confirmation("declined", f"{said}{seen}: the BMC itself may be what failed, and {rule_id} "
                                        "names no fault that would take it down", stored)
    if rule.confirm_by == "powered_off":
        if reading.power is PowerState.OFF:
            return Confirmation("confirmed", f"{said}: the server's own power is lost", stored)
        return Confirmation("declined", f"{said}: the server still has power (a failed or unplugged "
                                        "supply alone is not a reason to fail over)", stored)
    down = _unhealthy(reading)
    if down is not None:
        return Confirmation("confirmed", f"{said}: {down}", stored)
    if again:
        return Confirmation("confirmed", f"{said}; confirmed by {again}", stored)
    return Confirmation("declined", f"{said}: the BMC does not read the server down or unhealthy "
                                    "(not fenced)", stored)


def requirement(policy: Policy, rule_id: str, rule: RuleSpec) -> str:
    """What the confirmation of this rule would need, for explanations that do not read the BMC."""
    if not needs_reading(policy, rule):
        return ("no confirmation (failover.confirm: never)" if policy == "never"
                else f"no confirmation ({rule_id} does not ask for it; failover.confirm: rule)")
    want = ("power Off (the server's own power lost)" if rule.confirm_by == "powered_off"
            else "health Warning/Critical, rollup Critical, Off or absent")
    dead = ("an unreachable BMC confirms" if rule.confirm_unreachable
            else "an unreachable BMC declines")
    return f"the BMC is read before a job: it must read {want}; {dead}"


async def read(power: PowerControl, server: Server, timeout: float,
               clock: Clock | None = None) -> HealthReading | AdapterError:
    """The source's health from its BMC, at most `timeout` seconds (on `clock`); the error when it cannot
    be read."""
    try:
        async with (clock.timeout(timeout) if clock is not None else asyncio.timeout(timeout)):
            return await power.health(server)
    except TimeoutError:
        return AdapterTimeout(f"no answer within {timeout:g} s")
    except AdapterError as exc:
        return exc


def _err(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    endpoint = getattr(exc, "endpoint", None)
    return f"{text} ({endpoint})" if endpoint and endpoint not in text else text


async def read_others(fence: FenceTopology | None, server: Server, timeout: float,
                      clock: Clock | None = None) -> OffCheck | None:
    """The server's fence levels other than its BMC, read at once within `timeout` (None: it has none,
    or none answered in time)."""
    if fence is None:
        return None
    levels = [level for level in fence.order(server) if level.name != "bmc"]
    if not levels:
        return None
    try:
        async with (clock.timeout(timeout) if clock is not None else asyncio.timeout(timeout)):
            return await reads_off(levels, server)
    except TimeoutError:
        return None
