"""Faults of the outside world, each with its defined outcome (README "## Operations", the fault table),
through the lab: BMCs that time out, answer 5xx, refuse connections or answer slowly; the manager failing
mid-move or down at job start; the spare not powering on; the discovery service down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from lab.main import LabSimulator
from monitor.core.clock import FakeClock
from monitor.core.config import MonitorConfig
from monitor.core.model import STEPS
from tests.integration.test_discovery_external import with_discovery
from tests.integration.test_flow_lab import assert_unlocked, states
from tests.support.harness import DaemonFactory, Harness, LabControl, monitor_config

AFTER_POWER_OFF = STEPS[STEPS.index("power_off_source") + 1:-1]
"""The steps a failed power-off skips (all but unlock_group)."""


def fast_fail(cfg: MonitorConfig, *, redfish_timeout: float) -> MonitorConfig:
    return cfg.model_copy(update={"redfish": cfg.redfish.model_copy(update={"timeout": redfish_timeout})})


async def add_fault(lab_control: LabControl, fault: str, server: str | None = None, **extra: Any) -> None:
    await lab_control.call("POST", "/lab/v1/faults", {"fault": fault, "server": server, **extra})


async def touched(lab_control: LabControl, *kinds: str) -> list[dict[str, Any]]:
    return [e for e in await lab_control.log() if e["kind"] in kinds and "rejected" not in e["detail"]]


async def assert_failed_safe(h: Harness, lab_control: LabControl, job: dict[str, Any], source: str) -> None:
    """Power-off not confirmed: nothing after it ran, the profile stayed, the group is unlocked."""
    assert job["state"] == "failed", job
    st = states(job)
    assert st["power_off_source"] == "failed", st
    assert all(st[s] == "skipped" for s in AFTER_POWER_OFF), st
    assert st["unlock_group"] == "done"
    assert job["spare"] is None
    assert await lab_control.profile_holders(f"prof-{source}") == [source]
    assert await touched(lab_control, "move", "spare", "host") == []
    assert await lab_control.violations() == []
    await assert_unlocked(h)


# --- BMC faults on the source: fail safe ------------------------------------------------------------


@pytest.mark.parametrize(("fault", "extra", "says"), [
    ("bmc_timeout", {}, "no answer within 0.3 s"),
    ("bmc_error", {}, "500"),
    ("bmc_down", {}, "onnect"),
    ("bmc_slow", {"delay_s": 1.5}, "no answer within 0.3 s"),  # slower than redfish.timeout
])
@pytest.mark.slow
async def test_source_bmc_fault_fails_safe(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str, fault: str, extra: dict[str, Any], says: str) -> None:
    cfg = monitor_config(lab.manager_url, tmp_path, token, power_off_timeout=0.5, power_off_attempts=1)
    h = await start_daemon(fast_fail(cfg, redfish_timeout=0.3))
    await add_fault(lab_control, fault, "enc1-bay3", **extra)
    job = await h.wait_job(await h.failover("enc1-bay3"))
    await assert_failed_safe(h, lab_control, job, "enc1-bay3")
    detail = job["steps"][STEPS.index("power_off_source")]["detail"]
    assert says in job["error"] + detail, (job["error"], detail)
    assert "not moved" in job["error"], job["error"]


@pytest.mark.slow
async def test_slow_bmc_within_the_timeout_completes(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    h = await start_daemon(fast_fail(monitor_config(lab.manager_url, tmp_path, token), redfish_timeout=2))
    for server in ("enc1-bay1", "enc1-bay9"):  # the source and the spare it gets
        await add_fault(lab_control, "bmc_slow", server, delay_s=0.1)
    job = await h.wait_job(await h.failover("enc1-bay1"))
    assert job["state"] == "completed", job
    assert job["spare"] == "enc1-bay9"
    assert await lab_control.profile_holders("prof-enc1-bay1") == ["enc1-bay9"]
    assert await lab_control.violations() == []


# --- BMC faults on the spare: passed over -------------------------------------------------------------


@pytest.mark.parametrize("fault", ["bmc_timeout", "bmc_error", "bmc_down"])
async def test_spare_with_an_unreachable_bmc_is_passed_over(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str, fault: str) -> None:
    cfg = monitor_config(lab.manager_url, tmp_path, token)
    h = await start_daemon(fast_fail(cfg, redfish_timeout=0.3))
    await add_fault(lab_control, fault, "enc1-bay9")  # the first BL460c Gen8 spare of dg1
    job = await h.wait_job(await h.failover("enc1-bay1"))
    assert job["state"] == "completed", job
    assert job["spare"] == "enc1-bay10"  # the next qualified one (BL460c Gen9: generation ignored)
    assert "enc1-bay9" in job["steps"][STEPS.index("select_spare")]["detail"]
    assert await lab_control.profile_holders("prof-enc1-bay1") == ["enc1-bay10"]
    assert (await lab_control.server("enc1-bay9"))["spare"] is True
    assert await lab_control.violations() == []
    await assert_unlocked(h)


async def test_spare_that_does_not_power_on(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token, power_on_timeout=0.4))
    await add_fault(lab_control, "power_on_fails", "enc1-bay9")
    job = await h.wait_job(await h.failover("enc1-bay1"))
    assert job["state"] == "failed"
    st = states(job)
    assert st["move_profile"] == "done" and st["power_on_spare"] == "failed", st
    assert st["schedule_rediscovery"] == "skipped" and st["unlock_group"] == "done"
    # The profile stays on the spare (fencing is final, the move is not undone): an operator powers it on.
    assert await lab_control.profile_holders("prof-enc1-bay1") == ["enc1-bay9"]
    assert (await lab_control.server("enc1-bay1"))["power"] == "Off"
    assert await lab_control.violations() == []
    await assert_unlocked(h)


# --- the manager ------------------------------------------------------------------------------------------


async def test_move_error_on_the_spare_side_restores_everything(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    source_before = await lab_control.server("enc1-bay2")
    await add_fault(lab_control, "move_error", "enc1-bay9")  # the spare it will pick
    job = await h.wait_job(await h.failover("enc1-bay2"))
    assert job["state"] == "failed"
    st = states(job)
    assert st["move_profile"] == "failed" and st["power_on_spare"] == "skipped", st
    assert "move of profile prof-enc1-bay2" in job["error"] and "stays on enc1-bay2" in job["error"]
    assert await lab_control.profile_holders("prof-enc1-bay2") == ["enc1-bay2"]
    spare = await lab_control.server("enc1-bay9")
    assert spare["spare"] is True and spare["profile"] is None and spare["power"] == "Off"
    source = await lab_control.server("enc1-bay2")
    assert source["host"] == source_before["host"] and source["power"] == "Off"
    assert await lab_control.violations() == []
    await assert_unlocked(h)


@pytest.mark.slow
async def test_manager_down_at_job_start_touches_nothing(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    await add_fault(lab_control, "manager_unavailable")
    # A failover asked for while the manager is down: refused with 503, no job, nothing touched.
    async with h.http.post(h.base + "/api/v1/failovers", json={"server": "enc1-bay1"},
                           headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 503 and r.headers["Retry-After"] == "30"
        assert "no job was created" in (await r.json())["error"]
    assert h.jobs == {} and (await h.api("GET", "/api/v1/jobs"))[1] == []
    assert await touched(lab_control, "reset", "move", "spare", "host") == []
    # The inventory refresh fails too: counted, the cached view is kept.
    h.daemon.inventory_view.wake()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while "failover_monitor_inventory_refresh_errors_total 0.0" in (await h.api("GET", "/metrics"))[1]:
        assert loop.time() < deadline, "the failed inventory refresh was not counted"
        await asyncio.sleep(0.05)
    status, servers = await h.api("GET", "/api/v1/servers")
    assert status == 200 and len(servers) > 0
    assert 'api_rejected_total{reason="manager_unavailable"} 1' in (await h.api("GET", "/metrics"))[1]
    # Back: the next failover goes through.
    await lab_control.call("DELETE", "/lab/v1/faults")
    job = await h.wait_job(await h.failover("enc1-bay1"))
    assert job["state"] == "completed", job


async def test_manager_down_when_a_queued_job_starts_touches_nothing(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    """Job B waits for the group lock while job A is fencing; the manager goes down; B, under the lock,
    cannot re-read its domain and exits before touching anything."""
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token, power_off_timeout=0.5,
                                          power_off_attempts=2))
    await add_fault(lab_control, "power_off_hangs", "enc1-bay1")
    a = await h.failover("enc1-bay1")
    b = await h.failover("enc1-bay2")  # same domain group dg1: waits for a

    def b_waits_while_a_fences() -> bool:
        ja, jb = h.jobs.get(a), h.jobs.get(b)
        if ja is None or jb is None:
            return False
        sa = states(ja.public())
        sb = states(jb.public())
        return sa["power_off_source"] == "running" and sb["lock_group"] == "running"

    await h.wait_for(b_waits_while_a_fences)
    await add_fault(lab_control, "manager_unavailable")
    job_a, job_b = await h.wait_job(a), await h.wait_job(b)
    await lab_control.call("DELETE", "/lab/v1/faults")  # the manager is back, for the checks below
    await assert_failed_safe(h, lab_control, job_a, "enc1-bay1")
    assert job_b["state"] == "failed"
    st = states(job_b)
    assert st["lock_group"] == "failed" and st["unlock_group"] == "done", st
    assert all(st[s] == "skipped" for s in STEPS[2:-1]), st
    assert "nothing touched" in job_b["error"], job_b["error"]
    assert not [e for e in await touched(lab_control, "reset", "move", "spare", "host")
                if e["server"] == "enc1-bay2"]
    assert await lab_control.profile_holders("prof-enc1-bay2") == ["enc1-bay2"]
    await assert_unlocked(h)


# --- the discovery service ------------------------------------------------------------------------------


async def run_clock_until(clock: FakeClock, done: Any, timeout: float = 20.0) -> None:
    """Move the fake clock from one sleeper's deadline to the next until `done()` (a real-time limit)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        assert loop.time() < deadline, f"not done at {clock.time()}; sleepers {clock.deadlines()}"
        await asyncio.wait_for(clock.next_sleeper(), deadline - loop.time())
        upcoming = clock.deadlines()
        if upcoming:
            await clock.advance(max(0.0, min(upcoming) - clock.time()))
        await asyncio.sleep(0)  # let the woken tasks run before looking again


class Sim:
    """A discovery webhook that can be stopped (the discovery service going down)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(body)
        if body["action"] == "remove_host":
            return web.json_response({"removed": body["host"]})
        return web.json_response({"found": True, "host": {"name": "x.example", "ip": "192.0.2.9"}})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/sim", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/sim"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    s = Sim()
    await s.start()
    yield s
    await s.stop()


async def test_discovery_down_after_the_move_retries_then_gives_up(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str, sim: Sim) -> None:
    await lab_control.call("PUT", "/lab/v1/latency", {"power_off_s": 0, "power_on_s": 0, "boot_s": 0})
    clock = FakeClock()
    cfg = with_discovery(
        monitor_config(lab.manager_url, tmp_path, token,
                       rediscovery={"delay": 600, "retries": 2, "retry_interval": 100}),
        {"kind": "webhook", "webhook": {"url": sim.url, "timeout": 2}})
    h = await start_daemon(cfg, clock=clock)
    job = await h.wait_job(await h.failover("enc1-bay1"))
    assert job["state"] == "completed", job
    assert [c["action"] for c in sim.calls] == ["remove_host"]
    await sim.stop()  # the discovery service goes away: connection refused from now on
    start = clock.time()
    jid = job["job"]

    def rediscovery() -> dict[str, Any]:
        return h.jobs[jid].rediscovery or {}

    dues: list[float] = []
    for n in (1, 2):  # the first discovery, then a retry; each refused
        await run_clock_until(clock, lambda n=n: rediscovery().get("attempts") == n)
        assert rediscovery()["state"] == "scheduled", rediscovery()
        dues.append(datetime.fromisoformat(rediscovery()["due"]).timestamp())
    await run_clock_until(clock, lambda: rediscovery().get("attempts") == 3)
    # Backing off: the first retry 100 s after the first attempt (itself 600 s after the job), the
    # second 200 s after the first retry.
    assert dues[0] - start >= 700 and dues[1] - dues[0] >= 200, (start, dues)
    red = h.jobs[job["job"]].rediscovery or {}
    assert red["state"] == "failed", red
    assert "discovery of enc1-bay9 failed" in red["detail"] and "no retries left" in red["detail"]
    status, final = await h.api("GET", f"/api/v1/jobs/{job['job']}")
    assert status == 200 and final["state"] == "completed"  # the failover itself stands
    assert await lab_control.profile_holders("prof-enc1-bay1") == ["enc1-bay9"]


async def test_discovery_down_during_the_move_undoes_it(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str, sim: Sim) -> None:
    url = sim.url
    await sim.stop()
    cfg = with_discovery(monitor_config(lab.manager_url, tmp_path, token),
                         {"kind": "webhook", "webhook": {"url": url, "timeout": 2}})
    h = await start_daemon(cfg)
    job = await h.wait_job(await h.failover("enc1-bay1"))
    assert job["state"] == "failed"
    assert states(job)["move_profile"] == "failed", job
    assert await lab_control.profile_holders("prof-enc1-bay1") == ["enc1-bay1"]
    assert (await lab_control.server(job["spare"]))["spare"] is True  # designation given back
    await assert_unlocked(h)


# --- the database restarting mid-job ------------------------------------------------------------------


@pytest.mark.slow
async def test_the_database_restarting_mid_job_is_waited_for(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    """PostgreSQL restarted while the source powers off: saves are retried while the lease holds; the
    job completes, once, with the profile on exactly one server."""
    from tests.peers.postgres import start_postgres

    async with start_postgres(tmp_path) as cluster:
        url = cluster.url()
        await lab_control.call("PUT", "/lab/v1/latency", {"power_off_s": 2.0, "power_on_s": 0.1})
        cfg = monitor_config(lab.manager_url, tmp_path, token)
        cfg = cfg.model_copy(update={"store": url})
        h = await start_daemon(cfg)
        jid = await h.failover("enc1-bay1", "pg restart")
        await h.wait_for(lambda: h.jobs[jid].step("power_off_source").state.value == "running"
                         and "about to power off" in h.jobs[jid].step("power_off_source").detail)
        await asyncio.to_thread(cluster.restart)  # the database goes away and comes back
        job = await h.wait_job(jid, timeout=60)
        assert job["state"] == "completed", job
        assert await lab_control.profile_holders("prof-enc1-bay1") == [job["spare"]]
        assert await lab_control.violations() == []
        await assert_unlocked(h)
        h.daemon_stop()  # before the database goes for good
        await h.stopped()
