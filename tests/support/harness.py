"""The in-process harness: the daemon in-process against the lab simulator, the calls the tests make
to both, and the monitor config they share."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from monitor.app.daemon import Daemon
from monitor.core.clock import FakeClock
from monitor.core.config import MonitorConfig
from monitor.core.model import Job

FAST_LATENCY = {"bmc_ms": 0, "manager_ms": 0, "power_off_s": 0.05, "power_on_s": 0.05, "boot_s": 0.0}


class LabControl:
    """Calls to the lab's manager and control APIs (what the outside world looks like)."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url.rstrip("/")
        self.http = session

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.url + path, json=body) as r:
            assert r.status < 400, f"{method} {path}: {r.status} {await r.text()}"
            return await r.json(content_type=None)

    async def fault(self, fault: str, *, server: str | None = None, domain: str | None = None) -> None:
        await self.call("POST", "/lab/v1/faults", {"fault": fault, "server": server, "domain": domain})

    async def server(self, sid: str) -> dict[str, Any]:
        return dict(await self.call("GET", f"/api/v1/servers/{sid}"))

    async def profile_holders(self, profile: str) -> list[str]:
        inv = await self.call("GET", "/api/v1/inventory")
        return [s["id"] for s in inv["servers"] if s["profile"] == profile]

    async def violations(self) -> list[Any]:
        return list(await self.call("GET", "/lab/v1/violations"))

    async def log(self) -> list[dict[str, Any]]:
        return list(await self.call("GET", "/lab/v1/log"))


class Harness:
    """The daemon in-process, its API, and a way to wait for jobs without sleeping."""

    def __init__(self, daemon: Daemon, token: str, session: aiohttp.ClientSession,
                 stop: asyncio.Event, task: asyncio.Task[None]) -> None:
        self.daemon = daemon
        self._stop = stop
        self._task = task
        self.token = token
        self.http = session
        self.changed = asyncio.Condition()
        self.jobs: dict[int, Job] = {}
        assert daemon.http_address is not None
        self.base = f"http://{daemon.http_address[0]}:{daemon.http_address[1]}"
        assert daemon.runner is not None
        daemon.runner.add_listener(self._on_job)

    def daemon_stop(self) -> None:
        """What SIGTERM does."""
        self._stop.set()

    async def stopped(self) -> None:
        await asyncio.wait_for(self._task, 30)

    async def _on_job(self, job: Job) -> None:
        async with self.changed:
            self.jobs[job.id] = job
            self.changed.notify_all()

    async def api(self, method: str, path: str, body: Any = None, *, token: str | None = "default",
                  raw: bytes | None = None) -> tuple[int, Any]:
        tok = self.token if token == "default" else token
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        kwargs: dict[str, Any] = {"data": io.BytesIO(raw)} if raw is not None else {"json": body}
        async with self.http.request(method, self.base + path, headers=headers, **kwargs) as r:
            try:
                return r.status, await r.json(content_type=None)
            except ValueError:
                return r.status, await r.text()

    async def failover(self, server: str, reason: str = "test") -> int:
        status, body = await self.api("POST", "/api/v1/failovers", {"server": server, "reason": reason})
        assert status == 202, body
        return int(body["job"])

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), timeout)

    async def wait_job(self, job_id: int, timeout: float = 30.0) -> dict[str, Any]:
        def ended() -> bool:
            j = self.jobs.get(job_id)
            return j is not None and not j.state.active

        await self.wait_for(ended, timeout)
        status, body = await self.api("GET", f"/api/v1/jobs/{job_id}")
        assert status == 200
        return dict(body)


def monitor_config(lab_url: str, tmp_path: Path, token: str, **failover: Any) -> MonitorConfig:
    fo: dict[str, Any] = {"poll_interval": 0.02, "power_off_timeout": 5, "power_on_timeout": 5,
                          "shutdown_grace": 5}
    fo.update(failover)
    return MonitorConfig.model_validate({
        "instance": "test",
        "http": {"listen": "127.0.0.1:0", "token": token},
        "store": str(tmp_path / "monitor.db"),
        "sqlite": {"synchronous": "normal"},
        "inventory": {"source": "lab", "lab": {"url": lab_url, "timeout": 5}},
        "redfish": {"timeout": 5},
        "redfish_events": {"poll_interval": 0},
        "failover": fo,
    })


DaemonFactory = Callable[..., Any]


def _tasks() -> str:
    """Every task of the loop and the chain of awaits it is suspended in, for a failure message."""
    lines = []
    for task in sorted(asyncio.all_tasks(), key=lambda t: t.get_name()):
        chain: list[str] = []
        coro: Any = task.get_coro()
        while coro is not None and len(chain) < 12:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is None:  # a future, or a coroutine that is not suspended
                chain.append(type(coro).__name__)
                break
            chain.append(f"{frame.f_code.co_qualname}:{frame.f_lineno}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        lines.append(f"  {task.get_name()}: {' > '.join(chain)}")
    return "\n".join(lines)


async def advance_to(clock: FakeClock, when: float) -> None:
    """Move the fake clock to `when`, stopping just before it until something waits for exactly
    `when` (the daemon's timer loop sleeps until the next due timer, and at most a heartbeat)."""
    if when - clock.time() > 0.5:
        await clock.advance(when - clock.time() - 0.5)
    try:
        await asyncio.wait_for(clock.wait_for_deadline(when), 10)
    except TimeoutError:
        waiting = "\n".join(f"  {w:.6f} {who}" for w, who in clock.sleepers())
        raise AssertionError(f"nothing waits for {when} at {clock.time()}; on the clock:\n{waiting}\n"
                             f"every task:\n{_tasks()}") from None
    await clock.advance(when - clock.time())

