"""The dashboard's routes on the API's aiohttp app: GET / (overview), GET /jobs/{N} (a job's timeline),
GET /api/v1/stream (Server-Sent Events: job, decision and spares), GET /dashboard/static/{name}.

Pages and the stream only read; the page's buttons call the API's own routes with the bearer token the
operator types in, so actions have exactly the API's auth (and TLS, being on the same site)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

from monitor.api import Api
from monitor.core.model import Inventory, Job
from monitor.dashboard import render
from monitor.dashboard.hub import Hub
from monitor.pipeline.inventory import spare_counts
from monitor.pipeline.maintenance import covers
from monitor.store.rows import SilenceRow
from rules.engine import Decision

log = logging.getLogger(__name__)

STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
PAGE_SIZE = 200
"""Servers listed on one page of the overview (a datacenter has 10,000: the page would be megabytes, and
building it a long pause of the daemon's loop)."""
SERVER_STATES = ("production", "spare", "fenced", "maintenance", "unassigned")
MAX_FILTER = 200
"""Characters kept of a filter's text."""


@dataclass(frozen=True)
class ServerQuery:
    """Which servers the overview lists: those whose id, profile, group or model holds `text`
    (case-insensitive), in `state` and `group` when given; page `page` of PAGE_SIZE."""

    text: str = ""
    state: str = ""
    group: str = ""
    page: int = 1

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> ServerQuery:
        """From the page's query string; raises ValueError with the reason when it is not one (the
        reason is fixed text: it becomes the answer's status line)."""
        raw_page = query.get("page", "1").strip() or "1"
        # ASCII digits only ("²".isdigit() is true, and int() refuses it), few enough for int()
        if not (raw_page.isascii() and raw_page.isdigit()) or len(raw_page) > 7 or int(raw_page) < 1:
            raise ValueError("page: a whole number from 1 to 9999999")
        state = query.get("state", "").strip()
        if state and state not in SERVER_STATES:
            raise ValueError(f"state: one of {', '.join(SERVER_STATES)}")
        return cls(text=query.get("q", "").strip()[:MAX_FILTER], state=state,
                   group=query.get("group", "").strip()[:MAX_FILTER], page=int(raw_page))

    def matches(self, row: Mapping[str, Any]) -> bool:
        if self.state and row["state"] != self.state:
            return False
        if self.group and row["domain_group"] != self.group:
            return False
        if self.text:
            needle = self.text.casefold()
            return any(needle in str(row[k] or "").casefold()
                       for k in ("id", "profile", "domain_group", "model"))
        return True


def server_page(inv: Inventory | None, silences: list[SilenceRow], fenced: set[str], query: ServerQuery,
                size: int) -> tuple[list[dict[str, Any]], dict[str, int], int]:
    """Every server's state, counted; the rows of `query`'s page (at most `size`), and how many servers
    the query matches. A pure function of immutable inputs (run in a worker thread)."""
    servers: list[dict[str, Any]] = []
    counts = dict.fromkeys(SERVER_STATES, 0)
    matched = 0
    first = (query.page - 1) * size
    for s in sorted(inv.servers.values(), key=lambda s: s.id) if inv is not None else ():
        if any(covers(r, s) for r in silences):
            state = "maintenance"
        elif s.id in fenced and s.profile is None:
            state = "fenced"
        elif s.spare and s.profile is None:
            state = "spare"
        elif s.profile:
            state = "production"
        else:
            state = "unassigned"
        counts[state] += 1
        row = {"id": s.id, "domain_group": s.domain_group, "model": s.model, "profile": s.profile,
               "state": state}
        if not query.matches(row):
            continue
        if first <= matched < first + size:
            row.update(power=s.power.value, health=s.health.value)
            servers.append(row)
        matched += 1
    return servers, counts, matched


class Dashboard:
    def __init__(self, api: Api, *, heartbeat: float = 15.0, max_queued: int = 256,
                 write_timeout: float = 10.0) -> None:
        self.api = api
        self.d = api.d
        self.hub = Hub(api.metrics, max_queued=max_queued)
        self.heartbeat = heartbeat
        self.write_timeout = write_timeout
        self._static = {name: (resources.files("monitor.dashboard") / "static" / name).read_bytes()
                        for name in STATIC}
        self._counted: tuple[Inventory | None, dict[tuple[str, str], float]] | None = None
        """The last inventory object and its spare counts: an inventory is replaced, never changed in
        place, so its counts hold until the next one (each of a job's steps asks, 10,000 servers
        each time)."""

    def attach(self) -> None:
        """Subscribe to the job runner and the pipeline (both cost nothing while no page is open)."""
        self.d.runner.add_listener(self.on_job)
        if self.d.pipeline is not None:
            self.d.pipeline.decision_listeners.append(self.on_decision)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.get_overview),
            web.get("/jobs/{job}", self.get_job_page),
            web.get("/api/v1/stream", self.get_stream),
            web.get("/dashboard/static/{name}", self.get_static),
        ]

    # --- live feeds ------------------------------------------------------------------------------

    async def on_job(self, job: Job) -> None:
        if not self.hub.active:
            return
        self.hub.publish("job", job.public)
        spares = await self.spares_view()
        self.hub.publish("spares", lambda: {"spares": spares})

    def on_decision(self, decision: Decision) -> None:
        self.hub.publish("decision", decision.public)

    # --- views -----------------------------------------------------------------------------------

    async def spares_view(self) -> list[dict[str, Any]]:
        """Per group and model: designated spares not taken by a job (active, or done while the
        inventory has not caught up), against the group's N+k."""
        inv = self.d.inventory()
        taken = {j.spare for j in await self.d.store.list_jobs(limit=200) if j.spare}
        if self._counted is None or self._counted[0] is not inv:
            self._counted = (inv, spare_counts(inv))
        counts = dict(self._counted[1])
        if inv is not None:
            for sid in taken:
                server = inv.servers.get(sid)
                if server is not None and server.spare and server.profile is None and server.present:
                    key = (server.domain_group, server.model)
                    counts[key] = max(0.0, counts.get(key, 0.0) - 1.0)
        want: dict[tuple[str, str], int] = {}
        if self.d.spares is not None:
            want = {(c["domain_group"], c["model"]): int(c["min"]) for c in self.d.spares.report.capacity}
        default = self.d.spares.config.min_per_model if self.d.spares is not None else 1
        return [{"domain_group": g, "model": m, "available": int(n), "min": want.get((g, m), default)}
                for (g, m), n in sorted(counts.items()) if m]  # an empty bay has no model

    async def overview_view(self, query: ServerQuery | None = None) -> dict[str, Any]:
        """The overview's content; its servers are the page of `query` (every server counted by
        state)."""
        query = query or ServerQuery()
        status = await self.api.status_view()
        inv = self.d.inventory()
        jobs = await self.d.store.list_jobs(limit=20)
        fenced = {j.server for j in jobs if j.state.value != "failed" and any(
            s.step == "power_off_source" and s.state.value == "done" for s in j.steps)}
        now = self.d.clock.time()
        silences = [r for r in await self.d.store.list_silences(since=now) if r.starts <= now]
        # Off the loop: at 10,000 servers the pass is tens of ms (the inventory and the silences read
        # here are not changed in place, so another thread may walk them).
        servers, counts, matched = await asyncio.to_thread(server_page, inv, silences, fenced, query,
                                                           PAGE_SIZE)
        decisions: list[dict[str, Any]] = []
        if self.d.pipeline is not None:
            await self.d.pipeline.flush()
            decisions = await self.d.store.list_decisions(server=None, action=None, limit=20)
        return {"status": status, "servers": servers, "spares": await self.spares_view(),
                "jobs": [j.public() for j in jobs], "decisions": decisions, "server_counts": counts,
                "servers_matched": matched, "query": query, "page_size": PAGE_SIZE}

    # --- handlers --------------------------------------------------------------------------------

    @property
    def _token_required(self) -> bool:
        return self.api.token_required

    async def get_overview(self, request: web.Request) -> web.Response:
        try:
            query = ServerQuery.parse(request.query)
        except ValueError as exc:
            raise web.HTTPBadRequest(reason=str(exc)) from None
        view = await self.overview_view(query)
        html = await asyncio.to_thread(render.overview, view, token_required=self._token_required)
        return web.Response(text=html, content_type="text/html")

    async def get_job_page(self, request: web.Request) -> web.Response:
        try:
            job = await self.d.store.get_job(int(request.match_info["job"]))
        except ValueError:
            raise web.HTTPBadRequest(reason="a job number is a whole number") from None
        if job is None:
            raise web.HTTPNotFound(reason=f"unknown job {request.match_info['job']}")
        html = render.job_page(job.public(), token_required=self._token_required)
        return web.Response(text=html, content_type="text/html")

    async def get_static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound(reason=f"no static file {name}")
        return web.Response(body=self._static[name], content_type=STATIC[name],
                            headers={"Cache-Control": "max-age=300"})

    async def get_stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        client = self.hub.subscribe()
        clock = self.d.clock
        try:
            await resp.write(b"retry: 2000\n: connected\n\n")
            while not (client.dropped or client.closed):
                while client.frames and not client.closed:
                    frame = client.frames.popleft()
                    async with clock.timeout(self.write_timeout):
                        await resp.write(frame.encode())
                if client.dropped or client.closed:
                    break
                client.ready.clear()
                with contextlib.suppress(TimeoutError):
                    async with clock.timeout(self.heartbeat):
                        await client.ready.wait()
                    continue
                async with clock.timeout(self.write_timeout):
                    await resp.write(b": heartbeat\n\n")
        except (ConnectionResetError, TimeoutError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.debug("dashboard stream ended: %r", exc)
        finally:
            self.hub.unsubscribe(client)
        return resp
