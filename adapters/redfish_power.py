"""Power and health of a server through its BMC, over Redfish (DMTF `redfish` async client on aiohttp).

One shared `aiohttp.ClientSession`; one `AsyncRedfishClient` per BMC connection (url, credentials, TLS,
auth mode), created lazily under a per-connection lock and cached until `close()`. The ComputerSystem
path and its Reset action target are resolved once per endpoint and cached.

The library does not raise on HTTP error statuses (and `login(auth="basic")` sends nothing, so wrong
credentials first show as a 401 on the next call): every response status is checked here.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit

import aiohttp
from redfish.aio import (
    AsyncRedfishClient,
    RedfishAuthenticationError,
    RedfishConnectionError,
    RedfishError,
    RedfishHTTPError,
    RedfishInvalidTargetError,
    RedfishProtocolError,
    RedfishTimeoutError,
)

from monitor.model import BmcEndpoint, Health, PowerState, Server
from monitor.ports import (
    AdapterError,
    AdapterTimeout,
    AdapterUnavailable,
    AuthenticationFailed,
    HealthReading,
    NotFound,
    OperationRejected,
)

log = logging.getLogger(__name__)

SYSTEMS_PATH = "/redfish/v1/Systems"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_METHOD_PRESERVING_REDIRECTS = frozenset({307, 308})
_MAX_REDIRECTS = 5
_RESET_ACTION = "#ComputerSystem.Reset"


@dataclass(frozen=True, slots=True)
class _ConnKey:
    """What identifies one BMC connection (and so one AsyncRedfishClient)."""

    base_url: str
    username: str
    password: str
    auth: str
    verify_tls: bool
    ca_file: str | None


@dataclass(frozen=True, slots=True)
class _SystemRef:
    path: str
    reset_target: str


@dataclass(frozen=True, slots=True)
class _Reply:
    """A typed view of the library's (untyped) cached response."""

    status: int
    path: str
    body: object
    """Parsed JSON (dict, list, …) or None when the body was empty or not JSON."""
    location: str | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def object(self) -> dict[str, Any]:
        return self.body if isinstance(self.body, dict) else {}


class _TlsSession:
    """The shared ClientSession, with this connection's TLS settings added to every request.

    AsyncRedfishClient only calls `session.request(method, url, **kwargs)`.
    """

    def __init__(self, session: aiohttp.ClientSession, tls: ssl.SSLContext | bool) -> None:
        self._session = session
        self._tls = tls

    def request(
        self, method: str, url: Any, **kwargs: Any
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        return self._session.request(method, url, ssl=self._tls, **kwargs)


@dataclass(slots=True)
class _Connection:
    client: Any
    """redfish.aio.AsyncRedfishClient (untyped)."""
    auth: str


class RedfishPower:
    """`monitor.ports.PowerControl` over Redfish."""

    def __init__(self, *, timeout: float = 10.0, session: aiohttp.ClientSession | None = None) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._timeout = timeout
        self._session = session
        self._owns_session = session is None
        self._connections: dict[_ConnKey, _Connection] = {}
        self._locks: dict[_ConnKey, asyncio.Lock] = {}
        self._systems: dict[tuple[_ConnKey, str | None], _SystemRef] = {}
        self._closed = False

    # --- PowerControl ---------------------------------------------------------------------------

    async def power_state(self, server: Server) -> PowerState:
        bmc = _bmc(server)
        system = await self._get_system(bmc)
        return PowerState.parse(system.get("PowerState"))

    async def force_off(self, server: Server) -> None:
        """Press and hold (ForceOff). Already off is not an error."""
        await self._reset(server, "ForceOff", PowerState.OFF)

    async def power_on(self, server: Server) -> None:
        """Power on. Already on is not an error."""
        await self._reset(server, "On", PowerState.ON)

    async def health(self, server: Server) -> HealthReading:
        bmc = _bmc(server)
        system = await self._get_system(bmc)
        status = system.get("Status")
        status = status if isinstance(status, dict) else {}
        rollup = status.get("HealthRollup")
        if not isinstance(rollup, str):
            rollup = status.get("HealthRollUp")  # sushy-tools (and some firmware) misspell it
        state = status.get("State")
        return HealthReading(
            power=PowerState.parse(system.get("PowerState")),
            health=Health.parse(status.get("Health")),
            health_rollup=Health.parse(rollup),
            state=state if isinstance(state, str) else None,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        connections = list(self._connections.items())
        self._connections.clear()
        self._systems.clear()
        for key, conn in connections:
            if conn.auth != "session":
                continue
            try:
                await conn.client.logout()
            except (RedfishError, ValueError) as exc:
                log.warning("Redfish logout from %s failed: %s", key.base_url, exc)
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    # --- reset ----------------------------------------------------------------------------------

    async def _reset(self, server: Server, reset_type: str, goal: PowerState) -> None:
        bmc = _bmc(server)
        ref = await self._system_ref(bmc)
        reply = await self._request(bmc, "POST", ref.reset_target, body={"ResetType": reset_type})
        if reply.ok:
            # 200/202/204. iLO wraps even success in an `error` object (Base.x.Success): ignore the body.
            log.info("Redfish %s accepted by %s (%s): HTTP %d", reset_type, bmc.url, ref.path, reply.status)
            return
        if 400 <= reply.status < 500 and reply.status not in (401, 403, 404):
            # BMC quirk, handled only here: for a reset to the state the server is already in, iLO answers
            # 400 (iLO.x.InvalidOperationForSystemState) and iDRAC 409. Re-read PowerState: if the server
            # already is where we wanted it, the request is fulfilled.
            current = await self.power_state(server)
            if current is goal:
                log.info(
                    "Redfish %s on %s answered HTTP %d (%s) but the server is already %s: treated as done",
                    reset_type,
                    bmc.url,
                    reply.status,
                    _bmc_message(reply.body) or "no message",
                    current.value,
                )
                return
        self._raise_for(bmc, reply, f"{reset_type} refused")

    # --- system resolution ----------------------------------------------------------------------

    async def _system_ref(self, bmc: BmcEndpoint) -> _SystemRef:
        ref = self._systems.get((_conn_key(bmc), bmc.system))
        if ref is None:
            await self._get_system(bmc)
            ref = self._systems[(_conn_key(bmc), bmc.system)]
        return ref

    async def _get_system(self, bmc: BmcEndpoint) -> dict[str, Any]:
        """GET the ComputerSystem (resolving and caching its path and Reset target on first use)."""
        cache_key = (_conn_key(bmc), bmc.system)
        ref = self._systems.get(cache_key)
        path = ref.path if ref is not None else await self._initial_system_path(bmc)
        reply = await self._get(bmc, path)
        if not reply.ok:
            if reply.status == 404:
                self._systems.pop(cache_key, None)  # resolve again next time
            self._raise_for(bmc, reply, f"GET {path} failed")
        system = reply.object()
        if ref is None:
            final = reply.path.rstrip("/") or path
            self._systems[cache_key] = _SystemRef(final, _reset_target(system, final))
        return system

    async def _initial_system_path(self, bmc: BmcEndpoint) -> str:
        if bmc.system:
            return _system_path(bmc.system)
        reply = await self._get(bmc, SYSTEMS_PATH)
        if not reply.ok:
            self._raise_for(bmc, reply, f"GET {SYSTEMS_PATH} failed")
        members = reply.object().get("Members")
        if isinstance(members, list):
            for member in members:
                target = member.get("@odata.id") if isinstance(member, dict) else None
                if isinstance(target, str) and target.strip():
                    return _path_of(target)
        raise NotFound("the BMC lists no ComputerSystem", endpoint=bmc.url)

    # --- HTTP -----------------------------------------------------------------------------------

    async def _get(self, bmc: BmcEndpoint, path: str) -> _Reply:
        return await self._request(bmc, "GET", path)

    async def _request(
        self, bmc: BmcEndpoint, method: str, path: str, *, body: dict[str, Any] | None = None
    ) -> _Reply:
        """One request; follows redirects (sushy sends /Systems/<name> to the UUID URL with a 307)."""
        conn = await self._connection(bmc)
        for _ in range(_MAX_REDIRECTS + 1):
            reply = await self._send(bmc, conn, method, path, body)
            if reply.status == 401 and conn.auth == "session" and method != "GET":
                # The library renews an expired session only for GET; do it for the reset POST too.
                await self._call(bmc, conn.client.login(auth="session"))
                reply = await self._send(bmc, conn, method, path, body)
            if reply.status not in _REDIRECTS or not reply.location:
                return reply
            if method != "GET" and reply.status not in _METHOD_PRESERVING_REDIRECTS:
                return reply
            path = _path_of(reply.location)
        raise AdapterError(f"too many redirects for {method} {path}", endpoint=bmc.url)

    async def _send(
        self, bmc: BmcEndpoint, conn: _Connection, method: str, path: str, body: dict[str, Any] | None
    ) -> _Reply:
        if method == "GET":
            raw = await self._call(bmc, conn.client.get(path))
        else:
            raw = await self._call(bmc, conn.client.post(path, body=body))
        try:
            parsed: object = raw.dict
        except RedfishProtocolError:
            parsed = None  # not JSON: lenient, the status decides
        location = raw.getheader("Location")
        return _Reply(
            status=int(raw.status),
            path=path,
            body=parsed,
            location=location if isinstance(location, str) else None,
        )

    async def _call(self, bmc: BmcEndpoint, awaitable: Any) -> Any:
        """Await a library coroutine, mapping its exceptions to ours."""
        try:
            return await awaitable
        except RedfishTimeoutError as exc:  # before RedfishConnectionError: it is a subclass
            raise AdapterTimeout(f"no answer within {self._timeout:g} s", endpoint=bmc.url) from exc
        except RedfishConnectionError as exc:
            raise AdapterUnavailable(f"cannot reach the BMC: {_cause(exc)}", endpoint=bmc.url) from exc
        except RedfishAuthenticationError as exc:
            raise AuthenticationFailed("the BMC refused our credentials", endpoint=bmc.url) from exc
        except RedfishHTTPError as exc:
            status = int(exc.response.status)
            try:
                parsed: object = exc.response.dict
            except RedfishProtocolError:
                parsed = None
            self._raise_for(bmc, _Reply(status, "", parsed, None), "request failed", cause=exc)
        except RedfishInvalidTargetError as exc:
            raise AdapterError(f"invalid Redfish target: {exc}", endpoint=bmc.url) from exc
        except RedfishError as exc:
            raise AdapterError(f"Redfish error: {exc}", endpoint=bmc.url) from exc

    def _raise_for(
        self, bmc: BmcEndpoint, reply: _Reply, what: str, *, cause: BaseException | None = None
    ) -> NoReturn:
        message = _bmc_message(reply.body)
        text = f"{what}: HTTP {reply.status}" + (f" ({message})" if message else "")
        error: AdapterError
        if reply.status in (401, 403):
            error = AuthenticationFailed(text, endpoint=bmc.url)
        elif reply.status == 404:
            error = NotFound(text, endpoint=bmc.url)
        else:
            error = OperationRejected(text, endpoint=bmc.url, status=reply.status)
        raise error from cause

    async def _connection(self, bmc: BmcEndpoint) -> _Connection:
        if self._closed:
            raise AdapterError("the Redfish power adapter is closed", endpoint=bmc.url)
        key = _conn_key(bmc)
        conn = self._connections.get(key)
        if conn is not None:
            return conn
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            conn = self._connections.get(key)
            if conn is None:
                conn = await self._connect(bmc, key)
                self._connections[key] = conn
            return conn

    async def _connect(self, bmc: BmcEndpoint, key: _ConnKey) -> _Connection:
        if key.auth not in ("basic", "session"):
            raise AdapterError(f"unsupported Redfish auth {bmc.auth!r}", endpoint=bmc.url)
        tls = await self._tls(bmc)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        if self._session.closed:
            raise AdapterError("the HTTP session is closed", endpoint=bmc.url)
        try:
            client = AsyncRedfishClient(
                key.base_url,
                username=bmc.username,
                password=bmc.password,
                session=_TlsSession(self._session, tls),
                timeout=self._timeout,
            )
            # "basic" sends nothing; "session" POSTs to the SessionService (once; logged out in close()).
            await self._call(bmc, client.login(auth=key.auth))
        except ValueError as exc:  # e.g. plain http: the library refuses to send credentials over it
            raise AdapterError(f"cannot use BMC endpoint: {exc}", endpoint=bmc.url) from exc
        return _Connection(client=client, auth=key.auth)

    @staticmethod
    async def _tls(bmc: BmcEndpoint) -> ssl.SSLContext | bool:
        if not bmc.verify_tls:
            return False
        if bmc.ca_file:
            try:
                return await asyncio.to_thread(ssl.create_default_context, cafile=bmc.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise AdapterError(f"cannot load CA file {bmc.ca_file}: {exc}", endpoint=bmc.url) from exc
        return True


# --- helpers ------------------------------------------------------------------------------------


def _bmc(server: Server) -> BmcEndpoint:
    if server.bmc is None:
        raise AdapterError(f"server {server.id} has no BMC endpoint")
    return server.bmc


def _conn_key(bmc: BmcEndpoint) -> _ConnKey:
    parts = urlsplit(bmc.url.strip())
    base = f"{parts.scheme}://{parts.netloc}/" if parts.scheme and parts.netloc else bmc.url
    return _ConnKey(base, bmc.username, bmc.password, bmc.auth.strip().lower(), bmc.verify_tls, bmc.ca_file)


def _path_of(target: str) -> str:
    """The path of an @odata.id, Location or target (absolute URLs keep only their path)."""
    target = target.strip()
    if "://" in target:
        parts = urlsplit(target)
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return target


def _system_path(system: str) -> str:
    """`bmc.system` is an Id ("1", a UUID, a name) or a path ("/redfish/v1/Systems/1")."""
    system = system.strip()
    if system.startswith("/") or "://" in system:
        return _path_of(system).rstrip("/")
    return f"{SYSTEMS_PATH}/{quote(system, safe='')}"


def _reset_target(system: Mapping[str, Any], path: str) -> str:
    actions = system.get("Actions")
    action = actions.get(_RESET_ACTION) if isinstance(actions, dict) else None
    target = action.get("target") if isinstance(action, dict) else None
    if isinstance(target, str) and target.strip():
        return _path_of(target)
    return f"{path}/Actions/ComputerSystem.Reset"


def _bmc_message(body: object) -> str:
    """The BMC's reason from a Redfish error body: MessageIds and messages, lenient about shape."""
    if not isinstance(body, dict):
        return ""
    parts: list[str] = []
    containers: list[dict[str, Any]] = [body]
    error = body.get("error")
    if isinstance(error, dict):
        containers.insert(0, error)
    for container in containers:
        info = container.get("@Message.ExtendedInfo")
        for item in info if isinstance(info, list) else []:
            if not isinstance(item, dict):
                continue
            message_id, message = item.get("MessageId"), item.get("Message")
            text = ": ".join(str(x) for x in (message_id, message) if isinstance(x, str) and x)
            if text and text not in parts:
                parts.append(text)
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str) and message and message not in parts:
            parts.append(message)
        if not parts and isinstance(error.get("code"), str):
            parts.append(error["code"])
    return "; ".join(parts)[:500]


def _cause(exc: BaseException) -> str:
    inner = exc.__cause__
    return f"{type(inner).__name__}: {inner}" if inner is not None else str(exc)


__all__ = ["RedfishPower"]
