"""Reads of a BMC's Redfish service shared by the subscription manager, the SSE follower and the health
poller: the BMC endpoints of the inventory, URL comparison, collection members."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

from adapters.redfish.client import (
    MAX_CONNECTIONS,
    RedfishConnections,
    Reply,
    bmc_of,
    check_identity,
    check_reply,
    health_reading,
    normalize_bmc_url,
)
from monitor.core.model import BmcEndpoint, Server
from monitor.core.ports import HealthReading

log = logging.getLogger(__name__)


EVENT_SERVICE_PATH = "/redfish/v1/EventService"


SUBSCRIPTIONS_PATH = f"{EVENT_SERVICE_PATH}/Subscriptions"


_MAX_MEMBERS = 256


def bmc_endpoints(servers: Iterable[Server]) -> dict[str, tuple[BmcEndpoint, list[Server]]]:
    """Present servers with a BMC, by normalized BMC URL (a BMC serving several servers appears once)."""
    out: dict[str, tuple[BmcEndpoint, list[Server]]] = {}
    for server in servers:
        if server.bmc is None or not server.present:
            continue
        key = normalize_bmc_url(server.bmc.url)
        if key in out:
            out[key][1].append(server)
        else:
            out[key] = (server.bmc, [server])
    return out


def host_of(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def basic_header(bmc: BmcEndpoint) -> dict[str, str]:
    if not bmc.username:
        return {}
    encoded = base64.b64encode(f"{bmc.username}:{bmc.password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {encoded}"}


class RedfishReader:
    """Redfish requests to BMCs (DMTF async client per BMC connection, one shared aiohttp session; see
    `adapters.redfish.client.RedfishConnections`; redirects are not followed).

    An endpoint with an empty username is used without authentication (over http or https); otherwise
    `bmc.auth` ("basic" or "session") applies, which the library allows over HTTPS only. Also a
    `HealthReader` (`health(server)`) that works with such unauthenticated read-only peers."""

    def __init__(self, *, timeout: float = 10.0, session: aiohttp.ClientSession | None = None,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self._conns = RedfishConnections(timeout=timeout, session=session, owner="Redfish reader",
                                         anonymous=True, max_connections=max_connections)

    @property
    def timeout(self) -> float:
        return self._conns.timeout

    def http(self) -> aiohttp.ClientSession:
        return self._conns.http()

    async def close(self) -> None:
        await self._conns.close()

    async def request(self, bmc: BmcEndpoint, method: str, path: str, body: object = None) -> Reply:
        return await self._conns.request(bmc, method, path, body)

    async def get(self, bmc: BmcEndpoint, path: str) -> Reply:
        return await self._conns.get(bmc, path)

    # --- reads ----------------------------------------------------------------------------------

    async def event_service(self, bmc: BmcEndpoint) -> dict[str, Any] | None:
        """The EventService resource, or None when the BMC has none (404/405/501: e.g. sushy-tools)."""
        reply = await self.get(bmc, EVENT_SERVICE_PATH)
        if reply.status in (404, 405, 501):
            return None
        check_reply(bmc, reply, f"GET {EVENT_SERVICE_PATH}")
        return reply.object()

    async def health(self, server: Server) -> HealthReading:
        """Status of the server's ComputerSystem (`bmc.system`, else the only member of Systems),
        after its identity check (`check_identity`)."""
        bmc = bmc_of(server)
        path = await self._conns.system_path(bmc)
        reply = await self.get(bmc, path)
        check_reply(bmc, reply, f"GET {path}")
        system = reply.object()
        check_identity(server, system, endpoint=bmc.url, path=path)
        return health_reading(system)


def members_of(collection: Mapping[str, Any]) -> list[object]:
    members = collection.get("Members")
    return members[:_MAX_MEMBERS] if isinstance(members, list) else []


def _norm_url(url: str) -> str:
    """For comparing URLs a BMC echoes back: scheme and host lowercased, default port and trailing slash
    dropped."""
    parts = urlsplit(url.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}" + (f"?{parts.query}" if parts.query else "")


def same_url(a: str, b: str) -> bool:
    try:
        return _norm_url(a) == _norm_url(b)
    except ValueError:
        return False


def is_under(destination: str, base: str) -> bool:
    """Whether `destination` is `base` or below it (on a path boundary)."""
    try:
        d, b = _norm_url(destination), _norm_url(base)
    except ValueError:
        return False
    return d == b or d.startswith(b + "/")


class HealthReader(Protocol):
    """What the poller needs: `monitor.core.ports.PowerControl` (e.g. RedfishPower) or `RedfishReader`."""

    async def health(self, server: Server) -> HealthReading: ...
