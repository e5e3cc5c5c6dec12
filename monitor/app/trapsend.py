"""Send one SNMPv2c trap over UDP from a chosen source address (the demo plays an iLO with it).

Encoded by the lab's encoder (lab/traps.py, pysnmp's protocol modules): a real trap on the wire, the same
bytes net-snmp would send.
"""

from __future__ import annotations

import socket

from lab.traps import encode_v2c_trap


def send_v2c_trap(target: tuple[str, int], community: str, trap_oid: str,
                  varbinds: dict[str, str | int], *, source: str | None = None) -> None:
    data = encode_v2c_trap(community, trap_oid, varbinds)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        if source:
            s.bind((source, 0))
        s.sendto(data, target)
