"""The operator's views against the lab: `plan` (what a failover would do, touching nothing), `status`
(one screen), and the spare pool check (every spare's BMC, N+k per group and model, its alert)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from lab.main import LabSimulator
from monitor.core.clock import FakeClock
from monitor.core.config import MonitorConfig
from tests.integration.test_faults import add_fault, run_clock_until
from tests.support.harness import DaemonFactory, LabControl, monitor_config
from tests.support.wait import eventually

ROOT = Path(__file__).resolve().parents[2]


def with_spares(cfg: MonitorConfig, **spares: Any) -> MonitorConfig:
    return cfg.model_copy(update={"spares": cfg.spares.model_copy(update=spares)})


async def cli(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitor", *argv, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# --- plan ---------------------------------------------------------------------------------------------


async def test_plan_of_a_healthy_server_picks_a_spare_and_touches_nothing(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    status, p = await h.api("GET", "/api/v1/plan/enc1-bay4")  # a ProLiant BL465c G7
    assert status == 200, p
    assert p["would_fail_over"] is True and p["blockers"] == [], p
    assert p["spare"]["spare"] == "enc1-bay12", p["spare"]
    assert p["spare"]["bmc"]["answers"] is True and p["spare"]["bmc"]["power"] == "Off"
    # The spares examined before it (enclosure, then bay) are passed over, each with why.
    passed = {r["server"]: r["reason"] for r in p["spare"]["passed_over"]}
    assert list(passed) == ["enc1-bay9", "enc1-bay10", "enc1-bay11"], passed
    assert passed["enc1-bay9"] == "model ProLiant BL460c differs from the source's ProLiant BL465c"
    assert [f["level"] for f in p["fence_levels"]] == ["bmc"] and p["fence_levels"][0]["power"] == "On"
    auto = p["automatic"]
    assert auto["rules"] and auto["rule"] is not None
    assert auto["guards"]["action"] == "failover" and auto["guards"]["guard"] is None
    # A healthy server: the BMC is read and the confirmation declines.
    assert auto["confirmation"]["verdict"] == "declined", auto["confirmation"]
    assert "health OK" in auto["confirmation"]["reason"]
    assert await lab_control.log() == []  # the plan sent no action to the lab
    assert await lab_control.profile_holders("prof-enc1-bay4") == ["enc1-bay4"]
    status, _ = await h.api("GET", "/api/v1/plan/enc9-bay9")
    assert status == 404
    status, body = await h.api("GET", "/api/v1/plan/enc1-bay1?rule=no-such-rule")
    assert status == 400 and "unknown rule" in body["error"]
    # The guards are live: paused, the plan says so (on a copy: nothing is used up).
    await h.api("POST", "/api/v1/pause", {"reason": "maintenance"})
    _, p = await h.api("GET", "/api/v1/plan/enc1-bay4")
    assert p["automatic"]["guards"]["guard"] == "automatic failover paused: maintenance"
    assert await lab_control.log() == []


async def test_plan_passes_over_a_spare_whose_bmc_is_down(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    cfg = monitor_config(lab.manager_url, tmp_path, token)
    h = await start_daemon(cfg.model_copy(update={"redfish": cfg.redfish.model_copy(update={"timeout": 1})}))
    # enc1-bay6 (Integrity BL860c) has two spares of its model: enc1-bay14 and enc2-bay14.
    await add_fault(lab_control, "bmc_down", "enc1-bay14")
    _, p = await h.api("GET", "/api/v1/plan/enc1-bay6")
    passed = {r["server"]: r["reason"] for r in p["spare"]["passed_over"]}
    assert p["spare"]["spare"] == "enc2-bay14", p["spare"]
    assert passed["enc1-bay14"].startswith("power state unknown"), passed
    await add_fault(lab_control, "bmc_down", "enc2-bay14")
    _, p = await h.api("GET", "/api/v1/plan/enc1-bay6")
    assert p["would_fail_over"] is False and p["spare"]["spare"] is None
    passed = {r["server"]: r["reason"] for r in p["spare"]["passed_over"]}
    assert passed["enc2-bay14"].startswith("power state unknown"), passed
    assert any("no qualified spare in domain group dg1" in b and "enc1-bay14: power state unknown" in b
               for b in p["blockers"]), p["blockers"]
    assert await lab_control.log() == []


# --- status ---------------------------------------------------------------------------------------------


async def test_status_shows_a_running_jobs_step_and_its_lock(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token, power_off_timeout=30,
                                          power_off_attempts=1, shutdown_grace=0.5))
    await add_fault(lab_control, "power_off_hangs", "enc1-bay3")
    job = await h.failover("enc1-bay3")

    async def in_power_off() -> dict[str, Any] | None:
        _, s = await h.api("GET", "/api/v1/status")
        jobs = [j for j in s["jobs"] if j["job"] == job and j["step"] == "power_off_source"]
        return s if jobs else None

    s = await eventually(in_power_off, 10, "the job in power_off_source")
    assert {"group": "dg1", "locked_by": job, "waiting": []} in s["groups"], s["groups"]
    assert [m["instance"] for m in s["monitors"]] == ["test"] and s["monitors"][0]["alive"]
    assert s["paused"] is None and s["silences"] == []
    (j,) = s["jobs"]
    assert j["server"] == "enc1-bay3" and j["owner"] == "test" and j["here"] is True
    # The plan of another server of the locked group says it would wait.
    _, p = await h.api("GET", "/api/v1/plan/enc1-bay1")
    assert p["lock"]["locked_by"] == job and "would wait" in p["lock"]["note"]
    code, out, err = await cli("status", "--api", h.base)
    assert code == 0, err
    assert f"dg1          locked by job {job}" in out and "step power_off_source" in out, out
    status, row = await h.api("POST", "/api/v1/silences", {"kind": "server", "target": "enc1-bay5",
                                                            "author": "ops", "comment": "fan swap",
                                                            "duration": 3600})
    assert status == 201, row
    _, s = await h.api("GET", "/api/v1/status")
    assert [(x["origin"], x["id"], x["target"]) for x in s["silences"]] == [("store", row["id"], "enc1-bay5")]
    await lab_control.call("DELETE", "/lab/v1/faults")


# --- the spare pool ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_spare_check_alerts_when_a_spares_bmc_goes_down_and_clears(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="monitor")
    clock = FakeClock()
    cfg = with_spares(monitor_config(lab.manager_url, tmp_path, token), check_interval=60, jitter=0,
                      timeout=2)
    cfg = cfg.model_copy(update={"redfish": cfg.redfish.model_copy(update={"timeout": 1})})
    h = await start_daemon(cfg, clock=clock)
    pool = h.daemon.spare_pool
    assert pool is not None
    await run_clock_until(clock, lambda: pool.checks >= 1)
    first = pool.checks
    _, r = await h.api("GET", "/api/v1/spares?group=dg1")
    cap = {c["model"]: c for c in r["capacity"]}
    # dg1's only BL870c spare is enc1-bay15: capacity 1 of 1.
    assert cap["Integrity BL870c"] == {"domain_group": "dg1", "model": "Integrity BL870c", "ready": 1,
                                       "spares": 1, "min": 1, "short": 0, "ok": True}
    assert all(s["domain_group"] == "dg1" for s in r["spares"]) and len(r["spares"]) == 13
    assert all(s["ready"] for s in r["spares"]), r["spares"]
    await add_fault(lab_control, "bmc_down", "enc1-bay15")
    await run_clock_until(clock, lambda: pool.checks > first)
    low = [rec.getMessage() for rec in caplog.records if "spare_capacity_low" in rec.getMessage()]
    assert len(low) == 1 and "spare-pool-dg1" in low[0] and "enc1-bay15: BMC unreachable" in low[0], low
    _, r = await h.api("GET", "/api/v1/spares?group=dg1")
    bay15 = next(s for s in r["spares"] if s["server"] == "enc1-bay15")
    assert bay15["reachable"] is False and bay15["ready"] is False
    metrics = (await h.api("GET", "/metrics"))[1]
    assert 'failover_monitor_spare_capacity_short{domain_group="dg1",model="Integrity BL870c"} 1.0' in metrics
    assert 'failover_monitor_spare_capacity{domain_group="dg1",model="ProLiant BL460c"} 6.0' in metrics
    code, out, _ = await cli("spares", "--group", "dg1", "--api", h.base)
    assert code == 1  # a group below N+k
    assert "enc1-bay15" in out and "NOT READY: BMC unreachable" in out and "SHORT by 1" in out, out
    second = pool.checks
    await lab_control.call("DELETE", "/lab/v1/faults")
    await run_clock_until(clock, lambda: pool.checks > second)
    ok = [rec.getMessage() for rec in caplog.records if "spare_capacity_ok" in rec.getMessage()]
    assert len(ok) == 1 and "spare-pool-dg1" in ok[0], ok
    code, out, _ = await cli("spares", "--group", "dg1", "--json", "--api", h.base)
    assert code == 0 and all(c["ok"] for c in json.loads(out)["capacity"])
    assert await lab_control.log() == []  # the check only reads


@pytest.mark.slow
async def test_plan_cli(lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    monkeypatch.setenv("FAILOVER_API_TOKEN", token)
    code, out, err = await cli("plan", "enc1-bay1", "--api", h.base)
    assert code == 0, err
    assert out.startswith("plan for enc1-bay1 (ProLiant BL460c Gen8, profile prof-enc1-bay1, group dg1): "
                          "WOULD FAIL OVER"), out
    assert "spare: enc1-bay9 (BMC answers: power Off, health OK)" in out
    assert "fence level bmc      answers: On" in out
    code, out, err = await cli("plan", "enc1-bay4", "--api", h.base)
    assert code == 0, err
    assert ("passed over: enc1-bay9: model ProLiant BL460c differs from the source's ProLiant BL465c"
            in out), out
    code, out, _ = await cli("plan", "enc1-bay1", "--json", "--api", h.base)
    assert code == 0 and json.loads(out)["spare"]["spare"] == "enc1-bay9"
    code, _, err = await cli("plan", "enc9-bay9", "--api", h.base)
    assert code == 1 and "unknown server enc9-bay9" in err
