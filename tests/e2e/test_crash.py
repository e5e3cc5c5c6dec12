"""Crash safety: the daemon SIGKILLed in the middle of power_off_source and of move_profile, restarted,
leaves no profile on two servers and no group locked. Daemon and lab run as separate processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.peers.processes import Client, DaemonProcess, LabProcess, write_daemon_config
from tests.support.net import reserve_port
from tests.support.wait import eventually

pytestmark = [pytest.mark.slow, pytest.mark.serial]

TOKEN = "crash-test-token"


async def _step_running(api: Client, job: int, step: str, detail: str) -> Any:
    status, body = await api.call("GET", f"/api/v1/jobs/{job}")
    if status != 200:
        return None
    s = next(x for x in body["steps"] if x["step"] == step)
    return body if s["state"] == "running" and detail in s["detail"] else None


async def _ended(api: Client, job: int) -> Any:
    status, body = await api.call("GET", f"/api/v1/jobs/{job}")
    return body if status == 200 and body["state"] in ("completed", "failed") else None


Check = Callable[[dict[str, Any], Client, Client], Awaitable[None]]


@dataclass
class Run:
    lab: LabProcess
    api: Client
    job: int
    first: DaemonProcess
    restart: Callable[..., Awaitable[DaemonProcess]]
    """Start a second daemon on the same store and port (`recovery` as given) and wait until healthy."""


@asynccontextmanager
async def lab_and_daemon(tmp_path: Path, http: aiohttp.ClientSession,
                         latency: dict[str, float]) -> AsyncIterator[Run]:
    """The lab and a first daemon as processes, with a failover of enc1-bay1 submitted."""
    lab = LabProcess(tmp_path, latency)
    await lab.start()
    port = reserve_port()
    api = Client(f"http://127.0.0.1:{port}", TOKEN, http)
    daemons = [DaemonProcess(write_daemon_config(tmp_path, lab.url, port, TOKEN), tmp_path / "daemon1.log")]

    async def restart(recovery: str = "resume") -> DaemonProcess:
        cfg = write_daemon_config(tmp_path, lab.url, port, TOKEN, recovery=recovery)
        daemons.append(DaemonProcess(cfg, tmp_path / "daemon2.log"))
        await eventually(api.healthy, 30, "the restarted daemon to be healthy")
        return daemons[-1]

    try:
        await eventually(api.healthy, 30, "the daemon to be healthy")
        status, body = await api.call("POST", "/api/v1/failovers", {"server": "enc1-bay1", "reason": "t"})
        assert status == 202, body
        try:
            yield Run(lab, api, int(body["job"]), daemons[0], restart)
        except AssertionError:
            for d in daemons:
                print(d.tail())
            print(lab.tail())
            raise
    finally:
        daemons[0].kill()
        for d in daemons[1:]:
            assert d.terminate() == 0, d.tail()
        lab.terminate()


async def crash_during(tmp_path: Path, http: aiohttp.ClientSession, step: str, latency: dict[str, float],
                       check: Check, recovery: str = "resume", detail: str = "") -> None:
    """Kill the daemon while `step` runs, restart it, wait for the job to end, then `check` it."""
    async with lab_and_daemon(tmp_path, http, latency) as run:
        await eventually(lambda: _step_running(run.api, run.job, step, detail), 30,
                    f"{step} to reach {detail!r}", interval=0.01)
        run.first.kill()
        await run.restart(recovery)
        final = await eventually(lambda: _ended(run.api, run.job), 60, "the job to end")
        await check(final, Client(run.lab.url, "", http), run.api)


async def assert_consistent(lab_api: Client, api: Client) -> None:
    status, inv = await lab_api.call("GET", "/api/v1/inventory")
    assert status == 200
    holders: dict[str, list[str]] = {}
    for s in inv["servers"]:
        if s["profile"]:
            holders.setdefault(s["profile"], []).append(s["id"])
    assert all(len(v) == 1 for v in holders.values()), holders
    status, violations = await lab_api.call("GET", "/lab/v1/violations")
    assert status == 200 and violations == []


async def test_kill_during_power_off_resumes(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async def check(job: dict[str, Any], lab_api: Client, api: Client) -> None:
        assert job["state"] == "completed", job
        assert any("resumed after a restart at power_off_source" in n for n in job["notes"]), job
        status, source = await lab_api.call("GET", "/api/v1/servers/enc1-bay1")
        assert status == 200
        assert source["profile"] is None and source["power"] == "Off"
        await assert_consistent(lab_api, api)

    await crash_during(tmp_path, http, "power_off_source",
                       {"power_off_s": 1.5, "power_on_s": 0.1, "boot_s": 0}, check)


async def test_kill_during_move_resumes(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async def check(job: dict[str, Any], lab_api: Client, api: Client) -> None:
        assert job["state"] == "completed", job
        assert any("resumed after a restart at move_profile" in n for n in job["notes"]), job
        status, spare = await lab_api.call("GET", f"/api/v1/servers/{job['spare']}")
        assert status == 200
        assert spare["profile"] == "prof-enc1-bay1" and spare["spare"] is False
        assert spare["power"] == "On"
        await assert_consistent(lab_api, api)

    await crash_during(tmp_path, http, "move_profile",
                       {"manager_ms": 150, "power_off_s": 0.1, "power_on_s": 0.1, "boot_s": 0}, check,
                       detail="host record")  # the spare designation is already removed


async def test_kill_during_move_fails_safe_when_configured(tmp_path: Path,
                                                           http: aiohttp.ClientSession) -> None:
    async def check(job: dict[str, Any], lab_api: Client, api: Client) -> None:
        assert job["state"] == "failed", job
        assert "failed safe after a restart at move_profile" in job["error"]
        assert job["steps"][-1]["state"] == "done"  # unlock_group
        status, inv = await lab_api.call("GET", "/api/v1/inventory")
        holder = [s for s in inv["servers"] if s["profile"] == "prof-enc1-bay1"]
        assert len(holder) == 1
        spare = next(s for s in inv["servers"] if s["id"] == job["spare"])
        if holder[0]["id"] == "enc1-bay1":  # the move had not happened: the spare is a spare again
            assert spare["spare"] is True and spare["profile"] is None
        await assert_consistent(lab_api, api)
        status, groups = await api.call("GET", "/api/v1/groups")
        assert status == 200
        assert all(g["locked_by"] is None for g in groups)

    await crash_during(tmp_path, http, "move_profile",
                       {"manager_ms": 150, "power_off_s": 0.1, "power_on_s": 0.1, "boot_s": 0}, check,
                       recovery="fail_safe", detail="about to move profile")


async def test_sigterm_parks_at_a_safe_point_and_the_job_resumes(tmp_path: Path,
                                                                 http: aiohttp.ClientSession) -> None:
    latency = {"power_off_s": 1.0, "power_on_s": 0.1, "boot_s": 0}
    async with lab_and_daemon(tmp_path, http, latency) as run:
        await eventually(lambda: _step_running(run.api, run.job, "power_off_source", "about to power off"),
                    30, "power_off_source to start", interval=0.01)
        assert run.first.terminate() == 0, run.first.tail()  # SIGTERM: exit 0 once at a safe point
        assert "parked at a safe point" in run.first.tail()
        await run.restart()
        final = await eventually(lambda: _ended(run.api, run.job), 60, "the job to end")
        assert final["state"] == "completed", final
        po = next(s for s in final["steps"] if s["step"] == "power_off_source")
        assert "confirmed Off" in po["detail"]  # finished before the first daemon stopped
        assert any("resumed after a restart at select_spare" in n for n in final["notes"]), final
        await assert_consistent(Client(run.lab.url, "", http), run.api)
