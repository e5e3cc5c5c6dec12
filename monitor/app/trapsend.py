"""Send one SNMPv2c trap over UDP from a chosen source address (the demo plays an iLO with it).

Encoded with pysnmp's protocol modules: a real trap on the wire, the same bytes net-snmp would send.
"""

from __future__ import annotations

import socket

from pyasn1.codec.ber import encoder
from pysnmp.proto import api, rfc1902


def encode_v2c_trap(community: str, trap_oid: str, varbinds: dict[str, str | int],
                    uptime: int = 12345) -> bytes:
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


def send_v2c_trap(target: tuple[str, int], community: str, trap_oid: str,
                  varbinds: dict[str, str | int], *, source: str | None = None) -> None:
    data = encode_v2c_trap(community, trap_oid, varbinds)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        if source:
            s.bind((source, 0))
        s.sendto(data, target)
