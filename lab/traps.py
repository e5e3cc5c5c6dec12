"""SNMP traps a blade's iLO sends: SNMPv2c Trap-PDUs (RFC 3416), BER-encoded with pysnmp's protocol
modules (the bytes net-snmp's `snmptrap -v 2c` puts on the wire), sent over UDP from the BMC's own
loopback address so the receiver sees the iLO as the sender."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pyasn1.codec.ber import encoder
from pysnmp.proto import api, rfc1902

SYS_NAME = "1.3.6.1.2.1.1.5.0"
HO_TRAP_FLAGS = "1.3.6.1.4.1.232.11.2.11.1.0"
CPU_UNIT_INDEX = "1.3.6.1.4.1.232.1.2.2.1.1.1.1"


@dataclass(frozen=True)
class HardwareFault:
    """One hardware fault as an iLO reports it: its Insight trap (CPQSTDEQ-MIB) and its Redfish message
    (iLOEvents registry)."""

    kind: str
    description: str
    trap_oid: str
    varbinds: dict[str, int]
    message_id: str
    severity: str


# cpqHoTrapFlags: bits 2-4 carry the condition (4 = failed), so 16 reads "failed".
HARDWARE_FAULTS: dict[str, HardwareFault] = {
    f.kind: f
    for f in (
        HardwareFault("cpu-uncorrectable", "uncorrectable processor error (machine check)",
                      "1.3.6.1.4.1.232.0.1026", {HO_TRAP_FLAGS: 16, CPU_UNIT_INDEX: 1},
                      "iLOEvents.2.3.SeCpuUncorrectableError", "Critical"),
        HardwareFault("cpu-failed", "a processor changed to failed and was taken out of service",
                      "1.3.6.1.4.1.232.0.1006", {HO_TRAP_FLAGS: 16, CPU_UNIT_INDEX: 1},
                      "iLOEvents.2.3.ProcessorStatusFailed", "Critical"),
    )
}


def encode_v2c_trap(community: str, trap_oid: str, varbinds: dict[str, str | int],
                    uptime: int = 4200) -> bytes:
    p = api.v2c
    pdu = p.TrapPDU()
    p.apiTrapPDU.set_defaults(pdu)
    binds: list[tuple[object, object]] = [
        (p.apiTrapPDU.sysUpTime, rfc1902.TimeTicks(uptime)),
        (p.apiTrapPDU.snmpTrapOID, rfc1902.ObjectName(trap_oid)),
    ]
    for oid, value in varbinds.items():
        v = rfc1902.Integer(value) if isinstance(value, int) else rfc1902.OctetString(value)
        binds.append((rfc1902.ObjectName(oid), v))
    p.apiTrapPDU.set_varbinds(pdu, binds)
    msg = p.Message()
    p.apiMessage.set_defaults(msg)
    p.apiMessage.set_community(msg, community)
    p.apiMessage.set_pdu(msg, pdu)
    return bytes(encoder.encode(msg))


def send_trap(source: str, targets: list[tuple[str, int]], data: bytes) -> list[str]:
    """Send one datagram from `source` to each target; the targets it could not reach, with the reason."""
    failed: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        for host, port in targets:
            try:
                s.sendto(data, (host, port))
            except OSError as exc:
                failed.append(f"{host}:{port}: {exc.strerror or exc}")
    return failed
