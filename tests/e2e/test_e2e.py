"""End to end, as separate processes: net-snmp's snmptrap → the daemon (rules) → the failover job on the
lab → alerts and job progress through a real mosquitto; the broker stopped mid-job; the last will when
the daemon is killed."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.peers.mqtt import Message, Mosquitto, start_mosquitto, subscribe
from tests.peers.processes import Client, DaemonProcess, LabProcess
from tests.support.net import reserve_port
from tests.support.wait import eventually

pytestmark = [pytest.mark.slow, pytest.mark.serial]

TOKEN = "e2e-token"
CPU_TRAP = "1.3.6.1.4.1.232.0.1026"
FLAGS = "1.3.6.1.4.1.232.11.2.11.1.0"


def daemon_config(tmp_path: Path, lab_url: str, http_port: int, snmp_port: int, mqtt_url: str) -> Path:
    cfg = tmp_path / "monitor.yaml"
    cfg.write_text(yaml.safe_dump({
        "instance": "e2e",
        "http": {"listen": f"127.0.0.1:{http_port}", "token": TOKEN},
        "store": "monitor.db",
        "inventory": {"source": "lab", "lab": {"url": lab_url}},
        "snmp": {"listen": f"127.0.0.1:{snmp_port}", "communities": ["public"]},
        "mqtt": {"url": mqtt_url, "topic_prefix": "failover", "timeout": 5},
        "redfish_events": {"poll_interval": 0},
        "failover": {"poll_interval": 0.05, "power_off_timeout": 20, "power_on_timeout": 20},
    }))
    return cfg


async def crashed(lab: Client, server: str = "enc1-bay1") -> None:
    """The host has crashed: its BMC reads Critical (what the confirmation before a job reads)."""
    status, body = await lab.call("PUT", f"/lab/v1/servers/{server}", {"health": "Critical"})
    assert status == 200, body


async def send_trap(snmp_port: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        "snmptrap", "--clientaddr=127.77.1.1", "-v", "2c", "-c", "public", f"127.0.0.1:{snmp_port}", "",
        CPU_TRAP, "1.3.6.1.2.1.1.5.0", "s", "host11.lab.example", FLAGS, "i", "16",
        env={"MIBS": "", "PATH": "/usr/bin:/bin"}, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()


def job_states(msgs: list[Message]) -> list[tuple[str, tuple[str, ...]]]:
    out = []
    for m in msgs:
        if m.topic.startswith("failover/jobs/"):
            body = json.loads(m.payload)
            out.append((body["state"], tuple(s["state"] for s in body["steps"])))
    return out


async def drain_until(inbox: asyncio.Queue[Message], done: Any, timeout: float = 30) -> list[Message]:
    got: list[Message] = []
    async with asyncio.timeout(timeout):
        while not done(got):
            got.append(await inbox.get())
    return got


def completed(msgs: list[Message]) -> bool:
    return any(m.topic.startswith("failover/jobs/") and json.loads(m.payload)["state"] == "completed"
               for m in msgs)


@dataclass
class Stack:
    broker: Mosquitto
    lab: LabProcess
    daemon: DaemonProcess
    api: Client
    snmp_port: int


@asynccontextmanager
async def stack(tmp_path: Path, http: aiohttp.ClientSession,
                latency: dict[str, float]) -> AsyncIterator[Stack]:
    """mosquitto, the lab and the daemon, each its own process; the daemon's log printed on failure."""
    async with start_mosquitto(tmp_path) as broker:
        lab = LabProcess(tmp_path, latency)
        await lab.start()
        http_port, snmp_port = reserve_port(), reserve_port(socket.SOCK_DGRAM)
        daemon = DaemonProcess(daemon_config(tmp_path, lab.url, http_port, snmp_port, broker.url()),
                               tmp_path / "daemon.log")
        try:
            yield Stack(broker, lab, daemon, Client(f"http://127.0.0.1:{http_port}", TOKEN, http), snmp_port)
        except BaseException:
            print(daemon.tail())
            raise
        finally:
            daemon.kill()
            lab.terminate()


async def test_trap_to_profile_on_spare_with_mqtt(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with stack(tmp_path, http, {"power_off_s": 0.3, "power_on_s": 0.3, "boot_s": 0}) as st:
        broker, lab, daemon, api, snmp_port = st.broker, st.lab, st.daemon, st.api, st.snmp_port
        async with subscribe(broker, "failover/#") as inbox:
            await eventually(api.healthy, 30, "the daemon to be healthy")
            online = await drain_until(inbox, lambda g: any(m.topic == "failover/monitor/e2e/status"
                                                            for m in g))
            assert online[-1].payload == "online"
            await crashed(Client(lab.url, "", http))  # the BMC reads Critical: the confirmation agrees
            await send_trap(snmp_port)
            msgs = await drain_until(inbox, completed)
        alerts = [json.loads(m.payload) for m in msgs if m.topic == "failover/alerts/enc1-bay1"]
        assert alerts and alerts[0]["rule"] == "hpe-cpu-uncorrectable"
        assert alerts[0]["action"] == "failover" and alerts[0]["event"]["trap_oid"] == CPU_TRAP
        assert set(alerts[0]) >= {"server", "rule", "action", "severity", "event", "time"}
        states = job_states(msgs)
        assert states[0][0] == "queued" and states[-1][0] == "completed"
        steps_done = [sum(s == "done" for s in st) for _, st in states]
        assert steps_done == sorted(steps_done)  # progress arrives in order
        _, inv = await Client(lab.url, "", http).call("GET", "/api/v1/inventory")
        holders = [s["id"] for s in inv["servers"] if s["profile"] == "prof-enc1-bay1"]
        assert holders == ["enc1-bay9"]
        _, violations = await Client(lab.url, "", http).call("GET", "/lab/v1/violations")
        assert violations == []
        # The last will: killed, the daemon cannot say goodbye; the broker says it.
        async with subscribe(broker, "failover/monitor/#") as status_inbox:
            first = await drain_until(status_inbox, lambda g: len(g) >= 1)
            assert first[0].payload == "online" and first[0].retain
            daemon.kill()
            will = await drain_until(status_inbox, lambda g: len(g) >= 1, timeout=60)
            assert will[-1].payload == "offline"


async def test_broker_down_mid_job_never_delays_the_failover(tmp_path: Path,
                                                             http: aiohttp.ClientSession) -> None:
    async with stack(tmp_path, http, {"power_off_s": 1.5, "power_on_s": 0.3, "boot_s": 0}) as st:
        broker, daemon, api, snmp_port = st.broker, st.daemon, st.api, st.snmp_port
        async with subscribe(broker, "failover/#") as inbox:
            await eventually(api.healthy, 30, "the daemon to be healthy")
            await crashed(Client(st.lab.url, "", http))
            await send_trap(snmp_port)
            # Wait for the job to be under way (power_off_source running), then take the broker away.
            await drain_until(inbox, lambda g: any(
                m.topic.startswith("failover/jobs/") and "about to power off"
                in m.payload for m in g))
            await broker.stop()

        async def job_done() -> Any:
            status, jobs = await api.call("GET", "/api/v1/jobs")
            return status == 200 and jobs and jobs[0]["state"] == "completed"

        await eventually(job_done, 30, "the job to complete without the broker")
        await broker.start()
        async with subscribe(broker, "failover/#") as inbox:
            msgs = await drain_until(inbox, completed, timeout=60)
        states = job_states(msgs)
        assert states[-1][0] == "completed"
        steps_done = [sum(s == "done" for s in st) for _, st in states]
        assert steps_done == sorted(steps_done)  # the buffer kept the order
        assert daemon.terminate() == 0
