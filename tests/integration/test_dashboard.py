"""The dashboard's routes on the daemon's own app, against the lab: the pages, the static files, the
stream (nothing built before a page connects; a failover's steps and the spare count once one has), and
the actions staying the API's (401 without the token)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lab.main import LabSimulator
from tests.support.harness import DaemonFactory, monitor_config
from tests.support.wait import eventually

WAIT = 30.0


@pytest.mark.slow
async def test_pages_stream_and_auth(lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path,
                                     token: str) -> None:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    dashboard = h.daemon.dashboard
    assert dashboard is not None
    async with h.http.get(h.base + "/") as r:
        page = await r.text()
        assert r.status == 200 and r.content_type == "text/html"
    assert "enc1-bay1" in page and 'class="spare-count"' in page
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        async with h.http.get(f"{h.base}/dashboard/static/{name}") as r:
            assert r.status == 200 and r.content_type == kind
    for path, status in (("/dashboard/static/../api.py", 404), ("/dashboard/static/x.js", 404),
                         ("/jobs/999", 404), ("/jobs/x", 400)):
        async with h.http.get(h.base + path) as r:
            assert r.status == status, path
    # Actions are the API's: without the token a page's call is refused.
    status, _ = await h.api("POST", "/api/v1/pause", {"reason": "x"}, token=None)
    assert status == 401

    # No page open: a failover's job changes build nothing for the stream.
    status, answer = await h.api("POST", "/api/v1/failovers", {"server": "enc1-bay1"})
    assert status == 202, answer
    first = answer["job"]
    await h.wait_for(lambda: first in h.jobs and not h.jobs[first].state.active)
    assert dashboard.hub.built == 0

    async with h.http.get(h.base + "/api/v1/stream") as stream:
        assert stream.status == 200 and stream.content_type == "text/event-stream"
        assert (await stream.content.readuntil(b"\n\n")).startswith(b"retry:")
        status, answer = await h.api("POST", "/api/v1/failovers", {"server": "enc1-bay2"})
        assert status == 202, answer
        job = answer["job"]
        steps: list[str] = []
        spares: list[Any] = []
        while True:
            frame = (await stream.content.readuntil(b"\n\n")).decode()
            kind, _, data = frame.partition("\ndata: ")
            if kind == "event: spares":
                spares.append(json.loads(data)["spares"])
            if kind != "event: job":
                continue
            body = json.loads(data)
            assert body["job"] == job
            running = [s["step"] for s in body["steps"] if s["state"] == "running"]
            if running and running[-1] not in steps:
                steps.append(running[-1])
            if body["state"] == "completed":
                break
    assert steps[:2] == ["check_domain", "lock_group"] and "power_off_source" in steps, steps
    assert steps.index("power_off_source") < steps.index("move_profile") < steps.index("power_on_spare")
    assert spares and all(c["available"] >= 0 for c in spares[-1])
    # A page that went away is forgotten at the next write to it (an event or the heartbeat).
    status, answer = await h.api("POST", "/api/v1/failovers", {"server": "enc1-bay3"})
    assert status == 202, answer
    await eventually(lambda: len(dashboard.hub) == 0, WAIT, "the closed stream's client to be dropped")
