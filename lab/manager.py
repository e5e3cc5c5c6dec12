"""The manager API (VCEM + Systems Insight Manager roles) and the lab control API, plain HTTP JSON."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from lab.config import split_host_port
from lab.fencing import FENCE_HEADER, FenceMode, FenceToken, MalformedFence, parse_fence, read_token
from lab.traps import encode_v2c_trap, send_trap
from lab.world import LabError, StaleFence, World

__all__ = ["create_manager_app"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PresenceHook = Callable[[str], Awaitable[None]]


# --- request bodies ----------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class MoveBody(_Body):
    from_: str = Field(alias="from")
    to: str


class SpareBody(_Body):
    spare: StrictBool


class PowerBody(_Body):
    action: Literal["ForceOff", "On"]


class HostBody(_Body):
    name: str = Field(min_length=1)
    ip: str

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value


class FaultBody(_Body):
    server: str | None = None
    domain: str | None = None
    fault: str
    delay_s: float | None = Field(default=None, ge=0, le=3600)


class LatencyBody(_Body):
    bmc_ms: float | None = Field(default=None, ge=0)
    manager_ms: float | None = Field(default=None, ge=0)
    power_off_s: float | None = Field(default=None, ge=0)
    power_on_s: float | None = Field(default=None, ge=0)
    boot_s: float | None = Field(default=None, ge=0)


class ServerControlBody(_Body):
    power: Literal["On", "Off"] | None = None
    health: Literal["OK", "Warning", "Critical"] | None = None
    present: StrictBool | None = None


class EventBody(_Body):
    message_id: str = Field(min_length=1, max_length=200)
    severity: Literal["OK", "Warning", "Critical"] | None = None
    message: str | None = Field(default=None, max_length=2000)
    message_args: list[str] = Field(default_factory=list, max_length=32)
    health: Literal["OK", "Warning", "Critical"] | None = None
    event_type: Literal[
        "StatusChange", "ResourceUpdated", "ResourceAdded", "ResourceRemoved", "Alert"
    ] = "Alert"
    origin: str | None = Field(default=None, max_length=500)


class FencingBody(_Body):
    mode: FenceMode


class EventServiceBody(_Body):
    enabled: StrictBool | None = None
    http_headers: Literal["any", "array", "object", "none"] | None = None


B = TypeVar("B", bound=_Body)


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _body(request: web.Request, model: type[B]) -> B:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _HttpError(400, "the request body is not valid JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise _HttpError(400, problems) from None


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status=status)


def _token(request: web.Request) -> FenceToken | None:
    """The request's fencing token (None without the header); a malformed header is a 400."""
    try:
        return parse_fence(request.headers.getall(FENCE_HEADER, []))
    except MalformedFence as exc:
        raise _HttpError(400, str(exc)) from None


@dataclass
class ManagerState:
    world: World
    api_token: str | None
    on_presence: PresenceHook | None
    oa_view: Callable[[], dict[str, Any]] | None = None
    """The Onboard Administrators the lab serves (lab.oa_ssh), for GET /lab/v1/oa."""


STATE = web.AppKey("manager_state", ManagerState)


# --- middlewares -----------------------------------------------------------------------------------------


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except StaleFence as exc:
        return _json({"error": exc.message, "stale_fence": exc.view()}, status=exc.status)
    except LabError as exc:
        return _error(exc.status, exc.message)
    except _HttpError as exc:
        return _error(exc.status, exc.message)
    except web.HTTPNotFound:
        return _error(404, f"no such endpoint: {request.method} {request.path}")
    except web.HTTPMethodNotAllowed:
        return _error(405, f"method {request.method} not allowed on {request.path}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[STATE].api_token
    if token is not None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            response = _error(401, "missing or wrong bearer token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="failover-lab"'
            return response
    return await handler(request)


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A read carrying a fencing token tells the world the job's newest epoch (World.observe)."""
    token = read_token(request.method, request.headers.getall(FENCE_HEADER, []))
    if token is not None:
        request.app[STATE].world.observe(token)
    return await handler(request)


@web.middleware
async def latency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    world = request.app[STATE].world
    if request.path.startswith("/api/") and world.latency.manager_ms > 0:
        await asyncio.sleep(world.latency.manager_ms / 1000.0)
    if request.path.startswith("/api/") and world.manager_fault("manager_unavailable"):
        response = _error(503, "the manager is unavailable (injected fault manager_unavailable)")
        response.headers["Retry-After"] = "30"
        return response
    return await handler(request)


# --- manager API ------------------------------------------------------------------------------------------


def _world(request: web.Request) -> World:
    return request.app[STATE].world


async def get_inventory(request: web.Request) -> web.Response:
    """The whole inventory, with a strong ETag (a digest of the body); a GET whose If-None-Match
    names the current one is answered 304 with no body, as HTTP caches expect."""
    body = json.dumps(_world(request).inventory()).encode()
    etag = f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'
    if etag in (t.strip() for t in request.headers.get("If-None-Match", "").split(",")):
        return web.Response(status=304, headers={"ETag": etag})
    return web.Response(body=body, content_type="application/json", headers={"ETag": etag})


async def get_servers(request: web.Request) -> web.Response:
    """Every server, or those of one domain group (`?domain_group=dg1`)."""
    world = _world(request)
    views = [world.server_view(s) for s in world.servers.values()]
    group = request.query.get("domain_group")
    return _json([v for v in views if v["domain_group"] == group] if group else views)


async def get_server(request: web.Request) -> web.Response:
    world = _world(request)
    return _json(world.server_view(world.server(request.match_info["id"])))


async def get_domains(request: web.Request) -> web.Response:
    world = _world(request)
    return _json([world.domain_view(d) for d in world.domains])


async def get_domain(request: web.Request) -> web.Response:
    world = _world(request)
    return _json(world.domain_view(world.domain(request.match_info["id"])))


async def get_profiles(request: web.Request) -> web.Response:
    world = _world(request)
    return _json([world.profile_view(p) for p in world.profiles.values()])


async def get_profile(request: web.Request) -> web.Response:
    world = _world(request)
    return _json(world.profile_view(world.profile(request.match_info["id"])))


async def post_move(request: web.Request) -> web.Response:
    world = _world(request)
    token = _token(request)
    body = await _body(request, MoveBody)
    profile = world.move(request.match_info["id"], body.from_, body.to, token)
    return _json({"id": profile.id, "server": profile.server})


async def put_spare(request: web.Request) -> web.Response:
    world = _world(request)
    token = _token(request)
    body = await _body(request, SpareBody)
    return _json(world.server_view(world.set_spare(request.match_info["id"], body.spare, token)))


async def get_power(request: web.Request) -> web.Response:
    world = _world(request)
    server = world.server(request.match_info["id"])
    return _json({"server": server.id, "power": server.power})


async def post_power(request: web.Request) -> web.Response:
    """The manager's own power control (as OneView's powerState PUT or OME's POWER_CONTROL job, done at
    once): it reaches the blade through the enclosure, not through the blade's BMC."""
    world = _world(request)
    token = _token(request)
    body = await _body(request, PowerBody)
    server = world.enclosure_power(request.match_info["id"], body.action, "manager", token)
    return _json({"server": server.id, "power": server.power})


async def get_hosts(request: web.Request) -> web.Response:
    return _json(_world(request).hosts_view())


async def get_host(request: web.Request) -> web.Response:
    world = _world(request)
    server = world.server(request.match_info["server"])
    record = world.hosts.get(server.id)
    if record is None:
        return _error(404, f"server {server.id} has no host record")
    return _json({"server": server.id, "name": record.name, "ip": record.ip})


async def delete_host(request: web.Request) -> web.Response:
    return _json(_world(request).delete_host(request.match_info["server"], _token(request)))


async def put_host(request: web.Request) -> web.Response:
    token = _token(request)
    body = await _body(request, HostBody)
    return _json(_world(request).put_host(request.match_info["server"], body.name, body.ip, token))


async def post_discover(request: web.Request) -> web.Response:
    return _json(_world(request).discover(request.match_info["server"], _token(request)))


# --- control API -----------------------------------------------------------------------------------------


async def _sync_bmcs(request: web.Request) -> None:
    """After faults changed: start or stop BMC listeners (`bmc_down`)."""
    state = request.app[STATE]
    if state.on_presence is not None:
        for server in state.world.bmc_servers():
            await state.on_presence(server.id)


async def post_fault(request: web.Request) -> web.Response:
    body = await _body(request, FaultBody)
    fault = _world(request).add_fault(body.fault, body.server, body.domain, body.delay_s)
    if fault.fault == "bmc_down":
        await _sync_bmcs(request)
    return _json(fault.view())


async def get_faults(request: web.Request) -> web.Response:
    return _json([f.view() for f in _world(request).faults.values()])


async def delete_faults(request: web.Request) -> web.Response:
    cleared = _world(request).clear_faults()
    await _sync_bmcs(request)
    return _json({"cleared": cleared})


async def delete_fault(request: web.Request) -> web.Response:
    fault = _world(request).remove_fault(request.match_info["id"])
    if fault.fault == "bmc_down":
        await _sync_bmcs(request)
    return _json(fault.view())


async def get_latency(request: web.Request) -> web.Response:
    return _json(_world(request).latency.model_dump())


async def put_latency(request: web.Request) -> web.Response:
    body = await _body(request, LatencyBody)
    latency = _world(request).set_latency(body.model_dump(exclude_none=True))
    return _json(latency.model_dump())


async def put_control_server(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await _body(request, ServerControlBody)
    server_id = request.match_info["id"]
    changed = state.world.control_server(
        server_id, power=body.power, health=body.health, present=body.present
    )
    if changed and state.on_presence is not None:
        await state.on_presence(server_id)
    return _json(state.world.server_view(state.world.server(server_id)))


async def post_event(request: web.Request) -> web.Response:
    """Raise one event on a blade's BMC (delivered to its subscriptions and SSE streams)."""
    world = _world(request)
    body = await _body(request, EventBody)
    server_id = request.match_info["id"]
    payload = world.raise_event(
        server_id,
        body.message_id,
        severity=body.severity,
        message=body.message,
        message_args=body.message_args,
        health=body.health,
        event_type=body.event_type,
        origin=body.origin,
    )
    service = world.event_service(server_id)
    targets = sum(1 for s in service.subscriptions.values() if s.wants(payload["Events"][0]))
    return _json({"event": payload, "subscriptions": targets if service.enabled else 0})


class HardwareFaultBody(_Body):
    kind: str = Field(min_length=1, max_length=64)


async def post_hardware_fault(request: web.Request) -> web.Response:
    """A hardware fault on a blade: its health turns Critical, its BMC sends its Redfish event to its
    subscriptions and its iLO sends its SNMPv2c trap to `snmp_traps.targets`, from the BMC's address."""
    world = _world(request)
    body = await _body(request, HardwareFaultBody)
    server_id = request.match_info["id"]
    payload, trap = world.hardware_fault(server_id, body.kind)
    service = world.event_service(server_id)
    subscriptions = sum(1 for s in service.subscriptions.values() if s.wants(payload["Events"][0]))
    cfg = world.config.snmp_traps
    targets = [split_host_port(t) for t in cfg.targets]
    data = encode_v2c_trap(cfg.community, trap["trap_oid"], trap["varbinds"])
    failed = send_trap(trap["source"], targets, data)
    return _json({
        "server": server_id, "kind": body.kind, "event": payload,
        "subscriptions": subscriptions if service.enabled else 0,
        "trap": {"oid": trap["trap_oid"], "from": trap["source"], "to": list(cfg.targets), "failed": failed},
    })


async def get_events(request: web.Request) -> web.Response:
    service = _world(request).event_service(request.match_info["id"])
    return _json({"events": list(service.events), "deliveries": list(service.deliveries)})


async def get_event_service(request: web.Request) -> web.Response:
    return _json(_world(request).event_service(request.match_info["id"]).view())


async def put_event_service(request: web.Request) -> web.Response:
    body = await _body(request, EventServiceBody)
    service = _world(request).configure_event_service(
        request.match_info["id"], enabled=body.enabled, http_headers=body.http_headers
    )
    return _json(service.view())


async def get_violations(request: web.Request) -> web.Response:
    return _json(_world(request).violations)


async def delete_violations(request: web.Request) -> web.Response:
    return _json({"cleared": _world(request).clear_violations()})


async def get_log(request: web.Request) -> web.Response:
    return _json(_world(request).log)


async def delete_log(request: web.Request) -> web.Response:
    return _json({"cleared": _world(request).clear_log()})


async def get_fencing(request: web.Request) -> web.Response:
    return _json(_world(request).fencing_view())


async def put_fencing(request: web.Request) -> web.Response:
    body = await _body(request, FencingBody)
    world = _world(request)
    world.set_fencing_mode(body.mode)
    return _json(world.fencing_view())


async def delete_fencing(request: web.Request) -> web.Response:
    return _json({"cleared": _world(request).clear_fencing()})


async def get_oa(request: web.Request) -> web.Response:
    view = request.app[STATE].oa_view
    if view is None:
        return _error(404, "the lab serves no Onboard Administrator (config `oa` not set)")
    return _json(view())


async def get_health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


def create_manager_app(
    world: World, api_token: str | None = None, on_presence: PresenceHook | None = None,
    oa_view: Callable[[], dict[str, Any]] | None = None,
) -> web.Application:
    """The manager + control application; `on_presence(server_id)` runs after a blade is pulled/inserted."""
    app = web.Application(
        middlewares=[error_middleware, auth_middleware, observe_middleware, latency_middleware])
    app[STATE] = ManagerState(world, api_token, on_presence, oa_view)
    r = app.router
    r.add_get("/api/v1/inventory", get_inventory)
    r.add_get("/api/v1/servers", get_servers)
    r.add_get("/api/v1/servers/{id}", get_server)
    r.add_put("/api/v1/servers/{id}/spare", put_spare)
    r.add_get("/api/v1/servers/{id}/power", get_power)
    r.add_post("/api/v1/servers/{id}/power", post_power)
    r.add_get("/api/v1/domains", get_domains)
    r.add_get("/api/v1/domains/{id}", get_domain)
    r.add_get("/api/v1/profiles", get_profiles)
    r.add_get("/api/v1/profiles/{id}", get_profile)
    r.add_post("/api/v1/profiles/{id}/move", post_move)
    r.add_get("/api/v1/hosts", get_hosts)
    r.add_get("/api/v1/hosts/{server}", get_host)
    r.add_delete("/api/v1/hosts/{server}", delete_host)
    r.add_put("/api/v1/hosts/{server}", put_host)
    r.add_post("/api/v1/discover/{server}", post_discover)
    r.add_post("/lab/v1/faults", post_fault)
    r.add_get("/lab/v1/faults", get_faults)
    r.add_delete("/lab/v1/faults", delete_faults)
    r.add_delete("/lab/v1/faults/{id}", delete_fault)
    r.add_get("/lab/v1/latency", get_latency)
    r.add_put("/lab/v1/latency", put_latency)
    r.add_put("/lab/v1/servers/{id}", put_control_server)
    r.add_post("/lab/v1/servers/{id}/events", post_event)
    r.add_get("/lab/v1/servers/{id}/events", get_events)
    r.add_post("/lab/v1/servers/{id}/hardware-fault", post_hardware_fault)
    r.add_get("/lab/v1/servers/{id}/eventservice", get_event_service)
    r.add_put("/lab/v1/servers/{id}/eventservice", put_event_service)
    r.add_get("/lab/v1/violations", get_violations)
    r.add_delete("/lab/v1/violations", delete_violations)
    r.add_get("/lab/v1/log", get_log)
    r.add_delete("/lab/v1/log", delete_log)
    r.add_get("/lab/v1/fencing", get_fencing)
    r.add_put("/lab/v1/fencing", put_fencing)
    r.add_delete("/lab/v1/fencing", delete_fencing)
    r.add_get("/lab/v1/oa", get_oa)
    r.add_get("/lab/v1/health", get_health)
    return app
