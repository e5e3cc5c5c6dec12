"""The static inventory file: domain groups → domains → enclosures → servers, with BMC endpoints.

```yaml
domain_groups:
  - id: dg1
    domains:
      - id: vcd-enc1
        status: ok
        enclosures:
          - id: enc1
            management_addresses: [10.0.1.200]   # the Onboard Administrator (or Dell CMC)
            servers:
              - bay: 1
                product: ProLiant BL460c Gen8
                profile: web01
                host: {name: web01.example.com, ip: 10.0.0.1}
                bmc: {url: "https://10.1.0.1", username: admin, password: "${BMC_PASSWORD}"}
              - {bay: 9, product: ProLiant BL460c Gen9, spare: true}
```
Server ids default to `{enclosure}-bay{bay}`. `bmc_defaults` (username, password, verify_tls, ca_file,
auth) apply to every `bmc`, which may then be just its URL: `bmc: https://10.1.0.9`. A `.json` file is
read as JSON (faster for generated inventories of thousands of servers).

The BMC system: `url: https://HOST:PORT/redfish/v1/Systems/ID` or `system: ID` (or both, agreeing)
names the ComputerSystem; a URL path that is not a Systems member is an error. Several servers on one
BMC service (scheme, host and port) must each name their system, and no two servers may name the same
one. `serial` and `uuid` (optional) are checked against the BMC's ComputerSystem before every power
action; two servers with the same serial or UUID are an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from monitor.core.errors import ConfigError, ConfigIssue
from monitor.core.model import (
    BmcEndpoint,
    Domain,
    DomainGroup,
    Enclosure,
    HostRecord,
    Inventory,
    Profile,
    Server,
    bmc_service,
    identify_product,
    product_rule_of_thumb,
    split_bmc_url,
    system_member,
)
from monitor.core.yamlfile import Document, field_path, load_document, validate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HostSpec(_Strict):
    name: str
    ip: str


class BmcDefaults(_Strict):
    """What every BMC entry inherits unless it says otherwise."""

    username: str | None = None
    password: SecretStr | None = None
    verify_tls: bool = True
    ca_file: str | None = None
    auth: Literal["basic", "session"] = "basic"


class BmcSpec(_Strict):
    url: Annotated[str, Field(pattern=r"^https?://")]
    username: str | None = None
    password: SecretStr | None = None
    verify_tls: bool | None = None
    ca_file: str | None = None
    system: str | None = None
    auth: Literal["basic", "session"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _url_alone(cls, value: object) -> object:
        return {"url": value} if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _url_path(cls, value: str) -> str:
        split_bmc_url(value)  # the path: none, the service root, or one Systems member
        return value

    @field_validator("system")
    @classmethod
    def _system_agrees(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        system_member(value)
        url = info.data.get("url")
        if isinstance(url, str):
            split_bmc_url(url, value)  # disagreeing with the URL's path is an error
        return value


class ServerSpec(_Strict):
    id: str | None = None
    bay: Annotated[int, Field(ge=1, le=16)]
    product: str
    span: Annotated[int, Field(ge=1, le=4)] = 1
    present: bool = True
    profile: str | None = None
    spare: bool = False
    host: HostSpec | None = None
    management_addresses: list[str] = []
    bmc: BmcSpec | None = None
    serial: str | None = None
    uuid: str | None = None


class EnclosureSpec(_Strict):
    id: str
    bays: Annotated[int, Field(ge=1, le=16)] = 16
    management_addresses: list[str] = []
    """The enclosure manager's addresses (Onboard Administrator, Dell CMC): its traps resolve here."""
    servers: list[ServerSpec] = []


class DomainSpec(_Strict):
    id: str
    status: str = "ok"
    enclosures: list[EnclosureSpec]


class GroupSpec(_Strict):
    id: str
    domains: list[DomainSpec]


class InventoryFile(_Strict):
    bmc_defaults: BmcDefaults = BmcDefaults()
    domain_groups: list[GroupSpec]

    @model_validator(mode="after")
    def _unique(self) -> InventoryFile:
        seen_ids: set[str] = set()
        seen_profiles: set[str] = set()
        for g in self.domain_groups:
            for d in g.domains:
                for e in d.enclosures:
                    bays: set[int] = set()
                    for s in e.servers:
                        sid = s.id or f"{e.id}-bay{s.bay}"
                        if sid in seen_ids:
                            raise ValueError(f"server id {sid} appears twice")
                        seen_ids.add(sid)
                        covered = set(range(s.bay, s.bay + s.span))
                        if covered & bays:
                            raise ValueError(f"{e.id}: bay {s.bay} overlaps another server")
                        bays |= covered
                        if s.bmc and (s.bmc.username or self.bmc_defaults.username) is None:
                            raise ValueError(f"{sid}: bmc has no username (and bmc_defaults none)")
                        if s.bmc and (s.bmc.password or self.bmc_defaults.password) is None:
                            raise ValueError(f"{sid}: bmc has no password (and bmc_defaults none)")
                        if s.profile:
                            if s.profile in seen_profiles:
                                raise ValueError(f"profile {s.profile} is assigned to two servers")
                            seen_profiles.add(s.profile)
        return self


def load_inventory_file(path: Path) -> Inventory:
    """Load, validate and check a static inventory; every problem reported as FILE:LINE: field: message."""
    inventory, _warnings = check_inventory_file(path)
    return inventory


def check_inventory_file(path: Path) -> tuple[Inventory, list[ConfigIssue]]:
    """Load a static inventory (ConfigError on errors) and list its warnings: servers whose product is
    not identified load (a failover of them exits at check_product, as the white paper says), but
    check-config names them."""
    if not path.exists():
        raise ConfigError([ConfigIssue(str(path), 1, "inventory.file",
                                       "no such file: the static inventory that the config's "
                                       "inventory.file names (relative to the config file's folder)")])
    doc = load_document(path)
    spec = validate(InventoryFile, doc)
    issues: list[ConfigIssue] = []
    warnings: list[ConfigIssue] = []
    for gi, g in enumerate(spec.domain_groups):
        for di, d in enumerate(g.domains):
            for ei, e in enumerate(d.enclosures):
                for si, s in enumerate(e.servers):
                    loc: tuple[int | str, ...] = (
                        "domain_groups", gi, "domains", di, "enclosures", ei, "servers", si, "product")
                    if identify_product(s.product) is None:
                        warnings.append(ConfigIssue(
                            str(path), doc.line(loc), field_path(loc),
                            f"warning: product {s.product!r} is not identified: "
                            f"{product_rule_of_thumb(s.product)} (a failover of it exits at "
                            "check_product)"))
                    if s.bay + s.span - 1 > e.bays:
                        issues.append(ConfigIssue(
                            str(path), doc.line((*loc[:-1], "span")), field_path((*loc[:-1], "span")),
                            f"bays {s.bay}-{s.bay + s.span - 1} exceed the enclosure's {e.bays} bays"))
    issues += _identity_issues(spec, doc, str(path))
    if issues:
        raise ConfigError(issues)
    return to_inventory(spec), warnings


def _identity_issues(spec: InventoryFile, doc: Document, file: str) -> list[ConfigIssue]:
    """Each server names one machine: BMC services several servers share name every server's system,
    no (service, system) twice, no serial or UUID twice."""
    issues: list[ConfigIssue] = []
    on_service: dict[str, list[tuple[tuple[int | str, ...], str, str | None]]] = {}
    seen: dict[tuple[str, str, str], str] = {}
    for loc, sid, s in _servers(spec):
        for what, value in (("serial", s.serial), ("uuid", s.uuid)):
            if value is None or not value.strip():
                continue
            key = (what, "", value.strip().strip("{}").casefold())
            if key in seen:
                issues.append(ConfigIssue(file, doc.line((*loc, what)), field_path((*loc, what)),
                                          f"{what} {value!r} is also {seen[key]}'s: two servers cannot be "
                                          "one machine"))
            else:
                seen[key] = sid
        if s.bmc is None:
            continue
        _, system = split_bmc_url(s.bmc.url, s.bmc.system)
        member = system_member(system) if system is not None else None
        service = bmc_service(s.bmc.url)
        on_service.setdefault(service, []).append(((*loc, "bmc"), sid, member))
        if member is not None:
            key = ("system", service, member.casefold())
            if key in seen:
                issues.append(ConfigIssue(
                    file, doc.line((*loc, "bmc")), field_path((*loc, "bmc")),
                    f"BMC system {member!r} of {service} is also {seen[key]}'s: two servers cannot be one "
                    "machine"))
            else:
                seen[key] = sid
    for service, entries in on_service.items():
        if len(entries) < 2:
            continue
        names = ", ".join(sid for _, sid, _ in entries[:6]) + (" …" if len(entries) > 6 else "")
        for loc, sid, member in entries:
            if member is None:
                issues.append(ConfigIssue(
                    file, doc.line(loc), field_path(loc),
                    f"{service} serves {len(entries)} servers of this inventory ({names}): name the system "
                    f"of {sid} (url: {service}/redfish/v1/Systems/ID, or system: ID)"))
    return issues


def _servers(spec: InventoryFile) -> list[tuple[tuple[int | str, ...], str, ServerSpec]]:
    """(location, id, spec) of every server, in file order."""
    out: list[tuple[tuple[int | str, ...], str, ServerSpec]] = []
    for gi, g in enumerate(spec.domain_groups):
        for di, d in enumerate(g.domains):
            for ei, e in enumerate(d.enclosures):
                for si, s in enumerate(e.servers):
                    loc: tuple[int | str, ...] = (
                        "domain_groups", gi, "domains", di, "enclosures", ei, "servers", si)
                    out.append((loc, s.id or f"{e.id}-bay{s.bay}", s))
    return out


def to_inventory(spec: InventoryFile) -> Inventory:
    groups: dict[str, DomainGroup] = {}
    domains: dict[str, Domain] = {}
    enclosures: dict[str, Enclosure] = {}
    servers: dict[str, Server] = {}
    profiles: dict[str, Profile] = {}
    for g in spec.domain_groups:
        groups[g.id] = DomainGroup(g.id)
        for d in g.domains:
            domains[d.id] = Domain(d.id, g.id, d.status)
            for e in d.enclosures:
                enclosures[e.id] = Enclosure(e.id, d.id, e.bays, tuple(e.management_addresses))
                for s in e.servers:
                    sid = s.id or f"{e.id}-bay{s.bay}"
                    host = HostRecord(s.host.name, s.host.ip) if s.host else None
                    bmc = None
                    if s.bmc:
                        dflt = spec.bmc_defaults
                        password = s.bmc.password or dflt.password
                        bmc = BmcEndpoint(
                            url=s.bmc.url, username=s.bmc.username or dflt.username or "",
                            password=password.get_secret_value() if password else "",
                            verify_tls=dflt.verify_tls if s.bmc.verify_tls is None else s.bmc.verify_tls,
                            ca_file=s.bmc.ca_file or dflt.ca_file, system=s.bmc.system,
                            auth=s.bmc.auth or dflt.auth)
                    addresses = tuple(s.management_addresses)
                    servers[sid] = Server(
                        id=sid, domain_group=g.id, domain=d.id, enclosure=e.id, bay=s.bay,
                        product=s.product, span=s.span, present=s.present, profile=s.profile,
                        spare=s.spare, host=host, management_addresses=addresses, bmc=bmc,
                        serial=s.serial, uuid=s.uuid)
                    if s.profile:
                        profiles[s.profile] = Profile(s.profile, sid, host)
    return Inventory(groups, domains, enclosures, servers, profiles)
