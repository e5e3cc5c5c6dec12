"""The per-blade Redfish service (an iLO-like BMC), HTTPS on the blade's own loopback address."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from lab.config import Credentials
from lab.fencing import FENCE_HEADER, MalformedFence, parse_fence, read_token
from lab.world import (
    DELIVERY_RETRY_ATTEMPTS,
    EVENT_TYPES,
    PRODUCTS,
    REGISTRY_PREFIXES,
    RESET_TYPES,
    InvalidPowerState,
    LabError,
    RedfishBadRequest,
    Server,
    StaleFence,
    Subscription,
    UnknownResetType,
    World,
    is_loopback_host,
)

__all__ = ["BmcFleet", "BmcStartError", "EventDispatcher", "create_bmc_app"]

log = logging.getLogger("lab.bmc")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ROOT = "/redfish/v1"
SESSIONS = f"{ROOT}/SessionService/Sessions"
EVENT_SERVICE = f"{ROOT}/EventService"
SUBSCRIPTIONS = f"{EVENT_SERVICE}/Subscriptions"
SSE_PATH = f"{EVENT_SERVICE}/SSE"
SUBMIT_TEST_EVENT = f"{EVENT_SERVICE}/Actions/EventService.SubmitTestEvent"
SSE_KEEPALIVE_S = 15.0
DELIVERY_TIMEOUT_S = 5.0
PUBLIC = frozenset({"/redfish", "/redfish/", ROOT, f"{ROOT}/", f"{ROOT}/odata", f"{ROOT}/$metadata"})

ILO_CODE = "iLO.0.10.ExtendedInfo"
HEADER_INVALID = "Base.1.16.HeaderInvalid"
"""A malformed X-Failover-Fence header (400)."""
RESOURCE_IN_USE = "Base.1.16.ResourceInUse"
"""A request refused for a stale fencing token (409): another owner of the job has acted since."""
SEE_EXTENDED = "See @Message.ExtendedInfo for more information."


class BmcStartError(Exception):
    """A BMC could not start (typically: its address/port is in use)."""


class EventDispatcher:
    """Delivers the events raised on the blades: a POST of the Event to every matching subscription's
    Destination (with its HttpHeaders; http or https without verification; loopback only; retried
    DELIVERY_RETRY_ATTEMPTS times, `world.delivery_retry_interval_s` apart), and a frame to every SSE stream
    of that BMC."""

    def __init__(self, world: World) -> None:
        self._world = world
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: dict[str, set[asyncio.Queue[tuple[int, dict[str, Any]] | None]]] = {}
        self._closed = False

    def start(self) -> None:
        self._world.add_event_sink(self.dispatch)

    def dispatch(self, server: Server, payload: dict[str, Any]) -> None:
        if self._closed:
            return
        seq = int(payload.get("Id", 0))
        for queue in list(self._streams.get(server.id, ())):
            try:
                queue.put_nowait((seq, payload))
            except asyncio.QueueFull:
                log.warning("SSE client of %s is too slow: event %d dropped for it", server.id, seq)
        state = self._world.event_service(server.id)
        record = payload["Events"][0]
        for sub in list(state.subscriptions.values()):
            if sub.wants(record):
                task = asyncio.get_running_loop().create_task(self._deliver(server.id, sub, seq, payload))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _deliver(self, server_id: str, sub: Subscription, seq: int, payload: dict[str, Any]) -> None:
        body = {**payload, "Context": sub.context} if sub.context is not None else dict(payload)
        host = urlsplit(sub.destination).hostname or ""
        entry: dict[str, Any] = {"event": seq, "subscription": sub.id, "destination": sub.destination}
        if not is_loopback_host(host):  # also refused at subscription time
            self._world.record_delivery(server_id, {**entry, "attempt": 0, "result": "refused: not loopback"})
            return
        headers = {**sub.http_headers, "Content-Type": "application/json"}
        for attempt in range(1, DELIVERY_RETRY_ATTEMPTS + 2):
            result = await self._post(sub.destination, headers, body)
            self._world.record_delivery(server_id, {**entry, "attempt": attempt, "result": result})
            if result.startswith("delivered"):
                return
            if attempt <= DELIVERY_RETRY_ATTEMPTS:
                await asyncio.sleep(self._world.delivery_retry_interval_s)
        log.info("event %d of %s to %s given up", seq, server_id, sub.destination)

    async def _post(self, url: str, headers: dict[str, str], body: dict[str, Any]) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT_S))
        try:
            async with self._session.post(
                url, data=json.dumps(body), headers=headers, ssl=False, allow_redirects=False
            ) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return f"delivered: HTTP {response.status}"
                return f"failed: HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return f"failed: {type(exc).__name__}: {exc}"

    def open_stream(self, server_id: str) -> asyncio.Queue[tuple[int, dict[str, Any]] | None]:
        queue: asyncio.Queue[tuple[int, dict[str, Any]] | None] = asyncio.Queue(maxsize=1000)
        if self._closed:
            queue.put_nowait(None)
        self._streams.setdefault(server_id, set()).add(queue)
        return queue

    def close_stream(self, server_id: str, queue: asyncio.Queue[tuple[int, dict[str, Any]] | None]) -> None:
        self._streams.get(server_id, set()).discard(queue)

    def end_streams(self, server_id: str | None = None) -> None:
        """End the SSE streams of one BMC (pulled blade) or of all."""
        for sid, queues in self._streams.items():
            if server_id is None or sid == server_id:
                for queue in queues:
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.put_nowait(None)

    async def close(self) -> None:
        self._closed = True
        self._world.remove_event_sink(self.dispatch)
        self.end_streams()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


@dataclass
class BmcState:
    world: World
    server_id: str
    credentials: Credentials
    shutdown: asyncio.Event
    sessions: dict[str, str] = field(default_factory=dict)  # token -> session id
    session_users: dict[str, str] = field(default_factory=dict)  # session id -> user name
    events: EventDispatcher | None = None

    @property
    def server(self) -> Server:
        return self.world.servers[self.server_id]


STATE = web.AppKey("bmc_state", BmcState)


# --- helpers ---------------------------------------------------------------------------------------------


def redfish_json(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    response = web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )
    response.headers["OData-Version"] = "4.0"
    response.headers["Server"] = "HPE-iLO-Server/1.30"
    return response


def redfish_error(
    status: int, message_id: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {
        "error": {
            "code": ILO_CODE,
            "message": message,
            "@Message.ExtendedInfo": [{"MessageId": message_id, "Message": message}],
        }
    }
    return redfish_json(body, status=status, headers=headers)


def _ref(path: str) -> dict[str, str]:
    return {"@odata.id": path}


def _collection(path: str, odata_type: str, name: str, members: list[str]) -> dict[str, Any]:
    return {
        "@odata.context": f"{ROOT}/$metadata#{odata_type.split('.')[-1]}.{odata_type.split('.')[-1]}",
        "@odata.id": path,
        "@odata.type": odata_type,
        "Name": name,
        "Members@odata.count": len(members),
        "Members": [_ref(m) for m in members],
    }


def _status(server: Server) -> dict[str, str]:
    state = {"On": "Enabled", "PoweringOn": "Starting", "PoweringOff": "Enabled", "Off": "StandbyOffline"}
    return {"State": state[server.power], "Health": server.health, "HealthRollup": server.health}


# --- middlewares -----------------------------------------------------------------------------------------


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    server = state.server
    world = state.world
    if not world.bmc_listening(server):
        # a pulled blade or a dead BMC: nobody is there (the listener is also stopped; this closes the
        # connections kept alive from before)
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=503)
    if world.has_fault(server, "bmc_timeout"):
        await state.shutdown.wait()  # accept, never answer; released at lab shutdown
        return web.Response(status=503)
    delay = world.latency.bmc_ms / 1000.0 + world.fault_delay(server)
    if delay > 0:
        await asyncio.sleep(delay)
    if world.has_fault(server, "bmc_error"):
        return redfish_error(
            500, "Base.1.4.InternalError", "The request failed due to an internal service error."
        )
    return await handler(request)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return redfish_error(
            404, "Base.1.4.ResourceMissingAtURI", f"The resource at {request.path} does not exist."
        )
    except web.HTTPMethodNotAllowed as exc:
        return redfish_error(
            405,
            "Base.1.4.ActionNotSupported",
            f"{request.method} is not supported on {request.path}.",
            headers={"Allow": ", ".join(sorted(exc.allowed_methods))},
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return redfish_error(exc.status, "Base.1.4.GeneralError", exc.reason)


def _unauthorized() -> web.Response:
    return redfish_error(
        401,
        "Base.1.4.NoValidSession",
        "There is no valid session established with the implementation.",
        headers={"WWW-Authenticate": 'Basic realm="iLO"'},
    )


def _basic_ok(header: str, credentials: Credentials) -> bool:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, sep, password = decoded.partition(":")
    return bool(sep) and _credentials_ok(user, password, credentials)


def _credentials_ok(user: str, password: str, credentials: Credentials) -> bool:
    user_ok = hmac.compare_digest(user.encode(), credentials.username.encode())
    password_ok = hmac.compare_digest(password.encode(), credentials.password.encode())
    return user_ok and password_ok


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A read carrying a fencing token tells the world the job's newest epoch (World.observe)."""
    token = read_token(request.method, request.headers.getall(FENCE_HEADER, []))
    if token is not None:
        request.app[STATE].world.observe(token)
    return await handler(request)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    path = request.path
    if path in PUBLIC or (path.rstrip("/") == SESSIONS and request.method == "POST"):
        return await handler(request)
    token = request.headers.get("X-Auth-Token")
    if token is not None:
        if token in state.sessions:
            return await handler(request)
        return _unauthorized()
    authorization = request.headers.get("Authorization")
    if authorization is not None and _basic_ok(authorization, state.credentials):
        return await handler(request)
    return _unauthorized()


# --- resources -------------------------------------------------------------------------------------------


async def get_redfish(request: web.Request) -> web.Response:
    return redfish_json({"v1": f"{ROOT}/"})


async def get_root(request: web.Request) -> web.Response:
    state = request.app[STATE]
    server = state.server
    return redfish_json(
        {
            "@odata.context": f"{ROOT}/$metadata#ServiceRoot.ServiceRoot",
            "@odata.id": f"{ROOT}/",
            "@odata.type": "#ServiceRoot.v1_5_0.ServiceRoot",
            "Id": "RootService",
            "Name": "HPE RESTful Root Service",
            "RedfishVersion": "1.6.0",
            "UUID": server.uuid,
            "Product": server.product,
            "Vendor": "HPE",
            "Systems": _ref(f"{ROOT}/Systems"),
            "Chassis": _ref(f"{ROOT}/Chassis"),
            "Managers": _ref(f"{ROOT}/Managers"),
            "SessionService": _ref(f"{ROOT}/SessionService"),
            **({"EventService": _ref(EVENT_SERVICE)} if state.world.event_service(server.id).enabled else {}),
            "Links": {"Sessions": _ref(SESSIONS)},
            "Oem": {"Hpe": {"Manager": [{"ManagerType": PRODUCTS[server.product or ""].ilo_model}]}},
        }
    )


async def get_systems(request: web.Request) -> web.Response:
    return redfish_json(
        _collection(
            f"{ROOT}/Systems",
            "#ComputerSystemCollection.ComputerSystemCollection",
            "Computer Systems",
            [f"{ROOT}/Systems/1"],
        )
    )


async def get_system(request: web.Request) -> web.Response:
    state = request.app[STATE]
    world, server = state.world, state.server
    product = PRODUCTS[server.product or ""]
    hostname = ""
    if server.booted_identity is not None and server.booted_identity in world.profiles:
        hostname = world.profiles[server.booted_identity].host_name
    return redfish_json(
        {
            "@odata.context": f"{ROOT}/$metadata#ComputerSystem.ComputerSystem",
            "@odata.id": f"{ROOT}/Systems/1",
            "@odata.type": "#ComputerSystem.v1_4_0.ComputerSystem",
            "Id": "1",
            "Name": "Computer System",
            "SystemType": "Physical",
            "Manufacturer": "HPE",
            "Model": product.name,
            "SKU": server.serial,
            "SerialNumber": server.serial,
            "UUID": server.uuid,
            "HostName": hostname,
            "PowerState": server.power,
            "IndicatorLED": "Off",
            "BiosVersion": product.bios_version,
            "Status": _status(server),
            "ProcessorSummary": {"Count": 2, "Model": product.cpu, "Status": {"HealthRollup": server.health}},
            "MemorySummary": {
                "TotalSystemMemoryGiB": product.memory_gib,
                "Status": {"HealthRollup": server.health},
            },
            "Boot": {
                "BootSourceOverrideEnabled": "Disabled",
                "BootSourceOverrideTarget": "None",
            },
            "Actions": {
                "#ComputerSystem.Reset": {
                    "target": f"{ROOT}/Systems/1/Actions/ComputerSystem.Reset",
                    "ResetType@Redfish.AllowableValues": list(RESET_TYPES),
                }
            },
            "Links": {
                "Chassis": [_ref(f"{ROOT}/Chassis/1")],
                "ManagedBy": [_ref(f"{ROOT}/Managers/1")],
            },
            "Oem": {
                "Hpe": {
                    "@odata.type": "#HpeComputerSystemExt.v2_5_0.HpeComputerSystemExt",
                    "EnclosureName": server.enclosure,
                    "BayNumber": server.bay,
                    "BaysSpanned": server.span,
                }
            },
        }
    )


async def post_reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        token = parse_fence(request.headers.getall(FENCE_HEADER, []))
    except MalformedFence as exc:
        return redfish_error(400, HEADER_INVALID, str(exc))
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return redfish_error(400, "Base.1.4.MalformedJSON", "The request body submitted was malformed JSON.")
    if not isinstance(body, dict) or "ResetType" not in body:
        return redfish_error(
            400,
            "Base.1.4.ActionParameterMissing",
            "The action ComputerSystem.Reset requires the parameter ResetType.",
        )
    reset_type = body["ResetType"]
    if not isinstance(reset_type, str):
        return redfish_error(400, "Base.1.4.PropertyValueTypeError", "ResetType must be a string.")
    try:
        state.world.reset(state.server_id, reset_type, token)
    except StaleFence as exc:
        return redfish_error(409, RESOURCE_IN_USE, exc.message)
    except InvalidPowerState as exc:
        return redfish_error(400, "iLO.2.14.InvalidOperationForSystemState", exc.message)
    except UnknownResetType:
        return redfish_error(
            400,
            "Base.1.4.ActionParameterValueNotInList",
            f"The value {reset_type} for the parameter ResetType is not in the list of acceptable values.",
        )
    except LabError as exc:
        return redfish_error(exc.status, "Base.1.4.GeneralError", exc.message)
    return redfish_error(200, "Base.1.4.Success", "Successfully Completed Request")


async def get_chassis_collection(request: web.Request) -> web.Response:
    return redfish_json(
        _collection(
            f"{ROOT}/Chassis",
            "#ChassisCollection.ChassisCollection",
            "Chassis Collection",
            [f"{ROOT}/Chassis/1"],
        )
    )


async def get_chassis(request: web.Request) -> web.Response:
    server = request.app[STATE].server
    product = PRODUCTS[server.product or ""]
    bays = f"Bay {server.bay}" if server.span == 1 else f"Bays {server.bay}-{server.bay + server.span - 1}"
    return redfish_json(
        {
            "@odata.context": f"{ROOT}/$metadata#Chassis.Chassis",
            "@odata.id": f"{ROOT}/Chassis/1",
            "@odata.type": "#Chassis.v1_6_0.Chassis",
            "Id": "1",
            "Name": "Computer System Chassis",
            "ChassisType": "Blade",
            "Manufacturer": "HPE",
            "Model": product.name,
            "SKU": server.serial,
            "SerialNumber": server.serial,
            "PowerState": server.power,
            "IndicatorLED": "Off",
            "Status": {"State": "Enabled", "Health": server.health},
            "Location": {
                "PartLocation": {
                    "ServiceLabel": f"{server.enclosure} {bays}",
                    "LocationType": "Slot",
                    "LocationOrdinalValue": server.bay,
                },
            },
            "Links": {
                "ComputerSystems": [_ref(f"{ROOT}/Systems/1")],
                "ManagedBy": [_ref(f"{ROOT}/Managers/1")],
            },
        }
    )


async def get_managers(request: web.Request) -> web.Response:
    return redfish_json(
        _collection(
            f"{ROOT}/Managers",
            "#ManagerCollection.ManagerCollection",
            "Manager Collection",
            [f"{ROOT}/Managers/1"],
        )
    )


async def get_manager(request: web.Request) -> web.Response:
    server = request.app[STATE].server
    product = PRODUCTS[server.product or ""]
    return redfish_json(
        {
            "@odata.context": f"{ROOT}/$metadata#Manager.Manager",
            "@odata.id": f"{ROOT}/Managers/1",
            "@odata.type": "#Manager.v1_5_0.Manager",
            "Id": "1",
            "Name": "Manager",
            "ManagerType": "BMC",
            "Manufacturer": "HPE",
            "Model": product.ilo_model,
            "FirmwareVersion": product.ilo_firmware,
            "UUID": server.uuid,
            "Status": {"State": "Enabled", "Health": "OK"},
            "Links": {
                "ManagerForServers": [_ref(f"{ROOT}/Systems/1")],
                "ManagerForChassis": [_ref(f"{ROOT}/Chassis/1")],
            },
        }
    )


async def get_session_service(request: web.Request) -> web.Response:
    return redfish_json(
        {
            "@odata.context": f"{ROOT}/$metadata#SessionService.SessionService",
            "@odata.id": f"{ROOT}/SessionService",
            "@odata.type": "#SessionService.v1_0_0.SessionService",
            "Id": "SessionService",
            "Name": "Session Service",
            "ServiceEnabled": True,
            "SessionTimeout": 30,
            "Status": {"State": "Enabled", "Health": "OK"},
            "Sessions": _ref(SESSIONS),
        }
    )


async def get_sessions(request: web.Request) -> web.Response:
    state = request.app[STATE]
    members = [f"{SESSIONS}/{sid}" for sid in state.session_users]
    return redfish_json(_collection(SESSIONS, "#SessionCollection.SessionCollection", "Sessions", members))


def _session_body(session_id: str, user: str) -> dict[str, Any]:
    return {
        "@odata.context": f"{ROOT}/$metadata#Session.Session",
        "@odata.id": f"{SESSIONS}/{session_id}",
        "@odata.type": "#Session.v1_0_0.Session",
        "Id": session_id,
        "Name": "User Session",
        "UserName": user,
    }


async def post_session(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return redfish_error(400, "Base.1.4.MalformedJSON", "The request body submitted was malformed JSON.")
    if not isinstance(body, dict):
        return redfish_error(400, "Base.1.4.MalformedJSON", "The request body must be a JSON object.")
    user, password = body.get("UserName"), body.get("Password")
    if not isinstance(user, str) or not isinstance(password, str):
        return redfish_error(400, "Base.1.4.PropertyMissing", "UserName and Password are required.")
    if not _credentials_ok(user, password, state.credentials):
        return _unauthorized()
    token = secrets.token_hex(16)
    session_id = f"{user}{secrets.token_hex(8)}"
    state.sessions[token] = session_id
    state.session_users[session_id] = user
    location = f"{SESSIONS}/{session_id}"
    return redfish_json(
        _session_body(session_id, user), status=201, headers={"X-Auth-Token": token, "Location": location}
    )


async def get_session(request: web.Request) -> web.Response:
    state = request.app[STATE]
    session_id = request.match_info["sid"]
    if session_id not in state.session_users:
        raise web.HTTPNotFound()
    return redfish_json(_session_body(session_id, state.session_users[session_id]))


async def delete_session(request: web.Request) -> web.Response:
    state = request.app[STATE]
    session_id = request.match_info["sid"]
    if session_id not in state.session_users:
        raise web.HTTPNotFound()
    del state.session_users[session_id]
    for token in [t for t, s in state.sessions.items() if s == session_id]:
        del state.sessions[token]
    return redfish_error(200, "Base.1.4.Success", "Successfully Completed Request")


# --- EventService ----------------------------------------------------------------------------------------


def _event_service_state(request: web.Request) -> tuple[BmcState, Any]:
    state = request.app[STATE]
    service = state.world.event_service(state.server_id)
    if not service.enabled:
        raise web.HTTPNotFound()  # like a BMC without eventing (sushy-tools)
    return state, service


async def _json_body(request: web.Request) -> object:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RedfishBadRequest(
            "The request body submitted was malformed JSON.", "Base.1.4.MalformedJSON"
        ) from None


def _redfish_bad_request(exc: LabError) -> web.Response:
    message_id = exc.message_id if isinstance(exc, RedfishBadRequest) else "Base.1.4.GeneralError"
    if exc.status == 404:
        message_id = "Base.1.4.ResourceMissingAtURI"
    return redfish_error(exc.status, message_id, exc.message)


async def get_event_service(request: web.Request) -> web.Response:
    _event_service_state(request)
    return redfish_json(
        {
            "@odata.context": f"{ROOT}/$metadata#EventService.EventService",
            "@odata.id": EVENT_SERVICE,
            "@odata.type": "#EventService.v1_9_0.EventService",
            "Id": "EventService",
            "Name": "Event Service",
            "ServiceEnabled": True,
            "Status": {"State": "Enabled", "Health": "OK"},
            "DeliveryRetryAttempts": DELIVERY_RETRY_ATTEMPTS,
            "DeliveryRetryIntervalSeconds": max(1, round(request.app[STATE].world.delivery_retry_interval_s)),
            "EventFormatTypes": ["Event"],
            "EventTypesForSubscription": list(EVENT_TYPES),
            "RegistryPrefixes": list(REGISTRY_PREFIXES),
            "Severities": ["OK", "Warning", "Critical"],
            "ServerSentEventUri": SSE_PATH,
            "SSEFilterPropertiesSupported": {"EventFormatType": True, "MessageId": False, "EventType": False},
            "Subscriptions": _ref(SUBSCRIPTIONS),
            "Actions": {
                "#EventService.SubmitTestEvent": {
                    "target": SUBMIT_TEST_EVENT,
                    "EventType@Redfish.AllowableValues": list(EVENT_TYPES),
                }
            },
        }
    )


async def get_subscriptions(request: web.Request) -> web.Response:
    _, service = _event_service_state(request)
    members = [f"{SUBSCRIPTIONS}/{sid}" for sid in service.subscriptions]
    return redfish_json(
        _collection(
            SUBSCRIPTIONS, "#EventDestinationCollection.EventDestinationCollection", "Subscriptions", members
        )
    )


async def post_subscription(request: web.Request) -> web.Response:
    state, _ = _event_service_state(request)
    try:
        sub = state.world.add_subscription(state.server_id, await _json_body(request))
    except LabError as exc:
        return _redfish_bad_request(exc)
    location = f"{SUBSCRIPTIONS}/{sub.id}"
    log.info("%s: subscription %s -> %s", state.server_id, sub.id, sub.destination)
    return redfish_json(sub.view(), status=201, headers={"Location": location})


async def get_subscription(request: web.Request) -> web.Response:
    state, _ = _event_service_state(request)
    try:
        return redfish_json(state.world.subscription(state.server_id, request.match_info["sid"]).view())
    except LabError as exc:
        return _redfish_bad_request(exc)


async def patch_subscription(request: web.Request) -> web.Response:
    state, _ = _event_service_state(request)
    try:
        body = await _json_body(request)
        sub = state.world.patch_subscription(state.server_id, request.match_info["sid"], body)
    except LabError as exc:
        return _redfish_bad_request(exc)
    return redfish_json(sub.view())


async def delete_subscription(request: web.Request) -> web.Response:
    state, _ = _event_service_state(request)
    try:
        sub = state.world.delete_subscription(state.server_id, request.match_info["sid"])
    except LabError as exc:
        return _redfish_bad_request(exc)
    log.info("%s: subscription %s deleted", state.server_id, sub.id)
    return redfish_error(200, "Base.1.4.Success", "Successfully Completed Request")


async def post_submit_test_event(request: web.Request) -> web.Response:
    """`#EventService.SubmitTestEvent`: MessageId is the only required parameter."""
    state, _ = _event_service_state(request)
    try:
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("MessageId"), str):
            raise RedfishBadRequest(
                "The action SubmitTestEvent requires the parameter MessageId.",
                "Base.1.4.ActionParameterMissing",
            )
        args = body.get("MessageArgs") or []
        if not isinstance(args, list):
            raise RedfishBadRequest("MessageArgs must be an array.", "Base.1.4.ActionParameterValueTypeError")
        event_type = body.get("EventType", "Alert")
        if event_type not in EVENT_TYPES:
            raise RedfishBadRequest(
                f"The value {event_type!r} for EventType is not in the list of acceptable values.",
                "Base.1.4.ActionParameterValueNotInList",
            )
        severity = body.get("MessageSeverity", body.get("Severity"))
        origin = body.get("OriginOfCondition")
        if isinstance(origin, dict):
            origin = origin.get("@odata.id")
        message = body.get("Message")
        event_id = body.get("EventId")
        state.world.raise_event(
            state.server_id,
            body["MessageId"],
            severity=severity if isinstance(severity, str) else None,
            message=message if isinstance(message, str) else None,
            message_args=[str(a) for a in args],
            event_type=event_type,
            origin=origin if isinstance(origin, str) else None,
            event_id=event_id if isinstance(event_id, str) else None,
        )
    except LabError as exc:
        return _redfish_bad_request(exc)
    return redfish_error(200, "Base.1.4.Success", "Successfully Completed Request")


async def get_sse(request: web.Request) -> web.StreamResponse:
    """HTML5 server-sent events: `id: N` and `data: {Event}` per event, a comment every 15 s. The
    `$filter` query is accepted and ignored."""
    state, _ = _event_service_state(request)
    if state.events is None:
        raise web.HTTPNotFound()
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "OData-Version": "4.0"}
    )
    queue = state.events.open_stream(state.server_id)
    try:
        await response.prepare(request)
        await response.write(b": connected\n\n")
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE_S)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if item is None:
                break
            seq, payload = item
            await response.write(f"id: {seq}\ndata: {json.dumps(payload)}\n\n".encode())
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        pass
    finally:
        state.events.close_stream(state.server_id, queue)
    return response


def create_bmc_app(
    world: World,
    server_id: str,
    credentials: Credentials,
    shutdown: asyncio.Event,
    events: EventDispatcher | None = None,
) -> web.Application:
    """The Redfish application of one blade's BMC."""
    app = web.Application(
        middlewares=[error_middleware, fault_middleware, auth_middleware, observe_middleware])
    app[STATE] = BmcState(world, server_id, credentials, shutdown, events=events)
    r = app.router
    r.add_get("/redfish", get_redfish)
    r.add_get("/redfish/", get_redfish)
    r.add_get(ROOT, get_root)
    r.add_get(f"{ROOT}/", get_root)
    r.add_get(f"{ROOT}/Systems", get_systems)
    r.add_get(f"{ROOT}/Systems/", get_systems)
    r.add_get(f"{ROOT}/Systems/1", get_system)
    r.add_get(f"{ROOT}/Systems/1/", get_system)
    r.add_post(f"{ROOT}/Systems/1/Actions/ComputerSystem.Reset", post_reset)
    r.add_post(f"{ROOT}/Systems/1/Actions/ComputerSystem.Reset/", post_reset)
    r.add_get(f"{ROOT}/Chassis", get_chassis_collection)
    r.add_get(f"{ROOT}/Chassis/", get_chassis_collection)
    r.add_get(f"{ROOT}/Chassis/1", get_chassis)
    r.add_get(f"{ROOT}/Chassis/1/", get_chassis)
    r.add_get(f"{ROOT}/Managers", get_managers)
    r.add_get(f"{ROOT}/Managers/", get_managers)
    r.add_get(f"{ROOT}/Managers/1", get_manager)
    r.add_get(f"{ROOT}/Managers/1/", get_manager)
    r.add_get(f"{ROOT}/SessionService", get_session_service)
    r.add_get(f"{ROOT}/SessionService/", get_session_service)
    r.add_get(SESSIONS, get_sessions)
    r.add_get(f"{SESSIONS}/", get_sessions)
    r.add_post(SESSIONS, post_session)
    r.add_post(f"{SESSIONS}/", post_session)
    r.add_get(SESSIONS + "/{sid}", get_session)
    r.add_delete(SESSIONS + "/{sid}", delete_session)
    for suffix in ("", "/"):
        r.add_get(EVENT_SERVICE + suffix, get_event_service)
        r.add_get(SUBSCRIPTIONS + suffix, get_subscriptions)
        r.add_post(SUBSCRIPTIONS + suffix, post_subscription)
        r.add_get(SUBSCRIPTIONS + "/{sid}" + suffix, get_subscription)
        r.add_patch(SUBSCRIPTIONS + "/{sid}" + suffix, patch_subscription)
        r.add_delete(SUBSCRIPTIONS + "/{sid}" + suffix, delete_subscription)
        r.add_post(SUBMIT_TEST_EVENT + suffix, post_submit_test_event)
        r.add_get(SSE_PATH + suffix, get_sse)
    return app


# --- the fleet of BMCs ------------------------------------------------------------------------------------


@dataclass
class _Bmc:
    runner: web.AppRunner
    site: web.TCPSite | None = None


class BmcFleet:
    """Starts one HTTPS Redfish service per installed blade and follows blades being pulled/inserted."""

    def __init__(
        self,
        world: World,
        credentials: Credentials,
        ssl_context: ssl.SSLContext | Callable[[str], ssl.SSLContext],
        shutdown: asyncio.Event,
        port: int = 0,
    ) -> None:
        """`ssl_context`: one context for every BMC, or a function of the BMC's address (a big lab's
        per-/24 leaf certificates, lab/tls.py)."""
        self._world = world
        self._credentials = credentials
        self._ssl = ssl_context
        self._shutdown = shutdown
        self._port = port
        self._bmcs: dict[str, _Bmc] = {}
        self.events = EventDispatcher(world)

    async def start(self) -> None:
        try:
            self.events.start()
            for server in self._world.bmc_servers():
                app = create_bmc_app(self._world, server.id, self._credentials, self._shutdown, self.events)
                runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
                await runner.setup()
                self._bmcs[server.id] = _Bmc(runner)
            await asyncio.gather(
                *(
                    self._listen(self._world.servers[sid])
                    for sid in self._bmcs
                    if self._world.bmc_listening(self._world.servers[sid])
                )
            )
        except BaseException:
            await self.stop()
            raise

    async def _listen(self, server: Server) -> None:
        bmc = self._bmcs[server.id]
        port = server.bmc_port if server.bmc_port is not None else self._port
        tls = self._ssl if isinstance(self._ssl, ssl.SSLContext) else self._ssl(server.bmc_ip)
        site = web.TCPSite(bmc.runner, server.bmc_ip, port, ssl_context=tls)
        try:
            await site.start()
        except OSError as exc:
            raise BmcStartError(
                f"cannot start the BMC of {server.id} on {server.bmc_ip}:{port}: {exc.strerror or exc}"
            ) from exc
        bmc.site = site
        if server.bmc_port is None:
            server.bmc_port = _bound_port(bmc.runner)

    async def sync_presence(self, server_id: str) -> None:
        """Start or stop the BMC of a server after it was inserted or pulled (or `bmc_down` changed)."""
        bmc = self._bmcs.get(server_id)
        if bmc is None:
            return
        server = self._world.servers[server_id]
        listening = self._world.bmc_listening(server)
        if listening and bmc.site is None:
            await self._listen(server)
        elif not listening and bmc.site is not None:
            self.events.end_streams(server_id)
            site, bmc.site = bmc.site, None
            await site.stop()

    async def stop(self) -> None:
        await self.events.close()
        bmcs, self._bmcs = self._bmcs, {}
        results = await asyncio.gather(*(b.runner.cleanup() for b in bmcs.values()), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.warning("BMC cleanup failed: %s", result)

    def __len__(self) -> int:
        return sum(1 for b in self._bmcs.values() if b.site is not None)


def _bound_port(runner: web.BaseRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[1], int):
            return address[1]
    raise BmcStartError("cannot determine the bound port")
