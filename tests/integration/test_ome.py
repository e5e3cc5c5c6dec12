"""Dell OME-Modular: the `ome` manager adapter against the lab's OME face (lab/ome.py), and the whole
failover flow with OME as the profile manager: sessions and their renewal, the inventory mapping,
MigrateProfile and its preconditions, jobs and their states, faults and OME's own error messages, power
jobs, fencing; the seed flow to `completed`, a failed job, and a crash or takeover while the move's job
runs (the new owner follows it: the emulator receives exactly one MigrateProfile)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.ome import OmeFenceRefused, OmeManager, build_ome_manager
from adapters.ome.manager import intent_time
from lab.config import LabConfig
from lab.main import LabSimulator
from lab.ome import OmeFace
from monitor.core.config import MonitorConfig, OmeConfig
from monitor.core.errors import (
    AdapterUnavailable,
    AuthenticationFailed,
    FenceLost,
    NotFound,
    OperationRejected,
)
from monitor.core.fencing import Fence, acting
from monitor.core.model import STEPS, Health, PowerState
from monitor.core.ports import ManagerPower, TaskedMoves, TaskState
from tests.support.harness import FAST_LATENCY, DaemonFactory, Harness, LabControl, monitor_config
from tests.support.wait import eventually

OME_FAST = {"enabled": True, "job_start_s": 0.02, "job_id_delay_s": 0.05, "migrate_s": 0.2,
            "power_s": 0.02}


def lab_config(**ome: Any) -> LabConfig:
    return LabConfig.model_validate({"listen": "127.0.0.1:0", "latency": FAST_LATENCY,
                                     "ome": {**OME_FAST, **ome}})


@pytest.fixture
async def ome_lab() -> AsyncIterator[LabSimulator]:
    async with LabSimulator(lab_config()) as sim:
        yield sim


def face(lab: LabSimulator) -> OmeFace:
    assert lab.ome is not None
    return lab.ome


def ome_config(lab: LabSimulator, **overrides: Any) -> dict[str, Any]:
    return {"url": lab.ome_url, "username": "admin", "password": "lab-password", "verify_tls": False,
            "timeout": 5, "poll_interval": 0.02, "job_id_wait": 2,
            "bmc": {"username": "admin", "password": "lab-password", "verify_tls": False}, **overrides}


@pytest.fixture
async def ome(ome_lab: LabSimulator) -> AsyncIterator[OmeManager]:
    manager = build_ome_manager(OmeConfig.model_validate(ome_config(ome_lab)))
    try:
        yield manager
    finally:
        await manager.close()


async def task_ends(ome: OmeManager, ref: str, timeout: float = 5.0) -> Any:
    seen: list[Any] = []

    async def ended() -> bool:
        seen.append(await ome.task(ref))
        return seen[-1].state is not TaskState.RUNNING

    await eventually(ended, timeout, f"job {ref} to end")
    return seen[-1]


def fence(job: int, epoch: int, monitor: str = "m1", valid: bool = True) -> Fence:
    return Fence(job=job, epoch=epoch, monitor=monitor, valid=lambda: valid)


# --- sessions ---------------------------------------------------------------------------------------


async def test_login_renewal_and_logout(ome_lab: LabSimulator, ome: OmeManager) -> None:
    f = face(ome_lab)
    assert isinstance(ome, TaskedMoves) and isinstance(ome, ManagerPower)
    await ome.domain("enc1")
    assert ome.c.logins == 1 and len(f.sessions) == 1
    # Idle past the appliance's timeout: the next request is answered 401 and the session renewed.
    session = next(iter(f.sessions.values()))
    session.last_used -= f.config.session_idle_s + 1
    await ome.domain("enc1")
    assert ome.c.logins == 2 and len(f.sessions) == 1
    assert next(iter(f.sessions.values())).id != session.id
    await ome.close()
    assert f.sessions == {}  # DELETE /api/SessionService/Sessions('<Id>')


async def test_wrong_password_is_refused_with_omes_message(ome_lab: LabSimulator) -> None:
    manager = build_ome_manager(OmeConfig.model_validate(ome_config(ome_lab, password="wrong")))
    try:
        with pytest.raises(AuthenticationFailed, match=r"LAB1401: .*user name or password is incorrect"):
            await manager.inventory()
    finally:
        await manager.close()


async def test_unavailable_appliance_is_a_5xx_with_its_words(ome_lab: LabSimulator, ome: OmeManager) -> None:
    ome_lab.world.add_fault("ome_unavailable", None, None)
    with pytest.raises(AdapterUnavailable, match=r"LAB5030: The OpenManage service is unavailable.*HTTP 503"):
        await ome.server("enc1-bay1")


# --- inventory --------------------------------------------------------------------------------------


async def test_inventory_maps_chassis_groups_spares_models_power_and_profiles(
        ome_lab: LabSimulator, ome: OmeManager) -> None:
    world = ome_lab.world
    inv = await ome.inventory()  # 4 chassis + 60 sleds: two pages of 50
    assert sorted(inv.groups) == ["dg1", "dg2"]
    assert set(inv.servers) == {s.id for s in world.servers.values() if s.product is not None}
    s = inv.servers["enc1-bay1"]
    assert (s.domain_group, s.domain, s.enclosure, s.bay) == ("dg1", "enc1", "enc1", 1)
    assert s.product == "ProLiant BL460c Gen8" and s.model == "ProLiant BL460c"
    assert s.power is PowerState.ON and s.health is Health.OK and s.present
    assert s.profile == "prof-enc1-bay1" and not s.spare
    assert s.serial == world.servers["enc1-bay1"].serial
    assert s.bmc is not None and s.bmc.url == world.bmc_url(world.servers["enc1-bay1"])
    assert s.management_addresses == ("127.77.1.1",)
    spare = inv.servers["enc1-bay9"]
    assert spare.spare and spare.profile is None and spare.power is PowerState.OFF
    assert {k for k, v in inv.servers.items() if v.spare} == {s.id for s in world.servers.values() if s.spare}
    assert inv.domains["enc3"].group == "dg2" and inv.domains["enc3"].normal
    assert inv.enclosures["enc1"].management_addresses == ("127.77.1.0",)
    assert inv.profiles["prof-enc2-bay3"].server == "enc2-bay3"
    # The single reads agree with the inventory.
    assert await ome.server("enc1-bay1") == s
    assert (await ome.profile("prof-enc1-bay1")).server == "enc1-bay1"
    assert {x.id for x in await ome.group_servers("dg2")} == {k for k, v in inv.servers.items()
                                                                if v.domain_group == "dg2"}
    with pytest.raises(NotFound, match="OME has no server 'enc9-bay1'"):
        await ome.server("enc9-bay1")


async def test_abnormal_chassis_is_an_abnormal_domain(ome_lab: LabSimulator, ome: OmeManager) -> None:
    ome_lab.world.add_fault("domain_unmanaged", None, "vcd-enc1")
    ome_lab.world.add_fault("domain_incompatible", None, "vcd-enc2")
    assert (await ome.domain("enc1")).status == "disconnected"
    assert (await ome.domain("enc2")).status == "critical"
    assert (await ome.domain("enc3")).normal


async def test_set_spare_moves_the_sled_in_and_out_of_the_spare_group_under_the_fence(
        ome_lab: LabSimulator, ome: OmeManager) -> None:
    world = ome_lab.world
    with acting(fence(7, 2)):
        await ome.set_spare("enc1-bay9", False)
        await ome.set_spare("enc1-bay9", False)  # already out: nothing sent
    assert not world.servers["enc1-bay9"].spare and not (await ome.server("enc1-bay9")).spare
    spares = [e for e in world.log if e["kind"] == "spare"]
    assert [(e["server"], e["detail"], e["job"], e["epoch"]) for e in spares] == [
        ("enc1-bay9", "spare=false", 7, 2)]
    with acting(fence(7, 1)), pytest.raises(OmeFenceRefused, match="stale fencing token"):
        await ome.set_spare("enc1-bay9", True)
    assert not world.servers["enc1-bay9"].spare
    with acting(fence(7, 3, valid=False)), pytest.raises(FenceLost):
        await ome.set_spare("enc1-bay9", True)  # the action's deadline passed: not sent
    await ome.set_spare("enc1-bay9", True)
    assert world.servers["enc1-bay9"].spare


# --- MigrateProfile ---------------------------------------------------------------------------------


async def test_migrate_returns_the_job_which_moves_the_profile(ome_lab: LabSimulator,
                                                               ome: OmeManager) -> None:
    world, f = ome_lab.world, face(ome_lab)
    intent = datetime.now(UTC).isoformat()
    assert await ome.find_move("prof-enc1-bay7", "enc1-bay9", intent=intent) is None  # its deploy job
    with acting(fence(3, 1)):
        ref = await ome.start_move("prof-enc1-bay7", "enc1-bay7", "enc1-bay9", intent=intent)
    job = f.jobs[int(ref)]
    assert job.kind == "migrate" and job.target == "enc1-bay9"
    assert [r["body"] for r in f.migrate_requests] == [
        {"ProfileId": f._meta["prof-enc1-bay7"].id, "TargetId": job.targets[0], "ForceMigrate": True}]
    assert f.migrate_requests[0]["token"] == {"monitor": "m1", "job": 3, "epoch": 1}
    assert (await ome.task(ref)).state is TaskState.RUNNING
    assert world.profiles["prof-enc1-bay7"].server == "enc1-bay7"  # the job has not finished
    assert await ome.find_move("prof-enc1-bay7", "enc1-bay9", intent=intent) == ref
    assert await ome.find_move("prof-enc1-bay7", "enc1-bay10", intent=intent) is None
    done = await task_ends(ome, ref)
    assert done.state is TaskState.COMPLETED and done.percent == 100
    assert "migrated from enc1-bay7 to enc1-bay9" in done.message
    assert world.profiles["prof-enc1-bay7"].server == "enc1-bay9"
    assert (await ome.profile("prof-enc1-bay7")).server == "enc1-bay9"
    # An ended job older than the intent (less the clock skew) is not that intent's move; a running one
    # on the target is followed whatever the intent says (a second request would be refused anyway).
    assert await ome.find_move("prof-enc1-bay7", "enc1-bay9", intent=intent) == ref
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await ome.find_move("prof-enc1-bay7", "enc1-bay9", intent=later) is None
    moves = [e for e in world.log if e["kind"] == "move"]
    assert [(e["detail"], e["job"], e["epoch"]) for e in moves] == [
        ("prof-enc1-bay7 enc1-bay7 -> enc1-bay9: ok", 3, 1)]
    assert world.violations == []


async def test_migrate_preconditions_are_omes_refusals(ome_lab: LabSimulator, ome: OmeManager) -> None:
    world, f = ome_lab.world, face(ome_lab)
    # Off a powered-on source: refused by OME (ForceMigrate covers an unreachable source only).
    with pytest.raises(OperationRejected, match=r"LAB4016: .*source device is powered on") as e1:
        await ome.start_move("prof-enc1-bay1", "enc1-bay1", "enc1-bay9", intent="i1")
    assert e1.value.status == 400
    # Onto a powered-on target.
    world.control_server("enc1-bay9", power="On")
    with pytest.raises(OperationRejected, match=r"LAB4015: .*target device is powered on"):
        await ome.start_move("prof-enc1-bay7", "enc1-bay7", "enc1-bay9", intent="i2")
    world.control_server("enc1-bay9", power="Off")
    # A profile that is not on the source: the adapter does not send the move (409, nothing sent).
    sent = len(f.migrate_requests)
    with pytest.raises(OperationRejected, match=r"deployed on device .* not on enc1-bay1") as e3:
        await ome.start_move("prof-enc1-bay7", "enc1-bay1", "enc1-bay9", intent="i3")
    assert e3.value.status == 409 and len(f.migrate_requests) == sent
    # Onto another model (GetInvalidTargetsForAssignProfile names it): not sent either.
    with pytest.raises(OperationRejected, match="invalid target"):
        await ome.start_move("prof-enc1-bay7", "enc1-bay7", "enc1-bay10", intent="i4")
    assert len(f.migrate_requests) == sent
    # MigrateProfile needs ProfileState 4: a profile on no server is refused by OME itself.
    profile, holder = world.profiles["prof-enc2-bay3"], world.servers["enc2-bay3"]
    profile.server, holder.profile = None, None
    status, body = await raw_migrate(ome_lab, f._meta["prof-enc2-bay3"].id, "enc1-bay9")
    assert status == 400 and "ProfileState 4" in body["error"]["@Message.ExtendedInfo"][0]["Message"]
    # No move happened, and OME logged every refusal.
    assert [p.server for p in (world.profiles["prof-enc1-bay1"], world.profiles["prof-enc1-bay7"])] == [
        "enc1-bay1", "enc1-bay7"]
    assert all(not e["accepted"] for e in world.log if e["kind"] == "ome-migrate")
    assert world.violations == []


async def raw_migrate(lab: LabSimulator, profile_id: int, target: str, force: bool = True) -> Any:
    server = lab.world.servers[target]
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{lab.ome_url}/api/SessionService/Sessions", ssl=False,
                         json={"UserName": "admin", "Password": "lab-password", "SessionType": "API"})
        token = r.headers["X-Auth-Token"]
        async with s.post(f"{lab.ome_url}/api/ProfileService/Actions/ProfileService.MigrateProfile",
                          json={"ProfileId": profile_id, "TargetId": 100000 + server.enclosure_no * 100
                                + server.bay, "ForceMigrate": force},
                          headers={"X-Auth-Token": token}, ssl=False) as resp:
            return resp.status, await resp.json(content_type=None)


async def test_force_migrate_moves_off_a_source_ome_cannot_reach(ome_lab: LabSimulator) -> None:
    world = ome_lab.world
    world.add_fault("bmc_down", "enc1-bay7", None)  # its iDRAC is gone: OME cannot contact the sled
    pid = face(ome_lab)._meta["prof-enc1-bay7"].id
    status, body = await raw_migrate(ome_lab, pid, "enc1-bay9", force=False)
    assert status == 400 and "Use ForceMigrate" in body["error"]["@Message.ExtendedInfo"][0]["Message"]
    status, _ = await raw_migrate(ome_lab, pid, "enc1-bay9", force=True)
    assert status == 200


async def test_job_failed_and_job_hung_leave_the_profile_where_it_was(ome_lab: LabSimulator,
                                                                      ome: OmeManager) -> None:
    world, f = ome_lab.world, face(ome_lab)
    world.add_fault("ome_job_fails", "enc1-bay9", None)
    ref = await ome.start_move("prof-enc1-bay7", "enc1-bay7", "enc1-bay9", intent="a")
    failed = await task_ends(ome, ref)
    assert failed.state is TaskState.FAILED
    assert "Failed (2070)" in failed.message and "injected fault ome_job_fails" in failed.message
    assert world.profiles["prof-enc1-bay7"].server == "enc1-bay7"
    world.clear_faults()
    world.add_fault("ome_job_hangs", "enc1-bay7", None)
    ref = await ome.start_move("prof-enc1-bay7", "enc1-bay7", "enc1-bay9", intent="b")
    await eventually(lambda: "hangs" in f.jobs[int(ref)].detail, 5.0, "the job to hang")
    world.clear_faults()  # clearing the fault does not finish a lost job
    status = await ome.task(ref)
    assert status.state is TaskState.RUNNING and "Running (2050)" in status.message
    assert world.profiles["prof-enc1-bay7"].server == "enc1-bay7"
    with pytest.raises(OperationRejected, match=r"LAB4011: .*deployment job .* is in progress"):
        await ome.start_move("prof-enc1-bay7", "enc1-bay7", "enc2-bay9", intent="c")


async def test_session_expiring_mid_job_is_renewed(ome_lab: LabSimulator, ome: OmeManager) -> None:
    ref = await ome.start_move("prof-enc1-bay7", "enc1-bay7", "enc1-bay9", intent="x")
    ome_lab.world.add_fault("ome_session_expiry", None, None)
    assert (await task_ends(ome, ref)).state is TaskState.COMPLETED
    assert ome.c.logins == 2


async def test_the_job_id_appears_late(ome_lab: LabSimulator) -> None:
    """DeploymentTaskId names the job only after a while: start_move waits for it (here longer than it
    may), and find_move then recognises the job as the target's only active deployment."""
    face(ome_lab).config.job_id_delay_s = 30.0
    face(ome_lab).config.migrate_s = 30.0
    manager = build_ome_manager(OmeConfig.model_validate(ome_config(ome_lab, job_id_wait=0.2)))
    try:
        ref = await manager.start_move("prof-enc1-bay7", "enc1-bay7", "enc1-bay9", intent=str(uuid.uuid4()))
        assert face(ome_lab)._meta["prof-enc1-bay7"].deployment_task != int(ref)  # not named yet
        assert await manager.find_move("prof-enc1-bay7", "enc1-bay9", intent=str(uuid.uuid4())) == ref
        assert await manager.find_move("prof-enc1-bay7", "enc1-bay10", intent="y") is None
    finally:
        await manager.close()


def test_intent_times() -> None:
    assert intent_time("2026-12-02T03:00:00+00:00") == datetime(2026, 12, 2, 3, tzinfo=UTC).timestamp()
    assert intent_time("move 2026-12-02 03:00:00Z job 4") == datetime(2026, 12, 2, 3, tzinfo=UTC).timestamp()
    u1 = uuid.uuid1()
    assert abs((intent_time(str(u1)) or 0) - datetime.now(UTC).timestamp()) < 60
    assert intent_time(str(uuid.uuid4())) is None and intent_time("no time") is None


# --- power through OME ------------------------------------------------------------------------------


async def test_power_control_jobs(ome_lab: LabSimulator, ome: OmeManager) -> None:
    world = ome_lab.world
    world.add_fault("bmc_down", "enc1-bay2", None)  # the chassis powers the sled without its iDRAC
    with acting(fence(5, 1)):
        ref = await ome.manager_force_off("enc1-bay2")
    assert ref is not None
    job = face(ome_lab).jobs[int(ref)]
    assert job.kind == "power" and job.power_value == 8  # Power Off Non-Graceful
    assert (await task_ends(ome, ref)).state is TaskState.COMPLETED
    await eventually(lambda: world.servers["enc1-bay2"].power == "Off", 5.0, "enc1-bay2 Off")
    assert await ome.manager_power_state("enc1-bay2") is PowerState.OFF
    assert await ome.manager_force_off("enc1-bay2") is None  # already off: no job
    resets = [e for e in world.log if e["kind"] == "reset" and e["server"] == "enc1-bay2"]
    assert [(e["detail"], e["job"], e["epoch"]) for e in resets] == [
        ("ForceOff: accepted (PoweringOff)", 5, 1)]
    on = await ome.manager_power_on("enc1-bay2")
    assert on is not None and (await task_ends(ome, on)).state is TaskState.COMPLETED
    await eventually(lambda: world.servers["enc1-bay2"].power == "On", 5.0, "enc1-bay2 On")
    assert await ome.manager_power_on("enc1-bay2") is None
    world.add_fault("ome_job_fails", "enc1-bay2", None)
    off = await ome.manager_force_off("enc1-bay2")
    assert off is not None and (await task_ends(ome, off)).state is TaskState.FAILED
    assert world.servers["enc1-bay2"].power == "On"
    with pytest.raises(NotFound, match="LAB4046"):
        await ome.task("999999")


# --- the whole flow with OME as the manager -----------------------------------------------------------


def flow_config(lab: LabSimulator, tmp_path: Path, token: str, *, instance: str = "test",
                ome: dict[str, Any] | None = None, **failover: Any) -> MonitorConfig:
    base = monitor_config(lab.manager_url, tmp_path, token, **failover).model_dump(mode="json")
    base["http"]["token"] = token
    base["instance"] = instance
    base["manager"] = {"kind": "ome", "ome": ome_config(lab, **(ome or {}))}
    base["cluster"] = {"lease": 2.0, "heartbeat": 0.5, "fence_grace": 0.5}
    return MonitorConfig.model_validate(base)


@pytest.fixture
async def ome_control(ome_lab: LabSimulator) -> AsyncIterator[LabControl]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield LabControl(ome_lab.manager_url, s)


def migrations(lab: LabSimulator) -> list[dict[str, Any]]:
    return face(lab).migrate_requests


def states(job: dict[str, Any]) -> dict[str, str]:
    return {s["step"]: s["state"] for s in job["steps"]}


async def test_seed_flow_completes_through_ome(ome_lab: LabSimulator, ome_control: LabControl,
                                               start_daemon: DaemonFactory, tmp_path: Path,
                                               token: str) -> None:
    h = await start_daemon(flow_config(ome_lab, tmp_path, token))
    job = await h.wait_job(await h.failover("enc1-bay1", "CPU IERR"))
    assert job["state"] == "completed", job
    assert set(states(job).values()) == {"done"} and [s["step"] for s in job["steps"]] == list(STEPS)
    assert job["spare"] == "enc1-bay9"
    assert job["steps"][STEPS.index("check_domain")]["detail"].startswith("domain enc1: ok")
    move = job["steps"][STEPS.index("move_profile")]["detail"]
    assert "profile prof-enc1-bay1 moved enc1-bay1 -> enc1-bay9" in move
    world = ome_lab.world
    assert world.profiles["prof-enc1-bay1"].server == "enc1-bay9"
    assert world.servers["enc1-bay9"].power == "On" and not world.servers["enc1-bay9"].spare
    assert world.servers["enc1-bay1"].power == "Off" and "enc1-bay1" not in world.hosts
    assert len(migrations(ome_lab)) == 1 and migrations(ome_lab)[0]["result"].startswith("accepted")
    assert world.violations == []
    kinds = [(e["kind"], e["server"]) for e in world.log]
    off = kinds.index(("reset", "enc1-bay1"))
    asked = kinds.index(("ome-migrate", "enc1-bay1"))
    moved = kinds.index(("move", "enc1-bay1"))
    on = kinds.index(("reset", "enc1-bay9"))
    assert off < asked < moved < on
    assert all(e["job"] == job["job"] for e in world.log if e["kind"] in ("spare", "ome-migrate", "move"))


async def test_failed_job_leaves_the_profile_on_the_source(
        ome_lab: LabSimulator, ome_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    world = ome_lab.world
    world.add_fault("ome_job_fails", "enc1-bay9", None)
    host_before = world.hosts["enc1-bay1"]
    h = await start_daemon(flow_config(ome_lab, tmp_path, token))
    job = await h.wait_job(await h.failover("enc1-bay1"))
    assert job["state"] == "failed"
    st = states(job)
    assert st["move_profile"] == "failed" and st["power_on_spare"] == "skipped"
    assert st["unlock_group"] == "done"
    assert "failed: job" in job["error"] and "injected fault ome_job_fails" in job["error"], job["error"]
    assert "stays on enc1-bay1" in job["error"]
    assert world.profiles["prof-enc1-bay1"].server == "enc1-bay1"
    assert world.servers["enc1-bay9"].spare and world.servers["enc1-bay9"].power == "Off"
    assert world.hosts["enc1-bay1"] == host_before
    assert len(migrations(ome_lab)) == 1 and world.violations == []


async def _crash_while_moving(h: Harness, job_id: int, when: Callable[[Any], bool]) -> None:
    """Stop the daemon abruptly (no shutdown grace: the job is cancelled mid-step, nothing more is
    written) once `when(job)` holds."""
    await h.wait_for(lambda: job_id in h.jobs and when(h.jobs[job_id]), 20)
    h.daemon_stop()
    await h.stopped()


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["task_recorded", "sent_job_named_since", "sent_job_not_named"])
async def test_takeover_while_the_job_runs_follows_it(
        ome_lab: LabSimulator, ome_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str, moment: str) -> None:
    """The owner dies while OME's migrate job runs: with the job recorded as the move's task, or after
    MigrateProfile was sent but before its job id was recorded (OME names it late in DeploymentTaskId:
    by the time another monitor adopts the job, or not yet). The adopter follows that OME job to its end
    and never sends MigrateProfile again."""
    f = face(ome_lab)
    f.config.migrate_s = 1.2
    f.config.job_id_delay_s = {"task_recorded": 0.05, "sent_job_named_since": 0.6,
                               "sent_job_not_named": 60.0}[moment]
    first = await start_daemon(flow_config(ome_lab, tmp_path, token, instance="a", shutdown_grace=0))
    job_id = await first.failover("enc1-bay1")
    if moment == "task_recorded":
        await _crash_while_moving(first, job_id, lambda j: j.context.move.task is not None)
    else:  # start_move is still reading the profile for the job id when the owner dies
        await eventually(lambda: bool(f.migrate_requests), 20, "MigrateProfile to reach OME")
        await _crash_while_moving(first, job_id, lambda j: j.context.move.intent is not None)
        assert first.jobs[job_id].context.move.task is None
    ome_job = f.migrate_requests[0]["job"]
    meta = f._meta["prof-enc1-bay1"]
    if moment == "sent_job_named_since":
        await eventually(lambda: meta.deployment_task == ome_job, 5, "OME to name the job")
    assert f.jobs[ome_job].active  # OME goes on without the monitor
    second = await start_daemon(flow_config(ome_lab, tmp_path, token, instance="b"))
    job = await second.wait_job(job_id, 30)
    if moment == "sent_job_not_named":
        assert meta.deployment_task == ome_job  # named only when the job ended: found as the active one
    assert job["state"] == "completed", job
    assert job["owner"] == "b" and job["epoch"] == 2
    assert len(f.migrate_requests) == 1, f.migrate_requests  # exactly one MigrateProfile, ever
    world = ome_lab.world
    assert world.profiles["prof-enc1-bay1"].server == "enc1-bay9"
    assert world.servers["enc1-bay9"].power == "On"
    moved = [e for e in world.log if e["kind"] == "move"]
    assert [(e["monitor"], e["epoch"]) for e in moved] == [("a", 1)]  # the first owner's request
    powered = [e for e in world.log if e["kind"] == "reset" and e["server"] == "enc1-bay9"]
    assert [(e["monitor"], e["epoch"]) for e in powered] == [("b", 2)]
    assert world.violations == []


@pytest.mark.slow
async def test_session_expiring_mid_job_does_not_stop_the_flow(
        ome_lab: LabSimulator, ome_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    f = face(ome_lab)
    f.config.migrate_s = 0.6
    h = await start_daemon(flow_config(ome_lab, tmp_path, token))
    job_id = await h.failover("enc1-bay1")
    await h.wait_for(lambda: job_id in h.jobs and h.jobs[job_id].context.move.task is not None, 20)
    sessions = set(f.sessions)
    await ome_control.fault("ome_session_expiry")
    job = await h.wait_job(job_id)
    assert job["state"] == "completed", job
    assert sessions and not sessions & set(f.sessions)  # the old session expired, a new one was made
    assert len(f.migrate_requests) == 1 and ome_lab.world.violations == []


@pytest.mark.slow
async def test_hung_job_ends_the_step_at_its_limit_and_nothing_is_powered_on(
        ome_lab: LabSimulator, ome_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    await ome_control.fault("ome_job_hangs", server="enc1-bay9")
    h = await start_daemon(flow_config(ome_lab, tmp_path, token, step_timeouts={"move_profile": 1.5}))
    job = await h.wait_job(await h.failover("enc1-bay1"))
    assert job["state"] == "failed"
    st = states(job)
    assert st["move_profile"] == "failed" and st["power_on_spare"] == "skipped"
    world = ome_lab.world
    assert world.profiles["prof-enc1-bay1"].server == "enc1-bay1"
    assert world.servers["enc1-bay9"].power == "Off" and world.servers["enc1-bay1"].power == "Off"
    assert len(face(ome_lab).migrate_requests) == 1 and world.violations == []
    assert "did not finish within 1.5 s" in job["error"] and "Running (2050)" in job["error"], job["error"]
    # The job may still move the profile: nothing is undone (the blade is not flagged a spare again).
    assert "is still running" in job["error"] and world.servers["enc1-bay9"].spare is False, job["error"]
