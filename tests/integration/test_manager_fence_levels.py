"""The `manager` fence level through a real profile manager's face: whole failovers where the source's BMC
is dead (the lab's `bmc_down`) and `failover.fencing.levels: [bmc, manager]`, with `manager.kind: oneview`
(OneView's `PressAndHold` on the server-hardware's powerState) and `manager.kind: ome` (an OME
`POWER_CONTROL` job, powerState 8). The manager confirms Off and the job completes; every level failing
(the power-off accepted and never reached: `power_off_hangs`) keeps the profile on the source, nothing
moved. The labs and configs are test_oneview's and test_ome's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lab.main import LabSimulator
from monitor.core.config import MonitorConfig
from monitor.core.model import STEPS
from tests.integration import test_ome as ome
from tests.integration import test_oneview as ov
from tests.support.harness import DaemonFactory, Harness
from tests.support.net import shared_bmc_port

SOURCE = "enc1-bay1"
PROFILE = "prof-enc1-bay1"
FALL_THROUGH = {"levels": ["bmc", "manager"], "bmc": {"attempts": 1, "timeout": 0.5},
                "manager": {"attempts": 1, "timeout": 5}}
ALL_FAIL = {"levels": ["bmc", "manager"], "bmc": {"attempts": 1, "timeout": 0.3},
            "manager": {"attempts": 2, "timeout": 0.5}}


@pytest.fixture
async def ov_lab() -> AsyncIterator[LabSimulator]:
    async with LabSimulator(ov.lab_config(shared_bmc_port())) as sim:
        yield sim


@pytest.fixture
async def ome_lab() -> AsyncIterator[LabSimulator]:
    async with LabSimulator(ome.lab_config()) as sim:
        yield sim


def short_redfish(cfg: MonitorConfig) -> MonitorConfig:
    """A one-second Redfish time limit: the dead BMC fails fast."""
    return cfg.model_copy(update={"redfish": cfg.redfish.model_copy(update={"timeout": 1})})


def ov_fenced(lab: LabSimulator, tmp_path: Path, token: str, fencing: dict[str, Any]) -> MonitorConfig:
    return short_redfish(ov.ov_config(lab, tmp_path, token, fencing=fencing, power_off_attempts=1))


def ome_fenced(lab: LabSimulator, tmp_path: Path, token: str, fencing: dict[str, Any]) -> MonitorConfig:
    return short_redfish(ome.flow_config(lab, tmp_path, token, fencing=fencing, power_off_attempts=1))


def power_off_detail(job: dict[str, Any]) -> str:
    return str(job["steps"][STEPS.index("power_off_source")]["detail"])


async def levels_recorded(h: Harness, job: dict[str, Any]) -> list[str]:
    assert h.daemon.runner is not None
    stored = await h.daemon.runner.d.store.get_job(job["job"])
    assert stored is not None and stored.context.power_off is not None
    return [line.split(":")[0] for line in stored.context.power_off.levels]


def source_resets(lab: LabSimulator) -> list[tuple[str, int | None]]:
    """The power requests that reached the source (its BMC is dead: all came through the manager)."""
    return [(str(e["detail"]).split(":")[0], e.get("job")) for e in lab.world.log
            if e["kind"] == "reset" and e["server"] == SOURCE]


def assert_completed_through_the_manager(lab: LabSimulator, job: dict[str, Any]) -> None:
    assert job["state"] == "completed", job
    detail = power_off_detail(job)
    assert "confirmed Off by manager" in detail, detail
    assert "bmc: failed after" in detail and "manager: ok after" in detail, detail
    w = lab.world
    assert w.profiles[PROFILE].server == job["spare"] and w.servers[job["spare"]].power == "On"
    assert w.servers[SOURCE].power == "Off" and w.servers[SOURCE].profile is None
    # One forced power-off, through the manager and the job's gate (it carries the job's token).
    assert source_resets(lab) == [("ForceOff", job["job"])], source_resets(lab)
    assert w.violations == []


def assert_stays_on_the_source(lab: LabSimulator, job: dict[str, Any], attempts: int) -> None:
    assert job["state"] == "failed", job
    steps = {s["step"]: s["state"] for s in job["steps"]}
    assert steps["power_off_source"] == "failed", steps
    assert all(steps[s] == "skipped" for s in STEPS[STEPS.index("power_off_source") + 1:-1]), steps
    error = job["error"]
    assert "not confirmed by any fence level" in error and "the profile was not moved" in error, error
    assert "bmc: failed after" in error and "manager: failed after" in error, error
    assert f"{attempts} attempt(s) of 0.5 s" in error, error
    w = lab.world
    assert w.profiles[PROFILE].server == SOURCE and SOURCE in w.hosts
    assert not any(e["kind"] in ("move", "spare", "host", "ome-migrate") for e in w.log), w.log
    assert [d for d, _ in source_resets(lab)] == ["ForceOff"] * attempts, source_resets(lab)
    assert w.violations == []


# --- OneView: PressAndHold ----------------------------------------------------------------------------


async def test_oneview_confirms_off_when_the_bmc_is_dead_and_the_job_completes(
        ov_lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str) -> None:
    ov_lab.world.add_fault("bmc_down", SOURCE, None)
    h = await start_daemon(ov_fenced(ov_lab, tmp_path, token, FALL_THROUGH))
    job = await h.wait_job(await h.failover(SOURCE, "iLO dead"))
    assert_completed_through_the_manager(ov_lab, job)
    assert await levels_recorded(h, job) == ["bmc", "manager"]
    powers = [r for r in ov.face(ov_lab).requests if r["kind"] == "power_put"]
    assert [(r["status"], r["job"], r["epoch"]) for r in powers] == [(202, job["job"], 1)], powers
    tasks = [t for t in ov.face(ov_lab).tasks.values() if t.kind == "power"]
    assert [(t.name, t.server) for t in tasks] == [("Power off", SOURCE)]
    assert ov.puts_received(ov_lab) == 1  # and the move went through OneView once


@pytest.mark.slow
async def test_oneview_every_level_failing_keeps_the_profile_on_the_source(
        ov_lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str) -> None:
    ov_lab.world.add_fault("bmc_down", SOURCE, None)
    ov_lab.world.add_fault("power_off_hangs", SOURCE, None)  # PressAndHold accepted, never Off
    h = await start_daemon(ov_fenced(ov_lab, tmp_path, token, ALL_FAIL))
    job = await h.wait_job(await h.failover(SOURCE))
    assert_stays_on_the_source(ov_lab, job, attempts=2)
    assert ov.puts_received(ov_lab) == 0
    assert ov_lab.world.servers["enc1-bay9"].spare is True


# --- OME: POWER_CONTROL jobs ----------------------------------------------------------------------------


async def test_ome_confirms_off_when_the_bmc_is_dead_and_the_job_completes(
        ome_lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str) -> None:
    ome_lab.world.add_fault("bmc_down", SOURCE, None)
    h = await start_daemon(ome_fenced(ome_lab, tmp_path, token, FALL_THROUGH))
    job = await h.wait_job(await h.failover(SOURCE, "iDRAC dead"))
    assert_completed_through_the_manager(ome_lab, job)
    assert await levels_recorded(h, job) == ["bmc", "manager"]
    jobs = [j for j in ome.face(ome_lab).jobs.values() if j.kind == "power"]
    assert [j.power_value for j in jobs] == [8], jobs  # Power Off Non-Graceful, once
    assert len(ome.migrations(ome_lab)) == 1


@pytest.mark.slow
async def test_ome_every_level_failing_keeps_the_profile_on_the_source(
        ome_lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str) -> None:
    ome_lab.world.add_fault("bmc_down", SOURCE, None)
    ome_lab.world.add_fault("power_off_hangs", SOURCE, None)
    h = await start_daemon(ome_fenced(ome_lab, tmp_path, token, ALL_FAIL))
    job = await h.wait_job(await h.failover(SOURCE))
    assert_stays_on_the_source(ome_lab, job, attempts=2)
    assert ome.migrations(ome_lab) == []
    assert ome_lab.world.servers["enc1-bay9"].spare is True
