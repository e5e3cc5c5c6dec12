"""Separate processes for end-to-end tests: the lab simulator and the daemon, started and stopped by the
tests, talking over loopback only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.support.wait import eventually


class Proc:
    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("ab") as out:
            self.p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                      env={**os.environ, **(env or {})})

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait(10)

    def terminate(self, timeout: float = 20) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return int(self.p.returncode)

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]


class LabProcess(Proc):
    def __init__(self, tmp: Path, latency: dict[str, float], **extra: Any) -> None:
        cfg = tmp / "lab.yaml"
        cfg.write_text(yaml.safe_dump({"listen": "127.0.0.1:0", "latency": latency, **extra}))
        self.ready_file = tmp / "lab.ready"
        super().__init__([sys.executable, "-m", "lab", "-c", str(cfg), "--ready-file", str(self.ready_file)],
                         tmp / "lab.log")
        self.url = ""

    async def start(self) -> None:
        async def ready() -> bool:
            assert self.p.poll() is None, self.tail()
            try:
                self.url = json.loads(self.ready_file.read_text())["manager"]
            except (OSError, ValueError, KeyError):
                return False
            return True

        await eventually(ready, 60, "the lab to be ready")


class DaemonProcess(Proc):
    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        super().__init__([sys.executable, "-m", "monitor", "run", "-c", str(config)], log, env)


def write_daemon_config(tmp: Path, lab_url: str, port: int, token: str, **failover: Any) -> Path:
    cfg = tmp / "monitor.yaml"
    cfg.write_text(yaml.safe_dump({
        "instance": "e2e",
        "http": {"listen": f"127.0.0.1:{port}", "token": token},
        "store": "monitor.db",
        "inventory": {"source": "lab", "lab": {"url": lab_url, "timeout": 5}},
        "redfish": {"timeout": 5},
        # A short lease: a daemon restarted under the same name waits out its predecessor's lease and
        # fence grace before it joins.
        "cluster": {"lease": 4, "heartbeat": 1, "fence_grace": 2},
        "failover": {"poll_interval": 0.05, "power_off_timeout": 20, "power_on_timeout": 20,
                     **failover},
    }))
    return cfg


class Client:
    def __init__(self, base: str, token: str, session: aiohttp.ClientSession) -> None:
        self.base, self.token, self.http = base, token, session

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        try:
            async with self.http.request(method, self.base + path, json=body,
                                         headers={"Authorization": f"Bearer {self.token}"}) as r:
                return r.status, await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError):
            return 0, None

    async def healthy(self) -> bool:
        status, _ = await self.call("GET", "/healthz")
        return status == 200
