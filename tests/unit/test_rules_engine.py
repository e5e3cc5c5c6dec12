"""The rule engine: matchers, thresholds, windows on the fake clock, cooldown, correlation, clearing,
guards (storm, rate limit, silences, pause, alert-only), indexing, loading errors and reload."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.core.clock import FakeClock
from monitor.core.errors import ConfigError
from monitor.core.events import Event
from monitor.core.metrics import Metrics
from monitor.core.model import Server, iso
from monitor.pipeline.policy import PolicyHolder
from rules.engine import Decider, RuleState
from rules.loader import load_policy
from rules.matchers import compile_matcher
from rules.schema import GuardsSpec

CPU = "1.3.6.1.4.1.232.0.1026"
FLAGS = "1.3.6.1.4.1.232.11.2.11.1.0"


def server(sid: str = "enc1-bay1", *, group: str = "dg1", enclosure: str = "enc1",
           product: str = "ProLiant BL460c Gen8", spare: bool = False) -> Server:
    return Server(id=sid, domain_group=group, domain=f"vcd-{enclosure}", enclosure=enclosure, bay=1,
                  product=product, spare=spare, profile=None if spare else f"p-{sid}")


def trap(clock: FakeClock, oid: str = CPU, **varbinds: str) -> Event:
    return Event(source="snmp", time=clock.now(), sender="10.0.0.1", trap_oid=oid,
                 varbinds={k.replace("_", "."): v for k, v in varbinds.items()})


def redfish(clock: FakeClock, message_id: str, severity: str = "Critical") -> Event:
    return Event(source="redfish", time=clock.now(), sender="10.0.0.2", message_id=message_id,
                 severity=severity).with_message_id()


def policy(tmp_path: Path, rules: list[dict[str, Any]], **extra: Any) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"rules": rules, **extra}, sort_keys=False))
    return path


def decider(tmp_path: Path, rules: list[dict[str, Any]], guards: dict[str, Any] | None = None,
            **extra: Any) -> Decider:
    g = {"storm": None, "rate_limit": None, **(guards or {})}
    p = load_policy([policy(tmp_path, rules, guards=g, **extra)], builtin=False)
    return Decider(p.ruleset, p.guards, p.silences)


def rule(rid: str = "cpu", action: str = "failover", **kw: Any) -> dict[str, Any]:
    return {"id": rid, "action": action, "match": {"trap_oid": CPU}, **kw}


# --- matchers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "yes", "no"),
    [
        ("abc", ["abc"], ["abd", None, "ABC"]),
        (5, ["5", 5, "5.0"], ["6", "x", None]),
        (True, [True, "true", "True"], [False, "no"]),
        (["a", "b"], ["a", "b"], ["c", None]),
        ({"ne": "a"}, ["b"], ["a"]),
        ({"in": ["x", 2]}, ["x", "2"], ["y"]),
        ({"not_in": ["x"]}, ["y"], ["x", None]),
        ({"glob": "enc1-*"}, ["enc1-bay3"], ["enc2-bay1", None]),
        ({"regex": "^BL4[56]"}, ["BL460c", "BL465c"], ["BL685c"]),
        ({"gt": 4}, ["5", 4.5], ["4", "x"]),
        ({"ge": 4}, ["4"], ["3.9"]),
        ({"lt": 4}, ["3"], ["4"]),
        ({"le": 4}, ["4"], ["5"]),
        ({"oid_prefix": "1.3.6.1.4.1.232"}, ["1.3.6.1.4.1.232", "1.3.6.1.4.1.232.0.6050"],
         ["1.3.6.1.4.1.2320.1", "1.3.6.1.4.1.23"]),
        ({"message_id": "iLOEvents.*.PowerSupplyFailed"},
         ["iLOEvents.2.3.PowerSupplyFailed", "iLOEvents.0.9.PowerSupplyFailed"],
         ["iLOEvents.2.3.PowerSupplyOK", "Power.1.0.PowerSupplyFailed", "PowerSupplyFailed"]),
        ({"message_id": "CPU0000"}, ["CPU0000", "IDRAC.2.8.CPU0000"], ["CPU0001"]),
        ({"at_least": "Warning"}, ["Warning", "Critical", "major"], ["OK", "bogus", None]),
        ({"exists": True}, ["", "x"], [None]),
        ({"exists": False}, [None], ["x"]),
        ({"bits": {"shift": 2, "mask": 7, "eq": 4}}, ["16", "17", "19"], ["12", "8", "x"]),
        ({"bits": {"shift": 2, "mask": 7, "in": [3, 4]}}, ["12", "16"], ["8"]),
        ({"not": {"glob": "enc1-*"}}, ["enc2-bay1"], ["enc1-bay1"]),
        ({"any": [{"glob": "a*"}, {"glob": "b*"}]}, ["ax", "bx"], ["cx"]),
        ({"all": [{"glob": "a*"}, {"glob": "*z"}]}, ["abz"], ["ab", "bz"]),
    ],
)
def test_matchers(spec: Any, yes: list[Any], no: list[Any]) -> None:
    m = compile_matcher(spec)
    assert all(m.test(v) for v in yes), (spec, [v for v in yes if not m.test(v)])
    assert not any(m.test(v) for v in no), (spec, [v for v in no if m.test(v)])


@pytest.mark.parametrize(
    ("spec", "error"),
    [({"frob": 1}, "unknown operator"), ({"gt": "x"}, "takes a number"), ({"regex": "("}, "bad regular"),
     ({"a": 1, "b": 2}, "exactly one operator"), ([], "empty list"),
     ({"at_least": "meh"}, "unknown severity"),
     ({"oid_prefix": "1.x"}, "not a dotted OID"), ({"bits": {"mask": 1}}, "bits takes")],
)
def test_bad_matchers(spec: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        compile_matcher(spec)


# --- decisions --------------------------------------------------------------------------------------


def test_varbind_condition_and_near_miss(tmp_path: Path) -> None:
    clock = FakeClock()
    d = decider(tmp_path, [rule(match={"trap_oid": CPU, f"varbinds.{FLAGS}": {"bits": {"shift": 2, "mask": 7,
                                                                                       "eq": 4}}})])
    failed = d.decide(trap(clock, **{FLAGS.replace(".", "_"): "16"}), server())
    assert failed.action == "failover" and failed.rule == "cpu"
    degraded = d.decide(trap(clock, **{FLAGS.replace(".", "_"): "12"}), server("enc1-bay2"))
    assert degraded.action == "none"
    assert degraded.near == [("cpu", f"varbinds.{FLAGS} '12' is not (value >> 2) & 7 in [4]")]


def test_server_attributes(tmp_path: Path) -> None:
    clock = FakeClock()
    d = decider(tmp_path, [rule(server={"product_family": "proliant", "spare": False,
                                        "domain_group": ["dg1"]})])
    assert d.decide(trap(clock), server()).action == "failover"
    miss = d.decide(trap(clock), server("enc1-bay2", product="Integrity BL860c i2"))
    assert miss.action == "none" and "product_family 'integrity'" in miss.near[0][1]
    assert d.decide(trap(clock), server("enc1-bay3", spare=True)).action == "none"
    assert "unknown" in d.decide(trap(clock), None).near[0][1]


def test_threshold_at_and_around_the_boundary_with_a_sliding_window(tmp_path: Path) -> None:
    clock = FakeClock()
    d = decider(tmp_path, [rule("mem", "alert", threshold={"count": 3, "window": "1h"})])
    s = server()
    assert d.decide(trap(clock), s).action == "none"
    clock._t += 1000
    second = d.decide(trap(clock), s)
    assert second.action == "none" and second.near == [("mem", "threshold: 2 of 3 within 3600 s")]
    clock._t += 2601  # the first event leaves the window (3601 s old)
    assert d.decide(trap(clock), s).action == "none"
    clock._t += 10
    assert d.decide(trap(clock), s).action == "alert"  # 3 within the hour: 1000+2601 .. +10
    assert d.decide(trap(clock), s).action == "none"  # fired: counting starts again
    assert d.decide(trap(clock), server("enc1-bay9")).action == "none"  # per server


async def test_windows_slide_on_the_fake_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    d = decider(tmp_path, [rule("mem", "alert", threshold={"count": 2, "window": "10m"})])
    s = server()
    d.decide(trap(clock), s)
    await clock.advance(600)  # exactly the window: the first is out
    assert d.decide(trap(clock), s).action == "none"
    await clock.advance(599)
    assert d.decide(trap(clock), s).action == "alert"


def test_cooldown_suppresses_and_says_why(tmp_path: Path) -> None:
    clock = FakeClock()
    d = decider(tmp_path, [rule(cooldown="30m")])
    s = server()
    assert d.decide(trap(clock), s).action == "failover"
    clock._t += 1799
    again = d.decide(trap(clock), s)
    assert again.action == "none" and again.rule == "cpu"
    assert again.guard == "suppressed: enc1-bay1 had a failover decision 1799 s ago (cooldown 1800 s)"
    clock._t += 1
    assert d.decide(trap(clock), s).action == "failover"


def test_correlation_requires_a_second_signal(tmp_path: Path) -> None:
    clock = FakeClock()
    psu = "1.3.6.1.4.1.232.0.6050"
    red = "1.3.6.1.4.1.232.0.6032"
    d = decider(tmp_path, [
        {"id": "psu", "action": "failover", "match": {"trap_oid": psu},
         "requires": {"rules": ["redundancy-lost"], "within": "10m"}},
        {"id": "redundancy-lost", "action": "alert", "match": {"trap_oid": red}},
    ])
    s = server()
    alone = d.decide(trap(clock, psu), s)
    assert alone.action == "none" and "waiting for a correlated signal" in alone.near[0][1]
    assert d.decide(trap(clock, red), s).action == "alert"
    clock._t += 599
    assert d.decide(trap(clock, psu), s).action == "failover"
    other = server("enc1-bay2")
    d.decide(trap(clock, red), other)
    clock._t += 601
    assert d.decide(trap(clock, psu), other).action == "none"  # partner too old


def test_clearing_event_resets_a_pending_threshold(tmp_path: Path) -> None:
    clock = FakeClock()
    ok = "1.3.6.1.4.1.232.0.6048"
    d = decider(tmp_path, [
        rule("mem", "alert", threshold={"count": 2, "window": "1h"}),
        {"id": "mem-ok", "action": "ignore", "match": {"trap_oid": ok}, "clears": ["mem"]},
    ])
    s = server()
    d.decide(trap(clock), s)
    assert d.decide(trap(clock, ok), s).action == "ignore"
    assert d.decide(trap(clock), s).action == "none"  # the window started again
    assert d.decide(trap(clock), s).action == "alert"


def test_highest_action_wins(tmp_path: Path) -> None:
    clock = FakeClock()
    d = decider(tmp_path, [rule("a", "alert"), rule("b", "failover"), rule("c", "ignore")])
    dec = d.decide(trap(clock), server())
    assert dec.action == "failover" and dec.rule == "b"
    assert [m[0] for m in dec.matched] == ["a", "b", "c"]


def test_unknown_server_never_fails_over(tmp_path: Path) -> None:
    clock = FakeClock()
    d = decider(tmp_path, [rule()])
    dec = d.decide(trap(clock), None)
    assert dec.action == "alert" and "unknown server" in (dec.guard or "")


# --- guards ---------------------------------------------------------------------------------------------


def test_storm_guard_stops_failover_in_the_scope_and_alerts_once(tmp_path: Path) -> None:
    clock = FakeClock()
    d = decider(tmp_path, [rule()], {"storm": {"max_servers": 2, "window": "10m", "scopes": ["enclosure"]}})
    actions = [d.decide(trap(clock), server(f"enc1-bay{i}")) for i in range(1, 5)]
    assert [a.action for a in actions] == ["failover", "failover", "alert", "alert"]
    assert actions[2].storm_alert is not None and actions[3].storm_alert is None
    assert "storm guard: 3 servers of enclosure enc1" in (actions[2].guard or "")
    assert d.decide(trap(clock), server("enc2-bay1", enclosure="enc2")).action == "failover"
    clock._t += 601
    assert d.decide(trap(clock), server("enc1-bay9")).action == "failover"  # the window passed


def test_storm_guard_by_percentage(tmp_path: Path) -> None:
    clock = FakeClock()
    d = decider(tmp_path, [rule()], {"storm": {"max_servers": None, "max_percent": 10, "window": "10m",
                                               "scopes": ["domain_group"]}})
    got = [d.decide(trap(clock), server(f"enc1-bay{i}"), group_size=20).action for i in range(1, 4)]
    assert got == ["failover", "failover", "alert"]  # 10 % of 20 = 2


def test_rate_limit_per_group(tmp_path: Path) -> None:
    clock = FakeClock()
    d = decider(tmp_path, [rule()], {"rate_limit": {"max_failovers": 2, "window": "1h"}})
    got = [d.decide(trap(clock), server(f"enc1-bay{i}")).action for i in range(1, 4)]
    assert got == ["failover", "failover", "alert"]
    assert d.decide(trap(clock), server("enc3-bay1", group="dg2")).action == "failover"
    clock._t += 3600
    assert d.decide(trap(clock), server("enc1-bay7")).action == "failover"


def test_one_off_silence(tmp_path: Path) -> None:
    clock = FakeClock(start=datetime(2026, 11, 27, 21, 0, tzinfo=UTC).timestamp())
    d = decider(tmp_path, [rule()], silences=[{
        "id": "maint", "servers": "enc1-*", "start": "2026-11-27T22:00:00Z", "end": "2026-11-28T02:00:00Z",
        "comment": "firmware"}])
    assert d.decide(trap(clock), server("enc1-bay1")).action == "failover"
    clock._t += 3600
    silenced = d.decide(trap(clock), server("enc1-bay2"))
    assert silenced.action == "none" and silenced.guard == "silenced by maint (firmware)"
    assert d.decide(trap(clock), server("enc2-bay1", enclosure="enc2")).action == "failover"
    clock._t += 4 * 3600
    assert d.decide(trap(clock), server("enc1-bay3")).action == "failover"


def test_recurring_silence_past_midnight(tmp_path: Path) -> None:
    # 2026-11-27 is a Friday.
    d = decider(tmp_path, [rule(cooldown=1)], silences=[{
        "id": "weekend-nights", "groups": ["dg1"],
        "recurring": {"days": ["fri", "sat"], "start": "22:00", "end": "06:00", "timezone": "UTC"}}])

    def at(text: str) -> str:
        clock = FakeClock(start=datetime.fromisoformat(text).timestamp())
        return d.decide(trap(clock), server(f"s-{text}")).action

    assert at("2026-11-27T21:59:00+00:00") == "failover"
    assert at("2026-11-27T22:00:00+00:00") == "none"
    assert at("2026-11-28T05:59:00+00:00") == "none"  # Saturday morning belongs to Friday night
    assert at("2026-11-28T06:00:00+00:00") == "failover"
    assert at("2026-11-29T03:00:00+00:00") == "none"  # Sunday morning: Saturday night
    assert at("2026-11-30T03:00:00+00:00") == "failover"  # Monday morning: Sunday is not listed


def test_alert_only_group_and_pause(tmp_path: Path) -> None:
    clock = FakeClock()
    d = decider(tmp_path, [rule(cooldown=1)], {"alert_only_groups": ["dg2"]})
    only = d.decide(trap(clock), server("enc3-bay1", group="dg2"))
    assert only.action == "alert" and only.guard == "domain group dg2 is alert-only"
    d.paused = "datacenter move"
    paused = d.decide(trap(clock), server("enc1-bay1"))
    assert paused.action == "alert" and paused.guard == "automatic failover paused: datacenter move"


def test_enclosure_fault_marks_the_enclosure(tmp_path: Path) -> None:
    clock = FakeClock()
    d = decider(tmp_path, [{"id": "oa-psu", "action": "alert", "enclosure_fault": True,
                            "match": {"trap_oid": "1.3.6.1.4.1.232.0.22013"}}],
                {"enclosure_fault_window": "1h"})
    d.decide(trap(clock, "1.3.6.1.4.1.232.0.22013"), server("enc1-bay3"))
    assert d.state.faulted_enclosures(clock.time()) == {"enc1"}
    assert d.state.faulted_enclosures(clock.time() + 3600) == set()


def test_state_survives_a_snapshot(tmp_path: Path) -> None:
    clock = FakeClock()
    d = decider(tmp_path, [rule("mem", "alert", threshold={"count": 2, "window": "1h"})])
    d.decide(trap(clock), server())
    restored = Decider(d.ruleset, d.guards, [], RuleState.restore(d.state.snapshot()))
    assert restored.decide(trap(clock), server()).action == "alert"


@pytest.mark.slow
def test_cost_does_not_scan_rules_that_cannot_match(tmp_path: Path) -> None:
    clock = FakeClock()
    many = [{"id": f"r{i}", "action": "alert", "match": {"trap_oid": f"1.3.6.1.4.1.99.0.{i}"}}
            for i in range(2000)]
    many += [{"id": f"m{i}", "action": "alert", "match": {"message_id": f"iLOEvents.*.Msg{i}"}}
             for i in range(2000)]
    d = decider(tmp_path, [*many, rule()])
    assert [r.id for r in d.ruleset.candidates(trap(clock))] == ["cpu"]
    assert [r.id for r in d.ruleset.candidates(redfish(clock, "iLOEvents.2.3.Msg7"))] == ["m7"]


# --- loading --------------------------------------------------------------------------------------------


def test_every_error_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "rules:\n"
        "  - id: a\n"
        "    action: explode\n"
        "    match: {trap_oid: 1.2.3}\n"
        "  - id: b\n"
        "    action: alert\n"
        "    match:\n"
        "      severity: {at_least: Sometimes}\n"
        "  - id: c\n"
        "    action: alert\n"
        "    match: {trap_oid: 1.2}\n"
        "    clears: [nope]\n"
        "    threshold: {count: 0, window: soon}\n"
        "disable: [ghost]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_policy([path], builtin=False)
    text = [str(i) for i in err.value.issues]
    assert f"{path}:3: rules[0].action: Input should be 'failover', 'alert' or 'ignore'" in text
    assert any(t.startswith(f"{path}:7: rules[1].match: ") and "unknown severity" in t for t in text)
    assert any(t.startswith(f"{path}:13: rules[2].threshold.count: ") for t in text)
    assert any(t.startswith(f"{path}:13: rules[2].threshold.window: ") for t in text)


def test_cross_references_are_checked(tmp_path: Path) -> None:
    path = policy(tmp_path, [rule("a", clears=["nope"]), rule("b", requires={"rules": ["ghost"],
                                                                             "within": "1m"})],
                  disable=["missing"])
    with pytest.raises(ConfigError) as err:
        load_policy([path], builtin=False)
    text = "\n".join(str(i) for i in err.value.issues)
    assert "rules[0].clears: no rule nope" in text
    assert "rules[1].requires.rules: no rule ghost" in text
    assert "disable[0]: no rule missing to disable" in text


def test_reload_with_a_broken_file_keeps_the_old_rules(tmp_path: Path) -> None:
    path = policy(tmp_path, [rule("a")])
    holder = PolicyHolder([path], builtin=False, packs=None, metrics=Metrics())
    holder.decider.state.last_failover.touch("x", 1.0)
    path.write_text("rules:\n  - id: a\n    action: [\n")
    assert holder.changed()
    problems = holder.reload()
    assert problems and problems[0].startswith(f"{path}:")
    assert list(holder.policy.ruleset.rules) == ["a"]
    path.write_text(yaml.safe_dump({"rules": [rule("a", "alert"), rule("b")]}))
    assert holder.reload() == []
    assert sorted(holder.policy.ruleset.rules) == ["a", "b"]
    assert holder.decider.ruleset.rules["a"].spec.action == "alert"
    assert holder.decider.state.last_failover.get("x") == 1.0  # state kept across the reload


def test_site_rules_override_and_disable_builtins(tmp_path: Path) -> None:
    pack = load_policy([], builtin=True)
    if not len(pack.ruleset):
        pytest.skip("no built-in packs yet")
    first = next(iter(pack.ruleset.rules.values()))
    site = policy(tmp_path, [{**first.spec.model_dump(exclude_none=True, exclude_defaults=True),
                              "id": first.id, "action": "ignore", "match": first.spec.match}],
                  disable=[r for r in list(pack.ruleset.rules)[1:2]])
    merged = load_policy([site], builtin=True)
    assert merged.ruleset.rules[first.id].spec.action == "ignore"
    assert first.id in merged.overridden and len(merged.disabled) == 1


def test_guards_default() -> None:
    g = GuardsSpec()
    assert g.storm is not None and g.rate_limit is not None and g.cooldown == 3600


def test_columnar_varbinds(tmp_path: Path) -> None:
    clock = FakeClock()
    status = "1.3.6.1.4.1.232.1.2.2.1.1.6"
    d = decider(tmp_path, [{"id": "cpu-status", "action": "failover",
                            "match": {"trap_oid": "1.3.6.1.4.1.232.0.1006", f"varbinds.{status}.*": 4}}])
    ev = trap(clock, "1.3.6.1.4.1.232.0.1006", **{f"{status}.2".replace(".", "_"): "4"})
    assert d.decide(ev, server()).action == "failover"
    ok = trap(clock, "1.3.6.1.4.1.232.0.1006", **{f"{status}.2".replace(".", "_"): "2"})
    miss = d.decide(ok, server("enc1-bay2"))
    assert miss.action == "none" and f"no varbind under {status} is == 4" in miss.near[0][1]
    absent = d.decide(trap(clock, "1.3.6.1.4.1.232.0.1006"), server("enc1-bay3"))
    assert absent.action == "none" and "(none)" in absent.near[0][1]


def test_an_absent_column_is_tested_as_an_absent_value(tmp_path: Path) -> None:
    """`{not: …}` on a column the trap does not carry holds (as on an absent scalar varbind)."""
    clock = FakeClock()
    kind = "1.3.6.1.4.1.232.6.2.20.2.1.8"
    d = decider(tmp_path, [{"id": "own", "action": "failover",
                            "match": {"trap_oid": CPU, f"varbinds.{kind}.*": {"not": {"in": [3, 5]}}}}])
    assert d.decide(trap(clock), server()).action == "failover"
    inputs = trap(clock, CPU, **{f"{kind}.1".replace(".", "_"): "3"})
    assert d.decide(inputs, server("enc1-bay2")).action == "none"


def test_an_enclosure_wide_event_without_a_server_marks_its_enclosure(tmp_path: Path) -> None:
    clock = FakeClock()
    d = decider(tmp_path, [{"id": "oa-psu", "action": "alert", "enclosure_fault": True,
                            "match": {"trap_oid": "1.3.6.1.4.1.232.0.22013"}}])
    event = trap(clock, "1.3.6.1.4.1.232.0.22013").model_copy(update={"enclosure": "enc4"})
    decision = d.decide(event, None)
    assert (decision.action, decision.server) == ("alert", None)
    assert d.state.faulted_enclosures(clock.time()) == {"enc4"}
    d.decide(trap(clock, "1.3.6.1.4.1.232.0.22013"), None)  # no enclosure known: nothing marked
    assert d.state.faulted_enclosures(clock.time()) == {"enc4"}


# --- declined failovers -----------------------------------------------------------------------------------


def test_a_decline_gives_back_the_cooldown_and_the_rate_limit(tmp_path: Path) -> None:
    clock = FakeClock()
    d = decider(tmp_path, [rule()], {"rate_limit": {"max_failovers": 1, "window": "1h"}})
    first = d.decide(trap(clock), server())
    assert first.action == "failover" and "enc1-bay1" in d.state.last_failover
    d.decline(first, clock.time() + 300, "BMC reads OK", {"health": "OK"})
    assert "enc1-bay1" not in d.state.last_failover and list(d.state.failovers["dg1"]) == []
    other = d.decide(trap(clock), server("enc1-bay2"))
    assert other.action == "failover"  # the group's one failover was given back
    d.release(other)
    d.release(other)  # twice gives back nothing more
    assert list(d.state.failovers["dg1"]) == []


def test_within_the_window_a_second_signal_reopens_and_a_resend_does_not(tmp_path: Path) -> None:
    clock = FakeClock()
    d = decider(tmp_path, [rule(), {"id": "mem", "action": "failover",
                                    "match": {"trap_oid": "1.3.6.1.4.1.232.0.6096"}}])
    s = server()
    first = d.decide(trap(clock), s)
    d.decline(first, clock.time() + 300, "BMC reads OK", {"health": "OK"})
    clock._t += 10
    resend = d.decide(trap(clock), s)
    assert resend.action == "failover" and resend.reopened is None
    assert resend.notes == [f"the same event as the declined one at {iso(first.time)} (a resend): not a "
                            "second signal"]
    d.decline(resend, clock.time() + 300, "BMC reads OK", None)
    open_ = d.state.open_decline(s.id, clock.time())
    assert open_ is not None and open_["until"] == first.time.timestamp() + 300  # not extended
    clock._t += 10
    second = d.decide(trap(clock, "1.3.6.1.4.1.232.0.6096"), s)
    assert second.rule == "mem" and second.reopened is not None
    assert second.reopened["by"] == "second signal" and second.reopened["rule"] == "cpu"
    clock._t += 300
    late = d.decide(trap(clock, "1.3.6.1.4.1.232.0.6096"), server("enc1-bay9"))
    assert late.reopened is None


def test_a_health_poll_reading_unhealthy_within_the_window_fires_the_declined_rule(tmp_path: Path) -> None:
    clock = FakeClock()
    d = decider(tmp_path, [rule()])
    s = server()
    d.decline(d.decide(trap(clock), s), clock.time() + 300, "BMC reads OK", None)

    def poll(health: str) -> Event:
        return Event(source="redfish-poll", time=clock.now(), sender="10.0.0.1", server=s.id,
                     message_key="HealthChanged", health=health, previous_health="OK")

    assert d.decide(poll("OK"), s).action == "none"
    clock._t += 60
    changed = d.decide(poll("Critical"), s)
    assert (changed.action, changed.rule) == ("failover", "cpu")
    assert changed.reopened is not None and changed.reopened["by"] == "health change"
    assert changed.matched[0][2].startswith("health changed from OK to Critical within the window")
    assert d.decide(poll("Critical"), server("enc1-bay2")).action == "none"  # no decline open there
    clock._t += 300
    assert d.decide(poll("Critical"), s).action == "none"  # the window has closed


def test_a_clear_closes_the_declined_failover(tmp_path: Path) -> None:
    clock = FakeClock()
    d = decider(tmp_path, [rule(), {"id": "cancel", "action": "ignore", "clears": ["cpu"],
                                    "match": {"trap_oid": "1.3.6.1.4.1.232.0.9025"}}])
    s = server()
    d.decline(d.decide(trap(clock), s), clock.time() + 300, "BMC reads OK", None)
    cleared = d.decide(trap(clock, "1.3.6.1.4.1.232.0.9025"), s)
    assert cleared.notes == ["cancel clears cpu: the declined failover of enc1-bay1 is closed"]
    assert d.state.open_decline(s.id, clock.time()) is None


def test_an_open_decline_survives_a_snapshot(tmp_path: Path) -> None:
    clock = FakeClock()
    d = decider(tmp_path, [rule()])
    d.decline(d.decide(trap(clock), server()), clock.time() + 300, "BMC reads OK", {"health": "OK"})
    restored = RuleState.restore(d.state.snapshot())
    info = restored.open_decline("enc1-bay1", clock.time())
    assert info is not None and info["rule"] == "cpu" and info["reading"] == {"health": "OK"}


def test_a_pair_known_to_come_spuriously_is_not_a_second_signal(tmp_path: Path) -> None:
    clock = FakeClock()
    d = decider(tmp_path, [rule(second_signal=False),
                           {"id": "mem", "action": "failover", "second_signal": False,
                            "match": {"trap_oid": "1.3.6.1.4.1.232.0.6096"}},
                           {"id": "board", "action": "failover",
                            "match": {"trap_oid": "1.3.6.1.4.1.232.0.6067"}}])
    s = server()
    d.decline(d.decide(trap(clock), s), clock.time() + 300, "BMC reads OK", None)
    pair = d.decide(trap(clock, "1.3.6.1.4.1.232.0.6096"), s)
    assert pair.reopened is None and "known to come spuriously together" in pair.notes[0]
    other = d.decide(trap(clock, "1.3.6.1.4.1.232.0.6067"), s)
    assert other.reopened is not None and other.reopened["rule"] == "cpu"  # a solid signal still counts
