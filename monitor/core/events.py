"""The normalized event: what every source (SNMP trap, Redfish push, Redfish SSE, Redfish health poll)
becomes, what the rules match on, and what `rules explain` reads from a JSON file.

Field names (documented in the README, used by rule files):

| field | meaning |
|---|---|
| `id` | unique id given at reception |
| `source` | `snmp`, `redfish` (push), `redfish-sse`, `redfish-poll`, or `file` (a recorded event) |
| `time` | when the monitor received it (UTC) |
| `sender` | the address it came from: UDP source, SNMPv1 agent address, or the BMC's address |
| `server` | the resolved server id, or null when no server matched (never fails over anything) |
| `enclosure` | the resolved enclosure: the server's, or the enclosure manager's (OA, CMC) that sent it |
| `trap_oid` | SNMP: the notification OID (v1 traps mapped per RFC 3584: enterprise.0.specific) |
| `varbinds` | SNMP: {OID: value} |
| `snmp_version`, `security_name` | SNMP: `1`, `2c` or `3`; community name index or v3 user |
| `message_id` | Redfish: as sent (`iLOEvents.2.3.PowerSupplyFailed`, `IDRAC.2.8.TMP0110`, `FAN0001`) |
| `registry`, `message_key` | Redfish: registry (`iLOEvents`) and name (`PowerSupplyFailed`), no version |
| `message`, `message_args` | Redfish: the text and its arguments |
| `severity` | `OK`, `Warning` or `Critical` (Redfish MessageSeverity or Severity; SNMP: from rules) |
| `origin` | Redfish: OriginOfCondition as a path |
| `event_type`, `event_id` | Redfish: EventType and EventId |
| `health`, `previous_health` | health poll: the new and the previous Status.Health/HealthRollup |
| `attributes` | anything else a source adds (e.g. Oem fields) |
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EventSource = Literal["snmp", "redfish", "redfish-sse", "redfish-poll", "file"]

_SEVERITY_ORDER = {"ok": 0, "informational": 0, "info": 0, "warning": 1, "minor": 1, "major": 2,
                   "critical": 3, "fatal": 3}

def severity_rank(value: str | None) -> int:
    """OK < Warning < Major < Critical; unknown words rank as -1 (never "at least" anything)."""
    if value is None:
        return -1
    return _SEVERITY_ORDER.get(value.strip().lower(), -1)


_MESSAGE_ID = re.compile(r"^(?P<registry>[A-Za-z][\w-]*)\.(?:\d+\.){1,3}(?P<key>[A-Za-z][\w-]*)$")


def split_message_id(message_id: str) -> tuple[str | None, str]:
    """"iLOEvents.2.3.PowerSupplyFailed" -> ("iLOEvents", "PowerSupplyFailed"); "FAN0001" -> (None, ..)."""
    m = _MESSAGE_ID.match(message_id.strip())
    if m:
        return m.group("registry"), m.group("key")
    if "." in message_id:
        head, _, tail = message_id.strip().rpartition(".")
        return head.split(".", 1)[0] or None, tail
    return None, message_id.strip()


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default_factory=lambda: os.urandom(8).hex())
    """16 random hex digits from the OS (uuid4 did the same and more: a third of the cost)."""
    source: EventSource
    time: datetime
    sender: str | None = None
    server: str | None = None
    enclosure: str | None = None
    trap_oid: str | None = None
    varbinds: dict[str, str] = {}
    snmp_version: Literal["1", "2c", "3"] | None = None
    security_name: str | None = None
    message_id: str | None = None
    registry: str | None = None
    message_key: str | None = None
    message: str | None = None
    message_args: list[str] = []
    severity: str | None = None
    origin: str | None = None
    event_type: str | None = None
    event_id: str | None = None
    health: str | None = None
    previous_health: str | None = None
    attributes: dict[str, Any] = {}
    def field(self, name: str) -> Any:
        """A field by name for rule matching (`varbinds.<oid>` and `attributes.<key>` reach inside)."""
        if name.startswith("varbinds."):
            return self.varbinds.get(name[len("varbinds."):])
        if name.startswith("attributes."):
            return self.attributes.get(name[len("attributes."):])
        return getattr(self, name, None)

    def with_message_id(self) -> Event:
        """Fill `registry` and `message_key` from `message_id` (sources call this once)."""
        if not self.message_id or self.message_key:
            return self
        registry, key = split_message_id(self.message_id)
        return self.model_copy(update={"registry": registry, "message_key": key})


BMC_SERVICE_ATTRIBUTE = "bmc_service"
"""`Event.attributes` key: the BMC service (scheme://host:port) a Redfish event came from."""
