"""Events through the daemon: resolution, rules, decisions stored and explained, rule-triggered jobs,
pause, confirmation before a job (declined decisions kept open, a second signal or a health change
within the window), enclosure faults from a real Onboard Administrator address, state across a restart,
reload, explanations in both modes."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.main import LabSimulator
from monitor.core.clock import FakeClock
from monitor.core.config import MonitorConfig
from tests.support.harness import DaemonFactory, Harness, LabControl, monitor_config
from tests.support.wait import eventually

CPU = "1.3.6.1.4.1.232.0.1026"
MEM = "1.3.6.1.4.1.232.0.6015"
OA_PSU = "1.3.6.1.4.1.232.0.22013"

SITE_RULES: dict[str, Any] = {
    "rules": [
        {"id": "cpu-failed", "action": "failover", "severity": "critical", "source": "snmp",
         "match": {"trap_oid": CPU}, "description": "CPU uncorrectable"},
        {"id": "cpu-confirmed", "action": "failover", "confirm": True, "source": "redfish",
         "match": {"message_id": "iLOEvents.*.ProcessorStatusFailed"}},
        {"id": "mem-correctable", "action": "alert", "severity": "major",
         "match": {"trap_oid": MEM}, "threshold": {"count": 2, "window": "1h"}},
        {"id": "oa-psu", "action": "alert", "enclosure_fault": True, "match": {"trap_oid": OA_PSU}},
    ],
    "guards": {"storm": None, "rate_limit": None},
}


def config(lab: LabSimulator, tmp_path: Path, token: str, rules: dict[str, Any] | None = None,
           **failover: Any) -> MonitorConfig:
    """The lab, the site rules above only, and `failover.confirm: always` (the default)."""
    path = tmp_path / "site-rules.yaml"
    path.write_text(yaml.safe_dump(rules or SITE_RULES))
    base = monitor_config(lab.manager_url, tmp_path, token, **failover)
    return base.model_copy(update={"rules": base.rules.model_copy(
        update={"builtin": False, "files": [str(path)]})})


def trap(sender: str, oid: str, **extra: Any) -> dict[str, Any]:
    return {"source": "snmp", "sender": sender, "trap_oid": oid, **extra}


async def post_event(h: Harness, event: dict[str, Any]) -> None:
    status, body = await h.api("POST", "/api/v1/events", event)
    assert status == 202, body


async def decisions(h: Harness, server: str) -> list[dict[str, Any]]:
    status, body = await h.api("GET", f"/api/v1/decisions?server={server}")
    assert status == 200
    return list(body)


async def wait_decisions(h: Harness, n: int) -> None:
    pipeline = h.daemon.pipeline
    assert pipeline is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while pipeline.processed < n:  # the consumer is another task: give it the loop until it is done
        assert loop.time() < deadline, f"only {pipeline.processed} of {n} events decided"
        await asyncio.sleep(0)


async def crash(lab_control: LabControl, server: str) -> None:
    """The host has crashed: its BMC reads Critical."""
    await lab_control.call("PUT", f"/lab/v1/servers/{server}", {"health": "Critical"})


async def test_trap_to_job(lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory,
                           tmp_path: Path, token: str) -> None:
    h = await start_daemon(config(lab, tmp_path, token))
    await crash(lab_control, "enc1-bay1")
    await post_event(h, trap("127.77.1.1", CPU))  # enc1-bay1's BMC address
    await h.wait_for(lambda: any(j.server == "enc1-bay1" and not j.state.active for j in h.jobs.values()))
    job = next(j for j in h.jobs.values() if j.server == "enc1-bay1").public()
    assert job["state"] == "completed", job
    assert job["trigger"]["kind"] == "rule" and job["trigger"]["rule"] == "cpu-failed"
    assert job["trigger"]["event"]["trap_oid"] == CPU
    assert job["trigger"]["resolved_by"] == "sender 127.77.1.1"
    confirmation = job["trigger"]["confirmation"]
    assert confirmation["verdict"] == "confirmed" and confirmation["reason"].endswith(": health Critical")
    assert confirmation["reading"] == {"power": "On", "health": "Critical", "health_rollup": "Critical",
                                       "state": "Enabled"}
    po = job["steps"][3]["detail"]
    assert po.startswith("before fencing: BMC health Critical")  # re-read and recorded by the flow
    (d,) = await decisions(h, "enc1-bay1")
    assert d["action"] == "failover" and d["rule"] == "cpu-failed" and d["job"] == job["job"]
    assert [m["rule"] for m in d["matched"]] == ["cpu-failed"]
    assert d["confirmation"] == confirmation


async def test_the_manager_is_read_while_the_bmc_confirms(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job's creation needs the manager's view of the server: it is read while the BMC read of the
    confirmation is on the wire, not after it (spies on the real adapters record the order); a declined
    confirmation creates no job, whatever the manager answered."""
    await lab_control.call("PUT", "/lab/v1/latency", {"power_off_s": 0, "power_on_s": 0, "boot_s": 0,
                                                      "bmc_ms": 150})
    h = await start_daemon(config(lab, tmp_path, token))
    assert h.daemon.pipeline is not None and h.daemon.runner is not None
    power, manager = h.daemon.pipeline.power, h.daemon.runner.d.manager
    assert power is not None
    seen: list[str] = []
    health, server = power.health, manager.server

    async def spied_health(s: Any) -> Any:
        seen.append(f"bmc read {s.id}")
        try:
            return await health(s)
        finally:
            seen.append(f"bmc answered {s.id}")

    async def spied_server(server_id: str) -> Any:
        seen.append(f"manager read {server_id}")
        return await server(server_id)

    monkeypatch.setattr(power, "health", spied_health)
    monkeypatch.setattr(manager, "server", spied_server)
    await crash(lab_control, "enc1-bay1")
    await post_event(h, trap("127.77.1.1", CPU))
    await h.wait_for(lambda: any(j.server == "enc1-bay1" and not j.state.active for j in h.jobs.values()))
    first = seen[:3]
    assert first[0] == "bmc read enc1-bay1" and first[2] == "bmc answered enc1-bay1", seen
    assert first[1] == "manager read enc1-bay1", seen  # before the BMC answered
    (job,) = [j for j in h.jobs.values() if j.server == "enc1-bay1"]
    assert job.state.value == "completed"

    seen.clear()  # enc1-bay2 reads healthy: the confirmation declines, no job, whatever was read
    await post_event(h, trap("127.77.1.2", CPU))
    await wait_decisions(h, 2)
    (d,) = await decisions(h, "enc1-bay2")
    assert d["action"] == "declined" and d["job"] is None
    assert [j for j in h.jobs.values() if j.server == "enc1-bay2"] == []
    assert seen[0] == "bmc read enc1-bay2", seen


async def test_unknown_sender_is_kept_counted_and_never_fails_over(
        lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str) -> None:
    h = await start_daemon(config(lab, tmp_path, token))
    await post_event(h, trap("192.0.2.99", CPU))
    await wait_decisions(h, 1)
    status, rows = await h.api("GET", "/api/v1/decisions?limit=5")
    assert status == 200 and rows[0]["server"] is None
    assert rows[0]["action"] == "alert" and "unknown server" in rows[0]["guard"]
    assert h.jobs == {}
    _, metrics = await h.api("GET", "/metrics")
    assert 'events_unresolved_total{reason="no_match",source="snmp"} 1' in metrics


async def test_near_misses_and_thresholds_are_explained(
        lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str) -> None:
    h = await start_daemon(config(lab, tmp_path, token))
    await post_event(h, trap("127.77.1.2", MEM))
    await wait_decisions(h, 1)
    (d,) = await decisions(h, "enc1-bay2")
    assert d["action"] == "none"
    assert {"rule": "mem-correctable", "why": "threshold: 1 of 2 within 3600 s"} in d["near_misses"]
    status, explained = await h.api("POST", "/api/v1/rules/explain", trap("127.77.1.2", MEM))
    assert status == 200 and explained["action"] == "alert"  # the second would fire
    assert explained["resolved_by"] == "sender 127.77.1.2" and explained["mode"].startswith("live")
    status, fresh = await h.api("POST", "/api/v1/rules/explain?mode=rules", trap("127.77.1.2", MEM))
    assert status == 200 and fresh["action"] == "none" and fresh["mode"].startswith("rules")
    await post_event(h, trap("127.77.1.2", MEM))
    await wait_decisions(h, 2)
    assert (await decisions(h, "enc1-bay2"))[0]["action"] == "alert"


async def test_pause_turns_failover_into_alert(lab: LabSimulator, start_daemon: DaemonFactory,
                                               tmp_path: Path, token: str) -> None:
    h = await start_daemon(config(lab, tmp_path, token))
    assert (await h.api("POST", "/api/v1/pause", {"reason": "x"}, token=None))[0] == 401
    status, body = await h.api("POST", "/api/v1/pause", {"reason": "datacenter move"})
    assert status == 200 and body["paused"] == "datacenter move"
    await post_event(h, trap("127.77.1.1", CPU))
    await wait_decisions(h, 1)
    (d,) = await decisions(h, "enc1-bay1")
    assert d["action"] == "alert" and d["guard"] == "automatic failover paused: datacenter move"
    assert h.jobs == {}
    assert (await h.api("DELETE", "/api/v1/pause"))[1]["paused"] is None
    assert (await h.api("GET", "/api/v1/pause"))[1]["paused"] is None


async def test_a_decline_is_its_own_outcome_and_a_second_signal_fails_over(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    h = await start_daemon(config(lab, tmp_path, token))
    event = {"source": "redfish", "sender": "127.77.1.3", "message_id": "iLOEvents.2.3.ProcessorStatusFailed",
             "severity": "Critical"}
    await post_event(h, event)  # the BMC still says OK: declined, no job
    await wait_decisions(h, 1)
    (d,) = await decisions(h, "enc1-bay3")
    assert d["action"] == "declined" and d["rule"] == "cpu-confirmed" and d["job"] is None
    assert d["guard"].startswith("confirmation declined: BMC reads health OK")
    assert d["confirmation"]["verdict"] == "declined" and d["confirmation"]["reading"]["health"] == "OK"
    assert d["confirmation"]["open_until"]
    assert h.jobs == {} and (await lab_control.server("enc1-bay3"))["power"] == "On"  # never fenced
    state = h.daemon.pipeline.decider.state
    assert "enc1-bay3" not in state.last_failover  # the cooldown is not used up
    assert state.open_decline("enc1-bay3", h.daemon.clock.time())["rule"] == "cpu-confirmed"
    _, metrics = await h.api("GET", "/metrics")
    assert 'decisions_total{action="declined"} 1' in metrics
    await post_event(h, event)  # the same event again (a resend) is not a second signal
    await wait_decisions(h, 2)
    assert (await decisions(h, "enc1-bay3"))[0]["action"] == "declined"
    await post_event(h, trap("127.77.1.3", CPU))  # a second, different signal within the window
    await h.wait_for(lambda: any(not j.state.active for j in h.jobs.values()))
    (job,) = [j.public() for j in h.jobs.values()]
    assert job["state"] == "completed", job
    assert job["trigger"]["rule"] == "cpu-failed"
    assert job["trigger"]["confirmation"]["verdict"] == "confirmed"
    assert "a second signal within the window of the failover declined at" in \
        job["trigger"]["confirmation"]["reason"]
    assert job["trigger"]["reopened"]["rule"] == "cpu-confirmed"
    assert state.open_decline("enc1-bay3", h.daemon.clock.time()) is None


async def test_a_health_change_within_the_window_fails_the_server_over(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    h = await start_daemon(config(lab, tmp_path, token))
    await post_event(h, {"source": "redfish", "sender": "127.77.1.4", "severity": "Critical",
                         "message_id": "iLOEvents.2.3.ProcessorStatusFailed"})
    await wait_decisions(h, 1)
    assert (await decisions(h, "enc1-bay4"))[0]["action"] == "declined"
    await crash(lab_control, "enc1-bay4")
    # What the health poller emits when it sees the change (adapters/redfish/poller.py, HealthPoller).
    await post_event(h, {"source": "redfish-poll", "sender": "127.77.1.4", "server": "enc1-bay4",
                         "message_key": "HealthChanged", "event_type": "StatusChange", "severity": "Critical",
                         "health": "Critical", "previous_health": "OK"})
    await h.wait_for(lambda: any(not j.state.active for j in h.jobs.values()))
    (job,) = [j.public() for j in h.jobs.values()]
    assert job["state"] == "completed", job
    assert job["trigger"]["rule"] == "cpu-confirmed" and job["trigger"]["reopened"]["by"] == "health change"
    assert job["trigger"]["confirmation"]["reading"]["health"] == "Critical"


async def test_an_oa_trap_resolves_to_its_enclosure_and_bay(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    """The lab's OA of enc1 sends from 127.77.1.0 (the enclosure's management address): a trap naming a
    bay resolves to that blade, one naming none to the enclosure only."""
    rules = {**SITE_RULES, "rules": [*SITE_RULES["rules"], {
        "id": "oa-blade-critical", "action": "failover", "source": "snmp",
        "match": {"trap_oid": "1.3.6.1.4.1.232.0.22054"}}]}
    h = await start_daemon(config(lab, tmp_path, token, rules=rules))
    assert h.daemon.inventory().enclosures["enc1"].management_addresses == ("127.77.1.0",)
    position = "1.3.6.1.4.1.232.22.2.4.1.1.1.8.1.1.5"  # cpqRackServerBladePosition.<rack>.<chassis>.<i>
    await crash(lab_control, "enc1-bay5")
    await post_event(h, trap("127.77.1.0", "1.3.6.1.4.1.232.0.22054", varbinds={position: "5"}))
    await h.wait_for(lambda: any(not j.state.active for j in h.jobs.values()))
    (job,) = [j.public() for j in h.jobs.values()]
    assert job["server"] == "enc1-bay5" and job["state"] == "completed", job
    assert job["trigger"]["resolved_by"] == "enclosure manager of enc1 (127.77.1.0) bay 5"
    await post_event(h, trap("127.77.1.0", OA_PSU))  # names no bay
    await wait_decisions(h, 2)
    _, rows = await h.api("GET", "/api/v1/decisions?limit=1")
    assert rows[0]["server"] is None and rows[0]["event"]["enclosure"] == "enc1"
    assert rows[0]["action"] == "alert" and rows[0]["rule"] == "oa-psu"
    assert h.daemon.pipeline.decider.state.faulted_enclosures(h.daemon.clock.time()) == {"enc1"}


async def test_no_spare_from_an_enclosure_with_an_enclosure_wide_fault(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    h = await start_daemon(config(lab, tmp_path, token))
    await post_event(h, trap("127.77.1.0", OA_PSU))  # the OA of enc1: an enclosure power supply failed
    await crash(lab_control, "enc1-bay1")
    await post_event(h, trap("127.77.1.1", CPU))
    await h.wait_for(lambda: any(not j.state.active for j in h.jobs.values()))
    (job,) = [j.public() for j in h.jobs.values()]
    assert job["state"] == "completed" and job["spare"] == "enc2-bay9", job
    assert "enc1-bay9: enclosure enc1 reports an enclosure-wide fault" in job["steps"][4]["detail"]


async def test_an_open_window_survives_a_restart(lab: LabSimulator, start_daemon: DaemonFactory,
                                                 tmp_path: Path, token: str) -> None:
    cfg = config(lab, tmp_path, token)
    h = await start_daemon(cfg)
    await post_event(h, trap("127.77.1.2", MEM))
    await wait_decisions(h, 1)
    h.daemon_stop()
    await h.stopped()
    h2 = await start_daemon(cfg)
    await post_event(h2, trap("127.77.1.2", MEM))
    await wait_decisions(h2, 1)
    assert (await decisions(h2, "enc1-bay2"))[0]["action"] == "alert"


async def test_rule_files_reload_and_a_broken_one_keeps_the_rules(
        lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str) -> None:
    clock = FakeClock()
    await asyncio.sleep(0)
    cfg = config(lab, tmp_path, token)
    h = await start_daemon(cfg, clock=clock)
    path = Path(cfg.rules.files[0])
    path.write_text("rules:\n  - id: x\n    action: [\n")
    problems = h.daemon.reload()  # what SIGHUP does
    assert problems and problems[0].startswith(f"{path}:")
    assert "cpu-failed" in h.daemon.policy.policy.ruleset.rules
    rules = {**SITE_RULES, "rules": [*SITE_RULES["rules"], {"id": "new-one", "action": "alert",
                                                          "match": {"trap_oid": "1.2.3"}}]}
    path.write_text(yaml.safe_dump(rules))
    await clock.advance(5)  # the watcher looks every 2 s (config) on the daemon's clock
    await eventually(lambda: "new-one" in h.daemon.policy.policy.ruleset.rules, 10, "rule new-one",
                     interval=0)


@pytest.mark.slow
async def test_rules_explain_cli(lab: LabSimulator, tmp_path: Path, token: str) -> None:
    cfg = config(lab, tmp_path, token)
    cfg_file = tmp_path / "monitor.yaml"
    cfg_file.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json(exclude={"http"}))))
    events = tmp_path / "events.json"
    events.write_text(json.dumps([trap("127.77.1.2", MEM), trap("127.77.1.2", MEM),
                                  trap("127.77.1.1", CPU)]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitor", "rules", "explain", str(events), "-c", str(cfg_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert "event 1: snmp 1.3.6.1.4.1.232.0.6015 from 127.77.1.2 -> server enc1-bay2" in text
    assert "not matched  mem-correctable: threshold: 1 of 2 within 3600 s" in text
    assert "decision: alert by mem-correctable" in text
    assert "decision: failover by cpu-failed" in text
    bad = tmp_path / "bad.json"
    bad.write_text('{"source": "snmp", "trap_oid": 5, "nonsense": 1}')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitor", "rules", "explain", str(bad), "-c", str(cfg_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1 and "nonsense" in err.decode()


@pytest.mark.parametrize("bad", [b"{", b"[1]", b'{"source": "carrier-pigeon"}'])
async def test_bad_events_are_refused(lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path,
                                      token: str, bad: bytes) -> None:
    h = await start_daemon(config(lab, tmp_path, token))
    status, _ = await h.api("POST", "/api/v1/events", raw=bad)
    assert status == 400
    assert (await h.api("POST", "/api/v1/events", trap("1.1.1.1", CPU), token=None))[0] == 401


async def snmptrap(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "snmptrap", *args, env={"MIBS": "", "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()


async def test_real_traps_resolve_and_fail_over(lab: LabSimulator, lab_control: LabControl,
                                                start_daemon: DaemonFactory, tmp_path: Path,
                                                token: str) -> None:
    cfg = config(lab, tmp_path, token)
    cfg = cfg.model_copy(update={"snmp": cfg.snmp.model_validate(
        {"listen": "127.0.0.1:0", "communities": ["public"]})})
    h = await start_daemon(cfg)
    assert h.daemon.snmp_address is not None
    target = f"127.0.0.1:{h.daemon.snmp_address[1]}"
    await crash(lab_control, "enc1-bay1")
    # From the BMC's own address (as an iLO sends it): resolved by the sender.
    await snmptrap("--clientaddr=127.77.1.1", "-v", "2c", "-c", "public", target, "", CPU,
                   "1.3.6.1.2.1.1.5.0", "s", "host11.lab.example")
    # A v1 trap from elsewhere about enc1-bay2, named by its agent address.
    await snmptrap("-v", "1", "-c", "public", target, "1.3.6.1.4.1.232", "127.77.1.2", "6", "6015", "")
    # A wrong community: dropped and counted, never decided.
    await snmptrap("-v", "2c", "-c", "wrong", target, "", CPU)
    await h.wait_for(lambda: any(j.server == "enc1-bay1" and not j.state.active for j in h.jobs.values()))
    await wait_decisions(h, 2)
    (job,) = [j.public() for j in h.jobs.values()]
    assert job["state"] == "completed" and job["trigger"]["resolved_by"] == "sender 127.77.1.1"
    (d,) = await decisions(h, "enc1-bay2")
    assert d["event"]["trap_oid"] == MEM and d["event"]["snmp_version"] == "1"
    _, metrics = await h.api("GET", "/metrics")
    assert 'snmp_dropped_total{reason="bad_community"} 1' in metrics


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitor", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_rules_explain_live_runs_the_guards_and_the_confirmation(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    cfg = config(lab, tmp_path, token)
    h = await start_daemon(cfg)
    events = tmp_path / "events.json"
    events.write_text(json.dumps([trap("127.77.1.1", CPU), trap("127.77.1.2", CPU)]))
    await crash(lab_control, "enc1-bay2")
    code, out, err = await run_cli("rules", "explain", str(events), "--live", "--api", h.base)
    assert code == 0, err
    assert "mode: live: the running monitor's pause, silences, cooldowns" in out
    assert "confirmation: declined: BMC reads health OK" in out
    assert "decision: declined by cpu-failed; guard: confirmation declined" in out
    assert "confirmation: confirmed: BMC reads health Critical" in out
    assert "decision: failover by cpu-failed" in out
    assert h.jobs == {}  # nothing acted on
    assert "enc1-bay2" not in h.daemon.pipeline.decider.state.last_failover
    await h.api("POST", "/api/v1/pause", {"reason": "change freeze"})
    code, out, _ = await run_cli("rules", "explain", str(events), "--live", "--api", h.base)
    assert code == 0 and "guard: automatic failover paused: change freeze" in out
    # offline: the rules over this file alone, and what a confirmation would need
    cfg_file = tmp_path / "monitor.yaml"
    cfg_file.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json(exclude={"http"}))))
    code, out, err = await run_cli("rules", "explain", str(events), "-c", str(cfg_file))
    assert code == 0, err
    assert "mode: offline: rules: the rules and configured guards over these events alone" in out
    assert "confirmation: the BMC is read before a job: it must read health Warning/Critical" in out
    assert "decision: failover by cpu-failed" in out and "paused" not in out
    status, both = await h.api("POST", "/api/v1/rules/explain?mode=live",
                               [trap("127.77.1.1", CPU), trap("127.77.1.1", CPU)])
    assert status == 200 and [d["action"] for d in both] == ["alert", "alert"]
    assert (await h.api("POST", "/api/v1/rules/explain?mode=sideways", trap("127.77.1.1", CPU)))[0] == 400
