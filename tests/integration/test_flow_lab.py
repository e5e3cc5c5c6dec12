"""The whole failover flow against the lab simulator: the happy path and every exit of the seed, with
the group lock released in each; concurrency; the API's answers to bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lab.main import LabSimulator
from monitor.core.model import STEPS
from monitor.store.rows import JOB_WRITES
from tests.support.harness import DaemonFactory, LabControl, monitor_config


def states(job: dict[str, Any]) -> dict[str, str]:
    return {s["step"]: s["state"] for s in job["steps"]}


async def assert_unlocked(h: Any) -> None:
    status, groups = await h.api("GET", "/api/v1/groups")
    assert status == 200
    assert all(g["locked_by"] is None for g in groups), groups
    assert h.daemon.runner.d.locks.held() == {}


async def test_failover_completes(lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory,
                                  tmp_path: Path, token: str) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    job = await h.wait_job(await h.failover("enc1-bay1", "fan failure"))
    assert job["state"] == "completed", job
    assert [s["step"] for s in job["steps"]] == list(STEPS)
    assert set(states(job).values()) == {"done"}
    assert job["trigger"] == {"kind": "manual", "reason": "fan failure", "by": "127.0.0.1"}
    assert job["profile"] == "prof-enc1-bay1"
    assert job["spare"] == "enc1-bay9"  # the first qualified spare: same model family, lowest bay
    move = job["steps"][STEPS.index("move_profile")]["detail"]
    assert "host record" in move and "spare designation removed from enc1-bay9" in move
    source, spare = await lab_control.server("enc1-bay1"), await lab_control.server("enc1-bay9")
    assert source["power"] == "Off" and source["profile"] is None and source["host"] is None
    assert spare["power"] == "On" and spare["profile"] == "prof-enc1-bay1" and spare["spare"] is False
    assert await lab_control.profile_holders("prof-enc1-bay1") == ["enc1-bay9"]
    assert await lab_control.violations() == []
    assert job["rediscovery"]["state"] == "scheduled"
    await assert_unlocked(h)
    # The lab saw the power-off before the move, and the move before the power-on.
    kinds = [(e["kind"], e["server"]) for e in await lab_control.log()]
    reset_off = next(i for i, k in enumerate(kinds) if k == ("reset", "enc1-bay1"))
    moved = next(i for i, k in enumerate(kinds) if k[0] == "move")
    reset_on = next(i for i, k in enumerate(kinds) if k == ("reset", "enc1-bay9"))
    assert reset_off < moved < reset_on


async def test_source_already_off_counts_as_confirmed(lab: LabSimulator, lab_control: LabControl,
                                                      start_daemon: DaemonFactory, tmp_path: Path,
                                                      token: str) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    job = await h.wait_job(await h.failover("enc1-bay7"))  # a production blade that is already off
    assert job["state"] == "completed", job
    assert "already Off" in job["steps"][STEPS.index("power_off_source")]["detail"]
    assert not any(e["kind"] == "reset" and e["server"] == "enc1-bay7" for e in await lab_control.log())


async def test_abnormal_domain_exits_before_anything_is_touched(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    for n, fault in enumerate(("domain_incompatible", "domain_unmanaged", "domain_unlicensed")):
        await lab_control.call("DELETE", "/lab/v1/faults")
        await lab_control.fault(fault, domain="vcd-enc1")
        job = await h.wait_job(await h.failover("enc1-bay1"))
        assert job["state"] == "failed"
        word = fault.removeprefix("domain_")
        assert f"domain vcd-enc1 is {word}" in job["error"], job["error"]
        st = states(job)
        assert st["check_domain"] == "failed"
        assert all(st[s] == "skipped" for s in STEPS[1:]), st
        assert not any(e["kind"] in ("reset", "move") for e in await lab_control.log()), n
        await assert_unlocked(h)


async def test_power_off_not_confirmed_keeps_the_profile(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token, power_off_timeout=0.3,
                                          power_off_attempts=2))
    await lab_control.fault("power_off_hangs", server="enc1-bay2")
    job = await h.wait_job(await h.failover("enc1-bay2"))
    assert job["state"] == "failed"
    st = states(job)
    assert st["power_off_source"] == "failed"
    assert st["select_spare"] == st["move_profile"] == st["power_on_spare"] == "skipped"
    assert st["unlock_group"] == "done"
    assert "not confirmed" in job["error"] and "profile was not moved" in job["error"]
    assert await lab_control.profile_holders("prof-enc1-bay2") == ["enc1-bay2"]
    resets = [e for e in await lab_control.log() if e["kind"] == "reset" and e["server"] == "enc1-bay2"]
    assert len(resets) == 2  # one ForceOff per attempt
    await assert_unlocked(h)


@pytest.mark.slow
async def test_bmc_that_never_answers_fails_safe(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    cfg = monitor_config(lab.manager_url, tmp_path, token, power_off_timeout=0.5, power_off_attempts=1)
    cfg = cfg.model_copy(update={"redfish": cfg.redfish.model_copy(update={"timeout": 0.3})})
    h = await start_daemon(cfg)
    await lab_control.fault("bmc_timeout", server="enc1-bay3")
    job = await h.wait_job(await h.failover("enc1-bay3"))
    assert job["state"] == "failed"
    assert states(job)["power_off_source"] == "failed"
    assert await lab_control.profile_holders("prof-enc1-bay3") == ["enc1-bay3"]
    await assert_unlocked(h)


async def test_no_qualified_spare_says_why(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    for spare in ("enc1-bay12", "enc1-bay13", "enc2-bay12", "enc2-bay13"):  # every BL465c spare of dg1
        await lab_control.fault("spare_missing", server=spare)
    job = await h.wait_job(await h.failover("enc1-bay4"))  # ProLiant BL465c G7
    assert job["state"] == "failed"
    assert states(job)["select_spare"] == "failed"
    err = job["error"]
    assert "no qualified spare in domain group dg1" in err
    assert "enc1-bay12: not physically present" in err
    assert "enc1-bay9: model ProLiant BL460c differs from the source's ProLiant BL465c" in err
    assert "other server(s) not a designated spare" in err and "enc1-bay1:" not in err
    # The source was fenced (power-off comes before spare selection in the seed) and keeps its profile.
    assert await lab_control.profile_holders("prof-enc1-bay4") == ["enc1-bay4"]
    assert (await lab_control.server("enc1-bay4"))["power"] == "Off"
    await assert_unlocked(h)


async def test_move_error_leaves_the_inventory_consistent(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    host_before = (await lab_control.server("enc1-bay5"))["host"]
    await lab_control.fault("move_error", server="enc1-bay5")
    job = await h.wait_job(await h.failover("enc1-bay5"))
    assert job["state"] == "failed"
    st = states(job)
    assert st["move_profile"] == "failed" and st["power_on_spare"] == "skipped"
    assert st["unlock_group"] == "done"
    err = job["error"]
    assert "move of profile prof-enc1-bay5" in err and "stays on enc1-bay5" in err
    assert await lab_control.profile_holders("prof-enc1-bay5") == ["enc1-bay5"]
    spare = await lab_control.server(job["spare"])
    assert spare["spare"] is True and spare["profile"] is None and spare["power"] == "Off"
    assert (await lab_control.server("enc1-bay5"))["host"] == host_before
    await assert_unlocked(h)


async def test_integrity_spare_spans_the_same_bays(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    job = await h.wait_job(await h.failover("enc2-bay15"))  # Integrity BL870c i2, 2 bays
    assert job["state"] == "completed", job
    assert job["spare"] == "enc1-bay15"
    assert "Integrity" in job["steps"][STEPS.index("check_product")]["detail"]


@pytest.mark.slow
async def test_two_faults_in_one_group_run_in_turn_and_take_different_spares(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    await lab_control.call("PUT", "/lab/v1/latency", {"power_off_s": 0.3})
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    a = await h.failover("enc1-bay1")
    b = await h.failover("enc2-bay2")  # same group dg1, same model family
    ja, jb = await h.wait_job(a), await h.wait_job(b)
    assert ja["state"] == jb["state"] == "completed", (ja, jb)
    assert ja["spare"] != jb["spare"]
    assert {ja["spare"], jb["spare"]} == {"enc1-bay9", "enc1-bay10"}
    # In turn: b took the group only after a released it.
    lock_b = next(s for s in jb["steps"] if s["step"] == "lock_group")
    unlock_a = next(s for s in ja["steps"] if s["step"] == "unlock_group")
    assert lock_b["finished"] >= unlock_a["finished"]
    assert await lab_control.violations() == []
    await assert_unlocked(h)


async def test_faults_in_different_groups_overlap(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    await lab_control.call("PUT", "/lab/v1/latency", {"power_off_s": 0.3})
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    a = await h.failover("enc1-bay1")  # dg1
    b = await h.failover("enc3-bay1")  # dg2
    ja, jb = await h.wait_job(a), await h.wait_job(b)
    assert ja["state"] == jb["state"] == "completed"

    def span(job: dict[str, Any]) -> tuple[str, str]:
        lock = next(s for s in job["steps"] if s["step"] == "lock_group")
        unlock = next(s for s in job["steps"] if s["step"] == "unlock_group")
        return lock["finished"], unlock["finished"]

    (a0, a1), (b0, b1) = span(ja), span(jb)
    assert a0 < b1 and b0 < a1  # both held their groups at the same time


async def test_second_request_for_an_active_server_gets_409(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    await lab_control.call("PUT", "/lab/v1/latency", {"power_off_s": 0.5})
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    first = await h.failover("enc1-bay1")
    status, body = await h.api("POST", "/api/v1/failovers", {"server": "enc1-bay1"})
    assert status == 409 and body["job"] == first
    await h.wait_job(first)


async def test_bad_input(lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path,
                         token: str) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    assert (await h.api("POST", "/api/v1/failovers", {"server": "enc9-bay99"}))[0] == 404
    assert (await h.api("POST", "/api/v1/failovers", raw=b"{not json"))[0] == 400
    assert (await h.api("POST", "/api/v1/failovers", {"srv": "x"}))[0] == 400
    assert (await h.api("POST", "/api/v1/failovers", [1, 2]))[0] == 400
    assert (await h.api("POST", "/api/v1/failovers", {"server": "enc1-bay1"}, token=None))[0] == 401
    assert (await h.api("POST", "/api/v1/failovers", {"server": "enc1-bay1"}, token="wrong"))[0] == 401
    assert (await h.api("POST", "/api/v1/failovers", raw=b"x" * (2 << 20)))[0] == 413
    assert (await h.api("GET", "/api/v1/jobs/12345"))[0] == 404
    assert (await h.api("GET", "/api/v1/jobs/abc"))[0] == 400
    assert (await h.api("GET", "/api/v1/jobs?limit=0"))[0] == 400
    assert (await h.api("GET", "/api/v1/servers/nope"))[0] == 404
    status, metrics = await h.api("GET", "/metrics")
    assert status == 200
    for reason in ("unknown_server", "bad_json", "bad_request", "unauthorized", "too_large"):
        assert f'api_rejected_total{{reason="{reason}"}}' in metrics
    status, health = await h.api("GET", "/healthz")
    assert status == 200 and health["ok"] is True


async def test_servers_view(lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path,
                            token: str) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    status, servers = await h.api("GET", "/api/v1/servers")
    assert status == 200 and len(servers) == 60  # 64 bays less empty and spanned ones
    status, s = await h.api("GET", "/api/v1/servers/enc1-bay1")
    assert status == 200
    assert s["profile"] == "prof-enc1-bay1" and s["model"] == "ProLiant BL460c"
    assert s["management_addresses"] == ["127.77.1.1"] and s["active_job"] is None
    assert set(s) >= {"id", "domain_group", "domain", "enclosure", "bay", "product", "model", "present",
                      "power", "health", "profile", "spare", "host", "management_addresses", "active_job"}
    assert "password" not in str(servers)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
async def test_a_lab_failover_commits_at_most_8_times(lab: LabSimulator, lab_control: LabControl,
                                                      start_daemon: DaemonFactory, tmp_path: Path, token: str,
                                                      backend: str, request: pytest.FixtureRequest) -> None:
    """The job's own commits, as the store counts them (Store.commits over rows.JOB_WRITES): created, the
    lock, five write-aheads (power-off, spare flag, host record, move, power-on), the end with the timer
    and the unlock."""
    cfg = monitor_config(lab.manager_url, tmp_path, token)
    if backend == "postgresql":
        cfg = cfg.model_copy(update={"store": str(request.getfixturevalue("pg_url"))})
    h = await start_daemon(cfg)
    commits = h.daemon.store.commits
    before = sum(commits[k] for k in JOB_WRITES)
    job = await h.wait_job(await h.failover("enc1-bay1", "commits"))
    assert job["state"] == "completed", job
    assert sum(commits[k] for k in JOB_WRITES) - before == 8, commits
    assert await lab_control.profile_holders("prof-enc1-bay1") == [job["spare"]]
    assert await lab_control.violations() == []
    assert job["rediscovery"]["state"] == "scheduled"
    await assert_unlocked(h)
