"""The README's "Running it" with the shipped configs: the lab raises a hardware fault, the blade's iLO
sends its real SNMPv2c trap and Redfish event, the monitor decides, confirms at the BMC, and runs the
job to completion; `jobs` lists it under a header and filters. Only the ports are changed (to free ones)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.peers.processes import DaemonProcess, Proc
from tests.support.net import reserve_port
from tests.support.wait import eventually

ROOT = Path(__file__).resolve().parents[2]
SERVER = "enc1-bay3"


def _shipped(tmp: Path, http_port: int, lab_port: int, trap_port: int) -> tuple[Path, Path]:
    """config/monitor.yaml and config/lab.yaml with their fixed ports replaced, nothing else."""
    monitor = (ROOT / "config" / "monitor.yaml").read_text()
    lab = (ROOT / "config" / "lab.yaml").read_text()
    for text in (monitor, lab):
        assert "127.0.0.1:1162" in text
    monitor = (monitor.replace("127.0.0.1:8162", f"127.0.0.1:{http_port}")
               .replace("127.0.0.1:8163", f"127.0.0.1:{lab_port}")
               .replace("127.0.0.1:1162", f"127.0.0.1:{trap_port}"))
    lab = lab.replace("127.0.0.1:8163", f"127.0.0.1:{lab_port}").replace("127.0.0.1:1162",
                                                                           f"127.0.0.1:{trap_port}")
    (tmp / "monitor.yaml").write_text(monitor)
    (tmp / "lab.yaml").write_text(lab)
    return tmp / "monitor.yaml", tmp / "lab.yaml"


@dataclass
class ShippedRun:
    """The lab and the daemon started from the shipped configs (ports replaced), as an operator would."""

    monitor_cfg: Path
    lab_url: str
    base: str
    trap_port: int
    daemon: DaemonProcess


@contextlib.asynccontextmanager
async def shipped_run(tmp: Path, env: dict[str, str],
                      lab_edit: Callable[[str], str] | None = None) -> AsyncIterator[ShippedRun]:
    """`failover-monitor lab` and `run` as processes on config/lab.yaml and config/monitor.yaml (the
    lab's text changed by `lab_edit` first, when given); the daemon must exit 0 at the end."""
    http_port, lab_port = reserve_port(), reserve_port()
    trap_port = reserve_port(socket.SOCK_DGRAM)
    monitor_cfg, lab_cfg = _shipped(tmp, http_port, lab_port, trap_port)
    if lab_edit is not None:
        lab_cfg.write_text(lab_edit(lab_cfg.read_text()))
    ready = tmp / "lab.ready"
    lab = Proc([sys.executable, "-m", "monitor", "lab", "-c", str(lab_cfg), "--ready-file", str(ready)],
               tmp / "lab.log", env)
    daemon: DaemonProcess | None = None
    try:
        await eventually(lambda: ready.exists() or lab.p.poll() is not None, 60, "the lab to start")
        assert lab.p.poll() is None, lab.tail()
        daemon = DaemonProcess(monitor_cfg, tmp / "daemon.log", env)
        yield ShippedRun(monitor_cfg, f"http://127.0.0.1:{lab_port}", f"http://127.0.0.1:{http_port}",
                         trap_port, daemon)
    finally:
        if daemon is not None:
            assert daemon.terminate() == 0, daemon.tail()
        lab.terminate()


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env}, cwd=ROOT)


@pytest.mark.slow
async def test_a_lab_fault_becomes_trap_event_decision_and_completed_job(tmp_path: Path) -> None:
    env = {"FAILOVER_API_TOKEN": "first-run-token", "FAILOVER_SNMP_COMMUNITY": "site-community",
           "FAILOVER_EVENT_SECRET": "first-run-secret"}
    async with shipped_run(tmp_path, env) as run:
        monitor_cfg, lab_url, base, daemon = run.monitor_cfg, run.lab_url, run.base, run.daemon
        headers = {"Authorization": "Bearer first-run-token"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

            async def get(url: str) -> Any:
                try:
                    async with http.get(url, headers=headers) as r:
                        return await r.json() if r.status == 200 else None
                except aiohttp.ClientError:
                    return None

            assert daemon is not None
            await eventually(lambda: get(f"{base}/healthz"), 60, "the daemon to be healthy")

            async def subscribed() -> bool:
                view = await get(f"{lab_url}/lab/v1/servers/{SERVER}/eventservice")
                return bool(view and view["subscriptions"])

            await eventually(subscribed, 60, f"the monitor's Redfish subscription on {SERVER}'s BMC")

            fault = _cli("lab", "fault", SERVER, "cpu-uncorrectable", "--lab", lab_url, env=env)
            assert fault.returncode == 0, fault.stderr
            sent = f"SNMPv2c trap 1.3.6.1.4.1.232.0.1026 from 127.77.1.3 to 127.0.0.1:{run.trap_port}"
            assert sent in fault.stdout, fault.stdout
            assert "iLOEvents.2.3.SeCpuUncorrectableError to 1 subscription(s)" in fault.stdout

            async def decisions() -> list[dict[str, Any]] | None:
                rows = await get(f"{base}/api/v1/decisions?server={SERVER}")
                sources = {r["event"]["source"] for r in rows or []}
                return rows if {"snmp", "redfish"} <= sources else None

            rows = await eventually(decisions, 30, "decisions from the trap and the Redfish event")
            failovers = [r for r in rows if r["action"] == "failover" and r.get("job")]
            assert len(failovers) == 1, json.dumps(rows, indent=1)[:3000]
            assert failovers[0]["rule"] in ("hpe-cpu-uncorrectable", "ilo-cpu-uncorrectable")
            job_id = int(failovers[0]["job"])
            others = [r for r in rows if r is not failovers[0]]
            assert all("cooldown" in (r.get("guard") or "") for r in others), others

            async def completed() -> dict[str, Any] | None:
                job = await get(f"{base}/api/v1/jobs/{job_id}")
                assert job is None or job["state"] != "failed", job
                return job if job and job["state"] == "completed" else None

            job = await eventually(completed, 60, f"job {job_id} to complete")
            assert job["server"] == SERVER and job["spare"], job
            assert job["trigger"]["confirmation"]["verdict"] == "confirmed", job["trigger"]
            spare = await get(f"{base}/api/v1/servers/{job['spare']}")
            assert "BL460c" in spare["product"] and spare["domain_group"] == "dg1", spare

        listed = _cli("jobs", "-c", str(monitor_cfg), "--state", "completed", "--server", SERVER, env=env)
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert lines[0].split()[:4] == ["JOB", "STATE", "SERVER", "SPARE"]
        assert lines[1].split()[:4] == [str(job_id), "completed", SERVER, "->"]
        none = _cli("jobs", "-c", str(monitor_cfg), "--state", "failed", env=env)
        assert none.stdout.strip() == "no jobs matching"
        refused = _cli("pause", "x", "-c", str(monitor_cfg), env={**env, "FAILOVER_API_TOKEN": "wrong"})
        assert refused.returncode == 1 and "set FAILOVER_API_TOKEN" in refused.stderr
