"""Server resolution: which server an event is about.

Identifying fields win over the sender's address, because enclosure managers (Onboard Administrator)
send traps about blades from their own address:
1. HPE Onboard Administrator traps: enclosure name + bay position varbinds (cpqRackServerBlade…), or
   the OA's own address (an enclosure's `management_addresses`) + the bay position varbind;
2. Dell iDRAC: service tag (alertSystemServiceTag), then FQDN (alertSystemFQDN);
3. serial number varbinds;
4. Redfish events from a known BMC service (`attributes.bmc_service`, set by the push listener and the
   SSE follower): the one server on that service; on a service several inventory servers share, the
   server whose system the event's OriginOfCondition lies in (`/redfish/v1/Systems/2/Processors/1`
   names system 2; matched against the server's BMC system or its UUID);
5. the sender address (UDP source, BMC address) among the servers' management, BMC and host addresses;
6. the SNMPv1 agent address;
7. sysName.0 as a host name (the OS's name, as the management server knows it);
8. the server the event names itself (the health poller's, a recorded event's).

An address several servers share (one BMC service for several systems, an enclosure manager) names
none of them: such an event resolves only by an identifying field, an OriginOfCondition, or a later step
that picks one of those servers. An OriginOfCondition naming a ComputerSystem that no candidate is never
attributed to one. Events that resolve to nothing keep `server: null`: they are kept, counted by reason
(`Resolution.reason`) and never fail anything over.

The enclosure an event is about (`Resolver.enclosure`): the resolved server's; else the enclosure an OA
trap names (cpqRackCommonEnclosureName, cpqRackPowerSupplyEnclosureName, …, equal to an enclosure id);
else the enclosure whose manager sent it. An enclosure-wide trap (a failed OA power supply or fan) thus
marks its enclosure faulted although it names no bay.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from monitor.core.events import BMC_SERVICE_ATTRIBUTE, Event
from monitor.core.model import Inventory, Server, bmc_service, origin_member

SYS_NAME = "1.3.6.1.2.1.1.5.0"
OA_ENCLOSURE_NAME = "1.3.6.1.4.1.232.22.2.4.1.1.1.5."
OA_BLADE_POSITION = "1.3.6.1.4.1.232.22.2.4.1.1.1.8."
OA_BLADE_SERIAL = "1.3.6.1.4.1.232.22.2.4.1.1.1.16."
HPE_SERVER_SERIAL = "1.3.6.1.4.1.232.2.2.2.1.0"
IDRAC_SERVICE_TAG = "1.3.6.1.4.1.674.10892.5.3.1.4.0"
IDRAC_FQDN = "1.3.6.1.4.1.674.10892.5.3.1.5.0"
OA_ENCLOSURE_NAMES = (
    OA_ENCLOSURE_NAME,  # cpqRackServerBladeEnclosureName
    "1.3.6.1.4.1.232.22.2.3.1.1.1.9.",  # cpqRackCommonEnclosureName (enclosure temp, fan, fuse traps)
    "1.3.6.1.4.1.232.22.2.5.1.1.1.4.",  # cpqRackPowerSupplyEnclosureName (22013 power supply failed)
    "1.3.6.1.4.1.232.22.2.3.3.1.1.3.",  # cpqRackPowerEnclosureName (22018 power not redundant)
    "1.3.6.1.4.1.232.22.2.6.1.1.1.4.",  # cpqRackNetConnectorEnclosureName (22046 interconnect failed)
)
"""CPQRACK-MIB varbinds naming the enclosure of an Onboard Administrator trap."""

NO_MATCH = "no_match"
AMBIGUOUS_SENDER = "ambiguous_sender"
AMBIGUOUS_ORIGIN = "ambiguous_origin"
UNKNOWN_SYSTEM = "unknown_system"
NO_INVENTORY = "no_inventory"


@dataclass(frozen=True, slots=True)
class Resolution:
    server: str | None
    how: str
    """How it was resolved, or why not (a sentence)."""
    reason: str | None = None
    """Unresolved: `no_match`, `ambiguous_sender` (an address several servers share, nothing else names
    one of them), `ambiguous_origin` (a BMC service several servers share, and the OriginOfCondition
    names none of their systems), `unknown_system` (the OriginOfCondition names a system that is not
    the inventory's)."""


def _host_of(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _by_prefix(varbinds: dict[str, str], prefix: str) -> str | None:
    for oid, value in varbinds.items():
        if oid.startswith(prefix) and value:
            return value
    return None


def _uuid_key(value: str) -> str:
    text = value.strip().strip("{}").strip()
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return text.casefold()


def _names_system(server: Server, member: str) -> bool:
    """Whether the Systems member Id `member` is the server's system: its BMC system (or UUID) when it
    names one; a BMC naming none serves only that system."""
    bmc = server.bmc
    if bmc is None:
        return False
    if bmc.system is None:
        return True
    try:
        named = bmc.system_id
    except ValueError:
        named = None
    if named is not None and named.casefold() == member.casefold():
        return True
    return server.uuid is not None and _uuid_key(server.uuid) == _uuid_key(member)


def _ids(servers: Iterable[Server]) -> str:
    names = sorted(s.id for s in servers)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


class Resolver:
    """An index of the inventory for resolution; rebuilt when the inventory changes."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        # Addresses in three tiers (a management address before a BMC host before a host's IP); within
        # the first tier that knows an address, several servers make it ambiguous.
        self._addresses: tuple[dict[str, set[str]], ...] = ({}, {}, {})
        self.by_host: dict[str, str] = {}
        self._serials: dict[str, set[str]] = {}
        self.by_bay: dict[tuple[str, int], str] = {}
        self.by_service: dict[str, list[Server]] = {}
        self.enclosure_by_address: dict[str, str] = {}
        self.enclosure_by_name: dict[str, str] = {}
        self.group_sizes: dict[str, int] = {}
        """Servers per domain group (what the storm guard weighs a group's failures against)."""
        for e in inventory.enclosures.values():
            self.enclosure_by_name[e.id.lower()] = e.id
            for addr in e.management_addresses:
                self.enclosure_by_address[addr] = e.id
        for s in inventory.servers.values():
            self.group_sizes[s.domain_group] = self.group_sizes.get(s.domain_group, 0) + 1
            for addr in s.management_addresses:
                self._addresses[0].setdefault(addr, set()).add(s.id)
            if s.bmc:
                if host := _host_of(s.bmc.url):
                    self._addresses[1].setdefault(host, set()).add(s.id)
                self.by_service.setdefault(bmc_service(s.bmc.url), []).append(s)
            if s.host:
                self.by_host[s.host.name.lower()] = s.id
                self.by_host.setdefault(s.host.name.split(".")[0].lower(), s.id)
                self._addresses[2].setdefault(s.host.ip, set()).add(s.id)
            if s.serial:
                self._serials.setdefault(s.serial.strip().upper(), set()).add(s.id)
            for bay in range(s.bay, s.bay + s.span):
                self.by_bay[(s.enclosure.lower(), bay)] = s.id

    def server(self, sid: str | None) -> Server | None:
        return self.inventory.servers.get(sid) if sid else None

    def _serial(self, value: str) -> str | None:
        found = self._serials.get(value.strip().upper(), set())
        return next(iter(found)) if len(found) == 1 else None

    def _address(self, addr: str) -> set[str]:
        for tier in self._addresses:
            if addr in tier:
                return tier[addr]
        return set()

    def resolve(self, event: Event) -> tuple[str | None, str]:
        """(server id or None, how it was resolved)."""
        r = self.attribute(event)
        return r.server, r.how

    def attribute(self, event: Event) -> Resolution:
        vb = event.varbinds
        if vb:
            enclosure = _by_prefix(vb, OA_ENCLOSURE_NAME)
            position = _by_prefix(vb, OA_BLADE_POSITION)
            if enclosure and position and position.strip().isdigit():
                sid = self.by_bay.get((enclosure.strip().lower(), int(position)))
                if sid:
                    return Resolution(sid, f"enclosure {enclosure} bay {position}")
            manager = self.enclosure_by_address.get(event.sender or "")
            if manager and position and position.strip().isdigit():
                sid = self.by_bay.get((manager.lower(), int(position)))
                if sid:
                    return Resolution(sid, f"enclosure manager of {manager} ({event.sender}) bay {position}")
            for oid, what in ((IDRAC_SERVICE_TAG, "service tag"), (HPE_SERVER_SERIAL, "serial number")):
                tag = vb.get(oid)
                if tag and (sid := self._serial(tag)):
                    return Resolution(sid, f"{what} {tag}")
            serial = _by_prefix(vb, OA_BLADE_SERIAL)
            if serial and (sid := self._serial(serial)):
                return Resolution(sid, f"blade serial {serial}")
            fqdn = vb.get(IDRAC_FQDN)
            if fqdn and (sid := self.by_host.get(fqdn.strip().lower())):
                return Resolution(sid, f"FQDN {fqdn}")
        service = event.attributes.get(BMC_SERVICE_ATTRIBUTE)
        if isinstance(service, str) and (on_service := self.by_service.get(bmc_service(service))):
            return self._on_service(event, service, on_service)
        # From here on, an ambiguous address leaves only its servers as candidates.
        candidates: set[str] | None = None
        ambiguity = ""
        if event.sender and (found := self._address(event.sender)):
            if len(found) == 1:
                return self._checked(event, next(iter(found)), f"sender {event.sender}")
            servers = [self.inventory.servers[sid] for sid in found]
            if (by_origin := self._origin_match(servers, event.origin)) is not None:
                return by_origin
            candidates, ambiguity = found, f"sender {event.sender} is shared by {_ids(servers)}"
        agent = event.attributes.get("agent_address")
        if isinstance(agent, str) and (found := self._address(agent)):
            if candidates is not None:
                found = found & candidates
            if len(found) == 1:
                return self._checked(event, next(iter(found)), f"agent address {agent}")
        name = vb.get(SYS_NAME) if vb else None
        if name and (sid := self.by_host.get(name.strip().lower()) or
                     self.by_host.get(name.strip().split(".")[0].lower())) and (
                candidates is None or sid in candidates):
            return Resolution(sid, f"sysName {name}")
        if event.server and event.server in self.inventory.servers and (
                candidates is None or event.server in candidates):
            return Resolution(event.server, "named in the event")
        if candidates is not None:
            return Resolution(None, f"{ambiguity}; nothing in the event names one of them",
                              AMBIGUOUS_SENDER)
        return Resolution(None, "no server matched the sender or identifying fields", NO_MATCH)

    def _on_service(self, event: Event, service: str, servers: list[Server]) -> Resolution:
        """A Redfish event from a known BMC service: its one server, or the one its origin names."""
        by_origin = self._origin_match(servers, event.origin)
        if by_origin is not None:
            return by_origin
        if len(servers) == 1:
            return Resolution(servers[0].id, f"BMC {service}")
        if event.server and event.server in {s.id for s in servers}:
            return Resolution(event.server, "named in the event")
        origin = f"OriginOfCondition {event.origin}" if event.origin else "no OriginOfCondition"
        return Resolution(None, f"{service} serves {_ids(servers)}; {origin} names none of their systems",
                          AMBIGUOUS_ORIGIN)

    def _origin_match(self, servers: list[Server], origin: str | None) -> Resolution | None:
        """The server among `servers` whose system the origin lies in; an unresolved Resolution when
        the origin names a system none of them is; None when the origin names no system."""
        member = origin_member(origin)
        if member is None:
            return None
        matches = [s for s in servers if _names_system(s, member)]
        if len(matches) == 1:
            return Resolution(matches[0].id, f"OriginOfCondition {origin}")
        if matches:
            return Resolution(None, f"OriginOfCondition {origin} names the system of {_ids(matches)}",
                              AMBIGUOUS_ORIGIN)
        return Resolution(None, f"OriginOfCondition {origin} names system {member!r}, which is not "
                          f"that of {_ids(servers)}", UNKNOWN_SYSTEM)

    def _checked(self, event: Event, sid: str, how: str) -> Resolution:
        """A server found by address, unless the event's origin names another system."""
        server = self.inventory.servers[sid]
        if server.bmc is not None and (by_origin := self._origin_match([server], event.origin)) is not None:
            return by_origin if by_origin.server is None else Resolution(sid, how)
        return Resolution(sid, how)

    def enclosure(self, event: Event, sid: str | None) -> tuple[str | None, str]:
        """(enclosure id or None, how): the server's; else the OA trap's enclosure name; else the
        enclosure whose manager sent the event."""
        server = self.server(sid)
        if server is not None:
            return server.enclosure, f"server {server.id}"
        for prefix in OA_ENCLOSURE_NAMES:
            name = _by_prefix(event.varbinds, prefix) if event.varbinds else None
            if name and (eid := self.enclosure_by_name.get(name.strip().lower())):
                return eid, f"enclosure name {name}"
        if event.sender and (eid := self.enclosure_by_address.get(event.sender)):
            return eid, f"enclosure manager {event.sender}"
        return None, "no enclosure matched"
