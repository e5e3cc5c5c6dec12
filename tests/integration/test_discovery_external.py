"""The discovery service through an HTTP webhook and through a command: host record removed during the
move, discovery of the spare after the delay, retried with backoff while the host is not up."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from lab.main import LabSimulator
from monitor.core.clock import FakeClock
from monitor.core.config import MonitorConfig
from tests.support.harness import DaemonFactory, LabControl, advance_to, monitor_config

INSTANT = {"power_off_s": 0, "power_on_s": 0, "boot_s": 0}


def with_discovery(cfg: MonitorConfig, discovery: dict[str, Any]) -> MonitorConfig:
    return MonitorConfig.model_validate({**json.loads(cfg.model_dump_json()), "discovery": discovery,
                                         "http": {"listen": cfg.http.listen,
                                                  "token": cfg.http.token.get_secret_value()
                                                  if cfg.http.token else None}})


@pytest.fixture
async def webhook(tcp_socket: socket.socket) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    calls: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer sim-token":
            return web.json_response({"error": "who are you"}, status=401)
        body = await request.json()
        calls.append(body)
        if body["action"] == "remove_host":
            return web.json_response({"removed": body["host"]})
        if body["action"] == "discover":
            return web.json_response({"found": True, "host": {"name": "web.example", "ip": "192.0.2.7"},
                                      "detail": "SIM discovered it"})
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/sim", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.SockSite(runner, tcp_socket).start()
    port = tcp_socket.getsockname()[1]
    yield f"http://127.0.0.1:{port}/sim", calls
    await runner.cleanup()


async def test_webhook(lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory,
                       tmp_path: Path, token: str, webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, calls = webhook
    await lab_control.call("PUT", "/lab/v1/latency", INSTANT)
    clock = FakeClock()
    cfg = with_discovery(monitor_config(lab.manager_url, tmp_path, token, rediscovery={"delay": 600}),
                         {"kind": "webhook", "webhook": {"url": url, "token": "sim-token"}})
    h = await start_daemon(cfg, clock=clock)
    job = await h.wait_job(await h.failover("enc1-bay1"))
    assert job["state"] == "completed", job
    assert calls[0] == {"action": "remove_host", "server": "enc1-bay1", "profile": "prof-enc1-bay1",
                        "host": {"name": "host11.lab.example", "ip": "10.1.0.1"}}
    assert "host record host11.lab.example (10.1.0.1) removed" in job["steps"][5]["detail"]
    await advance_to(clock, clock.time() + 600)
    await h.wait_for(lambda: (h.jobs[job["job"]].rediscovery or {}).get("state") == "done")
    assert calls[-1]["action"] == "discover" and calls[-1]["server"] == "enc1-bay9"
    assert "discovered as web.example (192.0.2.7)" in (h.jobs[job["job"]].rediscovery or {})["detail"]


async def test_webhook_refusing_the_move_keeps_everything(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str, webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, calls = webhook
    cfg = with_discovery(monitor_config(lab.manager_url, tmp_path, token),
                         {"kind": "webhook", "webhook": {"url": url, "token": "wrong"}})
    assert calls == []
    h = await start_daemon(cfg)
    job = await h.wait_job(await h.failover("enc1-bay1"))
    assert job["state"] == "failed" and "discovery webhook refused us (401)" in job["error"]
    assert await lab_control.profile_holders("prof-enc1-bay1") == ["enc1-bay1"]
    spare = await lab_control.server(job["spare"])
    assert spare["spare"] is True  # the spare designation was given back


SCRIPT = """
import json, os, sys
log = sys.argv[1]
with open(log, "a") as f:
    f.write(json.dumps({k: v for k, v in os.environ.items() if k.startswith("FAILOVER_")}) + "\\n")
action = os.environ["FAILOVER_ACTION"]
if action == "discover":
    n = sum(1 for line in open(log) if '"discover"' in line)
    if n < 3:
        print(json.dumps({"found": False, "detail": f"ping {os.environ['FAILOVER_SERVER']} failed"}))
        sys.exit(3)
    print(json.dumps({"found": True, "host": {"name": "web.example", "ip": "192.0.2.7"}}))
"""


async def test_command_with_retries_and_backoff(lab: LabSimulator, lab_control: LabControl,
                                                start_daemon: DaemonFactory, tmp_path: Path,
                                                token: str) -> None:
    await lab_control.call("PUT", "/lab/v1/latency", INSTANT)
    script, log = tmp_path / "sim.py", tmp_path / "sim.log"
    script.write_text(SCRIPT)
    clock = FakeClock()
    cfg = with_discovery(
        monitor_config(lab.manager_url, tmp_path, token,
                       rediscovery={"delay": 600, "retries": 3, "retry_interval": 100}),
        {"kind": "command", "command": {"argv": [sys.executable, str(script), str(log)]}})
    h = await start_daemon(cfg, clock=clock)
    job = await h.wait_job(await h.failover("enc1-bay1"))
    assert job["state"] == "completed", job
    due = clock.time()
    for n, wait in enumerate((600, 100, 200), start=1):  # the delay, then retries backing off
        due += wait
        await advance_to(clock, due)
        await h.wait_for(lambda n=n: (h.jobs[job["job"]].rediscovery or {}).get("attempts") == n)
    await h.wait_for(lambda: (h.jobs[job["job"]].rediscovery or {}).get("state") == "done")
    red = h.jobs[job["job"]].rediscovery or {}
    assert red["attempts"] == 3 and "web.example" in red["detail"]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c["FAILOVER_ACTION"] for c in calls] == ["remove_host", "discover", "discover", "discover"]
    assert calls[0]["FAILOVER_HOST"] == "host11.lab.example" and calls[0]["FAILOVER_IP"] == "10.1.0.1"
    assert calls[1]["FAILOVER_SERVER"] == "enc1-bay9"
