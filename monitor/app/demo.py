"""`failover-monitor demo`: the lab simulator as a separate process, the daemon on SQLite in a
temporary folder; a blade's iLO sends a real hardware-fault SNMP trap over UDP; the rules decide; the
failover job is shown step by step."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from monitor.app.client import api_call, follow_job
from monitor.app.trapsend import send_v2c_trap
from monitor.core.config import LoadedConfig, MonitorConfig
from monitor.core.errors import ApiError

LAB_CONFIG: dict[str, Any] = {
    "listen": "127.0.0.1:0",
    "bmc_port": 0,
    "enclosures": 4,
    "latency": {"bmc_ms": 5, "manager_ms": 5, "power_off_s": 2.0, "power_on_s": 2.0, "boot_s": 2.0},
}


async def wait_for_file(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """Wait for a ready file written by a child process (poll with a deadline)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the lab exited with status {proc.returncode}")
        text = await asyncio.to_thread(_read, path)
        with contextlib.suppress(ValueError):
            data = json.loads(text) if text else None
            if isinstance(data, dict):
                return data
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the lab did not become ready within {timeout:g} s")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def start_lab(config: Path, ready: Path, log: Path) -> subprocess.Popen[bytes]:
    """The lab simulator as a separate process (`python -m lab`)."""
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "lab", "-c", str(config), "--ready-file", str(ready)],
            stdout=subprocess.DEVNULL, stderr=err,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def say(text: str = "") -> None:
    print(text, flush=True)


async def _demo(tmp: Path, server: str) -> int:
    from monitor.app.daemon import Daemon

    lab_cfg = tmp / "lab.yaml"
    lab_cfg.write_text(yaml.safe_dump(LAB_CONFIG))
    ready = tmp / "lab.ready"
    say("Starting the lab simulator: 4 enclosures of 16 bays, one HTTPS Redfish BMC per blade ...")
    lab = start_lab(lab_cfg, ready, tmp / "lab.log")
    try:
        info = await wait_for_file(ready, lab, 60)
        manager = str(info["manager"])
        say(f"  lab manager API at {manager}")
        token = secrets.token_urlsafe(16)
        config = MonitorConfig.model_validate({
            "instance": "demo",
            "http": {"listen": "127.0.0.1:0", "token": token},
            "snmp": {"listen": "127.0.0.1:0", "communities": ["public"]},
            "store": str(tmp / "demo.db"),
            "inventory": {"source": "lab", "lab": {"url": manager}},
            "failover": {"poll_interval": 0.25, "rediscovery": {"delay": 3, "retries": 5,
                                                                "retry_interval": 2}},
            "log_level": "warning",
        })
        daemon = Daemon(LoadedConfig(config, None))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop), name="daemon")
        ready_wait = asyncio.create_task(daemon.ready.wait())
        await asyncio.wait({task, ready_wait}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready_wait.cancel()
            await task
            return 1
        assert daemon.http_address is not None
        base = f"http://{daemon.http_address[0]}:{daemon.http_address[1]}"
        say(f"Daemon up on {base} (SQLite store {tmp / 'demo.db'})")
        try:
            status, srv = await api_call(base, "GET", f"/api/v1/servers/{server}")
            if status != 200:
                say(f"unknown server {server}: {srv}")
                return 1
            say(f"\n{server}: {srv['product']}, profile {srv['profile']}, power {srv['power']}, "
                f"domain group {srv['domain_group']}, iLO at {srv['bmc']}")
            bmc_ip = srv["management_addresses"][0]
            # The fault: the blade's CPU fails; its iLO reports Critical and sends the Insight trap.
            await api_call(manager, "PUT", f"/lab/v1/servers/{server}", body={"health": "Critical"})
            assert daemon.snmp_address is not None
            say(f"iLO {bmc_ip} sends SNMPv2c trap cpqSeCpuUncorrectableError ({CPU_TRAP}) to udp "
                f"{daemon.snmp_address[0]}:{daemon.snmp_address[1]}")
            send_v2c_trap(daemon.snmp_address, "public", CPU_TRAP, {
                SYS_NAME: srv["host"]["name"] if srv.get("host") else server,
                HO_TRAP_FLAGS: 16,  # condition bits (16 >> 2) & 7 = 4: failed
                CPU_UNIT_INDEX: 1,
            }, source=bmc_ip)
            decision = await wait_decision(base, server)
            rules = ", ".join(f"{m['rule']} ({m['action']})" for m in decision["matched"])
            say(f"decision: {decision['action']} by rule {decision['rule']}; matched: {rules}"
                + (f"; guard: {decision['guard']}" if decision.get("guard") else ""))
            if decision["action"] != "failover" or not decision.get("job"):
                say("no failover job was started")
                return 1
            say(f"job {decision['job']} started; its steps:")
            job = await follow_job(base, int(decision["job"]), interval=0.1)
            if job["state"] != "completed":
                say(f"\njob {job['job']} FAILED: {job['error']}")
                return 1
            say(f"\nProfile {job['profile']} moved from {job['server']} to spare {job['spare']}, "
                "which is now booting its SAN image.")
            say("Waiting for the rediscovery timer (3 s in this demo, 10 minutes by default) ...")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while loop.time() < deadline:
                _, job = await api_call(base, "GET", f"/api/v1/jobs/{job['job']}")
                red = job.get("rediscovery") or {}
                if red.get("state") in ("done", "failed"):
                    say(f"  rediscovery {red['state']}: {red['detail']}")
                    break
                await asyncio.sleep(0.2)
            _, spare = await api_call(base, "GET", f"/api/v1/servers/{job['spare']}")
            say(f"\nDone: job {job['job']} completed; {job['profile']}: {job['server']} -> {job['spare']} "
                f"(bay {spare.get('bay')} of {spare.get('enclosure')}).")
            return 0
        finally:
            stop.set()
            await task
    finally:
        _stop(lab)


CPU_TRAP = "1.3.6.1.4.1.232.0.1026"
SYS_NAME = "1.3.6.1.2.1.1.5.0"
HO_TRAP_FLAGS = "1.3.6.1.4.1.232.11.2.11.1.0"
CPU_UNIT_INDEX = "1.3.6.1.4.1.232.1.2.2.1.1.1.1"


async def wait_decision(base: str, server: str, timeout: float = 15.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        status, rows = await api_call(base, "GET", f"/api/v1/decisions?server={server}&limit=1")
        if status == 200 and rows:
            return dict(rows[0])
        await asyncio.sleep(0.05)  # polling another program's API
    raise RuntimeError(f"no decision about {server} within {timeout:g} s")


def run_demo(*, server: str = "enc1-bay1", keep: bool = False) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="failover-demo-"))
    try:
        return asyncio.run(_demo(tmp, server))
    except (ApiError, RuntimeError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        log = tmp / "lab.log"
        if log.exists():
            sys.stderr.write(log.read_text()[-2000:])
        return 1
    finally:
        if keep:
            print(f"(kept {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
