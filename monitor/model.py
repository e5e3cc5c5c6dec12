"""The domain model: domain groups, domains, enclosures, servers, profiles, jobs and steps.

Depends on nothing of ours. Inventory objects are immutable snapshots; the store and the adapters hand
out new ones when the world changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal


def _parse_enum(cls: type[StrEnum], value: object, default: StrEnum) -> StrEnum:
    """Case-insensitive lookup of a BMC's word; anything unrecognised is `default`."""
    if isinstance(value, str):
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


@dataclass(frozen=True, slots=True)
class BmcEndpoint:
    url: str
    username: str = field(repr=False)
    password: str = field(repr=False)
    verify_tls: bool = True
    ca_file: str | None = None
    system: str | None = None
    """The ComputerSystem to act on (its path or Id); None: the service's only (first) system."""
    auth: str = "basic"
    """"basic" or "session" (Redfish SessionService)."""


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
    """Serial number (Dell: the service tag), as traps carry it."""

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
            "bmc": self.bmc.url if self.bmc else None,
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


def identify_product(product: str) -> ProductInfo | None:
    """Identify the product family and generation-free model of a product name, or None.

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


STEPS: tuple[str, ...] = (
    "check_domain",
    "lock_group",
    "check_product",
    "power_off_source",
    "select_spare",
    "move_profile",
    "power_on_spare",
    "schedule_rediscovery",
    "unlock_group",
)


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
    context: dict[str, Any] = field(default_factory=dict)
    """Write-ahead facts the flow needs to resume: intents, what this run changed."""
    notes: list[str] = field(default_factory=list)
    rediscovery: dict[str, Any] | None = None
    owner: str | None = None
    """The monitor (instance) running the job; another adopts it when this one's lease runs out."""

    @classmethod
    def queued(cls, job_id: int, server: str, group: str, trigger: dict[str, Any], created: datetime,
               owner: str | None) -> Job:
        """A job as it is just created: queued, every step pending."""
        return cls(id=job_id, server=server, group=group, state=JobState.QUEUED, trigger=trigger,
                   created=created, steps=[Step(name) for name in STEPS], owner=owner)

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
        }


def iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
