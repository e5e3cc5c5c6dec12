"""Server resolution: which server an event is about.

Identifying fields win over the sender's address, because enclosure managers (Onboard Administrator)
send traps about blades from their own address:
1. HPE Onboard Administrator traps: enclosure name + bay position varbinds (cpqRackServerBlade…), or
   the OA's own address (an enclosure's `management_addresses`) + the bay position varbind;
2. Dell iDRAC: service tag (alertSystemServiceTag), then FQDN (alertSystemFQDN);
3. serial number varbinds;
4. the sender address (UDP source, BMC address) among the servers' management and BMC addresses;
5. the SNMPv1 agent address;
6. sysName.0 as a host name (the OS's name, as the management server knows it).
Events that resolve to nothing keep `server: null`: they are kept, counted and never fail anything over.

The enclosure an event is about (`Resolver.enclosure`): the resolved server's; else the enclosure an OA
trap names (cpqRackCommonEnclosureName, cpqRackPowerSupplyEnclosureName, …, equal to an enclosure id);
else the enclosure whose manager sent it. An enclosure-wide trap (a failed OA power supply or fan) thus
marks its enclosure faulted although it names no bay.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from monitor.events import Event
from monitor.model import Inventory, Server

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


class Resolver:
    """An index of the inventory for resolution; rebuilt when the inventory changes."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.by_address: dict[str, str] = {}
        self.by_host: dict[str, str] = {}
        self.by_serial: dict[str, str] = {}
        self.by_bay: dict[tuple[str, int], str] = {}
        self.enclosure_by_address: dict[str, str] = {}
        self.enclosure_by_name: dict[str, str] = {}
        for e in inventory.enclosures.values():
            self.enclosure_by_name[e.id.lower()] = e.id
            for addr in e.management_addresses:
                self.enclosure_by_address[addr] = e.id
        for s in inventory.servers.values():
            for addr in s.management_addresses:
                self.by_address[addr] = s.id
            if s.bmc and (host := _host_of(s.bmc.url)):
                self.by_address.setdefault(host, s.id)
            if s.host:
                self.by_host[s.host.name.lower()] = s.id
                self.by_host.setdefault(s.host.name.split(".")[0].lower(), s.id)
                self.by_address.setdefault(s.host.ip, s.id)
            if s.serial:
                self.by_serial[s.serial.upper()] = s.id
            for bay in range(s.bay, s.bay + s.span):
                self.by_bay[(s.enclosure.lower(), bay)] = s.id

    def server(self, sid: str | None) -> Server | None:
        return self.inventory.servers.get(sid) if sid else None

    def resolve(self, event: Event) -> tuple[str | None, str]:
        """(server id or None, how it was resolved)."""
        vb = event.varbinds
        if vb:
            enclosure = _by_prefix(vb, OA_ENCLOSURE_NAME)
            position = _by_prefix(vb, OA_BLADE_POSITION)
            if enclosure and position and position.strip().isdigit():
                sid = self.by_bay.get((enclosure.strip().lower(), int(position)))
                if sid:
                    return sid, f"enclosure {enclosure} bay {position}"
            manager = self.enclosure_by_address.get(event.sender or "")
            if manager and position and position.strip().isdigit():
                sid = self.by_bay.get((manager.lower(), int(position)))
                if sid:
                    return sid, f"enclosure manager of {manager} ({event.sender}) bay {position}"
            for oid, what in ((IDRAC_SERVICE_TAG, "service tag"), (HPE_SERVER_SERIAL, "serial number")):
                tag = vb.get(oid)
                if tag and (sid := self.by_serial.get(tag.strip().upper())):
                    return sid, f"{what} {tag}"
            serial = _by_prefix(vb, OA_BLADE_SERIAL)
            if serial and (sid := self.by_serial.get(serial.strip().upper())):
                return sid, f"blade serial {serial}"
            fqdn = vb.get(IDRAC_FQDN)
            if fqdn and (sid := self.by_host.get(fqdn.strip().lower())):
                return sid, f"FQDN {fqdn}"
        if event.sender and (sid := self.by_address.get(event.sender)):
            return sid, f"sender {event.sender}"
        agent = event.attributes.get("agent_address")
        if isinstance(agent, str) and (sid := self.by_address.get(agent)):
            return sid, f"agent address {agent}"
        name = vb.get(SYS_NAME) if vb else None
        if name and (sid := self.by_host.get(name.strip().lower()) or
                     self.by_host.get(name.strip().split(".")[0].lower())):
            return sid, f"sysName {name}"
        if event.server and event.server in self.inventory.servers:
            return event.server, "named in the event"
        return None, "no server matched the sender or identifying fields"

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
