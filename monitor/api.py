"""The HTTP API (aiohttp): failovers, jobs, servers, groups, /healthz and /metrics.

Mutating calls need `Authorization: Bearer TOKEN` whenever a token is configured; tokens are compared in
constant time. Bad input gets a JSON error and a counted rejection, never a crash. With a rate limit, each
client address has a token bucket; a request finding it empty gets 429 with Retry-After (/healthz,
/metrics and the Redfish event listener, which has its own limits, are exempt).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from aiohttp import web
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
    field_validator,
    model_validator,
)

from monitor.core.clock import Clock
from monitor.core.errors import (
    ActiveJobExists,
    AdapterError,
    NotFound,
    OperatorRefused,
    ShuttingDown,
    StoreError,
    UnknownServer,
)
from monitor.core.events import Event
from monitor.core.metrics import CONTENT_TYPE, Metrics
from monitor.core.model import Inventory, Server
from monitor.core.ports import ProfileManager
from monitor.jobs import GroupLocks, JobRunner, service
from monitor.pipeline import maintenance
from monitor.pipeline.pipeline import Pipeline
from monitor.pipeline.plan import PlanDeps, plan
from monitor.pipeline.spare_pool import SparePool
from monitor.store import Store
from rules.schema import Duration

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FailoverRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    server: str = Field(min_length=1, max_length=200)
    reason: str = Field(default="", max_length=2000)


class PauseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000)


Author = Annotated[str, Field(min_length=1, max_length=200)]


class SilenceRequest(BaseModel):
    """A maintenance silence: `starts` defaults to now; give `ends` or `duration` ("2h")."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["server", "group", "enclosure"]
    target: str = Field(min_length=1, max_length=200)
    author: Author
    comment: str = Field(default="", max_length=2000)
    starts: AwareDatetime | None = None
    ends: AwareDatetime | None = None
    duration: Duration | None = None

    @model_validator(mode="after")
    def _one_end(self) -> SilenceRequest:
        if (self.ends is None) == (self.duration is None):
            raise ValueError("give ends or duration (one of them)")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("duration must be positive")
        return self


class AuthorRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    author: Author
    comment: str = Field(default="", max_length=2000)


class GuardsResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    author: Author
    server: str | None = Field(default=None, min_length=1, max_length=200)
    group: str | None = Field(default=None, min_length=1, max_length=200)


class FailbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job: int = Field(ge=1)
    author: Author
    reason: str = Field(default="", max_length=2000)
    allow_non_spare: bool = False


MAX_EVENT_DEPTH = 32
"""Nesting levels allowed in a posted event (its attributes, varbinds...): deeper ones are refused with
400, since every decision stores and serializes its event (a deep one would fail there, not here)."""


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in `value` (iteratively: no recursion limit to hit)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_EVENT_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


class EventIn(BaseModel):
    """A normalized event as posted or recorded: `time` defaults to now, `source` to "file"."""

    model_config = ConfigDict(extra="forbid")
    event: dict[str, Any]

    @model_validator(mode="before")
    @classmethod
    def _wrap(cls, value: Any) -> Any:
        return {"event": value} if isinstance(value, dict) and "event" not in value else value

    def to_event(self, now: datetime) -> Event:
        data = {"source": "file", "time": now, **self.event}
        return Event.model_validate(data).with_message_id()

    @field_validator("event")
    @classmethod
    def _valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        if _depth(value) > MAX_EVENT_DEPTH:
            raise ValueError(f"nested deeper than {MAX_EVENT_DEPTH} levels")
        Event.model_validate({"source": "file", "time": datetime.now(UTC), **value})
        return value


class EventBatch(RootModel[EventIn | list[EventIn]]):
    pass


M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ApiDeps:
    """What the API reads and acts on; built by the composition root (monitor/app/daemon.py)."""

    runner: JobRunner
    store: Store
    manager: ProfileManager
    locks: GroupLocks
    clock: Clock
    metrics: Metrics
    health: Callable[[], Awaitable[dict[str, Any]]]
    """{"ok": bool, part: {"ok": bool, ...}, ...}"""
    inventory: Callable[[], Inventory | None]
    pipeline: Pipeline | None = None
    events: asyncio.Queue[Event] | None = None
    """Where POST /api/v1/events puts what it accepts (None: the endpoint answers 503)."""
    plan: PlanDeps | None = None
    """What GET /api/v1/plan/{server} reads through (None: it answers 503)."""
    spares: SparePool | None = None
    """The spare pool check GET /api/v1/spares and /api/v1/status show (None: 503 / not shown)."""


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


EXEMPT_FROM_RATE_LIMIT = ("/healthz", "/metrics", "/api/v1/events/redfish")
"""Paths the rate limit never applies to: probes and scrapes, and the Redfish event listener (BMCs
retry a refused delivery only a few times; it has its own body limit, sender networks and 503)."""


class RateLimiter:
    """A token bucket per client address: `rate` tokens a second, at most `burst` stored. Memory is
    bounded: beyond `max_clients` addresses the full (idle) buckets are forgotten, then the oldest."""

    def __init__(self, rate: float, burst: int, *, now: Callable[[], float] = time.monotonic,
                 max_clients: int = 10000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._now = now
        self._max = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)

    def take(self, client: str) -> float:
        """0 when the request may go ahead (a token is taken), else the seconds until one is there."""
        now = self._now()
        tokens, at = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)  # re-inserted: the dict stays in least-recent-use order
        if len(self._buckets) > self._max:
            self._prune(now)
        return wait

    def _prune(self, now: float) -> None:
        full = [c for c, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst]
        for c in full:
            del self._buckets[c]
        while len(self._buckets) > self._max:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)


class Api:
    def __init__(
        self, deps: ApiDeps, *, token: str | None, max_body: int = 1 << 20,
        extra_routes: list[web.RouteDef] | None = None, rate_limiter: RateLimiter | None = None,
    ) -> None:
        self.d = deps
        self.extra_routes = extra_routes or []
        self.rate_limiter = rate_limiter
        self.runner = deps.runner
        self.pipeline = deps.pipeline
        self.events = deps.events
        self.metrics = deps.metrics
        self._token = token.encode() if token else None
        self.max_body = max_body

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body,
                              middlewares=[self._rate_limit, self._errors])
        app.add_routes([
            web.post("/api/v1/failovers", self.post_failover),
            web.get("/api/v1/jobs", self.list_jobs),
            web.get("/api/v1/jobs/{job}", self.get_job),
            web.get("/api/v1/servers", self.list_servers),
            web.get("/api/v1/servers/{server}", self.get_server),
            web.get("/api/v1/groups", self.list_groups),
            web.get("/api/v1/cluster", self.get_cluster),
            web.get("/api/v1/decisions", self.list_decisions),
            web.post("/api/v1/events", self.post_events),
            web.post("/api/v1/rules/explain", self.post_explain),
            web.get("/api/v1/pause", self.get_pause),
            web.post("/api/v1/pause", self.post_pause),
            web.delete("/api/v1/pause", self.delete_pause),
            *self._maintenance_routes(),
            *self.operator_routes(),
            *self.extra_routes,
            web.get("/healthz", self.healthz),
            web.get("/metrics", self.get_metrics),
        ])
        return app

    def _reject(self, reason: str) -> None:
        self.metrics.inc("api_rejected_total", reason=reason)

    @web.middleware
    async def _rate_limit(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        limiter = self.rate_limiter
        if limiter is None or request.path.startswith(EXEMPT_FROM_RATE_LIMIT):
            return await handler(request)
        wait = limiter.take(request.remote or "unknown")
        if wait > 0:
            self._reject("rate_limited")
            return web.json_response(
                {"error": f"rate limit of {limiter.rate:g} requests/s exceeded; retry later"},
                status=429, headers={"Retry-After": str(max(1, math.ceil(wait)))})
        return await handler(request)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            self._reject("too_large")
            return _error(413, f"request body larger than {self.max_body} bytes")
        except web.HTTPException as exc:
            if exc.status >= 400:
                self._reject(f"http_{exc.status}")
                return _error(exc.status, exc.reason)
            raise
        except StoreError as exc:
            self._reject("store_unavailable")
            return web.json_response({"error": f"the store is not reachable: {exc}"}, status=503,
                                     headers={"Retry-After": "5"})
        except Exception:
            log.exception("API %s %s failed", request.method, request.path)
            self._reject("internal_error")
            return _error(500, "internal error (see the monitor's log)")
        return resp

    def _authorized(self, request: web.Request) -> bool:
        if self._token is None:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode(), self._token)

    @property
    def token_required(self) -> bool:
        return self._token is not None

    def unauthorized(self, request: web.Request) -> web.Response | None:
        """None when the request carries the API's bearer token (or none is configured), else the 401."""
        return self._unauthorized(request)

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self._authorized(request):
            return None
        self._reject("unauthorized")
        return web.json_response({"error": "missing or invalid bearer token"}, status=401,
                                 headers={"WWW-Authenticate": "Bearer"})

    async def _body(self, request: web.Request, model: type[M]) -> M | web.Response:
        """The request body validated against `model`, or the 400 answer saying what is wrong."""
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            self._reject("bad_json")
            return _error(400, f"malformed JSON: {exc}")
        except RecursionError:
            self._reject("bad_json")
            return _error(400, "malformed JSON: nested too deeply")
        try:
            return model.model_validate(body)
        except RecursionError:
            self._reject("bad_request")
            return _error(400, "body: nested too deeply")
        except ValidationError as exc:
            self._reject("bad_request")
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return _error(400, f"{where}: {first['msg']}")

    # --- failovers ---------------------------------------------------------------------------

    async def post_failover(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        req = await self._body(request, FailoverRequest)
        if isinstance(req, web.Response):
            return req
        trigger = {"kind": "manual", "reason": req.reason,
                   "by": request.remote or "unknown"}
        try:
            job = await self.runner.submit(req.server, trigger)
        except UnknownServer:
            self._reject("unknown_server")
            return _error(404, f"unknown server {req.server}")
        except ActiveJobExists as exc:
            self._reject("active_job")
            return _error(409, f"server {req.server} already has active job {exc.job}", job=exc.job)
        except ShuttingDown as exc:
            return _error(503, str(exc))
        except (AdapterError, TimeoutError) as exc:
            # The manager cannot be read (down, 5xx, timeout): no job is created, nothing is touched.
            self._reject("manager_unavailable")
            log.warning("failover of %s not started: the manager cannot be read: %s", req.server, exc)
            return web.json_response(
                {"error": f"the manager cannot be read, no job was created: {exc or 'timeout'}"},
                status=503,
                headers={"Retry-After": "30"})
        return web.json_response({"job": job.id, "url": f"/api/v1/jobs/{job.id}"}, status=202)

    # --- jobs ----------------------------------------------------------------------------------

    async def list_jobs(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit", "100"))
            if not 1 <= limit <= 1000:
                raise ValueError
        except ValueError:
            return _error(400, "limit must be a whole number from 1 to 1000")
        state = q.get("state") or None
        if state and state not in ("queued", "running", "completed", "failed"):
            return _error(400, "state must be queued, running, completed or failed")
        jobs = await self.d.store.list_jobs(state=state, server=q.get("server") or None, limit=limit)
        return web.json_response([j.public() for j in jobs])

    async def get_job(self, request: web.Request) -> web.Response:
        try:
            job_id = int(request.match_info["job"])
        except ValueError:
            return _error(400, "a job number is a whole number")
        job = await self.d.store.get_job(job_id)
        if job is None:
            return _error(404, f"unknown job {job_id}")
        return web.json_response(job.public())

    # --- inventory ----------------------------------------------------------------------------

    def _inventory(self) -> Inventory:
        inv = self.d.inventory()
        if inv is None:
            raise web.HTTPServiceUnavailable(reason="inventory not loaded yet")
        return inv

    async def list_servers(self, request: web.Request) -> web.Response:
        inv = self._inventory()
        active = await self.d.store.active_by_server()
        servers = sorted(inv.servers.values(), key=lambda s: (s.enclosure, s.bay))
        group = request.query.get("domain_group")
        return web.json_response(
            [s.public(active.get(s.id)) for s in servers if not group or s.domain_group == group]
        )

    async def get_server(self, request: web.Request) -> web.Response:
        """One server, read fresh from the manager (the cached view when the manager does not answer)."""
        sid = request.match_info["server"]
        server: Server | None
        try:
            async with asyncio.timeout(10):
                server = await self.d.manager.server(sid)
        except NotFound:
            server = None
        except (AdapterError, TimeoutError):
            server = self._inventory().servers.get(sid)
        if server is None:
            return _error(404, f"unknown server {sid}")
        active = await self.d.store.active_by_server()
        return web.json_response(server.public(active.get(sid)))

    async def get_cluster(self, request: web.Request) -> web.Response:
        """The monitors sharing the store, their leases, and who holds which job and group."""
        runner = self.runner
        members = await runner.store.members()
        active = await runner.store.active_jobs()
        locks = await runner.store.group_locks()
        owner_of = {j.id: j.owner for j in active}
        return web.json_response({
            "instance": runner.instance,
            "incarnation": runner.membership.token,
            "lease": runner.cluster.lease,
            "heartbeat": runner.cluster.heartbeat,
            "fence_grace": runner.fence_grace,
            "members": [{"instance": m["instance"], "address": m["address"], "incarnation": m["incarnation"],
                         "alive": m["lease_left"] is not None,
                         "lease_left": round(m["lease_left"], 1) if m["lease_left"] is not None else None}
                        for m in members],
            "jobs": [{"job": j.id, "server": j.server, "owner": j.owner, "epoch": j.epoch,
                      "state": j.state.value} for j in active],
            "groups": [{"group": g, "job": job, "owner": owner_of.get(job)} for g, job in locks.items()],
        })

    async def list_groups(self, request: web.Request) -> web.Response:
        inv = self._inventory()
        held = await self.d.store.group_locks()
        locks = self.d.locks
        return web.json_response([
            {"id": g, "locked_by": held.get(g), "waiting": locks.waiting(g),
             "domains": sorted(d.id for d in inv.domains.values() if d.group == g)}
            for g in sorted(inv.groups)
        ])

    # --- events, decisions, pause --------------------------------------------------------------------

    def _pipeline(self) -> Pipeline:
        if self.pipeline is None:
            raise web.HTTPServiceUnavailable(reason="the rules pipeline is not running")
        return self.pipeline

    async def list_decisions(self, request: web.Request) -> web.Response:
        pipeline = self._pipeline()
        try:
            limit = int(request.query.get("limit", "50"))
            if not 1 <= limit <= 1000:
                raise ValueError
        except ValueError:
            return _error(400, "limit must be a whole number from 1 to 1000")
        await pipeline.flush()
        rows = await self.d.store.list_decisions(
            server=request.query.get("server") or None, action=request.query.get("action") or None,
            limit=limit)
        return web.json_response(rows)

    async def post_events(self, request: web.Request) -> web.Response:
        """Inject normalized events (one object or a list), as a source would."""
        if (denied := self._unauthorized(request)) is not None:
            return denied
        batch = await self._body(request, EventBatch)
        if isinstance(batch, web.Response):
            return batch
        if self.events is None:
            return _error(503, "no event queue")
        queued = 0
        for item in batch.root if isinstance(batch.root, list) else [batch.root]:
            try:
                self.events.put_nowait(item.to_event(self.d.clock.now()))
                queued += 1
            except asyncio.QueueFull:
                self.metrics.inc("events_dropped_total", reason="queue_full")
                return _error(503, f"event queue full after {queued} event(s)", queued=queued)
        self.metrics.inc("events_received_total", float(queued), source="api")
        return web.json_response({"queued": queued}, status=202)

    async def post_explain(self, request: web.Request) -> web.Response:
        """What the pipeline would decide for one event (an object) or several in order (a list), acting
        on nothing. `?mode=live` (default): on a copy of the running state, with the confirmation read
        from the BMC; `?mode=rules`: the rules and configured guards over these events alone."""
        pipeline = self._pipeline()
        mode = request.query.get("mode", "live")
        if mode not in ("live", "rules"):
            self._reject("bad_request")
            return _error(400, "mode is live or rules")
        batch = await self._body(request, EventBatch)
        if isinstance(batch, web.Response):
            return batch
        now = self.d.clock.now()
        items = batch.root if isinstance(batch.root, list) else [batch.root]
        if not items or len(items) > 1000:
            self._reject("bad_request")
            return _error(400, "give one event, or a list of 1 to 1000 events")
        out = await pipeline.explain([i.to_event(now) for i in items], live=mode == "live")
        return web.json_response(out if isinstance(batch.root, list) else out[0])

    async def get_pause(self, request: web.Request) -> web.Response:
        return web.json_response({"paused": self._pipeline().decider.paused})

    async def post_pause(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        req = await self._body(request, PauseRequest)
        if isinstance(req, web.Response):
            return req
        await self._pipeline().set_paused(req.reason)
        return web.json_response({"paused": req.reason})

    async def delete_pause(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        await self._pipeline().set_paused(None)
        return web.json_response({"paused": None})

    # --- maintenance: silences, guards, return to service (monitor/pipeline/maintenance.py,
    # monitor/jobs/service.py) ------------------------------------------------------------------

    def _maintenance_routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/silences", self.list_silences),
            web.post("/api/v1/silences", self.post_silence),
            web.delete("/api/v1/silences/{silence}", self.delete_silence),
            web.get("/api/v1/guards", self.get_guards),
            web.post("/api/v1/guards/reset", self.post_guards_reset),
            web.post("/api/v1/servers/{server}/spare", self.post_spare),
            web.post("/api/v1/failbacks", self.post_failback),
            web.get("/api/v1/audit", self.list_audit),
        ]

    def _refused(self, exc: OperatorRefused) -> web.Response:
        self._reject(f"refused_{exc.status}")
        return _error(exc.status, str(exc))

    async def list_silences(self, request: web.Request) -> web.Response:
        """The silences not yet ended (`?all=1`: every one, expired too)."""
        now = self.d.clock.time()
        rows = await self.d.store.list_silences(since=None if request.query.get("all") else now)
        return web.json_response([r.public(now) for r in rows])

    async def post_silence(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        req = await self._body(request, SilenceRequest)
        if isinstance(req, web.Response):
            return req
        now = self.d.clock.time()
        starts = req.starts.timestamp() if req.starts else now
        ends = req.ends.timestamp() if req.ends else starts + float(req.duration or 0)
        try:
            row = await maintenance.add_silence(self.d.store, self.d.inventory(), kind=req.kind,
                                                target=req.target, author=req.author, comment=req.comment,
                                                starts=starts, ends=ends, now=now)
        except OperatorRefused as exc:
            return self._refused(exc)
        return web.json_response(row.public(now), status=201)

    async def delete_silence(self, request: web.Request) -> web.Response:
        """Expire a silence now; the body (optional) names the author: {"author": "..."}."""
        if (denied := self._unauthorized(request)) is not None:
            return denied
        try:
            silence_id = int(request.match_info["silence"])
        except ValueError:
            return _error(400, "a silence number is a whole number")
        author = request.remote or "unknown"
        if request.can_read_body:
            req = await self._body(request, AuthorRequest)
            if isinstance(req, web.Response):
                return req
            author = req.author
        now = self.d.clock.time()
        try:
            row = await maintenance.expire_silence(self.d.store, silence_id, author, now)
        except OperatorRefused as exc:
            return self._refused(exc)
        return web.json_response(row.public(now))

    async def get_guards(self, request: web.Request) -> web.Response:
        return web.json_response(maintenance.guards_view(self._pipeline().decider, self.d.clock.time()))

    async def post_guards_reset(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        req = await self._body(request, GuardsResetRequest)
        if isinstance(req, web.Response):
            return req
        pipeline = self._pipeline()
        try:
            cleared = maintenance.reset_guards(pipeline.decider, self.d.inventory(), server=req.server,
                                               group=req.group)
        except OperatorRefused as exc:
            return self._refused(exc)
        await pipeline.snapshot()  # a restart does not bring the reset guards back
        target = req.server or req.group or ""
        await self.d.store.add_audit(req.author, "guards_reset", target,
                                     {**cleared, "monitor": self.runner.instance})
        log.warning("guards of %s reset by %s: %s", target, req.author, cleared)
        return web.json_response({"reset": cleared, "author": req.author,
                                  "guards": maintenance.guards_view(pipeline.decider, self.d.clock.time())})

    async def post_spare(self, request: web.Request) -> web.Response:
        """Return to service: designate a repaired blade a spare again (read Off and healthy first)."""
        if (denied := self._unauthorized(request)) is not None:
            return denied
        req = await self._body(request, AuthorRequest)
        if isinstance(req, web.Response):
            return req
        try:
            out = await service.designate_spare(self.runner, request.match_info["server"], author=req.author,
                                                comment=req.comment)
        except OperatorRefused as exc:
            return self._refused(exc)
        return web.json_response(out)

    async def post_failback(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        req = await self._body(request, FailbackRequest)
        if isinstance(req, web.Response):
            return req
        try:
            job = await service.failback(self.runner, req.job, author=req.author, reason=req.reason,
                                         allow_non_spare=req.allow_non_spare)
        except OperatorRefused as exc:
            return self._refused(exc)
        except ActiveJobExists as exc:
            self._reject("active_job")
            return _error(409, f"{exc.server} already has active job {exc.job}", job=exc.job)
        except ShuttingDown as exc:
            return _error(503, str(exc))
        except (AdapterError, TimeoutError) as exc:
            self._reject("manager_unavailable")
            return _error(503, f"the manager cannot be read, no job was created: {exc or 'timeout'}")
        return web.json_response({"job": job.id, "url": f"/api/v1/jobs/{job.id}", "of_job": req.job,
                                  "source": job.server, "target": job.trigger["target"]}, status=202)

    async def list_audit(self, request: web.Request) -> web.Response:
        """The operators' actions (guards resets, spares designated, failbacks), newest first."""
        try:
            limit = int(request.query.get("limit", "100"))
            if not 1 <= limit <= 1000:
                raise ValueError
        except ValueError:
            return _error(400, "limit must be a whole number from 1 to 1000")
        return web.json_response(await self.d.store.list_audit(limit=limit))

    # --- operator views: plan, status, spares (issue 13) -------------------------------------------

    def operator_routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/plan/{server}", self.get_plan),
            web.get("/api/v1/status", self.get_status),
            web.get("/api/v1/spares", self.get_spares),
        ]

    async def get_plan(self, request: web.Request) -> web.Response:
        """What a failover of the server would do now, touching nothing (`?rule=ID`: for that rule)."""
        if self.d.plan is None:
            return _error(503, "planning is not available")
        sid = request.match_info["server"]
        try:
            out = await plan(self.d.plan, sid, rule=request.query.get("rule") or None)
        except UnknownServer:
            self._reject("unknown_server")
            return _error(404, f"unknown server {sid}")
        except ValueError as exc:
            self._reject("bad_request")
            return _error(400, str(exc))
        except (AdapterError, TimeoutError) as exc:
            return web.json_response({"error": f"the manager cannot be read: {exc or 'timeout'}"},
                                     status=503, headers={"Retry-After": "30"})
        return web.json_response(out)

    async def get_spares(self, request: web.Request) -> web.Response:
        """The last spare pool check (`?fresh=1`: check now first), optionally one group's."""
        pool = self.d.spares
        if pool is None:
            return _error(503, "the spare pool check is not running")
        if request.query.get("fresh") in ("1", "true", "yes"):
            await pool.check()
        return web.json_response(pool.report.public(request.query.get("group") or None))

    async def get_status(self, request: web.Request) -> web.Response:
        return web.json_response(await self.status_view())

    async def status_view(self) -> dict[str, Any]:
        """One screen, as crm_mon: monitors and leases, groups with locks and queues, the spare pool,
        running jobs with their step, the pause switch (GET /api/v1/status, the CLI's status and the
        dashboard)."""
        runner, store = self.runner, self.d.store
        members = await store.members()
        active = await store.active_jobs()
        held = await store.group_locks()
        inv = self.d.inventory()
        groups = sorted(set(inv.groups) if inv is not None else set()) or sorted(held)
        pool = self.d.spares.report.public() if self.d.spares is not None else None
        jobs = []
        for j in active:
            current = next((s for s in j.steps if s.state.value == "running"), None) or \
                next((s for s in j.steps if s.state.value == "pending"), None)
            jobs.append({"job": j.id, "server": j.server, "group": j.group, "state": j.state.value,
                         "step": current.step if current else None,
                         "detail": current.detail if current else None, "owner": j.owner,
                         "epoch": j.epoch, "spare": j.spare, "here": j.id in runner.running_jobs})
        paused = self.pipeline.decider.paused if self.pipeline is not None else None
        return {
            "instance": runner.instance,
            "time": self.d.clock.now().isoformat(),
            "monitors": [{"instance": m["instance"], "address": m["address"],
                          "alive": m["lease_left"] is not None,
                          "lease_left": round(m["lease_left"], 1) if m["lease_left"] is not None else None}
                         for m in members],
            "groups": [{"group": g, "locked_by": held.get(g), "waiting": self.d.locks.waiting(g)}
                       for g in groups],
            "spare_pool": None if pool is None else {"checked": pool["checked"],
                                                      "capacity": pool["capacity"]},
            "jobs": jobs,
            "paused": paused,
            "silences": await self.status_silences(),
        }

    async def status_silences(self) -> list[dict[str, Any]]:
        """The silences for the status screen: the stored maintenance silences not yet ended (CLI/API),
        then those of the rule files (`silences:`) as the decider holds them."""
        now = self.d.clock.time()
        stored = [{"origin": "store", **r.public(now)} for r in await self.d.store.list_silences(since=now)]
        if self.pipeline is None:
            return stored
        return stored + [{"origin": "rules", **s.spec.model_dump(mode="json", exclude_defaults=True)}
                         for s in self.pipeline.decider.silences]

    # --- health and metrics ---------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        body = await self.d.health()
        return web.json_response(body, status=200 if body.get("ok") else 503)

    async def get_metrics(self, request: web.Request) -> web.Response:
        # In a worker thread: at 10,000 servers the exposition is ~400 KB, 50-80 ms of formatting
        # (three gauges per domain group and model), which would stall the loop at every scrape. The
        # gauges read what is replaced, never changed in place (the inventory, the spare report) or
        # one atomic value; prometheus_client's metrics take their own locks.
        text = await asyncio.to_thread(self.metrics.render)
        return web.Response(body=text.encode("utf-8"), headers={"Content-Type": CONTENT_TYPE})
