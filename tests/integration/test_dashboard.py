"""The dashboard's routes on the daemon's own app, against the lab: the pages, the static files, the
stream (nothing built before a page connects; a failover's steps and the spare count once one has), and
the actions staying the API's (401 without the token)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from lab.main import LabSimulator
from tests.support.harness import DaemonFactory, LabControl, monitor_config
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


async def test_the_servers_filter_and_pages_on_the_daemon(lab: LabSimulator, start_daemon: DaemonFactory,
                                                         tmp_path: Path, token: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The overview lists a page of the servers the query picks, every server counted by state; a query
    that is not one is a 400 with the reason."""
    monkeypatch.setattr("monitor.dashboard.web.PAGE_SIZE", 5)
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    inv = h.daemon.inventory()
    assert inv is not None and len(inv.servers) > 10

    def rows(page: str) -> list[str]:
        return re.findall(r'<tr data-server="([^"]+)">', page)

    async def get(query: str, status: int = 200) -> str:
        async with h.http.get(h.base + "/" + query) as r:
            text: str = await r.text()
            assert r.status == status, (query, text[:200])
            return text

    everyone = sorted(inv.servers)
    seen: list[str] = []
    page = 1
    while True:
        html = await get(f"?page={page}")
        assert len(rows(html)) <= 5
        seen += rows(html)
        if 'rel="next"' not in html:
            break
        page += 1
    assert seen == everyone, "the pages list every server once, in order"
    assert f"{len(everyone):,} servers:" in html

    spares = sorted(s.id for s in inv.servers.values() if s.spare and s.profile is None)
    html = await get("?state=spare")
    assert rows(html) == spares[:5] and f"of {len(spares):,}" in html
    assert rows(await get("?q=ENC1-BAY1")) == sorted(
        s for s in everyone if "enc1-bay1" in s)[:5], "the text matches the id without case"
    assert "no server matches" in await get("?q=no-such-server")
    assert "page: a whole number" in await get("?page=0", 400)
    assert "state: one of" in await get("?state=lost", 400)


async def test_the_spare_counts_follow_a_new_inventory(lab: LabSimulator, lab_control: LabControl,
                                                      start_daemon: DaemonFactory, tmp_path: Path,
                                                      token: str) -> None:
    """The counts are kept for one inventory object (each job step asks for them): a refreshed inventory
    (a spare pulled from its bay) is counted again."""
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    dashboard = h.daemon.dashboard
    assert dashboard is not None
    inv = h.daemon.inventory()
    assert inv is not None
    spare = next(s for _, s in sorted(inv.servers.items()) if s.spare and s.profile is None and s.present)
    key = (spare.domain_group, spare.model)

    async def available() -> int:
        return next(int(c["available"]) for c in await dashboard.spares_view()
                    if (c["domain_group"], c["model"]) == key)

    before = await available()
    assert before >= 1 and await available() == before
    await lab_control.call("PUT", f"/lab/v1/servers/{spare.id}", {"present": False})
    h.daemon.inventory_view.wake()

    def pulled() -> bool:
        now = h.daemon.inventory()
        return now is not None and not now.servers[spare.id].present

    await eventually(pulled, WAIT, f"the inventory to show {spare.id} pulled")
    assert await available() == before - 1


async def test_the_servers_page_is_built_off_the_loop(lab: LabSimulator, start_daemon: DaemonFactory,
                                                     tmp_path: Path, token: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The pass over every server and the HTML run in a worker thread (tens of ms at 10,000 servers)."""
    from monitor.dashboard import render, web

    ran_in: dict[str, threading.Thread] = {}
    page, overview = web.server_page, render.overview

    def server_page(*args: Any) -> Any:
        ran_in["servers"] = threading.current_thread()
        return page(*args)

    def html(*args: Any, **kw: Any) -> str:
        ran_in["html"] = threading.current_thread()
        return overview(*args, **kw)

    monkeypatch.setattr(web, "server_page", server_page)
    monkeypatch.setattr(render, "overview", html)
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token))
    async with h.http.get(h.base + "/") as r:
        assert r.status == 200 and "enc1-bay1" in await r.text()
    assert set(ran_in) == {"servers", "html"}
    assert all(t is not threading.main_thread() for t in ran_in.values()), ran_in
