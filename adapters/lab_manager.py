"""The profile manager (VCEM role) and the discovery service (SIM role) of the lab simulator, over its
HTTP manager API (lab/API.md). Pydantic models at the edge: a malformed answer is an AdapterError that
names the endpoint, never a crash.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp
from pydantic import BaseModel, ConfigDict, ValidationError

from monitor.core.errors import (
    AdapterError,
    AdapterTimeout,
    AdapterUnavailable,
    FenceRefused,
    NotFound,
    error_for_status,
)
from monitor.core.fencing import check_fence, fence_headers, read_headers
from monitor.core.model import (
    BmcEndpoint,
    Domain,
    DomainGroup,
    Enclosure,
    Health,
    HostRecord,
    Inventory,
    PowerState,
    Profile,
    Server,
)
from monitor.core.ports import DiscoveryResult

MUTATING = frozenset({"POST", "PUT", "DELETE", "PATCH"})
"""Methods that change the lab's world: they carry the current action's fencing token."""


class FenceRejected(FenceRefused):
    """The lab refused the request for a stale fencing token (409): another monitor has acted for the
    job with a newer epoch since; nothing was changed."""

    def __init__(self, message: str, *, endpoint: str) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class HostIn(_Lenient):
    name: str
    ip: str


class BmcIn(_Lenient):
    url: str
    username: str
    password: str
    verify_tls: bool = True


class ServerIn(_Lenient):
    id: str
    domain_group: str
    domain: str
    enclosure: str
    bay: int
    span: int = 1
    product: str | None = None
    present: bool = True
    power: str | None = None
    health: str | None = None
    profile: str | None = None
    spare: bool = False
    host: HostIn | None = None
    management_addresses: list[str] = []
    bmc: BmcIn | None = None
    serial_number: str | None = None
    uuid: str | None = None

    def to_model(self) -> Server:
        return Server(
            id=self.id, domain_group=self.domain_group, domain=self.domain, enclosure=self.enclosure,
            bay=self.bay, span=self.span, product=self.product or "", present=self.present,
            power=PowerState.parse(self.power), health=Health.parse(self.health), profile=self.profile,
            spare=self.spare, host=HostRecord(self.host.name, self.host.ip) if self.host else None,
            management_addresses=tuple(self.management_addresses),
            bmc=BmcEndpoint(self.bmc.url, self.bmc.username, self.bmc.password,
                            verify_tls=self.bmc.verify_tls) if self.bmc else None,
            serial=self.serial_number, uuid=self.uuid,
        )


class DomainIn(_Lenient):
    id: str
    group: str
    status: str


class GroupIn(_Lenient):
    id: str


class EnclosureIn(_Lenient):
    id: str
    domain: str
    bays: int = 16
    management_addresses: list[str] = []
    """The enclosure manager's (Onboard Administrator's) addresses."""


class ProfileIn(_Lenient):
    id: str
    server: str | None = None
    host: HostIn | None = None

    def to_model(self) -> Profile:
        return Profile(self.id, self.server, HostRecord(self.host.name, self.host.ip) if self.host else None)


class InventoryIn(_Lenient):
    domain_groups: list[GroupIn]
    domains: list[DomainIn]
    enclosures: list[EnclosureIn]
    servers: list[ServerIn]
    profiles: list[ProfileIn] = []


class PowerIn(_Lenient):
    server: str
    power: str


class DiscoverIn(_Lenient):
    server: str
    found: bool
    host: HostIn | None = None
    detail: str = ""


class LabClient:
    """HTTP access to the lab's manager API, one session, a timeout on every call."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 10.0,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._own_session = session is None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request; a mutating one carries the current action's fencing header and is not sent
        once the action may no longer act (FenceLost, raised unchanged)."""
        return (await self.request(method, path, body))[2]

    async def request(self, method: str, path: str, body: Any = None, *,
                      headers: dict[str, str] | None = None) -> tuple[int, str | None, Any]:
        """`call`, with extra request headers, answering (status, ETag, body); a 304 is a status."""
        endpoint = f"{self.url}{path}"
        headers = dict(headers or {})
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        mutating = method.upper() in MUTATING
        headers.update(fence_headers() if mutating else read_headers())
        http = self._http()
        try:
            if mutating:
                check_fence()  # the last moment before the request leaves
            async with http.request(method, endpoint, json=body, headers=headers,
                                    timeout=self._timeout) as resp:
                text = await resp.text()
                try:
                    data = await resp.json(content_type=None) if text else None
                except ValueError:
                    data = None
                if resp.status == 409 and isinstance(data, dict) and "stale_fence" in data:
                    raise FenceRejected(_message(data, text, resp.status), endpoint=endpoint)
                if resp.status in (401, 403):
                    raise error_for_status(resp.status, f"{method} {path}: {resp.status}", endpoint=endpoint)
                if resp.status >= 400:
                    raise error_for_status(resp.status, _message(data, text, resp.status), endpoint=endpoint)
                return resp.status, resp.headers.get("ETag"), data
        except TimeoutError:
            raise AdapterTimeout(f"{method} {path} timed out", endpoint=endpoint) from None
        except aiohttp.ClientError as exc:
            raise AdapterUnavailable(f"{method} {path}: {exc}", endpoint=endpoint) from exc

    async def parse(self, model: type[Any], method: str, path: str, body: Any = None) -> Any:
        return self.validate(model, await self.call(method, path, body), method, path)

    def validate(self, model: type[Any], data: Any, method: str, path: str) -> Any:
        """`data`, the answer to `method path`, as `model`; malformed: an AdapterError."""
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise AdapterError(f"malformed answer to {method} {path}: {exc.errors()[0]['msg']}",
                               endpoint=self.url + path) from exc


def _message(data: Any, text: str, status: int) -> str:
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return f"{data['error']} (HTTP {status})"
    return f"HTTP {status}: {text[:200]}"


class LabManager:
    """ProfileManager over the lab simulator's manager API."""

    def __init__(self, client: LabClient) -> None:
        self._c = client
        self._last: tuple[str, Inventory] | None = None
        """The last inventory read and its ETag: a refresh that finds it unchanged (304) returns the
        same object, so nothing is parsed (10,009 servers: ~0.3 s) and nothing downstream rebuilt."""

    async def inventory(self) -> Inventory:
        path = "/api/v1/inventory"
        last = self._last
        status, etag, data = await self._c.request(
            "GET", path, headers={"If-None-Match": last[0]} if last else None)
        if status == 304 and last is not None:
            return last[1]
        result = self._build(self._c.validate(InventoryIn, data, "GET", path))
        self._last = (etag, result) if etag else None
        return result

    @staticmethod
    def _build(inv: InventoryIn) -> Inventory:
        return Inventory(
            groups={g.id: DomainGroup(g.id) for g in inv.domain_groups},
            domains={d.id: Domain(d.id, d.group, d.status) for d in inv.domains},
            enclosures={e.id: Enclosure(e.id, e.domain, e.bays, tuple(e.management_addresses))
                        for e in inv.enclosures},
            servers={s.id: s.to_model() for s in inv.servers},
            profiles={p.id: p.to_model() for p in inv.profiles},
        )

    async def domain(self, domain_id: str) -> Domain:
        d: DomainIn = await self._c.parse(DomainIn, "GET", f"/api/v1/domains/{domain_id}")
        return Domain(d.id, d.group, d.status)

    async def server(self, server_id: str) -> Server:
        s: ServerIn = await self._c.parse(ServerIn, "GET", f"/api/v1/servers/{server_id}")
        return s.to_model()

    async def group_servers(self, group: str) -> list[Server]:
        data = await self._c.call("GET", f"/api/v1/servers?domain_group={quote(group)}")
        try:
            return [ServerIn.model_validate(s).to_model() for s in data]
        except (ValidationError, TypeError) as exc:
            raise AdapterError(f"malformed answer to GET /api/v1/servers: {exc}",
                               endpoint=self._c.url) from exc

    async def profile(self, profile_id: str) -> Profile:
        p: ProfileIn = await self._c.parse(ProfileIn, "GET", f"/api/v1/profiles/{profile_id}")
        return p.to_model()

    async def move_profile(self, profile_id: str, source: str, target: str) -> None:
        await self._c.call("POST", f"/api/v1/profiles/{profile_id}/move", {"from": source, "to": target})

    async def set_spare(self, server_id: str, spare: bool) -> None:
        await self._c.call("PUT", f"/api/v1/servers/{server_id}/spare", {"spare": spare})

    # --- ManagerPower: the manager's own power control (the `manager` fence level) ---------------------

    async def manager_power_state(self, server_id: str) -> PowerState:
        p: PowerIn = await self._c.parse(PowerIn, "GET", f"/api/v1/servers/{server_id}/power")
        return PowerState.parse(p.power)

    async def manager_force_off(self, server_id: str) -> str | None:
        """The lab's manager acts at once (no task): None."""
        await self._c.call("POST", f"/api/v1/servers/{server_id}/power", {"action": "ForceOff"})
        return None

    async def manager_power_on(self, server_id: str) -> str | None:
        await self._c.call("POST", f"/api/v1/servers/{server_id}/power", {"action": "On"})
        return None

    async def close(self) -> None:
        await self._c.close()


class LabDiscovery:
    """DiscoveryService over the lab simulator's SIM role."""

    def __init__(self, client: LabClient) -> None:
        self._c = client

    async def remove_host(self, server_id: str) -> HostRecord | None:
        try:
            h: HostIn = await self._c.parse(HostIn, "DELETE", f"/api/v1/hosts/{server_id}")
        except NotFound:
            return None
        return HostRecord(h.name, h.ip)

    async def restore_host(self, server_id: str, record: HostRecord) -> None:
        await self._c.call("PUT", f"/api/v1/hosts/{server_id}", record.as_dict())

    async def discover(self, server_id: str) -> DiscoveryResult:
        r: DiscoverIn = await self._c.parse(DiscoverIn, "POST", f"/api/v1/discover/{server_id}")
        host = HostRecord(r.host.name, r.host.ip) if r.host else None
        return DiscoveryResult(r.found, host, r.detail or ("found" if r.found else "not found"))

    async def close(self) -> None:
        """The client is shared with LabManager, which closes it."""
