"""The domain model: domain groups, domains, enclosures, servers, profiles, jobs and steps.

Depends on nothing of ours. Inventory objects are immutable snapshots; the store and the adapters hand
out new ones when the world changes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field


def _parse_enum(cls: type[StrEnum], value: object, default: StrEnum) -> StrEnum:
    """Case-insensitive lookup of a BMC's word; anything unrecognised is `default`. The exact word
    is a dictionary lookup (it is read for every server of every inventory refresh and every poll)."""
    if isinstance(value, str):
        exact = cls._value2member_map_.get(value)
        if exact is not None:
            return exact  # type: ignore[return-value]
        word = value.strip().lower()
        for member in cls:
            if member.value.lower() == word:
                return member
    return default


class PowerState(StrEnum):
    ON = "On"
    OFF = "Off"
    POWERING_ON = "PoweringOn"
    POWERING_OFF = "PoweringOff"
    PAUSED = "Paused"
    UNKNOWN = "Unknown"

    @classmethod
    def parse(cls, value: object) -> PowerState:
        """Lenient: anything unrecognised is UNKNOWN, never OFF."""
        return cls(_parse_enum(cls, value, cls.UNKNOWN))


class Health(StrEnum):
    OK = "OK"
    WARNING = "Warning"
    CRITICAL = "Critical"
    UNKNOWN = "Unknown"

    @classmethod
    def parse(cls, value: object) -> Health:
        return cls(_parse_enum(cls, value, cls.UNKNOWN))


DOMAIN_OK = "ok"


@dataclass(frozen=True, slots=True)
class HostRecord:
    """A host as the management server (Systems Insight Manager role) knows it."""

    name: str
    ip: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "ip": self.ip}


SYSTEMS_PATH = "/redfish/v1/Systems"
"""The Redfish ComputerSystem collection; a BMC system is one of its members."""
_SERVICE_PATHS = frozenset({"", "/redfish", "/redfish/v1"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PLAIN_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([A-Za-z0-9.-]+)(?::([0-9]{1,5}))?/?$")
"""scheme://host[:port] with no path (the common case, checked without urlsplit: inventories of
thousands of servers)."""


def system_member(system: str) -> str:
    """The member Id a `system` names: an Id ("1", a UUID, a name) or a Systems member path
    ("/redfish/v1/Systems/1"); ValueError for anything else (another resource, a full URL)."""
    text = system.strip()
    if not text:
        raise ValueError("system is empty")
    if "://" in text:
        raise ValueError(f"system {system!r}: give the Id or the path /redfish/v1/Systems/ID, not a URL")
    if not text.startswith("/"):
        if "/" in text:
            raise ValueError(f"system {system!r} is not an Id nor a path /redfish/v1/Systems/ID")
        return text
    member = _member_of_path(text)
    if member is None:
        raise ValueError(f"system {system!r} is not a Systems member (/redfish/v1/Systems/ID)")
    return member


def _member_of_path(path: str) -> str | None:
    """"/redfish/v1/Systems/2" (trailing slash allowed) -> "2"; anything else -> None."""
    path = path.rstrip("/")
    prefix = SYSTEMS_PATH + "/"
    if not path.startswith(prefix):
        return None
    member = path[len(prefix):]
    return unquote(member) if member and "/" not in member else None


def origin_member(origin: str | None) -> str | None:
    """The Systems member an OriginOfCondition path lies in: "/redfish/v1/Systems/2/Processors/1" -> "2"
    (None when it names no ComputerSystem, e.g. a Chassis or a Manager)."""
    if not origin:
        return None
    path = origin.strip()
    if "://" in path:
        try:
            path = urlsplit(path).path
        except ValueError:
            return None
    prefix = SYSTEMS_PATH + "/"
    if not path.startswith(prefix):
        return None
    member = path[len(prefix):].split("/", 1)[0].split("?", 1)[0]
    return unquote(member) if member else None


def split_bmc_url(url: str, system: str | None = None) -> tuple[str, str | None]:
    """(base URL, system) of a BMC endpoint as an inventory writes it.

    `https://H:P/redfish/v1/Systems/ID` names the system (returned as that path); `https://H:P`,
    `https://H:P/redfish/v1` name only the service. ValueError when the path is anything else, when
    the URL carries a query or fragment, or when `system` disagrees with the path."""
    text = url.strip()
    if "://" not in text:  # not a URL (the inventory's validation says so); kept for the error there
        if system is not None:
            system_member(system)
        return text.rstrip("/"), system
    plain = _PLAIN_URL.match(text)
    if plain and (plain.group(3) is None or int(plain.group(3)) <= 65535):
        if system is not None:
            system_member(system)
        return text.rstrip("/"), system
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError as exc:
        raise ValueError(f"BMC URL {url!r} is malformed: {exc}") from None
    if not parts.netloc or not parts.hostname:
        raise ValueError(f"BMC URL {url!r} has no host")
    if parts.query or parts.fragment:
        raise ValueError(f"BMC URL {url!r}: no query or fragment allowed")
    base = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    if path in _SERVICE_PATHS:
        if system is not None:
            system_member(system)
        return base, system
    member = _member_of_path(path)
    if member is None:
        raise ValueError(f"BMC URL path {parts.path!r} is not a Systems member (/redfish/v1/Systems/ID); "
                         "give the service (https://HOST:PORT) or one system")
    if system is not None and system_member(system) != member:
        raise ValueError(f"system {system!r} disagrees with the BMC URL's system {member!r}")
    return base, system if system is not None else path


def bmc_service(url: str) -> str:
    """What identifies a BMC service: scheme://host:port, lowercased, the default port dropped
    (`HTTPS://Bmc1:443/redfish/v1` -> `https://bmc1`)."""
    plain = _PLAIN_URL.match(url.strip())
    if plain:
        scheme, host, port_text = plain.group(1).lower(), plain.group(2).lower(), plain.group(3)
        if port_text is None or _DEFAULT_PORTS.get(scheme) == int(port_text):
            return f"{scheme}://{host}"
        return f"{scheme}://{host}:{int(port_text)}"
    try:
        parts = urlsplit(url.strip())
        scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    except ValueError:
        return url.strip().lower()
    if not scheme or not host:
        return url.strip().lower().rstrip("/")
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" if port is None or _DEFAULT_PORTS.get(scheme) == port \
        else f"{scheme}://{host}:{port}"


@dataclass(frozen=True, slots=True)
class BmcEndpoint:
    url: str
    """The service's base URL (`https://HOST:PORT`). Given with a path `/redfish/v1/Systems/ID`, the
    path is moved to `system` (ValueError for any other path, or a `system` that disagrees)."""
    username: str = field(repr=False)
    password: str = field(repr=False)
    verify_tls: bool = True
    ca_file: str | None = None
    system: str | None = None
    """The ComputerSystem to act on (its path or Id). None: the service must list exactly one."""
    auth: str = "basic"
    """"basic" or "session" (Redfish SessionService)."""

    def __post_init__(self) -> None:
        url, system = split_bmc_url(self.url, self.system)
        object.__setattr__(self, "url", url)
        object.__setattr__(self, "system", system)

    @property
    def service(self) -> str:
        """scheme://host:port of the Redfish service (several servers may share one)."""
        return bmc_service(self.url)

    @property
    def system_id(self) -> str | None:
        """The Systems member Id named (None: none named)."""
        return system_member(self.system) if self.system is not None else None


@dataclass(frozen=True, slots=True)
class DomainGroup:
    id: str


@dataclass(frozen=True, slots=True)
class Domain:
    """A Virtual Connect domain. `status` is "ok" or a word naming what is abnormal."""

    id: str
    group: str
    status: str = DOMAIN_OK

    @property
    def normal(self) -> bool:
        return self.status.strip().lower() == DOMAIN_OK


@dataclass(frozen=True, slots=True)
class Enclosure:
    id: str
    domain: str
    bays: int = 16
    management_addresses: tuple[str, ...] = ()
    """The enclosure manager's addresses (HPE Onboard Administrator, Dell CMC / OME-Modular): traps it
    sends about the enclosure or one of its bays resolve to this enclosure."""


@dataclass(frozen=True, slots=True)
class Server:
    """A server blade in a bay (spanning `span` bays from `bay`)."""

    id: str
    domain_group: str
    domain: str
    enclosure: str
    bay: int
    product: str
    span: int = 1
    present: bool = True
    power: PowerState = PowerState.UNKNOWN
    health: Health = Health.UNKNOWN
    profile: str | None = None
    spare: bool = False
    host: HostRecord | None = None
    management_addresses: tuple[str, ...] = ()
    bmc: BmcEndpoint | None = None
    serial: str | None = None
    """Serial number (Dell: the service tag), as traps carry it; checked against the BMC's
    SerialNumber (or SKU) before any power action."""
    uuid: str | None = None
    """The ComputerSystem's UUID; checked against the BMC's before any power action."""
    hardware_type: str | None = None
    """The hardware type the manager binds a profile to (OneView: the server-hardware-type URI, which
    carries the generation); when the source and a candidate both have one, they must be the same: the
    manager refuses a profile on another type, whatever the spare rules say of the generation."""

    @property
    def model(self) -> str:
        info = identify_product(self.product)
        return info.model if info else self.product

    def public(self, active_job: int | None = None) -> dict[str, Any]:
        """The server as the API shows it (no secrets)."""
        return {
            "id": self.id,
            "domain_group": self.domain_group,
            "domain": self.domain,
            "enclosure": self.enclosure,
            "bay": self.bay,
            "span": self.span,
            "product": self.product,
            "model": self.model,
            "present": self.present,
            "power": self.power.value,
            "health": self.health.value,
            "profile": self.profile,
            "spare": self.spare,
            "host": self.host.as_dict() if self.host else None,
            "management_addresses": list(self.management_addresses),
            "serial": self.serial,
            "uuid": self.uuid,
            "bmc": self.bmc.url if self.bmc else None,
            "bmc_system": self.bmc.system if self.bmc else None,
            "active_job": active_job,
        }


@dataclass(frozen=True, slots=True)
class Profile:
    id: str
    server: str | None
    host: HostRecord | None = None


@dataclass(frozen=True, slots=True)
class Inventory:
    groups: dict[str, DomainGroup]
    domains: dict[str, Domain]
    enclosures: dict[str, Enclosure]
    servers: dict[str, Server]
    profiles: dict[str, Profile]

    def in_group(self, group: str) -> list[Server]:
        return [s for s in self.servers.values() if s.domain_group == group]

    def replace_server(self, server: Server) -> Inventory:
        servers = dict(self.servers)
        servers[server.id] = server
        return Inventory(self.groups, self.domains, self.enclosures, servers, self.profiles)


# --- product identification ---------------------------------------------------------------------

ProductFamily = Literal["proliant", "integrity", "poweredge"]

_GENERATION = re.compile(r"\s+(?:G\d+|Gen\s?\d+|i\d)$", re.IGNORECASE)
_INTEGRITY = re.compile(r"\b(BL8[679]0c)\b", re.IGNORECASE)
_PROLIANT = re.compile(r"\b((?:BL|WS)\d{3}c)\b", re.IGNORECASE)
# Dell PowerEdge modular blades: M-series (M1000e, VRTX: M620, M630, M640, M830, ...) and MX-series
# (MX7000: MX740c, MX750c, MX840c, ...). Rack (R), tower (T) and FX (FC) servers are not blades here.
_POWEREDGE = re.compile(r"\b(MX\d{3}c|M\d{3})\b", re.IGNORECASE)
# Integrity blades are built of 1, 2 or 4 conjoined blades; the bays they span are fixed per model.
_INTEGRITY_SPAN = {"BL860C": 1, "BL870C": 2, "BL890C": 4}
# The MX840c is a double-width sled: it spans two adjacent MX7000 slots.
_POWEREDGE_SPAN = {"MX840C": 2}


@dataclass(frozen=True, slots=True)
class ProductInfo:
    family: ProductFamily
    model: str
    """The model with the generation removed: "ProLiant BL465c G1" and "ProLiant BL465c G5" share it."""
    span: int | None
    """Bays the product spans when that is fixed by the model (Integrity, MX840c), else None (from
    inventory)."""


@functools.lru_cache(maxsize=4096)
def identify_product(product: str) -> ProductInfo | None:
    """Identify the product family and generation-free model of a product name, or None.

    Memoized (a pure function of the name, its answer immutable): a datacenter's 10,000 servers carry a
    few dozen product names, and `Server.model` is asked for each server by every spare count (the
    dashboard's, the metrics', the spare check's): ~4 µs of regular expressions a call, 40 ms a pass.

    ProLiant: "ProLiant BL460c Gen8", "HP ProLiant BL465c G7", "BL460c Gen10".
    Integrity: "Integrity BL860c i2", "HP Integrity BL870c i4", "BL890c i2".
    PowerEdge (Dell modular blades): "PowerEdge M640", "Dell PowerEdge MX740c", "poweredge mx750c",
    "MX840c" (family "poweredge", model "PowerEdge MX740c"; Dell names carry no generation suffix; a
    bare "M640" is not identified: M-series names need PowerEdge or Dell).
    """
    name = " ".join(product.split())
    if not name:
        return None
    lower = name.lower()
    base = _GENERATION.sub("", name)
    integrity = _INTEGRITY.search(base)
    if integrity and ("integrity" in lower or "proliant" not in lower):
        key = integrity.group(1).upper()
        return ProductInfo("integrity", f"Integrity {key[:-1]}c", _INTEGRITY_SPAN[key])
    proliant = _PROLIANT.search(base)
    if proliant and "integrity" not in lower and "poweredge" not in lower:
        key = proliant.group(1)
        return ProductInfo("proliant", f"ProLiant {key[:-1].upper()}c", None)
    dell = _POWEREDGE.search(name)
    if dell and ("poweredge" in lower or "dell" in lower or dell.group(1).upper().startswith("MX")):
        key = dell.group(1).upper()
        model = f"{key[:-1]}c" if key.endswith("C") else key
        return ProductInfo("poweredge", f"PowerEdge {model}", _POWEREDGE_SPAN.get(key))
    return None


KNOWN_PRODUCTS = ("ProLiant BLnnnc/WSnnnc (BL460c Gen10), Integrity BL860c/BL870c/BL890c (BL870c i4), "
                  "PowerEdge Mnnn/MXnnnc (M640, MX740c)")


def product_rule_of_thumb(product: str) -> str:
    """Why `product` is not identified, and the rule of thumb identification applies, for check-config."""
    name = " ".join(product.split())
    lower = name.lower()
    if not name:
        why = "the product name is empty"
    elif "proliant" in lower or re.search(r"\b(?:DL|ML|SL|XL|BL)\d", name, re.IGNORECASE):
        why = ("a ProLiant is a blade only as BL<3 digits>c or WS<3 digits>c (DL, ML, SL and XL are rack "
               "or tower servers)")
    elif "integrity" in lower or "superdome" in lower:
        why = "an Integrity blade is a BL860c, BL870c or BL890c (rx and Superdome are not blades)"
    elif "poweredge" in lower or "dell" in lower:
        why = ("a PowerEdge is a blade only as M<3 digits> or MX<3 digits>c (R, T and FC models are not "
               "modular blades)")
    elif _POWEREDGE.search(name):
        why = "an M-series blade needs its maker in the name (PowerEdge M640, Dell M630)"
    else:
        why = "no known blade model in the name"
    return f"{why}; known: {KNOWN_PRODUCTS}"


# --- jobs ---------------------------------------------------------------------------------------


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def active(self) -> bool:
        return self in (JobState.QUEUED, JobState.RUNNING)


class StepState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class StepTimeouts(Protocol):
    """What a step's default time limit is computed from (monitor.core.config.FailoverConfig)."""

    power_off_timeout: float
    power_off_attempts: int
    power_on_timeout: float
    move_task_timeout: float


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One step of the failover flow: the flow's method of the same name runs it."""

    name: str
    timeout: Callable[[StepTimeouts], float]
    """The default time limit (failover.step_timeouts overrides it)."""
    compensation: str | None = None
    """The flow's method that undoes what the step did when it fails part-way (any failure: its own
    error, a timeout, an adapter error), or None: nothing to undo (fencing is final; a profile on the
    spare stays there)."""
    always: bool = False
    """Runs at the end of every job whose `lock_group` ran, also after a failure (unlock_group)."""
    acts: bool = True
    """Changes something outside (power, profile, spare flag, host record, lock, timer)."""


_MINUTES_2 = 120.0

STEP_TABLE: tuple[StepSpec, ...] = (
    StepSpec("check_domain", lambda _t: _MINUTES_2, acts=False),
    StepSpec("lock_group", lambda _t: 24 * 3600.0),  # waiting for the jobs ahead in the group
    StepSpec("check_product", lambda _t: _MINUTES_2, acts=False),
    StepSpec("power_off_source", lambda t: t.power_off_timeout * t.power_off_attempts + 60.0),
    StepSpec("select_spare", lambda _t: _MINUTES_2, acts=False),
    # A manager's move task (OneView, OME) runs for minutes: the step follows it up to its own limit.
    StepSpec("move_profile", lambda t: t.move_task_timeout + _MINUTES_2, compensation="undo_move"),
    StepSpec("power_on_spare", lambda t: t.power_on_timeout + 60.0),
    StepSpec("schedule_rediscovery", lambda _t: _MINUTES_2),
    StepSpec("unlock_group", lambda _t: _MINUTES_2, always=True),
)
"""The steps, in the contract's order, with everything the runner needs to know about each."""

STEPS: tuple[str, ...] = tuple(s.name for s in STEP_TABLE)
STEP_SPECS: dict[str, StepSpec] = {s.name: s for s in STEP_TABLE}


# --- what a job remembers across a crash ------------------------------------------------------------


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class PowerOffRecord(_Record):
    before: str = ""
    """The source's power as first read ("On", "Off", "unknown (...)")."""
    attempt: int = 0
    """ForceOff requests announced so far."""
    confirmed: bool = False
    levels: list[str] = []
    """What each fence level said, in order."""


class MoveRecord(_Record):
    """The sub-steps of move_profile, each written ahead of its action."""

    spare_clearing: bool = False
    """The spare flag's removal was announced (it may have happened)."""
    spare_cleared: bool = False
    host_before: dict[str, str] | None = None
    """The source's host record as read before its removal was announced (restored on undo)."""
    host_removing: bool = False
    """The host record's removal was announced (it may have happened)."""
    host_removed: bool = False
    moving: bool = False
    """The profile's move was announced (it may have happened: read where the profile is)."""
    intent: str | None = None
    """A manager with move tasks (ports.TaskedMoves): the id of the move request, written ahead of it
    (a new owner asks the manager for the task that request started)."""
    task: str | None = None
    """The manager's task of the move, written as soon as the request returned it: a new owner follows
    it and never sends the move again."""
    moved: bool = False
    undone: bool = False


class FlowContext(_Record):
    """Write-ahead facts the flow needs to resume: intents, and what this run changed. Stored with the
    job (`Job.context`); unknown keys of older rows are ignored."""

    domain: str | None = None
    locked: bool = False
    family: str | None = None
    model: str | None = None
    span: int | None = None
    health_check: str | None = None
    """The BMC's health reading before fencing (rule-triggered jobs), as recorded."""
    power_off: PowerOffRecord | None = None
    spare: str | None = None
    move: MoveRecord = Field(default_factory=MoveRecord)
    power_on_announced: bool = False
    compensating: str | None = None
    """The failed step whose compensation is still to run (set with the failure, before it runs)."""


@dataclass(slots=True)
class Step:
    step: str
    state: StepState = StepState.PENDING
    started: datetime | None = None
    finished: datetime | None = None
    detail: str = ""


@dataclass(slots=True)
class Job:
    id: int
    server: str
    group: str
    state: JobState
    trigger: dict[str, Any]
    created: datetime
    steps: list[Step]
    profile: str | None = None
    spare: str | None = None
    error: str | None = None
    finished: datetime | None = None
    context: FlowContext = field(default_factory=FlowContext)
    """Write-ahead facts the flow needs to resume: intents, what this run changed."""
    notes: list[str] = field(default_factory=list)
    rediscovery: dict[str, Any] | None = None
    owner: str | None = None
    """The monitor (instance) running the job; another adopts it when this one's lease runs out."""
    epoch: int = 0
    """Grows by one at every change of owner: the fencing token every action of the job carries. A save
    or an action under an older epoch is refused."""
    owner_token: str | None = None
    """The owning process's incarnation (one per start; a restart under the same name is a new owner)."""
    owners: list[dict[str, Any]] = field(default_factory=list)
    """The ownership history: {"epoch", "owner", "since"} (the store's clock), oldest first."""

    @classmethod
    def queued(cls, job_id: int, server: str, group: str, trigger: dict[str, Any], created: datetime,
               owner: str | None, token: str | None = None, since: float | None = None) -> Job:
        """A job as it is just created: queued, every step pending, epoch 1 of `owner`."""
        owners = [{"epoch": 1, "owner": owner, "since": iso(datetime.fromtimestamp(since, UTC))}] \
            if since is not None else []
        return cls(id=job_id, server=server, group=group, state=JobState.QUEUED, trigger=trigger,
                   created=created, steps=[Step(name) for name in STEPS], owner=owner, epoch=1,
                   owner_token=token, owners=owners)

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.step == name:
                return s
        raise KeyError(name)

    def public(self) -> dict[str, Any]:
        return {
            "job": self.id,
            "server": self.server,
            "domain_group": self.group,
            "state": self.state.value,
            "trigger": self.trigger,
            "profile": self.profile,
            "spare": self.spare,
            "steps": [
                {
                    "step": s.step,
                    "state": s.state.value,
                    "started": iso(s.started),
                    "finished": iso(s.finished),
                    "detail": s.detail,
                }
                for s in self.steps
            ],
            "error": self.error,
            "created": iso(self.created),
            "finished": iso(self.finished),
            "rediscovery": self.rediscovery,
            "notes": list(self.notes),
            "owner": self.owner,
            "epoch": self.epoch,
            "owners": list(self.owners),
        }


def iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
