"""The simulated world's state: servers, profiles, faults, host records, event services, and the
oracle that records every violation as it happens."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lab.config import LabConfig, Latency
from lab.fencing import FenceMode, FenceToken, token_fields
from lab.world.catalogue import (
    BAYS_PER_ENCLOSURE,
    DEFAULT_SLOW_S,
    DOMAIN_FAULTS,
    EVENT_HISTORY,
    Health,
    HttpHeaderForm,
    PowerState,
)
from lab.world.errors import NotFound, StaleFence


@dataclass
class Server:
    id: str
    enclosure: str
    enclosure_no: int
    bay: int
    span: int
    domain: str
    domain_group: str
    product: str | None
    installed: bool
    spare: bool
    power: PowerState
    health: Health
    serial: str
    uuid: str
    bmc_ip: str
    bmc_port: int | None = None
    profile: str | None = None
    booted_identity: str | None = None
    on_since: float | None = None
    powered_on_by: FenceToken | None = None
    """The token of the last power-on request accepted for this server (None: no header, or by hand)."""
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


@dataclass
class Profile:
    id: str
    server: str | None
    host_name: str
    host_ip: str
    macs: list[str]
    wwns: list[str]
    previous_server: str | None = None
    """The server the profile was last moved from (None: never moved)."""


@dataclass(frozen=True)
class Fault:
    id: str
    fault: str
    server: str | None
    domain: str | None
    delay_s: float | None = None
    """`bmc_slow` only: seconds added to each answer of the BMC."""

    def view(self) -> dict[str, Any]:
        view: dict[str, Any] = {"id": self.id, "fault": self.fault, "server": self.server,
                                "domain": self.domain}
        if self.delay_s is not None:
            view["delay_s"] = self.delay_s
        return view


@dataclass(frozen=True)
class HostRecord:
    name: str
    ip: str


@dataclass
class Subscription:
    """An EventDestination of one BMC's EventService."""

    id: str
    destination: str
    protocol: str
    context: str | None
    event_types: list[str] | None
    registry_prefixes: list[str] | None
    http_headers: dict[str, str] = field(repr=False)
    retry_policy: str = "RetryForever"

    def view(self) -> dict[str, Any]:
        path = f"/redfish/v1/EventService/Subscriptions/{self.id}"
        body: dict[str, Any] = {
            "@odata.context": "/redfish/v1/$metadata#EventDestination.EventDestination",
            "@odata.id": path,
            "@odata.type": "#EventDestination.v1_13_0.EventDestination",
            "Id": self.id,
            "Name": f"EventSubscription {self.id}",
            "Destination": self.destination,
            "Protocol": self.protocol,
            "Context": self.context,
            "EventFormatType": "Event",
            "SubscriptionType": "RedfishEvent",
            "DeliveryRetryPolicy": self.retry_policy,
            "HttpHeaders": None,  # never shown ("null or empty array in responses")
            "Status": {"State": "Enabled", "Health": "OK"},
        }
        if self.event_types is not None:
            body["EventTypes"] = list(self.event_types)
        if self.registry_prefixes is not None:
            body["RegistryPrefixes"] = list(self.registry_prefixes)
        return body

    def wants(self, record: dict[str, Any]) -> bool:
        """Whether an EventRecord passes this subscription's EventTypes and RegistryPrefixes filters."""
        if self.event_types and record.get("EventType") not in self.event_types:
            return False
        if self.registry_prefixes:
            prefix = str(record.get("MessageId", "")).split(".", 1)[0]
            if prefix not in self.registry_prefixes:
                return False
        return True


@dataclass
class EventServiceState:
    """One BMC's EventService: its subscriptions, the events raised on it, and the delivery log."""

    enabled: bool = True
    http_headers: HttpHeaderForm = "any"
    """Which HttpHeaders shape POST accepts: both (`any`), the schema's `array`, iLO 6's `object`, `none`."""
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    next_subscription: int = 1
    next_event: int = 1
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENT_HISTORY))
    deliveries: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENT_HISTORY))

    def view(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "http_headers": self.http_headers,
            "subscriptions": [s.view() for s in self.subscriptions.values()],
        }


EventSink = Callable[[Server, dict[str, Any]], None]
"""Called with the server and the Event payload (without Context) each time an event is raised."""


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def wall_time() -> float:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


class WorldState:
    """The state of the simulated world, its lookups and JSON views, the action log and the oracle,
    and the fencing tokens seen (the parts in lab/world/*.py act on it)."""

    def __init__(self, config: LabConfig) -> None:
        self.config = config
        self.latency: Latency = config.latency.model_copy()
        self.domain_groups: list[str] = []
        self.domains: dict[str, str] = {}  # domain -> group
        self.enclosures: dict[str, str] = {}  # enclosure -> domain
        self.servers: dict[str, Server] = {}
        self.profiles: dict[str, Profile] = {}
        self.hosts: dict[str, HostRecord] = {}
        self.faults: dict[str, Fault] = {}
        self.violations: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []
        self.fencing_mode: FenceMode = config.fencing
        self.fence_jobs: dict[int, tuple[int, str]] = {}
        """job -> (the highest epoch seen for it, the monitor that sent it first)."""
        self.fenced: list[dict[str, Any]] = []
        """The requests refused for a stale fencing token."""
        self.stale_admitted: set[tuple[int, int]] = set()
        """(job, epoch) of requests `fencing: record` let through with a stale token."""
        self._fault_seq = 0
        self._closed = False
        self.event_services: dict[str, EventServiceState] = {}
        self.delivery_retry_interval_s: float = 1.0
        self._event_sinks: list[EventSink] = []

    def server(self, server_id: str) -> Server:
        try:
            return self.servers[server_id]
        except KeyError:
            raise NotFound(f"unknown server {server_id}") from None

    def profile(self, profile_id: str) -> Profile:
        try:
            return self.profiles[profile_id]
        except KeyError:
            raise NotFound(f"unknown profile {profile_id}") from None

    def domain(self, domain_id: str) -> str:
        if domain_id not in self.domains:
            raise NotFound(f"unknown domain {domain_id}")
        return domain_id

    def has_fault(self, server: Server, name: str) -> bool:
        for f in self.faults.values():
            if f.fault != name:
                continue
            if f.server == server.id or (f.server is None and f.domain in (None, server.domain)):
                return True
        return False

    def fault_delay(self, server: Server) -> float:
        """The longest `bmc_slow` delay applying to the server's BMC (0: none)."""
        delay = 0.0
        for f in self.faults.values():
            if f.fault == "bmc_slow" and (
                    f.server == server.id or (f.server is None and f.domain in (None, server.domain))):
                delay = max(delay, f.delay_s if f.delay_s is not None else DEFAULT_SLOW_S)
        return delay

    def manager_fault(self, name: str) -> bool:
        return any(f.fault == name for f in self.faults.values())

    def domain_status(self, domain_id: str) -> str:
        for f in self.faults.values():
            if f.fault in DOMAIN_FAULTS and f.domain == domain_id:
                return DOMAIN_FAULTS[f.fault]
        return "ok"

    def reported_present(self, server: Server) -> bool:
        return server.installed and not self.has_fault(server, "spare_missing")

    def bmc_url(self, server: Server) -> str | None:
        if server.bmc_port is None:
            return None
        return f"https://{server.bmc_ip}:{server.bmc_port}"

    def oa_address(self, enclosure: str) -> str:
        """The address of enclosure `encE`'s Onboard Administrator: "bay 0" of its BMC network
        (127.77.E.0). Nothing listens there; traps the OA sends come from it."""
        return self.config.bmc_ip(int(enclosure.removeprefix("enc")), 0)

    def bmc_servers(self) -> list[Server]:
        """Servers that have hardware, hence a BMC (listening while installed)."""
        return [s for s in self.servers.values() if s.product is not None]

    def bmc_listening(self, server: Server) -> bool:
        """Whether the server's BMC accepts connections: installed, and not under `bmc_down`."""
        return server.installed and not self.has_fault(server, "bmc_down")

    def server_view(self, server: Server) -> dict[str, Any]:
        present = self.reported_present(server)
        host = self.hosts.get(server.id)
        url = self.bmc_url(server)
        bmc: dict[str, Any] | None = None
        if present and url is not None:
            bmc = {
                "url": url,
                "username": self.config.credentials.username,
                "password": self.config.credentials.password,
                "verify_tls": False,
            }
        return {
            "id": server.id,
            "domain_group": server.domain_group,
            "domain": server.domain,
            "enclosure": server.enclosure,
            "bay": server.bay,
            "span": server.span,
            "product": server.product,
            "present": present,
            "power": server.power,
            "health": server.health,
            "profile": server.profile,
            "spare": server.spare,
            "host": {"name": host.name, "ip": host.ip} if host else None,
            "management_addresses": [server.bmc_ip] if present else [],
            "bmc": bmc,
            "serial_number": server.serial if server.product else None,
            "uuid": server.uuid if server.product else None,
        }

    def profile_view(self, profile: Profile) -> dict[str, Any]:
        return {
            "id": profile.id,
            "server": profile.server,
            "host": {"name": profile.host_name, "ip": profile.host_ip},
            "macs": list(profile.macs),
            "wwns": list(profile.wwns),
            "boot_from_san": True,
        }

    def domain_view(self, domain_id: str) -> dict[str, Any]:
        return {"id": domain_id, "group": self.domains[domain_id], "status": self.domain_status(domain_id)}

    def inventory(self) -> dict[str, Any]:
        return {
            "domain_groups": [{"id": g} for g in self.domain_groups],
            "domains": [self.domain_view(d) for d in self.domains],
            "enclosures": [
                {"id": e, "domain": d, "bays": BAYS_PER_ENCLOSURE,
                 "management_addresses": [self.oa_address(e)]} for e, d in self.enclosures.items()
            ],
            "servers": [self.server_view(s) for s in self.servers.values()],
            "profiles": [self.profile_view(p) for p in self.profiles.values()],
        }

    def hosts_view(self) -> list[dict[str, Any]]:
        return [{"server": sid, "name": h.name, "ip": h.ip} for sid, h in sorted(self.hosts.items())]

    def record(
        self,
        kind: str,
        server: str | None,
        detail: str,
        token: FenceToken | None = None,
        *,
        accepted: bool = True,
        checked: bool = True,
    ) -> None:
        """Log one action (accepted or refused) with the monitor, job and epoch of its fencing token.

        The guard of the oracle: an accepted action whose epoch is below the highest seen for its job
        is a violation (`stale_epoch`; only possible with `fencing: record`). `checked=False`: the
        action is a manager's task carrying out a request admitted earlier (lab.oneview, lab.ome): it is
        logged with that request's token, and not held against the epochs seen since — unless the
        request was already stale when it was admitted (let through by `fencing: record`)."""
        self.log.append(
            {"time": time.time(), "kind": kind, "server": server, "detail": detail, "accepted": accepted,
             **token_fields(token)}
        )
        if accepted and token is not None and (checked or (token.job, token.epoch) in self.stale_admitted):
            seen = self.fence_jobs.get(token.job)
            if seen is not None and token.epoch < seen[0]:
                self._violation(
                    "stale_epoch", [server] if server else [], None, token,
                    f"{kind} on {server}: {detail}, accepted for job {token.job} at epoch {token.epoch} "
                    f"from {token.monitor} after epoch {seen[0]} ({seen[1]})",
                )

    def _violation(
        self, kind: str, servers: list[str], profile: str | None, token: FenceToken | None, detail: str
    ) -> None:
        self.violations.append(
            {"time": time.time(), "kind": kind, "servers": sorted(servers), "profile": profile,
             **token_fields(token), "detail": detail}
        )

    def _check_identity(self, server: Server) -> None:
        identity = server.booted_identity
        if identity is None:
            return
        others = [s.id for s in self.servers.values() if s is not server and s.booted_identity == identity]
        if not others:
            return
        self._violation(
            "shared_identity", [server.id, *others], identity, server.powered_on_by,
            f"{server.id} powered on with the identity of {identity} while {', '.join(others)} still runs it",
        )

    def _check_previous_holder(self, server: Server, token: FenceToken | None, reset_type: str) -> None:
        """A power-on accepted for a server whose profile's previous server does not read Off."""
        if server.profile is None:
            return
        profile = self.profiles[server.profile]
        previous = self.servers.get(profile.previous_server or "")
        if previous is None or previous is server or previous.power == "Off":
            return
        self._violation(
            "power_on_while_previous_runs", [server.id, previous.id], profile.id, token,
            f"{reset_type} accepted for {server.id} holding {profile.id} while {previous.id}, where it was "
            f"moved from, is {previous.power}",
        )

    def _admit(self, token: FenceToken | None, kind: str, server: str | None, action: str) -> None:
        """The fence, checked before a request acts: a token older than the newest seen for its job is
        refused (StaleFence, recorded in `fenced` and the log; `fencing: record` lets it through). A token
        that passes raises the job's highest epoch, even when the request itself then fails."""
        if token is None:
            return
        seen = self.fence_jobs.get(token.job)
        if seen is None or token.epoch > seen[0]:
            self.fence_jobs[token.job] = (token.epoch, token.monitor)
            return
        if token.epoch == seen[0]:
            if token.monitor != seen[1]:
                self._violation(
                    "epoch_shared", [server] if server else [], None, token,
                    f"job {token.job} epoch {token.epoch} used by {token.monitor} and by {seen[1]}",
                )
            return
        if self.fencing_mode == "record":
            # Let through: `record` flags it (`stale_epoch`) once it has taken effect, also when a
            # manager's task carries it out later (`record(checked=False)`).
            self.stale_admitted.add((token.job, token.epoch))
            return
        refusal = StaleFence(token, *seen)
        self.fenced.append(
            {"time": time.time(), "kind": kind, "server": server, "action": action, **refusal.view(),
             "detail": refusal.message}
        )
        self.record(kind, server, f"{action}: rejected ({refusal.message})", token, accepted=False)
        raise refusal

    def observe(self, token: FenceToken) -> None:
        """A read carrying a fencing token (the owner of a job reading the world): its epoch becomes the
        job's highest when it is newer, so later requests under older epochs are refused. A read is
        never refused and never a violation."""
        seen = self.fence_jobs.get(token.job)
        if seen is None or token.epoch > seen[0]:
            self.fence_jobs[token.job] = (token.epoch, token.monitor)

    def admit(self, token: FenceToken | None, kind: str, server: str | None, action: str) -> None:
        """The fence check alone, for the lab's other faces (lab.oneview, lab.ome), which admit a request
        now and act on it later (a manager's task or job): StaleFence for a stale token."""
        self._admit(token, kind, server, action)

    def fencing_view(self) -> dict[str, Any]:
        return {
            "mode": self.fencing_mode,
            "jobs": {str(job): epoch for job, (epoch, _) in sorted(self.fence_jobs.items())},
            "monitors": {str(job): monitor for job, (_, monitor) in sorted(self.fence_jobs.items())},
            "fenced": list(self.fenced),
        }

    def set_fencing_mode(self, mode: FenceMode) -> None:
        self.fencing_mode = mode

    def clear_fencing(self) -> int:
        """Forget every job's highest epoch and the refusals (between rounds whose job ids restart)."""
        count = len(self.fence_jobs)
        self.fence_jobs.clear()
        self.fenced.clear()
        self.stale_admitted.clear()
        return count

    def clear_log(self) -> int:
        count = len(self.log)
        self.log.clear()
        return count

    def clear_violations(self) -> int:
        count = len(self.violations)
        self.violations.clear()
        return count
