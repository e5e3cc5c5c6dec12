"""The simulated outside world: inventory, power state machine, profiles, faults, SIM host records, oracle.

Everything here is synchronous and single-threaded; timed transitions are scheduled on the running asyncio
loop with `call_later`. The HTTP front ends (lab.bmc, lab.manager) only translate requests into calls here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from lab.config import LabConfig, Latency
from lab.fencing import FenceMode, FenceToken, token_fields

__all__ = [
    "DOMAIN_FAULTS",
    "EVENT_TYPES",
    "FAULTS",
    "FOREIGN_DESTINATION",
    "FOREIGN_SUBSCRIPTION_SERVERS",
    "PRODUCTS",
    "REGISTRY_PREFIXES",
    "SERVER_FAULTS",
    "BadRequest",
    "Conflict",
    "Fault",
    "InjectedFailure",
    "InvalidPowerState",
    "LabError",
    "NotFound",
    "Product",
    "Profile",
    "RedfishBadRequest",
    "Server",
    "StaleFence",
    "Subscription",
    "UnknownResetType",
    "World",
    "generate_world",
]

PowerState = Literal["On", "Off", "PoweringOn", "PoweringOff"]
Health = Literal["OK", "Warning", "Critical"]

BAYS_PER_ENCLOSURE: Final = 16

RESET_TYPES: Final = ("On", "ForceOn", "ForceOff", "GracefulShutdown", "ForceRestart", "PushPowerButton")

SERVER_FAULTS: Final = frozenset(
    {"power_off_hangs", "power_on_fails", "bmc_timeout", "bmc_error", "move_error", "spare_missing",
     "bmc_slow", "bmc_down"}
)
MANAGER_FAULTS: Final = frozenset({"manager_unavailable"})
"""Faults of the manager itself (no server or domain): `manager_unavailable` answers 503 to every
manager API call."""
DEFAULT_SLOW_S: Final = 1.0
"""`bmc_slow` without `delay_s`: seconds added to each of the BMC's answers."""
DOMAIN_FAULTS: Final = {
    "domain_incompatible": "incompatible",
    "domain_unmanaged": "unmanaged",
    "domain_unlicensed": "unlicensed",
}
FAULTS: Final = frozenset(SERVER_FAULTS | DOMAIN_FAULTS.keys() | MANAGER_FAULTS)

# --- Redfish eventing (the per-BMC EventService) ---
EVENT_TYPES: Final = ("StatusChange", "ResourceUpdated", "ResourceAdded", "ResourceRemoved", "Alert")
"""EventTypesForSubscription, as iLO 5 lists them."""
REGISTRY_PREFIXES: Final = ("iLOEvents", "ResourceEvent")
PROTOCOLS: Final = ("Redfish",)
RETRY_POLICIES: Final = ("TerminateAfterRetries", "SuspendRetries", "RetryForever", "RetryForeverWithBackoff")
DELIVERY_RETRY_ATTEMPTS: Final = 3
"""Retries after a failed delivery (so at most 1 + 3 POSTs per event and subscription)."""
FOREIGN_DESTINATION: Final = "https://127.0.0.9:9/other"
FOREIGN_CONTEXT: Final = "other-consumer"
FOREIGN_SUBSCRIPTION_SERVERS: Final = ("enc1-bay2",)
"""BMCs that start with a subscription of ANOTHER consumer (clients must never touch it)."""
HttpHeaderForm = Literal["any", "array", "object", "none"]
EVENT_HISTORY: Final = 500


# --- errors ------------------------------------------------------------------------------------------


class LabError(Exception):
    """A request the world refuses; `status` is the HTTP status the front ends answer with."""

    status: int = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(LabError):
    status = 400


class NotFound(LabError):
    status = 404


class Conflict(LabError):
    status = 409


class InjectedFailure(LabError):
    status = 500


class StaleFence(Conflict):
    """A request whose fencing token is older than the newest seen for its job (refused, 409)."""

    def __init__(self, token: FenceToken, highest: int, highest_monitor: str) -> None:
        super().__init__(
            f"stale fencing token: job {token.job} epoch {token.epoch} < {highest} (monitor {token.monitor})"
        )
        self.token = token
        self.highest = highest
        self.highest_monitor = highest_monitor

    def view(self) -> dict[str, Any]:
        return {**self.token.fields(), "highest": self.highest, "highest_monitor": self.highest_monitor}


class InvalidPowerState(LabError):
    """The iLO quirk: a reset that makes no sense in the current power state (ForceOff on Off, On on On)."""

    status = 400


class UnknownResetType(LabError):
    status = 400


class RedfishBadRequest(BadRequest):
    """A Redfish request the EventService refuses, with the Base registry MessageId the BMC answers with."""

    def __init__(self, message: str, message_id: str = "Base.1.4.PropertyValueFormatError") -> None:
        super().__init__(message)
        self.message_id = message_id


# --- hardware catalogue --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Product:
    name: str
    family: Literal["ProLiant", "Integrity"]
    span: int
    ilo_model: str
    ilo_firmware: str
    bios_version: str
    cpu: str
    memory_gib: int


PRODUCTS: Final[dict[str, Product]] = {
    p.name: p
    for p in (
        Product(
            "ProLiant BL460c G7",
            "ProLiant",
            1,
            "iLO 3",
            "1.94 Jun 12 2019",
            "I27 05/05/2011",
            "Intel(R) Xeon(R) CPU X5675 @ 3.07GHz",
            96,
        ),
        Product(
            "ProLiant BL460c Gen8",
            "ProLiant",
            1,
            "iLO 4",
            "2.82 Feb 06 2023",
            "I31 05/24/2019",
            "Intel(R) Xeon(R) CPU E5-2670 v2 @ 2.50GHz",
            192,
        ),
        Product(
            "ProLiant BL460c Gen9",
            "ProLiant",
            1,
            "iLO 4",
            "2.82 Feb 06 2023",
            "I36 10/21/2019",
            "Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz",
            256,
        ),
        Product(
            "ProLiant BL465c G5",
            "ProLiant",
            1,
            "iLO 2",
            "2.33 Apr 14 2016",
            "A13 02/23/2009",
            "Quad-Core AMD Opteron(tm) Processor 2384",
            32,
        ),
        Product(
            "ProLiant BL465c G7",
            "ProLiant",
            1,
            "iLO 3",
            "1.94 Jun 12 2019",
            "A19 05/05/2011",
            "AMD Opteron(tm) Processor 6176",
            128,
        ),
        Product(
            "Integrity BL860c i2",
            "Integrity",
            1,
            "iLO 3 (Integrity)",
            "T.01.25.03 Aug 03 2012",
            "01.21",
            "Intel(R) Itanium(R) Processor 9350",
            96,
        ),
        Product(
            "Integrity BL870c i2",
            "Integrity",
            2,
            "iLO 3 (Integrity)",
            "T.01.25.03 Aug 03 2012",
            "01.21",
            "Intel(R) Itanium(R) Processor 9350",
            192,
        ),
    )
}

G7: Final = "ProLiant BL460c G7"
GEN8: Final = "ProLiant BL460c Gen8"
GEN9: Final = "ProLiant BL460c Gen9"
B465G5: Final = "ProLiant BL465c G5"
B465G7: Final = "ProLiant BL465c G7"
I860: Final = "Integrity BL860c i2"
I870: Final = "Integrity BL870c i2"

# A slot of the layout: (product or None for an empty bay, role). Roles: "on" / "off" production blades
# with a profile, "spare" designated spare (no profile, powered off), "empty".
_Slot = tuple[str | None, Literal["on", "off", "spare", "empty"]]

# Bays 1-8: production and empty bays (permuted by the seed from enclosure 3 on); bays 9-14: spares.
_ODD_FRONT: Final[list[_Slot]] = [
    (GEN8, "on"),
    (GEN9, "on"),
    (G7, "on"),
    (B465G7, "on"),
    (B465G5, "on"),
    (I860, "on"),
    (GEN8, "off"),
    (None, "empty"),
]
_EVEN_FRONT: Final[list[_Slot]] = [
    (GEN9, "on"),
    (GEN8, "on"),
    (G7, "off"),
    (B465G5, "on"),
    (B465G7, "on"),
    (I860, "on"),
    (None, "empty"),
    (GEN8, "on"),
]
_SPARES: Final[list[_Slot]] = [
    (GEN8, "spare"),
    (GEN9, "spare"),
    (G7, "spare"),
    (B465G7, "spare"),
    (B465G5, "spare"),
    (I860, "spare"),
]


# --- state ---------------------------------------------------------------------------------------------


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


class World:
    """The whole simulated state. Build it with `generate_world(config)`."""

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
        self._fault_seq = 0
        self._closed = False
        self.event_services: dict[str, EventServiceState] = {}
        self.delivery_retry_interval_s: float = 1.0
        self._event_sinks: list[EventSink] = []

    # --- lookups ---------------------------------------------------------------------------------------

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

    # --- views (the JSON the manager API returns) -------------------------------------------------------

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

    # --- the action log and the oracle ------------------------------------------------------------------

    def record(
        self,
        kind: str,
        server: str | None,
        detail: str,
        token: FenceToken | None = None,
        *,
        accepted: bool = True,
    ) -> None:
        """Log one action (accepted or refused) with the monitor, job and epoch of its fencing token.

        The guard of the oracle: an accepted action whose epoch is below the highest seen for its job
        is a violation (`stale_epoch`; only possible with `fencing: record`)."""
        self.log.append(
            {"time": time.time(), "kind": kind, "server": server, "detail": detail, "accepted": accepted,
             **token_fields(token)}
        )
        if accepted and token is not None:
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

    # --- fencing -----------------------------------------------------------------------------------------

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
            return  # let through: `record` flags it (`stale_epoch`) once it has taken effect
        refusal = StaleFence(token, *seen)
        self.fenced.append(
            {"time": time.time(), "kind": kind, "server": server, "action": action, **refusal.view(),
             "detail": refusal.message}
        )
        self.record(kind, server, f"{action}: rejected ({refusal.message})", token, accepted=False)
        raise refusal

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
        return count

    def clear_log(self) -> int:
        count = len(self.log)
        self.log.clear()
        return count

    def clear_violations(self) -> int:
        count = len(self.violations)
        self.violations.clear()
        return count

    # --- power state machine ----------------------------------------------------------------------------

    def _cancel_timer(self, server: Server) -> None:
        if server.timer is not None:
            server.timer.cancel()
            server.timer = None

    def _schedule(self, server: Server, delay: float, step: Any) -> None:
        self._cancel_timer(server)
        if self._closed:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            server.timer = None
            if not self._closed:
                step()

        server.timer = loop.call_later(max(0.0, delay), fire)

    def _reach_on(self, server: Server) -> None:
        self._cancel_timer(server)
        server.power = "On"
        server.on_since = _now()
        server.booted_identity = server.profile
        self._check_identity(server)

    def _reach_off(self, server: Server) -> None:
        self._cancel_timer(server)
        server.power = "Off"
        server.on_since = None
        server.booted_identity = None

    def _start_power_off(self, server: Server, then_on: bool = False) -> None:
        if self.has_fault(server, "power_off_hangs"):
            return  # accepted; the power never goes Off
        server.power = "PoweringOff"

        def done() -> None:
            self._reach_off(server)
            if then_on:
                self._start_power_on(server)

        self._schedule(server, self.latency.power_off_s, done)

    def _start_power_on(self, server: Server) -> None:
        if self.has_fault(server, "power_on_fails"):
            return  # accepted; the power never goes On
        server.power = "PoweringOn"
        self._schedule(server, self.latency.power_on_s, lambda: self._reach_on(server))

    def reset(self, server_id: str, reset_type: str, token: FenceToken | None = None) -> None:
        """A Redfish ComputerSystem.Reset on the server's BMC; raises on a stale token and the iLO quirks."""
        server = self.server(server_id)
        self._admit(token, "reset", server.id, reset_type)
        powers_on = reset_type in ("On", "ForceOn", "ForceRestart") or (
            reset_type == "PushPowerButton" and server.power == "Off"
        )
        try:
            self._reset(server, reset_type)
        except LabError as exc:
            self.record("reset", server.id, f"{reset_type}: rejected ({exc.message})", token, accepted=False)
            raise
        if powers_on:
            server.powered_on_by = token
            self._check_previous_holder(server, token, reset_type)
        self.record("reset", server.id, f"{reset_type}: accepted ({server.power})", token)

    def _reset(self, server: Server, reset_type: str) -> None:
        power = server.power
        invalid = InvalidPowerState(f"{reset_type} is not allowed while the server is {power}")
        if reset_type not in RESET_TYPES:
            raise UnknownResetType(f"unknown ResetType {reset_type!r}")
        if reset_type == "PushPowerButton":
            reset_type = "GracefulShutdown" if power == "On" else "On" if power == "Off" else reset_type
        if reset_type in ("On", "ForceOn"):
            if power == "Off":
                self._start_power_on(server)
            elif power != "PoweringOn":
                raise invalid
        elif reset_type in ("ForceOff", "GracefulShutdown"):
            if power in ("On", "PoweringOn"):
                self._start_power_off(server)  # replaces a pending power-on
            elif power != "PoweringOff":
                raise invalid
        elif reset_type == "ForceRestart":
            if power != "On":
                raise invalid
            self._start_power_off(server, then_on=True)
        else:  # PushPowerButton during a transition
            raise invalid

    def enclosure_power(self, server_id: str, action: Literal["ForceOff", "On"], via: str,
                        token: FenceToken | None = None) -> Server:
        """Power control from outside the blade's BMC: the manager's power API or the enclosure's
        Onboard Administrator (`via`: "manager" or "oa"). It reaches the blade through the enclosure,
        so it works while the BMC is down (`bmc_down`, `bmc_timeout`, `bmc_error`); the blade's own
        faults (`power_off_hangs`, `power_on_fails`) still apply. Already in the asked state is not an
        error. Logged as kind `power`."""
        server = self.server(server_id)
        self._admit(token, "power", server.id, f"{via} {action}")
        if not server.installed or server.product is None:
            self.record("power", server.id, f"{via} {action}: refused (no blade in the bay)", token,
                        accepted=False)
            raise Conflict(f"there is no blade in {server.id}")
        if action == "ForceOff":
            if server.power in ("On", "PoweringOn"):
                self._start_power_off(server)
        elif server.power == "Off":
            self._start_power_on(server)
            server.powered_on_by = token
            self._check_previous_holder(server, token, f"{via} On")
        elif server.power == "PoweringOff":
            self.record("power", server.id, f"{via} On: refused (powering off)", token, accepted=False)
            raise Conflict(f"{server.id} is powering off")
        self.record("power", server.id, f"{via} {action}: accepted ({server.power})", token)
        return server

    # --- the manager (VCEM role) ------------------------------------------------------------------------

    def move(self, profile_id: str, from_id: str, to_id: str, token: FenceToken | None = None) -> Profile:
        """Move a profile between servers, atomically; every refusal leaves the world unchanged.

        The source's power is not checked (as a manager that does not check); moving off a server that
        is not Off is recorded as a violation (`move_off_running`)."""
        action = f"{profile_id} {from_id} -> {to_id}"
        self._admit(token, "move", from_id, action)
        try:
            profile = self.profile(profile_id)
            src = self.server(from_id)
            dst = self.server(to_id)
            self._check_move(profile, src, dst)
        except LabError as exc:
            self.record("move", from_id, f"{action}: refused {exc.status} ({exc.message})", token,
                        accepted=False)
            raise
        src.profile = None
        dst.profile = profile.id
        profile.server = dst.id
        profile.previous_server = src.id
        if src.power != "Off":
            self._violation(
                "move_off_running", [src.id, dst.id], profile.id, token,
                f"{profile.id} moved off {src.id} to {dst.id} while {src.id} is {src.power}",
            )
        self.record("move", src.id, f"{action}: ok", token)
        return profile

    def _check_move(self, profile: Profile, src: Server, dst: Server) -> None:
        if profile.server != src.id:
            raise Conflict(f"profile {profile.id} is on {profile.server or 'no server'}, not on {src.id}")
        if dst.id == src.id:
            raise Conflict("from and to are the same server")
        if dst.profile is not None:
            raise Conflict(f"server {dst.id} already has profile {dst.profile}")
        if not self.reported_present(dst):
            raise Conflict(f"server {dst.id} is not present")
        if dst.power != "Off":
            raise Conflict(f"server {dst.id} is not powered off ({dst.power})")
        if src.domain_group != dst.domain_group:
            raise Conflict(
                f"{src.id} ({src.domain_group}) and {dst.id} ({dst.domain_group}) are in different "
                "domain groups"
            )
        for d in sorted({src.domain, dst.domain}):
            status = self.domain_status(d)
            if status != "ok":
                raise Conflict(f"domain {d} is {status}")
        for s in (src, dst):
            if self.has_fault(s, "move_error"):
                raise InjectedFailure(f"VCEM job failed for {s.id} (injected move_error)")

    def set_spare(self, server_id: str, spare: bool, token: FenceToken | None = None) -> Server:
        action = f"spare={str(spare).lower()}"
        self._admit(token, "spare", server_id, action)
        server = self.server(server_id)
        if server.product is None and spare:
            raise Conflict(f"bay {server.id} is empty")
        server.spare = spare
        self.record("spare", server.id, action, token)
        return server

    # --- Systems Insight Manager role --------------------------------------------------------------------

    def delete_host(self, server_id: str, token: FenceToken | None = None) -> dict[str, Any]:
        self._admit(token, "host", server_id, "delete")
        self.server(server_id)
        record = self.hosts.pop(server_id, None)
        if record is None:
            raise NotFound(f"server {server_id} has no host record")
        self.record("host", server_id, f"deleted {record.name} {record.ip}", token)
        return {"server": server_id, "name": record.name, "ip": record.ip}

    def put_host(self, server_id: str, name: str, ip: str, token: FenceToken | None = None) -> dict[str, Any]:
        self._admit(token, "host", server_id, f"set {name} {ip}")
        self.server(server_id)
        self.hosts[server_id] = HostRecord(name, ip)
        self.record("host", server_id, f"set {name} {ip}", token)
        return {"server": server_id, "name": name, "ip": ip}

    def discover(self, server_id: str, token: FenceToken | None = None) -> dict[str, Any]:
        self._admit(token, "discover", server_id, "discover")
        server = self.server(server_id)
        host: dict[str, str] | None = None
        found = False
        if not self.reported_present(server):
            detail = "no server in the bay"
        elif server.power != "On" or server.on_since is None:
            detail = f"no answer: the server is {server.power}"
        elif server.profile is None:
            detail = "no answer: the server has no profile (no network identity)"
        else:
            up = _now() - server.on_since
            if up < self.latency.boot_s:
                detail = f"no answer: booting ({up:.1f}s of {self.latency.boot_s:.1f}s)"
            else:
                profile = self.profiles[server.profile]
                found = True
                host = {"name": profile.host_name, "ip": profile.host_ip}
                self.hosts[server.id] = HostRecord(profile.host_name, profile.host_ip)
                detail = f"{profile.host_name} ({profile.host_ip}) answered"
        self.record("discover", server.id, f"found={str(found).lower()}: {detail}", token)
        return {"server": server.id, "found": found, "host": host, "detail": detail}

    # --- lab control --------------------------------------------------------------------------------------

    def add_fault(self, fault: str, server_id: str | None, domain_id: str | None,
                  delay_s: float | None = None) -> Fault:
        if fault not in FAULTS:
            raise BadRequest(f"unknown fault {fault!r}; known: {', '.join(sorted(FAULTS))}")
        if delay_s is not None and fault != "bmc_slow":
            raise BadRequest("delay_s only applies to the bmc_slow fault")
        if fault in MANAGER_FAULTS and (server_id is not None or domain_id is not None):
            raise BadRequest(f"{fault} is a fault of the manager: no server or domain")
        if fault == "bmc_slow" and delay_s is None:
            delay_s = DEFAULT_SLOW_S
        server = self.server(server_id) if server_id is not None else None
        if domain_id is not None:
            self.domain(domain_id)
        if fault in DOMAIN_FAULTS:
            if domain_id is None:
                if server is None:
                    raise BadRequest(f"{fault} needs a domain (or a server of that domain)")
                domain_id = server.domain
            server_id = None
        self._fault_seq += 1
        f = Fault(f"fault-{self._fault_seq}", fault, server_id, domain_id, delay_s)
        self.faults[f.id] = f
        return f

    def remove_fault(self, fault_id: str) -> Fault:
        try:
            return self.faults.pop(fault_id)
        except KeyError:
            raise NotFound(f"unknown fault {fault_id}") from None

    def clear_faults(self) -> int:
        count = len(self.faults)
        self.faults.clear()
        return count

    def set_latency(self, update: dict[str, float]) -> Latency:
        merged = {**self.latency.model_dump(), **update}
        self.latency = Latency.model_validate(merged)
        return self.latency

    def control_server(
        self,
        server_id: str,
        power: Literal["On", "Off"] | None = None,
        health: Health | None = None,
        present: bool | None = None,
    ) -> bool:
        """Set state directly; returns True when the physical presence changed (the BMC must follow)."""
        server = self.server(server_id)
        if present is True and server.product is None:
            raise Conflict(f"bay {server.id} is empty: there is no blade to insert")
        if power is not None and server.product is None:
            raise Conflict(f"bay {server.id} is empty")
        installed_after = server.installed if present is None else present
        if power == "On" and not installed_after:
            raise Conflict(f"server {server.id} is not inserted")
        presence_changed = present is not None and present != server.installed
        if health is not None:
            server.health = health
        if present is False:
            self._reach_off(server)
            server.installed = False
        elif present is True:
            if not server.installed:
                self._reach_off(server)
            server.installed = True
        if power == "On":
            if server.power != "On":
                server.powered_on_by = None  # by hand
                self._reach_on(server)
        elif power == "Off":
            self._reach_off(server)
        return presence_changed

    # --- Redfish eventing (the EventService of each BMC) ---------------------------------------------------

    def event_service(self, server_id: str) -> EventServiceState:
        server = self.server(server_id)
        if server.product is None:
            raise NotFound(f"bay {server.id} is empty: there is no BMC")
        state = self.event_services.get(server.id)
        if state is None:
            state = self.event_services[server.id] = EventServiceState()
        return state

    def add_event_sink(self, sink: EventSink) -> None:
        self._event_sinks.append(sink)

    def remove_event_sink(self, sink: EventSink) -> None:
        if sink in self._event_sinks:
            self._event_sinks.remove(sink)

    def configure_event_service(
        self, server_id: str, enabled: bool | None = None, http_headers: HttpHeaderForm | None = None
    ) -> EventServiceState:
        state = self.event_service(server_id)
        if enabled is not None:
            state.enabled = enabled
        if http_headers is not None:
            state.http_headers = http_headers
        return state

    def add_subscription(self, server_id: str, body: object) -> Subscription:
        """POST /redfish/v1/EventService/Subscriptions: validate like a BMC, refuse non-loopback targets."""
        state = self.event_service(server_id)
        if not isinstance(body, dict):
            raise RedfishBadRequest("The request body must be a JSON object.", "Base.1.4.MalformedJSON")
        missing = [p for p in ("Destination", "Protocol") if p not in body]
        if missing:
            raise RedfishBadRequest(
                f"The create operation requires the properties {', '.join(missing)}.",
                "Base.1.4.CreateFailedMissingReqProperties",
            )
        destination = body["Destination"]
        if not isinstance(destination, str):
            raise RedfishBadRequest("Destination must be a string.", "Base.1.4.PropertyValueTypeError")
        _check_destination(destination)
        protocol = body["Protocol"]
        if protocol not in PROTOCOLS:
            raise RedfishBadRequest(
                f"The value {protocol!r} for the property Protocol is not in the list of acceptable values.",
                "Base.1.4.PropertyValueNotInList",
            )
        context = body.get("Context")
        if context is not None and not isinstance(context, str):
            raise RedfishBadRequest("Context must be a string.", "Base.1.4.PropertyValueTypeError")
        event_types = _string_list(body, "EventTypes", EVENT_TYPES)
        prefixes = _string_list(body, "RegistryPrefixes", REGISTRY_PREFIXES)
        policy = body.get("DeliveryRetryPolicy", "RetryForever")
        if policy not in RETRY_POLICIES:
            raise RedfishBadRequest(
                f"The value {policy!r} for DeliveryRetryPolicy is not in the list of acceptable values.",
                "Base.1.4.PropertyValueNotInList",
            )
        for key in ("SubscriptionType", "EventFormatType"):
            value = body.get(key)
            if value is not None and value not in ("RedfishEvent", "Event"):
                raise RedfishBadRequest(
                    f"The value {value!r} for {key} is not supported.", "Base.1.4.PropertyValueNotInList"
                )
        headers = _http_headers(body.get("HttpHeaders"), state.http_headers)
        sid = str(state.next_subscription)
        state.next_subscription += 1
        sub = Subscription(sid, destination, "Redfish", context, event_types, prefixes, headers, policy)
        state.subscriptions[sid] = sub
        return sub

    def subscription(self, server_id: str, sid: str) -> Subscription:
        try:
            return self.event_service(server_id).subscriptions[sid]
        except KeyError:
            raise NotFound(f"unknown subscription {sid}") from None

    def patch_subscription(self, server_id: str, sid: str, body: object) -> Subscription:
        sub = self.subscription(server_id, sid)
        if not isinstance(body, dict):
            raise RedfishBadRequest("The request body must be a JSON object.", "Base.1.4.MalformedJSON")
        writable = {"Context", "DeliveryRetryPolicy", "HttpHeaders"}
        readonly = sorted(set(body) - writable)
        if readonly:
            raise RedfishBadRequest(
                f"The properties {', '.join(readonly)} cannot be changed.", "Base.1.4.PropertyNotWritable"
            )
        if "Context" in body:
            if body["Context"] is not None and not isinstance(body["Context"], str):
                raise RedfishBadRequest("Context must be a string.", "Base.1.4.PropertyValueTypeError")
            sub.context = body["Context"]
        if "DeliveryRetryPolicy" in body:
            if body["DeliveryRetryPolicy"] not in RETRY_POLICIES:
                raise RedfishBadRequest(
                    "DeliveryRetryPolicy is not in the list of acceptable values.",
                    "Base.1.4.PropertyValueNotInList",
                )
            sub.retry_policy = body["DeliveryRetryPolicy"]
        if "HttpHeaders" in body:
            sub.http_headers = _http_headers(body["HttpHeaders"], self.event_service(server_id).http_headers)
        return sub

    def delete_subscription(self, server_id: str, sid: str) -> Subscription:
        sub = self.subscription(server_id, sid)
        del self.event_service(server_id).subscriptions[sid]
        return sub

    def seed_foreign_subscription(self, server_id: str) -> Subscription:
        """The subscription of another consumer (a different management tool) on this BMC."""
        return self.add_subscription(
            server_id,
            {
                "Destination": FOREIGN_DESTINATION,
                "Protocol": "Redfish",
                "Context": FOREIGN_CONTEXT,
                "EventTypes": ["Alert"],
                "HttpHeaders": [{"Authorization": "Bearer other-consumer-secret"}],
            },
        )

    def raise_event(
        self,
        server_id: str,
        message_id: str,
        *,
        severity: str | None = None,
        message: str | None = None,
        message_args: list[str] | None = None,
        health: Health | None = None,
        event_type: str = "Alert",
        origin: str | None = None,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        """Raise one event on a blade's BMC (optionally setting its health); returns the Event payload.

        The payload goes to every sink (lab.bmc delivers it to the subscriptions and the SSE streams)."""
        server = self.server(server_id)
        state = self.event_service(server.id)
        if not server.installed:
            raise Conflict(f"server {server.id} is not inserted: its BMC is not running")
        if not message_id.strip():
            raise BadRequest("message_id must not be empty")
        if health is not None:
            server.health = health
        seq = state.next_event
        state.next_event += 1
        origin_path = origin or "/redfish/v1/Systems/1"
        key = message_id.rsplit(".", 1)[-1]
        record: dict[str, Any] = {
            "MemberId": "0",
            "EventId": event_id or str(seq),
            "EventType": event_type,
            "EventTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "MessageId": message_id,
            "Message": message if message is not None else f"{key} on {server.enclosure} bay {server.bay}.",
            "MessageArgs": [str(a) for a in (message_args or [])],
            "OriginOfCondition": {"@odata.id": origin_path},
            "Oem": {
                "Hpe": {
                    "@odata.type": "#HpeEvent.v2_1_0.HpeEvent",
                    "Resource": origin_path,
                    "EnclosureName": server.enclosure,
                    "BayNumber": server.bay,
                }
            },
        }
        if severity is not None:
            record["MessageSeverity"] = severity
            record["Severity"] = severity
        payload: dict[str, Any] = {
            "@odata.type": "#Event.v1_7_0.Event",
            "Id": str(seq),
            "Name": "Events",
            "Events": [record],
        }
        state.events.append({"time": time.time(), "id": seq, "event": payload})
        if state.enabled and not self._closed:
            for sink in list(self._event_sinks):
                sink(server, payload)
        return payload

    def record_delivery(self, server_id: str, entry: dict[str, Any]) -> None:
        state = self.event_services.get(server_id)
        if state is not None:
            state.deliveries.append({"time": time.time(), **entry})

    def close(self) -> None:
        """Cancel every pending transition (at shutdown)."""
        self._closed = True
        for server in self.servers.values():
            self._cancel_timer(server)


def _check_destination(destination: str) -> None:
    """The lab delivers only to loopback addresses: http(s)://127.x.y.z|[::1]|localhost[:port]/..."""
    parts = urlsplit(destination)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RedfishBadRequest(
            f"The value {destination!r} for Destination is not an http(s) URL.",
            "Base.1.4.PropertyValueFormatError",
        )
    if not is_loopback_host(parts.hostname):
        raise RedfishBadRequest(
            f"The lab delivers events only to loopback addresses, not to {parts.hostname}.",
            "Base.1.4.PropertyValueFormatError",
        )
    try:
        _ = parts.port
    except ValueError:
        raise RedfishBadRequest(
            f"The value {destination!r} for Destination has an invalid port.",
            "Base.1.4.PropertyValueFormatError",
        ) from None


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _string_list(body: dict[str, Any], key: str, allowed: tuple[str, ...]) -> list[str] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RedfishBadRequest(f"{key} must be an array of strings.", "Base.1.4.PropertyValueTypeError")
    bad = [v for v in value if v not in allowed]
    if bad:
        raise RedfishBadRequest(
            f"The value {bad[0]!r} for the property {key} is not in the list of acceptable values.",
            "Base.1.4.PropertyValueNotInList",
        )
    return list(value)


def _http_headers(value: object, form: HttpHeaderForm) -> dict[str, str]:
    """HttpHeaders as the schema says (an array of {name: value} objects) or as iLO 6 documents it (one
    object); `form` says which shapes this BMC accepts."""
    if value is None:
        return {}
    accepted: tuple[str, ...] = {"any": ("array", "object"), "array": ("array",), "object": ("object",)}.get(
        form, ()
    )
    if isinstance(value, list):
        shape, items = "array", value
    elif isinstance(value, dict):
        shape, items = "object", [value]
    else:
        raise RedfishBadRequest("HttpHeaders must be an array of objects.", "Base.1.4.PropertyValueTypeError")
    if shape not in accepted:
        raise RedfishBadRequest(
            f"HttpHeaders as an {shape} is not supported by this service.",
            "Base.1.4.PropertyValueTypeError" if accepted else "Base.1.4.PropertyUnknown",
        )
    headers: dict[str, str] = {}
    for item in items:
        if not isinstance(item, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in item.items()
        ):
            raise RedfishBadRequest(
                "HttpHeaders entries must map header names to strings.", "Base.1.4.PropertyValueTypeError"
            )
        headers.update(item)
    return headers


def _now() -> float:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


# --- the generator ----------------------------------------------------------------------------------------


def _layout(enclosure: int, group_members: list[int], rng: random.Random) -> list[_Slot | None]:
    """The 16 bays of one enclosure; None marks a bay covered by the blade in the bay before it."""
    front = list(_ODD_FRONT if enclosure % 2 else _EVEN_FRONT)
    if enclosure > 2:
        rng.shuffle(front)
    bays: list[_Slot | None] = [*front, *_SPARES]
    has_odd = any(e % 2 for e in group_members)
    has_even = any(e % 2 == 0 for e in group_members)
    first_odd = next((e for e in group_members if e % 2), None)
    if enclosure % 2 == 0 and has_odd:
        bays += [(I870, "on"), None]
    elif enclosure == first_odd and has_even:
        bays += [(I870, "spare"), None]
    else:
        bays += [(None, "empty"), (None, "empty")]
    return bays


def _serial(rng: random.Random, used: set[str]) -> str:
    alphabet = "0123456789ABCDEFGHJKLMNPRSTUVWXYZ"
    while True:
        s = (
            "CZ"
            + "".join(rng.choice("0123456789") for _ in range(4))
            + "".join(rng.choice(alphabet) for _ in range(4))
        )
        if s not in used:
            used.add(s)
            return s


def generate_world(config: LabConfig) -> World:
    """Build the deterministic world for `config.seed` (layout in lab/API.md)."""
    rng = random.Random(config.seed)
    world = World(config)
    used_serials: set[str] = set()
    n = config.enclosures
    per = config.domains_per_group
    groups = [list(range(start, min(start + per, n + 1))) for start in range(1, n + 1, per)]
    for gi, members in enumerate(groups, start=1):
        group = f"dg{gi}"
        world.domain_groups.append(group)
        for e in members:
            enc, domain = f"enc{e}", f"vcd-enc{e}"
            world.domains[domain] = group
            world.enclosures[enc] = domain
            for bay, slot in enumerate(_layout(e, members, rng), start=1):
                if slot is None:
                    continue
                product, role = slot
                sid = f"{enc}-bay{bay}"
                server = Server(
                    id=sid,
                    enclosure=enc,
                    enclosure_no=e,
                    bay=bay,
                    span=PRODUCTS[product].span if product else 1,
                    domain=domain,
                    domain_group=group,
                    product=product,
                    installed=product is not None,
                    spare=role == "spare",
                    power="On" if role == "on" else "Off",
                    health="OK",
                    serial=_serial(rng, used_serials) if product else "",
                    uuid=str(uuid.UUID(int=rng.getrandbits(128), version=4)) if product else "",
                    bmc_ip=config.bmc_ip(e, bay),
                )
                if role in ("on", "off"):
                    pid = f"prof-{sid}"
                    host = f"host{e}{bay}.lab.example"
                    macs = [f"00:17:A4:77:{e:02X}:{(bay - 1) * 4 + k:02X}" for k in range(2)]
                    wwns = [f"50:06:0B:00:00:C2:{e:02X}:{(bay - 1) * 4 + k:02X}" for k in range(2)]
                    world.profiles[pid] = Profile(pid, sid, host, f"10.{e}.0.{bay}", macs, wwns)
                    server.profile = pid
                    world.hosts[sid] = HostRecord(host, f"10.{e}.0.{bay}")
                    if role == "on":
                        server.booted_identity = pid
                        server.on_since = -math.inf  # booted long ago
                world.servers[sid] = server
    for sid in FOREIGN_SUBSCRIPTION_SERVERS:
        if sid in world.servers and world.servers[sid].product is not None:
            world.seed_foreign_subscription(sid)
    return world
