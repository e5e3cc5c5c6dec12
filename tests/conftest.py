"""Shared fixtures: the lab simulator in-process (a real HTTPS Redfish peer per blade), and the daemon
in-process against it, each on port 0."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from lab.config import LabConfig
from lab.main import LabSimulator
from monitor.app.daemon import Daemon
from monitor.core.clock import Clock
from monitor.core.config import LoadedConfig, MonitorConfig
from tests.support.harness import FAST_LATENCY, DaemonFactory, Harness, LabControl


@pytest.fixture
async def lab() -> AsyncIterator[LabSimulator]:
    async with LabSimulator(LabConfig.model_validate({"listen": "127.0.0.1:0",
                                                       "latency": FAST_LATENCY})) as sim:
        yield sim












@pytest.fixture
async def start_daemon(tmp_path: Path) -> AsyncIterator[DaemonFactory]:
    """Start daemons in-process: `h = await start_daemon(config, clock=None)`; all stopped at the end."""
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def start(config: MonitorConfig, *, clock: Clock | None = None) -> Harness:
        daemon = Daemon(LoadedConfig(config, None), clock=clock)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        ready = asyncio.create_task(daemon.ready.wait())
        await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready.cancel()
            task.result()
        assert daemon.ready.is_set()
        running.append((stop, task))
        token = config.http.token.get_secret_value() if config.http.token else ""
        return Harness(daemon, token, session, stop, task)

    yield start
    for stop, task in reversed(running):
        stop.set()
        await asyncio.wait_for(task, 30)
    await session.close()


@pytest.fixture
async def lab_control(lab: LabSimulator) -> AsyncIterator[LabControl]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield LabControl(lab.manager_url, s)


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(12)
