"""The confirmation before a failover job (monitor/pipeline/confirmation.py): a pure decision from the
policy, the rule, the BMC's reading (or the error that stopped it) and an open decline; and the timed read."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from monitor.core.errors import AdapterTimeout, AdapterUnavailable
from monitor.core.events import Event
from monitor.core.model import Health, PowerState, Server
from monitor.core.ports import HealthReading
from monitor.pipeline import confirmation
from monitor.pipeline.confirmation import Policy, Reading, decide
from rules.schema import RuleSpec

EVENT = Event(source="snmp", time=datetime(2026, 12, 1, tzinfo=UTC), trap_oid="1.3.6.1.4.1.232.0.1026")
SERVER = Server(id="enc1-bay1", domain_group="dg1", domain="vcd-enc1", enclosure="enc1", bay=1,
                product="ProLiant BL460c Gen10")


def rule(**kw: Any) -> RuleSpec:
    return RuleSpec.model_validate({"id": "r", "action": "failover", "match": {"trap_oid": "1.2"}, **kw})


def reading(health: str = "OK", rollup: str = "OK", power: str = "On",
            state: str | None = "Enabled") -> Reading:
    return HealthReading(PowerState.parse(power), Health.parse(health), Health.parse(rollup), state)


def verdict(r: Reading, policy: Policy = "always", reopened: dict[str, Any] | None = None,
            **spec: Any) -> tuple[str, str]:
    c = decide(policy=policy, rule_id="r", rule=rule(**spec), event=EVENT, reading=r, reopened=reopened)
    return c.verdict, c.reason


@pytest.mark.parametrize(("r", "want", "why"), [
    (reading("Critical"), "confirmed", "health Critical"),
    (reading("Warning"), "confirmed", "health Warning"),
    (reading("OK", "Critical"), "confirmed", "health rollup Critical"),
    (reading("OK", "OK", "Off"), "confirmed", "the server is Off"),
    (reading("OK", "OK", "On", "Absent"), "confirmed", "state Absent"),
    (reading("OK", "OK", "On", "UnavailableOffline"), "confirmed", "state UnavailableOffline"),
    (reading("OK"), "declined", "does not read the server down or unhealthy"),
    (reading("OK", "Warning"), "declined", "does not read the server down"),  # a degraded part only
    (reading("Unknown", "Unknown", "Unknown", None), "declined", "does not read the server down"),
])
def test_what_confirms_an_unhealthy_server(r: Reading, want: str, why: str) -> None:
    got, reason = verdict(r)
    assert got == want and why in reason


def test_the_reason_names_the_reading() -> None:
    _, reason = verdict(reading("Critical", "Critical", "On", "Enabled"))
    assert reason == "BMC reads health Critical, rollup Critical, power On, state Enabled: health Critical"


def test_an_unreachable_bmc_confirms_only_a_fault_that_kills_its_view() -> None:
    down = AdapterUnavailable("connection refused", endpoint="https://10.0.0.1")
    got, reason = verdict(down)
    assert got == "declined" and "the BMC itself may be what failed" in reason
    assert "connection refused (https://10.0.0.1)" in reason
    got, reason = verdict(AdapterTimeout("no answer within 10 s"), confirm_unreachable=True)
    assert got == "confirmed" and "names a fault that takes the BMC's view with it" in reason
    stored = decide(policy="always", rule_id="r", rule=rule(), event=EVENT, reading=down).reading
    assert stored == {"error": "connection refused (https://10.0.0.1)", "kind": "AdapterUnavailable"}


def test_powered_off_rules_want_the_power_off() -> None:
    assert verdict(reading("Critical"), confirm_by="powered_off")[0] == "declined"
    got, reason = verdict(reading("OK", "OK", "Off"), confirm_by="powered_off")
    assert got == "confirmed" and "own power is lost" in reason
    assert "still has power" in verdict(reading("Warning"), confirm_by="powered_off")[1]
    # even a second signal does not replace the power reading
    again = {"rule": "x", "at": "t", "by": "second signal"}
    assert verdict(reading("OK"), reopened=again, confirm_by="powered_off")[0] == "declined"
    assert verdict(AdapterUnavailable("x"), reopened=again, confirm_by="powered_off")[0] == "declined"
    assert verdict(AdapterUnavailable("x"), confirm_by="powered_off", confirm_unreachable=True)[0] == \
        "confirmed"


def test_within_the_window_a_second_signal_or_a_health_change_confirms() -> None:
    again = {"rule": "cpu", "at": "2026-12-01T00:00:00Z", "by": "second signal"}
    got, reason = verdict(reading("OK"), reopened=again)
    assert got == "confirmed"
    assert reason.endswith("confirmed by a second signal within the window of the failover declined at "
                           "2026-12-01T00:00:00Z (cpu)")
    got, reason = verdict(AdapterUnavailable("refused"), reopened={**again, "by": "health change"})
    assert got == "confirmed" and "a health change within the window" in reason


@pytest.mark.parametrize(("policy", "spec", "reads"), [
    ("always", {}, True), ("always", {"confirm": True}, True),
    ("rule", {}, False), ("rule", {"confirm": True}, True),
    ("never", {"confirm": True}, False), ("never", {"confirm_by": "powered_off"}, True),
    ("rule", {"confirm_by": "powered_off"}, True),
])
def test_the_policy_says_which_rules_read_the_bmc(policy: Policy, spec: dict[str, Any], reads: bool) -> None:
    assert confirmation.needs_reading(policy, rule(**spec)) is reads
    c = decide(policy=policy, rule_id="r", rule=rule(**spec), event=EVENT, reading=None)
    if reads:
        assert c.verdict == "declined" and c.reason == "BMC not read: nothing confirms the fault"
    else:
        assert c.verdict == "confirmed" and c.reason.startswith("no confirmation: ") and c.reading is None


def test_requirement_for_explanations() -> None:
    assert confirmation.requirement("always", "r", rule()) == (
        "the BMC is read before a job: it must read health Warning/Critical, rollup Critical, Off or "
        "absent; an unreachable BMC declines")
    assert "power Off" in confirmation.requirement("never", "r", rule(confirm_by="powered_off"))
    assert confirmation.requirement("rule", "r", rule()).startswith("no confirmation (r does not ask")


class SlowBmc:
    def __init__(self, answer: HealthReading | Exception | None) -> None:
        self.answer = answer

    async def health(self, server: Server) -> HealthReading:
        if self.answer is None:
            await asyncio.Event().wait()  # never answers
        if isinstance(self.answer, Exception):
            raise self.answer
        assert isinstance(self.answer, HealthReading)
        return self.answer


async def test_the_read_has_a_timeout_and_turns_errors_into_a_reading() -> None:
    ok = reading("Critical")
    assert await confirmation.read(SlowBmc(ok), SERVER, 1.0) == ok  # type: ignore[arg-type]
    err = await confirmation.read(SlowBmc(AdapterUnavailable("refused")), SERVER, 1.0)  # type: ignore[arg-type]
    assert isinstance(err, AdapterUnavailable)
    late = await confirmation.read(SlowBmc(None), SERVER, 0.01)  # type: ignore[arg-type]
    assert isinstance(late, AdapterTimeout) and str(late) == "no answer within 0.01 s"
