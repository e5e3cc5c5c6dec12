"""BMC connections over Redfish (DMTF `redfish` async client on aiohttp), shared by the Redfish adapters.

`RedfishConnections` owns one `aiohttp.ClientSession` (given or created lazily, over one `TCPConnector`:
at most `max_connections` open connections overall, `PER_HOST_CONNECTIONS` per BMC, idle ones kept
`KEEPALIVE_SECONDS`; TLS contexts are built once per CA file and reused for every BMC, and they resume
TLS sessions: see `ResumingContext`) and one
`AsyncRedfishClient` per BMC connection (url, credentials, TLS, auth mode), created lazily under a
per-connection lock and cached until `close()`, which logs out of the sessions it opened. It is the one
place where library exceptions and timeouts become `monitor.core.ports` AdapterErrors (always with
`endpoint=bmc.url`); `reply_error`/`check_reply` do the same for HTTP statuses. Used by
adapters/redfish/power.py (`RedfishPower`) and adapters/redfish/reader.py (`RedfishReader`).

The library does not raise on HTTP error statuses (and `login(auth="basic")` sends nothing, so wrong
credentials first show as a 401 on the next call): every response status is checked by the callers.

Every mutating request (POST, PATCH, DELETE) carries the current action's fencing header
(`monitor.core.fencing.fence_headers()`; the library passes extra headers through) and is preceded,
immediately before it is sent, by `monitor.core.fencing.check_fence()`, whose `FenceLost` propagates as is.
A BMC that refuses such a request for a stale token (409 `Base.x.ResourceInUse` saying "stale fencing
token", as the lab's BMCs answer) raises `monitor.core.fencing.FenceRefused`: not an adapter error, the job
stops there.

Which ComputerSystem: the one `bmc.system` names; with none named, the service must list exactly one
(several: refused, never "the first"). `check_identity` compares a ComputerSystem's SerialNumber (or
SKU, where Dell keeps the service tag) and UUID with the inventory's `serial` and `uuid`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import ssl
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any
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

from monitor.core.errors import (
    AdapterError,
    AdapterTimeout,
    AdapterUnavailable,
    AuthenticationFailed,
    FenceRefused,
    IdentityMismatch,
    NotFound,
    error_for_status,
)
from monitor.core.fencing import check_fence, current_fence, fence_headers, read_headers
from monitor.core.model import SYSTEMS_PATH, BmcEndpoint, Health, PowerState, Server
from monitor.core.ports import HealthReading

log = logging.getLogger(__name__)

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_METHOD_PRESERVING_REDIRECTS = frozenset({307, 308})
_MAX_REDIRECTS = 5

MAX_CONNECTIONS = 128
"""Default of `redfish.max_connections`: open connections to all BMCs together."""
PER_HOST_CONNECTIONS = 4
"""Open connections to one BMC at most."""
KEEPALIVE_SECONDS = 15.0
"""How long an idle connection to a BMC is kept for reuse."""
TLS_SESSIONS = 16_384
"""TLS sessions kept for resumption per TLS context (one per BMC; least recently stored dropped first)."""

_TLS_PEER: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar("bmc_tls_peer",
                                                                                  default=None)
"""The (host, port) being connected to, while `BmcConnector` opens a connection (read by wrap_bio)."""


class ResumingContext(ssl.SSLContext):
    """A client TLS context that offers each BMC the TLS session of its previous connection.

    A BMC is read once per poll interval, longer than the keep-alive, so nearly every read opens a new
    TLS connection; resuming it (TLS 1.3 PSK or a TLS 1.2 ticket) spares the certificate and its
    signature, ~1.3 ms of each handshake on loopback (bench/README.md). Sessions are kept per peer
    (host, port), never shared between contexts (OpenSSL refuses a session from another context, so a
    session made without verification is never offered by a verifying one), at most `max_sessions`.
    `BmcConnector` names the peer while it connects, stores the session when the connection is first
    released (a fresh one when the resumed session is past half its lifetime), and forgets the peer's
    session when a connection to it fails: a peer that refuses resumption gets a full handshake next."""

    def __init__(self, protocol: int = ssl.PROTOCOL_TLS_CLIENT, *, max_sessions: int = TLS_SESSIONS) -> None:
        super().__init__()
        self._max_sessions = max(1, max_sessions)
        self._sessions: OrderedDict[tuple[str, int | str], tuple[ssl.SSLSession, float]] = OrderedDict()
        self._peers: weakref.WeakKeyDictionary[ssl.SSLObject, tuple[str, int | str]] = (
            weakref.WeakKeyDictionary())
        """Connections whose session is not yet stored -> their peer."""

    def __new__(cls, protocol: int = ssl.PROTOCOL_TLS_CLIENT, *args: Any, **kwargs: Any) -> ResumingContext:
        return super().__new__(cls, protocol)

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | bytes | None = None,
                 session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        if server_side:
            return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        peer: tuple[str, int | str] | None = _TLS_PEER.get()
        if peer is None and server_hostname is not None:
            peer = (str(server_hostname), "")
        if peer is not None and session is None:
            stored = self._sessions.get(peer)
            session = stored[0] if stored is not None else None
        ssl_object = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        if peer is not None:
            self._peers[ssl_object] = peer
        return ssl_object

    def remember(self, ssl_object: ssl.SSLObject) -> None:
        """Store the session of a connection that has done a request (once per connection)."""
        peer = self._peers.pop(ssl_object, None)
        if peer is None:
            return
        now = time.monotonic()
        stored = self._sessions.get(peer)
        if ssl_object.session_reused and stored is not None and now - stored[1] < stored[0].timeout / 2:
            return
        session = ssl_object.session
        if session is None:
            return
        self._sessions[peer] = (session, now)
        self._sessions.move_to_end(peer)
        while len(self._sessions) > self._max_sessions:
            self._sessions.popitem(last=False)

    def forget(self, peer: tuple[str, int | str]) -> None:
        self._sessions.pop(peer, None)

    def sessions(self) -> int:
        """Sessions kept for resumption."""
        return len(self._sessions)


def unverified_context() -> ResumingContext:
    """For `verify_tls: false` BMCs (as aiohttp's own unverified context, plus resumption)."""
    ctx = ResumingContext()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_alpn_protocols(("http/1.1",))
    return ctx


def verifying_context(ca_file: str | None) -> ResumingContext:
    """For `verify_tls: true` BMCs: the CA file's certificates, else the system's (blocking: disk I/O)."""
    ctx = ResumingContext()  # PROTOCOL_TLS_CLIENT: CERT_REQUIRED and check_hostname already
    ctx.options |= ssl.OP_NO_COMPRESSION
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    ctx.set_alpn_protocols(("http/1.1",))
    return ctx


class TlsContexts:
    """The TLS contexts of one connection pool: one for `verify_tls: false` BMCs, one per CA file (None:
    the system's CAs), each built once (not per BMC: 10,000 BMCs share one, and its TLS sessions)."""

    def __init__(self) -> None:
        self.unverified = unverified_context()
        self._verifying: dict[str | None, ResumingContext] = {}

    async def verifying(self, bmc: BmcEndpoint) -> ResumingContext:
        key = bmc.ca_file or None
        cached = self._verifying.get(key)
        if cached is None:
            try:
                made = await asyncio.to_thread(verifying_context, key)
            except (OSError, ssl.SSLError) as exc:
                raise AdapterError(f"cannot load CA file {bmc.ca_file}: {exc}", endpoint=bmc.url) from exc
            cached = self._verifying.setdefault(key, made)
        return cached


class BmcConnector(aiohttp.TCPConnector):
    """aiohttp's connector with the idle pool bounded too: `limit` caps connections in use, but idle
    keep-alive ones are not counted, and with 10,000 BMCs each read once a minute the 15 s keep-alive
    would hold thousands of idle TLS connections (~300 KB each, measured: bench/README.md, bench_scale).
    Past `max_idle_hosts` BMCs with idle connections, the least recently pooled BMC's are closed (the
    one just released stays: its next request, usually right behind, reuses it). With a
    `ResumingContext`, it names the peer while connecting and stores the TLS session on release."""

    def __init__(self, *, max_idle_hosts: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_idle_hosts = max(1, max_idle_hosts)
        self.tls = TlsContexts()
        """The contexts, and so the TLS sessions, of every RedfishConnections sharing this pool."""

    async def _wrap_create_connection(self, *args: Any, req: Any, **kwargs: Any) -> Any:
        context = kwargs.get("ssl")
        if not isinstance(context, ResumingContext):
            return await super()._wrap_create_connection(*args, req=req, **kwargs)
        peer = (req.host, req.port)
        token = _TLS_PEER.set(peer)
        try:
            return await super()._wrap_create_connection(*args, req=req, **kwargs)
        except BaseException:
            context.forget(peer)  # a peer that failed the handshake (or was unreachable) starts afresh
            raise
        finally:
            _TLS_PEER.reset(token)

    def _release(self, key: Any, protocol: Any, *, should_close: bool = False) -> None:
        if isinstance(key.ssl, ResumingContext) and protocol.transport is not None:
            ssl_object = protocol.transport.get_extra_info("ssl_object")
            if ssl_object is not None:
                key.ssl.remember(ssl_object)
        super()._release(key, protocol, should_close=should_close)
        pooled = self._conns  # aiohttp's idle pool: ConnectionKey -> deque, oldest key first
        while len(pooled) > self._max_idle_hosts:
            oldest = next(iter(pooled))
            if oldest == key:
                break
            for proto, _ in pooled.pop(oldest):
                proto.close()


def new_session(max_connections: int = MAX_CONNECTIONS) -> aiohttp.ClientSession:
    """The shared session to BMCs: one connection pool with the limits above (idle ones too)."""
    connector = BmcConnector(limit=max_connections, limit_per_host=PER_HOST_CONNECTIONS,
                             keepalive_timeout=KEEPALIVE_SECONDS, max_idle_hosts=max_connections)
    return aiohttp.ClientSession(connector=connector)


@dataclass(frozen=True, slots=True)
class Reply:
    """A typed view of the library's (untyped) cached response."""

    status: int
    body: object
    """Parsed JSON (dict, list, …) or None when the body was empty or not JSON."""
    location: str | None
    path: str = ""
    """The path finally requested (after redirects, where they are followed)."""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def object(self) -> dict[str, Any]:
        return self.body if isinstance(self.body, dict) else {}

    def reason(self) -> str:
        message = bmc_message(self.body)
        return f"HTTP {self.status}" + (f" ({message})" if message else "")


class TlsSession:
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


@dataclass(frozen=True, slots=True)
class ConnKey:
    """What identifies one BMC connection (and so one AsyncRedfishClient)."""

    base_url: str
    username: str
    password: str
    auth: str
    verify_tls: bool
    ca_file: str | None


def conn_key(bmc: BmcEndpoint) -> ConnKey:
    return ConnKey(normalize_bmc_url(bmc.url) + "/", bmc.username, bmc.password, bmc.auth.strip().lower(),
                   bmc.verify_tls, bmc.ca_file)


@dataclass(slots=True)
class _Connection:
    client: Any
    """redfish.aio.AsyncRedfishClient (untyped)."""
    session_login: bool
    """Logged in with a Redfish session (renewed for non-GET requests on 401, logged out in close())."""


class RedfishConnections:
    """Per-BMC Redfish clients over one shared aiohttp session.

    `owner` names the adapter in errors ("the <owner> is closed"). With `anonymous`, an endpoint with an
    empty username is used without authentication (over http or https); otherwise `bmc.auth` ("basic" or
    "session") applies, which the library allows over HTTPS only. With `follow_redirects`, `request()`
    follows redirects (GET: any; other methods: 307/308 only)."""

    def __init__(
        self,
        *,
        timeout: float,
        session: aiohttp.ClientSession | None,
        owner: str,
        anonymous: bool = False,
        follow_redirects: bool = False,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout
        self._max_connections = max_connections
        self._tls = TlsContexts()
        """Used when the session's connector is not a BmcConnector (which has its own, shared)."""
        self._session = session
        self._owns_session = session is None
        self._owner = owner
        self._anonymous = anonymous
        self._follow_redirects = follow_redirects
        self._connections: dict[ConnKey, _Connection] = {}
        self._locks: dict[ConnKey, asyncio.Lock] = {}
        self._closed = False

    def http(self) -> aiohttp.ClientSession:
        """The shared aiohttp session (created on first use)."""
        if self._closed:
            raise AdapterError(f"the {self._owner} is closed")
        if self._session is None:
            self._session = new_session(self._max_connections)
        return self._session

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        connections = list(self._connections.items())
        self._connections.clear()
        for key, conn in connections:
            if not conn.session_login:
                continue
            try:
                async with asyncio.timeout(self.timeout):
                    await conn.client.logout()
            except (RedfishError, ValueError, TimeoutError) as exc:
                log.warning("Redfish logout from %s failed: %s", key.base_url, exc)
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    # --- requests -------------------------------------------------------------------------------

    async def get(self, bmc: BmcEndpoint, path: str) -> Reply:
        return await self.request(bmc, "GET", path)

    async def request(self, bmc: BmcEndpoint, method: str, path: str, body: object = None) -> Reply:
        """One request (sushy sends /Systems/<name> to the UUID URL with a 307: see `follow_redirects`)."""
        conn = await self._connection(bmc)
        for _ in range(_MAX_REDIRECTS + 1):
            reply = await self._send(bmc, conn.client, method, path, body)
            if reply.status == 401 and conn.session_login and method != "GET":
                # The library renews an expired session only for GET; do it for the other methods too.
                await self._call(bmc, conn.client.login(auth="session"))
                reply = await self._send(bmc, conn.client, method, path, body)
            if method != "GET" and current_fence() is not None and _stale_fence(reply):
                raise FenceRefused(f"{bmc.url}: {method} {path} refused: {bmc_message(reply.body)}")
            if not self._follow_redirects or reply.status not in _REDIRECTS or not reply.location:
                return reply
            if method != "GET" and reply.status not in _METHOD_PRESERVING_REDIRECTS:
                return reply
            path = path_of(reply.location)
        raise AdapterError(f"too many redirects for {method} {path}", endpoint=bmc.url)

    async def system_path(self, bmc: BmcEndpoint) -> str:
        """The ComputerSystem's path: `bmc.system`, else the only member of the Systems collection.

        A service listing several systems with none named is refused: acting on "the first" could power
        off a bystander."""
        if bmc.system:
            return system_path(bmc.system)
        reply = await self.get(bmc, SYSTEMS_PATH)
        check_reply(bmc, reply, f"GET {SYSTEMS_PATH} failed")
        members = reply.object().get("Members")
        paths: list[str] = []
        for member in members if isinstance(members, list) else []:
            target = member.get("@odata.id") if isinstance(member, dict) else None
            if isinstance(target, str) and target.strip():
                paths.append(path_of(target).rstrip("/"))
        if not paths:
            raise NotFound("the BMC lists no ComputerSystem", endpoint=bmc.url)
        if len(paths) > 1:
            shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
            raise AdapterError(
                f"the BMC lists {len(paths)} ComputerSystems ({shown}) and the inventory names none: "
                f"refusing to guess (give url {bmc.url}{SYSTEMS_PATH}/ID or system: ID)", endpoint=bmc.url)
        return paths[0]

    async def _send(self, bmc: BmcEndpoint, client: Any, method: str, path: str, body: object) -> Reply:
        if method == "GET":
            raw = await self._call(bmc, client.get(path, headers=read_headers() or None))
        elif method in ("POST", "PATCH", "DELETE"):
            headers = fence_headers() or None
            check_fence()  # FenceLost (not an AdapterError) propagates: the request is not sent
            if method == "POST":
                raw = await self._call(bmc, client.post(path, body=body, headers=headers))
            elif method == "PATCH":
                raw = await self._call(bmc, client.patch(path, body=body, headers=headers))
            else:
                raw = await self._call(bmc, client.delete(path, headers=headers))
        else:
            raise ValueError(f"unsupported method {method}")
        try:
            parsed: object = raw.dict
        except RedfishProtocolError:
            parsed = None  # not JSON: lenient, the status decides
        location = raw.getheader("Location")
        return Reply(int(raw.status), parsed, location if isinstance(location, str) else None, path)

    async def _call(self, bmc: BmcEndpoint, awaitable: Any) -> Any:
        """Await a library coroutine, mapping its exceptions to ours."""
        try:
            async with asyncio.timeout(self.timeout + 1.0):  # the library's own timeout comes first
                return await awaitable
        except (RedfishTimeoutError, TimeoutError) as exc:  # before RedfishConnectionError: a subclass
            raise AdapterTimeout(f"no answer within {self.timeout:g} s", endpoint=bmc.url) from exc
        except RedfishConnectionError as exc:
            raise AdapterUnavailable(f"cannot reach the BMC: {_cause(exc)}", endpoint=bmc.url) from exc
        except RedfishAuthenticationError as exc:
            raise AuthenticationFailed("the BMC refused our credentials", endpoint=bmc.url) from exc
        except RedfishHTTPError as exc:
            try:
                parsed: object = exc.response.dict
            except RedfishProtocolError:
                parsed = None
            raise reply_error(bmc, Reply(int(exc.response.status), parsed, None), "request failed") from exc
        except RedfishInvalidTargetError as exc:
            raise AdapterError(f"invalid Redfish target: {exc}", endpoint=bmc.url) from exc
        except RedfishError as exc:
            raise AdapterError(f"Redfish error: {exc}", endpoint=bmc.url) from exc

    # --- connections ----------------------------------------------------------------------------

    async def _connection(self, bmc: BmcEndpoint) -> _Connection:
        if self._closed:
            raise AdapterError(f"the {self._owner} is closed", endpoint=bmc.url)
        key = conn_key(bmc)
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

    async def _tls_context(self, bmc: BmcEndpoint) -> ssl.SSLContext | bool:
        """The connection's `ssl` argument: a `ResumingContext` of the pool's (every adapter sharing the
        session shares its TLS sessions), or False for plain http (aiohttp ignores it there)."""
        if not bmc.url.strip().lower().startswith("https:"):
            return False
        connector = self.http().connector
        contexts = connector.tls if isinstance(connector, BmcConnector) else self._tls
        return await contexts.verifying(bmc) if bmc.verify_tls else contexts.unverified

    async def _connect(self, bmc: BmcEndpoint, key: ConnKey) -> _Connection:
        if key.auth not in ("basic", "session"):
            raise AdapterError(f"unsupported Redfish auth {bmc.auth!r}", endpoint=bmc.url)
        tls = await self._tls_context(bmc)
        session = self.http()
        if session.closed:
            raise AdapterError("the HTTP session is closed", endpoint=bmc.url)
        try:
            if self._anonymous and not key.username:
                client = AsyncRedfishClient(key.base_url, session=TlsSession(session, tls),
                                            timeout=self.timeout)
                return _Connection(client=client, session_login=False)
            client = AsyncRedfishClient(key.base_url, username=bmc.username, password=bmc.password,
                                        session=TlsSession(session, tls), timeout=self.timeout)
            # "basic" sends nothing; "session" POSTs to the SessionService (once; logged out in close()).
            await self._call(bmc, client.login(auth=key.auth))
        except ValueError as exc:  # e.g. credentials over plain http: the library refuses to send them
            raise AdapterError(f"cannot use BMC endpoint: {exc}", endpoint=bmc.url) from exc
        return _Connection(client=client, session_login=key.auth == "session")


# --- helpers ------------------------------------------------------------------------------------


def normalize_bmc_url(url: str) -> str:
    """`HTTPS://127.77.1.1:443/redfish/` -> `https://127.77.1.1:443` (scheme and host lowercased, no path)."""
    parts = urlsplit(url.strip())
    if not parts.scheme or not parts.netloc:
        return url.strip().rstrip("/")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def bmc_of(server: Server) -> BmcEndpoint:
    if server.bmc is None:
        raise AdapterError(f"server {server.id} has no BMC endpoint")
    return server.bmc


async def tls_context(bmc: BmcEndpoint) -> ssl.SSLContext | bool:
    """The `ssl` argument for aiohttp: False (no verification), True (system CAs) or the CA file's
    (for one long-lived connection, as the SSE follower's; `RedfishConnections` keeps its own)."""
    if not bmc.verify_tls:
        return False
    if bmc.ca_file:
        try:
            return await asyncio.to_thread(ssl.create_default_context, cafile=bmc.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise AdapterError(f"cannot load CA file {bmc.ca_file}: {exc}", endpoint=bmc.url) from exc
    return True


def reply_error(bmc: BmcEndpoint, reply: Reply, what: str) -> AdapterError:
    """The error for a refused request: 401/403 AuthenticationFailed, 404 NotFound, else OperationRejected."""
    return error_for_status(reply.status, f"{what}: {reply.reason()}", endpoint=bmc.url)


def check_reply(bmc: BmcEndpoint, reply: Reply, what: str) -> None:
    """Raise `reply_error` unless the status is 2xx."""
    if not reply.ok:
        raise reply_error(bmc, reply, what)


def path_of(target: str) -> str:
    """The path of an @odata.id, Location or target (absolute URLs keep only their path)."""
    target = target.strip()
    if "://" in target:
        parts = urlsplit(target)
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return target


def system_path(system: str) -> str:
    """`bmc.system` is an Id ("1", a UUID, a name) or a path ("/redfish/v1/Systems/1")."""
    system = system.strip()
    if system.startswith("/") or "://" in system:
        return path_of(system).rstrip("/")
    return f"{SYSTEMS_PATH}/{quote(system, safe='')}"


def _text_field(system: Mapping[str, Any], key: str) -> str | None:
    value = system.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _uuid_key(value: str) -> str:
    text = value.strip().strip("{}").strip()
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return text.casefold()


def check_identity(server: Server, system: Mapping[str, Any], *, endpoint: str, path: str) -> None:
    """Raise IdentityMismatch unless the ComputerSystem read at `path` is the inventory's `server`.

    Checked when the inventory gives them, case-insensitively: `serial` against SerialNumber or SKU
    (Dell keeps the service tag in SKU), `uuid` against UUID. A BMC that reports none of a given value
    does not confirm the identity: refused too."""
    if server.serial and server.serial.strip():
        expected = server.serial.strip()
        reported = [v for v in (_text_field(system, "SerialNumber"), _text_field(system, "SKU")) if v]
        if not any(v.casefold() == expected.casefold() for v in reported):
            actual = (f"SerialNumber {reported[0]!r}" + (f" (SKU {reported[1]!r})" if len(reported) > 1
                                                          else "")) if reported else "no SerialNumber"
            raise IdentityMismatch(
                f"{server.id}: {path} reports {actual}, the inventory says serial {expected!r}: "
                "not the inventory's machine, nothing sent", endpoint=endpoint, field="serial",
                expected=expected, actual=reported[0] if reported else None)
    if server.uuid and server.uuid.strip():
        expected = server.uuid.strip()
        got = _text_field(system, "UUID")
        if got is None or _uuid_key(got) != _uuid_key(expected):
            actual = f"UUID {got!r}" if got is not None else "no UUID"
            raise IdentityMismatch(
                f"{server.id}: {path} reports {actual}, the inventory says uuid {expected!r}: "
                "not the inventory's machine, nothing sent", endpoint=endpoint, field="uuid",
                expected=expected, actual=got)


def health_reading(system: Mapping[str, Any]) -> HealthReading:
    """A ComputerSystem's Status as a HealthReading (`HealthRollUp`, sushy's and some firmware's spelling,
    tolerated)."""
    status = system.get("Status")
    status = status if isinstance(status, dict) else {}
    rollup = status.get("HealthRollup")
    if not isinstance(rollup, str):
        rollup = status.get("HealthRollUp")
    state = status.get("State")
    return HealthReading(
        power=PowerState.parse(system.get("PowerState")),
        health=Health.parse(status.get("Health")),
        health_rollup=Health.parse(rollup),
        state=state if isinstance(state, str) else None,
    )


def bmc_message(body: object) -> str:
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


def _stale_fence(reply: Reply) -> bool:
    """A 409 refusing the request for a stale fencing token (Base.x.ResourceInUse, "stale fencing
    token"): another monitor has acted for the job under a newer epoch."""
    if reply.status != 409:
        return False
    text = bmc_message(reply.body)
    return "ResourceInUse" in text and "stale fencing token" in text


def _cause(exc: BaseException) -> str:
    inner = exc.__cause__
    return f"{type(inner).__name__}: {inner}" if inner is not None else str(exc)


__all__ = [
    "SYSTEMS_PATH",
    "BmcConnector",
    "ConnKey",
    "RedfishConnections",
    "Reply",
    "ResumingContext",
    "TlsContexts",
    "TlsSession",
    "bmc_message",
    "bmc_of",
    "check_identity",
    "check_reply",
    "conn_key",
    "health_reading",
    "new_session",
    "normalize_bmc_url",
    "path_of",
    "reply_error",
    "system_path",
    "tls_context",
    "unverified_context",
    "verifying_context",
]
