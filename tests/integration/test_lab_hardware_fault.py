"""The lab's hardware faults: the blade's iLO sends its SNMPv2c trap from its own address to the
configured targets (decoded here by the monitor's strict BER decoder, as the receiver would) and its
Redfish event to its subscriptions; bad requests are clear errors."""

from __future__ import annotations

import asyncio
import socket

import aiohttp

from adapters.snmp.ber import decode_trap
from lab.config import LabConfig
from lab.main import LabSimulator
from tests.support.net import bound_socket


async def test_the_fault_sends_the_ilo_trap_and_sets_health() -> None:
    receiver = bound_socket(socket.SOCK_DGRAM)
    receiver.setblocking(False)
    port = receiver.getsockname()[1]
    cfg = LabConfig.model_validate({"listen": "127.0.0.1:0", "snmp_traps": {
        "targets": [f"127.0.0.1:{port}"], "community": "lab-community"}})
    try:
        async with LabSimulator(cfg) as lab, aiohttp.ClientSession() as http:
            async with http.post(f"{lab.manager_url}/lab/v1/servers/enc1-bay3/hardware-fault",
                                 json={"kind": "cpu-uncorrectable"}) as r:
                assert r.status == 200, await r.text()
                answer = await r.json()
            loop = asyncio.get_running_loop()
            data, sender = await asyncio.wait_for(loop.sock_recvfrom(receiver, 65535), 5)
            assert sender[0] == "127.77.1.3"  # the iLO's own address: the receiver resolves the blade by it
            trap = decode_trap(data)
            assert trap.version == 1 and trap.community == b"lab-community"
            binds = dict(trap.varbinds)
            assert binds["1.3.6.1.6.3.1.1.4.1.0"] == "1.3.6.1.4.1.232.0.1026"
            assert binds["1.3.6.1.2.1.1.5.0"] == "host13.lab.example"
            assert int(binds["1.3.6.1.4.1.232.11.2.11.1.0"]) >> 2 & 7 == 4  # cpqHoTrapFlags: failed
            assert answer["trap"]["failed"] == [] and answer["subscriptions"] == 0
            event = answer["event"]["Events"][0]
            assert event["MessageId"] == "iLOEvents.2.3.SeCpuUncorrectableError"
            assert event["Severity"] == "Critical"
            async with http.get(f"{lab.manager_url}/api/v1/servers/enc1-bay3") as r:
                assert (await r.json())["health"] == "Critical"

            async with http.post(f"{lab.manager_url}/lab/v1/servers/enc1-bay3/hardware-fault",
                                 json={"kind": "gremlins"}) as r:
                assert r.status == 400
                assert "cpu-uncorrectable" in (await r.json())["error"]
            async with http.post(f"{lab.manager_url}/lab/v1/servers/enc1-bay8/hardware-fault",
                                 json={"kind": "cpu-failed"}) as r:
                assert r.status == 404  # an empty bay has no iLO
    finally:
        receiver.close()
