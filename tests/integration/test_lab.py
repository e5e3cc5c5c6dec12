"""Tests of the lab simulator (lab/): the outside world the daemon talks to. See lab/API.md."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redfish.aio

from lab.config import ConfigError, LabConfig, parse_config
from lab.main import LabSimulator, LabStartError
from lab.world import generate_world
from tests.support.wait import eventually

REPO = Path(__file__).resolve().parents[2]
FAST = {"bmc_ms": 0, "manager_ms": 0, "power_off_s": 0.05, "power_on_s": 0.05, "boot_s": 0.05}
USER, PASSWORD = "admin", "lab-password"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


SERVER_KEYS = {
    "id", "domain_group", "domain", "enclosure", "bay", "span", "product", "present", "power", "health",
    "profile", "spare", "host", "management_addresses", "bmc",
}  # fmt: skip

# The documented layout of enclosures 1 and 2 (lab/API.md): bay -> (product, role); role is
# "on"/"off" (production with profile prof-encE-bayB), "spare", "empty".
GEN8, GEN9, G7 = "ProLiant BL460c Gen8", "ProLiant BL460c Gen9", "ProLiant BL460c G7"
B465G5, B465G7 = "ProLiant BL465c G5", "ProLiant BL465c G7"
I860, I870 = "Integrity BL860c i2", "Integrity BL870c i2"
SPARE_BAYS = {9: GEN8, 10: GEN9, 11: G7, 12: B465G7, 13: B465G5, 14: I860}
ENC1: dict[int, tuple[str | None, str]] = {
    1: (GEN8, "on"), 2: (GEN9, "on"), 3: (G7, "on"), 4: (B465G7, "on"), 5: (B465G5, "on"), 6: (I860, "on"),
    7: (GEN8, "off"), 8: (None, "empty"), **{b: (p, "spare") for b, p in SPARE_BAYS.items()},
    15: (I870, "spare"),
}  # fmt: skip
ENC2: dict[int, tuple[str | None, str]] = {
    1: (GEN9, "on"), 2: (GEN8, "on"), 3: (G7, "off"), 4: (B465G5, "on"), 5: (B465G7, "on"), 6: (I860, "on"),
    7: (None, "empty"), 8: (GEN8, "on"), **{b: (p, "spare") for b, p in SPARE_BAYS.items()},
    15: (I870, "on"),
}  # fmt: skip


def fast_config(**overrides: Any) -> LabConfig:
    data: dict[str, Any] = {"listen": "127.0.0.1:0", "enclosures": 4, "latency": dict(FAST)}
    data.update(overrides)
    return LabConfig.model_validate(data)


class Api:
    """A small JSON client for the manager/control API and the BMCs."""

    def __init__(self, lab: LabSimulator, session: aiohttp.ClientSession) -> None:
        self.lab = lab
        self.session = session

    async def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["json"] = body
        async with self.session.request(method, self.lab.manager_url + path, **kwargs) as r:
            return r.status, await r.json()

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, data = await self.call(method, path, body)
        assert status == 200, (status, data)
        return data

    async def server(self, server_id: str) -> dict[str, Any]:
        data: dict[str, Any] = await self.ok("GET", f"/api/v1/servers/{server_id}")
        return data

    async def redfish(
        self, server_id: str, method: str, path: str, body: Any = None, auth: bool = True
    ) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"headers": basic(USER, PASSWORD) if auth else None}
        if body is not None:
            kwargs["json"] = body
        async with self.session.request(method, self.lab.bmc_url(server_id) + path, **kwargs) as r:
            return r.status, await r.json()

    async def reset(self, server_id: str, reset_type: str) -> tuple[int, Any]:
        path = "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
        return await self.redfish(server_id, "POST", path, {"ResetType": reset_type})

    async def power(self, server_id: str) -> str:
        status, data = await self.redfish(server_id, "GET", "/redfish/v1/Systems/1")
        assert status == 200, data
        power: str = data["PowerState"]
        return power

    async def wait_power(self, server_id: str, state: str) -> None:
        async def reached() -> bool:
            return await self.power(server_id) == state

        await eventually(reached, 5.0)

    async def fault(self, fault: str, server: str | None = None, domain: str | None = None) -> str:
        data = await self.ok("POST", "/lab/v1/faults", {"fault": fault, "server": server, "domain": domain})
        fault_id: str = data["id"]
        return fault_id


@pytest.fixture
async def lab() -> AsyncIterator[LabSimulator]:
    async with LabSimulator(fast_config()) as simulator:
        yield simulator


@pytest.fixture
async def api(lab: LabSimulator) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as session:
        yield Api(lab, session)


# --- the generated world ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [7, 1234])
def test_documented_layout_of_enclosures_1_and_2(seed: int) -> None:
    world = generate_world(LabConfig(seed=seed))
    for enc, layout in (("enc1", ENC1), ("enc2", ENC2)):
        servers = {s.bay: s for s in world.servers.values() if s.enclosure == enc}
        assert set(servers) == set(layout), enc
        for bay, (product, role) in layout.items():
            s = servers[bay]
            assert s.product == product, s.id
            assert s.installed == (product is not None)
            assert s.spare == (role == "spare"), s.id
            assert s.power == ("On" if role == "on" else "Off"), s.id
            expect_profile = f"prof-{enc}-bay{bay}" if role in ("on", "off") else None
            assert s.profile == expect_profile, s.id
            assert s.span == (2 if product == I870 else 1)
    enc1_bay1 = world.servers["enc1-bay1"]
    assert (enc1_bay1.product, enc1_bay1.power, enc1_bay1.profile) == (GEN8, "On", "prof-enc1-bay1")
    assert "enc2-bay16" not in world.servers  # covered by the BL870c i2 in bay 15
    profile = world.profiles["prof-enc1-bay1"]
    assert (profile.host_name, profile.host_ip) == ("host11.lab.example", "10.1.0.1")


def test_generation_is_deterministic_and_seeded() -> None:
    def fingerprint(seed: int) -> list[tuple[str, str | None, str, str, str]]:
        w = generate_world(LabConfig(seed=seed, enclosures=4))
        return [(s.id, s.product, s.power, s.serial, s.uuid) for s in w.servers.values()]

    assert fingerprint(7) == fingerprint(7)
    assert fingerprint(7) != fingerprint(8)


@pytest.mark.parametrize(
    ("enclosures", "per_group"), [(1, 1), (2, 1), (3, 2), (4, 2), (5, 2), (6, 3), (4, 4)]
)
def test_every_group_has_spares_for_every_production_model(enclosures: int, per_group: int) -> None:
    for seed in (1, 7, 99):
        world = generate_world(LabConfig(seed=seed, enclosures=enclosures, domains_per_group=per_group))
        for group in world.domain_groups:
            members = [s for s in world.servers.values() if s.domain_group == group and s.product]
            production = {s.product for s in members if s.profile}
            spares = Counter(s.product for s in members if s.spare)
            assert all(s.profile is None and s.power == "Off" for s in members if s.spare)
            assert production <= set(spares), (group, production - set(spares))
            assert sum(n for p, n in spares.items() if p and "BL460c" in p) >= 2
            enclosures_in_group = {s.enclosure for s in members}
            for enc in enclosures_in_group:
                bays = [s for s in world.servers.values() if s.enclosure == enc]
                assert any(not s.installed for s in bays), f"{enc} has no empty bay"
                assert any(s.profile and s.power == "Off" for s in bays), (
                    f"{enc} has no powered-off production"
                )


# --- manager API --------------------------------------------------------------------------------------


async def test_inventory_shape(api: Api) -> None:
    inv = await api.ok("GET", "/api/v1/inventory")
    assert inv["domain_groups"] == [{"id": "dg1"}, {"id": "dg2"}]
    assert inv["domains"][0] == {"id": "vcd-enc1", "group": "dg1", "status": "ok"}
    assert [d["group"] for d in inv["domains"]] == ["dg1", "dg1", "dg2", "dg2"]
    assert inv["enclosures"][1] == {"id": "enc2", "domain": "vcd-enc2", "bays": 16,
                                    "management_addresses": ["127.77.2.0"]}  # the enclosure's OA
    servers = {s["id"]: s for s in inv["servers"]}
    for s in servers.values():
        assert set(s) >= SERVER_KEYS
    bay1 = servers["enc1-bay1"]
    assert bay1["product"] == GEN8 and bay1["power"] == "On" and bay1["profile"] == "prof-enc1-bay1"
    assert bay1["host"] == {"name": "host11.lab.example", "ip": "10.1.0.1"}
    assert bay1["management_addresses"] == ["127.77.1.1"]
    assert bay1["bmc"]["url"].startswith("https://127.77.1.1:")
    assert bay1["bmc"]["username"] == USER and bay1["bmc"]["verify_tls"] is False
    assert servers["enc1-bay8"]["present"] is False and servers["enc1-bay8"]["bmc"] is None
    assert servers["enc2-bay15"]["span"] == 2 and "enc2-bay16" not in servers
    assert servers["enc1-bay9"]["spare"] is True and servers["enc1-bay9"]["profile"] is None
    profiles = {p["id"]: p for p in inv["profiles"]}
    assert profiles["prof-enc1-bay1"]["server"] == "enc1-bay1"
    assert profiles["prof-enc1-bay1"]["host"] == {"name": "host11.lab.example", "ip": "10.1.0.1"}
    assert await api.server("enc1-bay1") == bay1
    assert await api.ok("GET", "/api/v1/domains/vcd-enc3") == {
        "id": "vcd-enc3",
        "group": "dg2",
        "status": "ok",
    }
    assert (await api.ok("GET", "/api/v1/profiles/prof-enc2-bay1"))["server"] == "enc2-bay1"
    for path in (
        "/api/v1/servers/enc2-bay16",
        "/api/v1/domains/nope",
        "/api/v1/profiles/nope",
        "/api/v1/nope",
    ):
        status, body = await api.call("GET", path)
        assert status == 404 and "error" in body, path


async def test_move_ok_and_conflicts(api: Api) -> None:
    move = "/api/v1/profiles/prof-enc1-bay1/move"
    await api.ok("PUT", "/lab/v1/servers/enc1-bay1", {"power": "Off"})
    assert await api.ok("POST", move, {"from": "enc1-bay1", "to": "enc1-bay9"}) == {
        "id": "prof-enc1-bay1",
        "server": "enc1-bay9",
    }
    assert (await api.server("enc1-bay1"))["profile"] is None
    assert (await api.server("enc1-bay9"))["profile"] == "prof-enc1-bay1"
    assert (await api.ok("GET", "/api/v1/profiles/prof-enc1-bay1"))["server"] == "enc1-bay9"

    async def conflict(profile: str, src: str, dst: str, status: int = 409) -> str:
        code, body = await api.call("POST", f"/api/v1/profiles/{profile}/move", {"from": src, "to": dst})
        assert code == status, body
        message: str = body["error"]
        return message

    assert "not on enc1-bay1" in await conflict("prof-enc1-bay1", "enc1-bay1", "enc1-bay10")
    assert "already has profile" in await conflict("prof-enc1-bay2", "enc1-bay2", "enc1-bay9")
    await api.ok("PUT", "/lab/v1/servers/enc1-bay10", {"power": "On"})
    assert "not powered off" in await conflict("prof-enc1-bay2", "enc1-bay2", "enc1-bay10")
    assert "not present" in await conflict("prof-enc1-bay2", "enc1-bay2", "enc1-bay8")
    assert "domain groups" in await conflict("prof-enc1-bay2", "enc1-bay2", "enc3-bay9")
    await conflict("nope", "enc1-bay2", "enc1-bay11", 404)
    await conflict("prof-enc1-bay2", "enc1-bay2", "enc9-bay1", 404)
    status, body = await api.call("POST", move, {"from": "enc1-bay9"})
    assert status == 400 and "to" in body["error"]
    assert (await api.ok("GET", "/api/v1/profiles/prof-enc1-bay2"))["server"] == "enc1-bay2"


async def test_move_error_fault_is_atomic(api: Api) -> None:
    await api.fault("move_error", server="enc1-bay11")
    before = await api.ok("GET", "/api/v1/inventory")
    status, body = await api.call(
        "POST", "/api/v1/profiles/prof-enc1-bay7/move", {"from": "enc1-bay7", "to": "enc1-bay11"}
    )
    assert status == 500 and "move_error" in body["error"]
    assert await api.ok("GET", "/api/v1/inventory") == before
    await api.ok("DELETE", "/lab/v1/faults")
    await api.ok("POST", "/api/v1/profiles/prof-enc1-bay7/move", {"from": "enc1-bay7", "to": "enc1-bay11"})
    moves = [e for e in await api.ok("GET", "/lab/v1/log") if e["kind"] == "move"]
    assert [("refused 500" in e["detail"], ": ok" in e["detail"]) for e in moves] == [
        (True, False),
        (False, True),
    ]


async def test_spare_flag(api: Api) -> None:
    server = await api.ok("PUT", "/api/v1/servers/enc1-bay9/spare", {"spare": False})
    assert server["id"] == "enc1-bay9" and server["spare"] is False
    assert (await api.server("enc1-bay9"))["spare"] is False
    assert (await api.ok("PUT", "/api/v1/servers/enc1-bay2/spare", {"spare": True}))["spare"] is True
    status, body = await api.call("PUT", "/api/v1/servers/enc1-bay2/spare", {"spare": "yes"})
    assert status == 400 and "error" in body
    status, _ = await api.call("PUT", "/api/v1/servers/nope/spare", {"spare": True})
    assert status == 404
    log = await api.ok("GET", "/lab/v1/log")
    assert [(e["kind"], e["server"]) for e in log] == [("spare", "enc1-bay9"), ("spare", "enc1-bay2")]


async def test_host_records_and_discovery_after_boot(api: Api) -> None:
    hosts = await api.ok("GET", "/api/v1/hosts")
    assert {"server": "enc1-bay1", "name": "host11.lab.example", "ip": "10.1.0.1"} in hosts
    removed = await api.ok("DELETE", "/api/v1/hosts/enc1-bay1")
    assert removed == {"server": "enc1-bay1", "name": "host11.lab.example", "ip": "10.1.0.1"}
    assert (await api.call("DELETE", "/api/v1/hosts/enc1-bay1"))[0] == 404
    assert (await api.server("enc1-bay1"))["host"] is None
    await api.ok("PUT", "/api/v1/hosts/enc1-bay1", {"name": "host11.lab.example", "ip": "10.1.0.1"})
    assert (await api.server("enc1-bay1"))["host"] == {"name": "host11.lab.example", "ip": "10.1.0.1"}
    assert (await api.call("PUT", "/api/v1/hosts/enc1-bay1", {"name": "x", "ip": "not-an-ip"}))[0] == 400

    # a long-running production blade answers; a powered-off spare does not
    found = await api.ok("POST", "/api/v1/discover/enc1-bay2")
    assert found["found"] is True and found["host"] == {"name": "host12.lab.example", "ip": "10.1.0.2"}
    assert (await api.ok("POST", "/api/v1/discover/enc1-bay10"))["found"] is False

    # the failover sequence: off, move, on; discovery answers only boot_s after reaching On
    await api.ok("PUT", "/lab/v1/latency", {"boot_s": 0.4})
    assert (await api.reset("enc1-bay7", "On"))[0] == 200  # bay 7 is a powered-off production blade
    await api.wait_power("enc1-bay7", "On")
    loop = asyncio.get_running_loop()
    on_at = loop.time()
    first = await api.ok("POST", "/api/v1/discover/enc1-bay7")
    assert first["found"] is False and "booting" in first["detail"]

    async def discovered() -> bool:
        answer = await api.ok("POST", "/api/v1/discover/enc1-bay7")
        found: bool = answer["found"]
        return found

    await eventually(discovered, 5.0)
    assert loop.time() - on_at >= 0.4 - 0.05
    record = await api.ok("GET", "/api/v1/hosts/enc1-bay7")
    assert record == {"server": "enc1-bay7", "name": "host17.lab.example", "ip": "10.1.0.7"}
    kinds = [e["kind"] for e in await api.ok("GET", "/lab/v1/log")]
    assert kinds[:3] == ["host", "host", "discover"] and "reset" in kinds


# --- Redfish ------------------------------------------------------------------------------------------


async def test_redfish_auth(api: Api) -> None:
    status, root = await api.redfish("enc1-bay1", "GET", "/redfish/v1/", auth=False)
    assert status == 200 and root["Links"]["Sessions"]["@odata.id"] == "/redfish/v1/SessionService/Sessions"
    status, body = await api.redfish("enc1-bay1", "GET", "/redfish/v1/Systems/1", auth=False)
    assert status == 401
    assert body["error"]["@Message.ExtendedInfo"][0]["MessageId"].endswith("NoValidSession")
    url = api.lab.bmc_url("enc1-bay1") + "/redfish/v1/Systems/1"
    async with api.session.get(url, headers=basic(USER, "wrong")) as r:
        assert r.status == 401 and "error" in await r.json()
    async with api.session.get(url, headers={"X-Auth-Token": "bogus"}) as r:
        assert r.status == 401
    async with api.session.post(
        api.lab.bmc_url("enc1-bay1") + "/redfish/v1/SessionService/Sessions",
        json={"UserName": USER, "Password": "wrong"},
    ) as r:
        assert r.status == 401

    base = api.lab.bmc_url("enc1-bay1")
    basic_client = redfish.aio.AsyncRedfishClient(base, session=api.session, username=USER, password=PASSWORD)
    await basic_client.login(auth="basic")
    response = await basic_client.get("/redfish/v1/Systems/1")
    assert response.status == 200 and response.dict["Model"] == GEN8

    client = redfish.aio.AsyncRedfishClient(base, session=api.session, username=USER, password=PASSWORD)
    await client.login(auth="session")
    response = await client.get("/redfish/v1/Systems/1")
    assert response.status == 200
    system = response.dict
    assert system["@odata.id"] == "/redfish/v1/Systems/1"
    assert system["@odata.type"].startswith("#ComputerSystem.v1_")
    assert system["Manufacturer"] == "HPE" and system["PowerState"] == "On"
    assert system["Status"] == {"State": "Enabled", "Health": "OK", "HealthRollup": "OK"}
    reset = system["Actions"]["#ComputerSystem.Reset"]
    assert reset["target"] == "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
    assert {"On", "ForceOff"} <= set(reset["ResetType@Redfish.AllowableValues"])
    assert system["Links"]["Chassis"] == [{"@odata.id": "/redfish/v1/Chassis/1"}]
    sessions = await client.get("/redfish/v1/SessionService/Sessions")
    assert sessions.dict["Members@odata.count"] == 1
    await client.logout()
    sessions = await basic_client.get("/redfish/v1/SessionService/Sessions")
    assert sessions.dict["Members@odata.count"] == 0


async def test_redfish_resources(api: Api) -> None:
    expected = {
        "/redfish/v1/Systems": "#ComputerSystemCollection.ComputerSystemCollection",
        "/redfish/v1/Chassis": "#ChassisCollection.ChassisCollection",
        "/redfish/v1/Chassis/1": "#Chassis.v1_",
        "/redfish/v1/Managers": "#ManagerCollection.ManagerCollection",
        "/redfish/v1/Managers/1": "#Manager.v1_",
        "/redfish/v1/SessionService": "#SessionService.v1_",
    }
    for path, odata_type in expected.items():
        status, body = await api.redfish("enc2-bay15", "GET", path)
        assert status == 200, path
        assert body["@odata.id"] == path and body["@odata.type"].startswith(odata_type), path
    _, systems = await api.redfish("enc2-bay15", "GET", "/redfish/v1/Systems")
    assert systems["Members"] == [{"@odata.id": "/redfish/v1/Systems/1"}]
    _, chassis = await api.redfish("enc2-bay15", "GET", "/redfish/v1/Chassis/1")
    assert chassis["ChassisType"] == "Blade" and chassis["Model"] == I870
    _, manager = await api.redfish("enc2-bay15", "GET", "/redfish/v1/Managers/1")
    assert manager["ManagerType"] == "BMC"
    status, body = await api.redfish("enc2-bay15", "GET", "/redfish/v1/Nope")
    assert status == 404 and "error" in body


@pytest.mark.slow
async def test_power_transitions(api: Api) -> None:
    await api.ok("PUT", "/lab/v1/latency", {"power_off_s": 0.3, "power_on_s": 0.3})
    status, body = await api.reset("enc1-bay2", "ForceOff")
    assert status == 200
    assert body["error"]["@Message.ExtendedInfo"][0]["MessageId"] == "Base.1.4.Success"
    assert await api.power("enc1-bay2") == "PoweringOff"
    assert (await api.server("enc1-bay2"))["power"] == "PoweringOff"
    await api.wait_power("enc1-bay2", "Off")
    assert (await api.server("enc1-bay2"))["power"] == "Off"
    assert (await api.reset("enc1-bay2", "On"))[0] == 200
    assert await api.power("enc1-bay2") == "PoweringOn"
    await api.wait_power("enc1-bay2", "On")
    # ForceRestart goes down (through Off) and back On
    assert (await api.reset("enc1-bay2", "ForceRestart"))[0] == 200
    assert await api.power("enc1-bay2") == "PoweringOff"
    await api.wait_power("enc1-bay2", "PoweringOn")
    await api.wait_power("enc1-bay2", "On")
    resets = [e["detail"] for e in await api.ok("GET", "/lab/v1/log") if e["kind"] == "reset"]
    assert [d.split(":")[0] for d in resets] == ["ForceOff", "On", "ForceRestart"]


async def test_reset_quirks(api: Api) -> None:
    status, body = await api.reset("enc1-bay9", "ForceOff")  # a spare, already Off
    assert status == 400
    assert body["error"]["code"] == "iLO.0.10.ExtendedInfo"
    assert body["error"]["@Message.ExtendedInfo"][0]["MessageId"] == "iLO.2.14.InvalidOperationForSystemState"
    status, body = await api.reset("enc1-bay1", "On")  # already On
    assert status == 400
    assert body["error"]["@Message.ExtendedInfo"][0]["MessageId"] == "iLO.2.14.InvalidOperationForSystemState"
    status, body = await api.reset("enc1-bay1", "Explode")
    assert status == 400 and "ActionParameterValueNotInList" in json.dumps(body)
    status, _ = await api.redfish(
        "enc1-bay1", "POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", {}
    )
    assert status == 400
    assert await api.power("enc1-bay1") == "On"


# --- faults -------------------------------------------------------------------------------------------


async def test_fault_power_off_hangs_and_power_on_fails(api: Api) -> None:
    await api.fault("power_off_hangs", server="enc1-bay2")
    assert (await api.reset("enc1-bay2", "ForceOff"))[0] == 200
    assert (await api.reset("enc1-bay3", "ForceOff"))[0] == 200  # the control: same latency, no fault
    await api.wait_power("enc1-bay3", "Off")
    assert await api.power("enc1-bay2") == "On"

    await api.fault("power_on_fails", server="enc1-bay10")
    assert (await api.reset("enc1-bay10", "On"))[0] == 200
    assert (await api.reset("enc1-bay11", "On"))[0] == 200
    await api.wait_power("enc1-bay11", "On")
    assert await api.power("enc1-bay10") == "Off"
    faults = await api.ok("GET", "/lab/v1/faults")
    assert [f["fault"] for f in faults] == ["power_off_hangs", "power_on_fails"]
    assert (await api.ok("DELETE", "/lab/v1/faults")) == {"cleared": 2}
    assert (await api.reset("enc1-bay2", "ForceOff"))[0] == 200
    await api.wait_power("enc1-bay2", "Off")


async def test_fault_bmc_timeout_and_bmc_error(api: Api) -> None:
    await api.fault("bmc_timeout", server="enc1-bay1")
    with pytest.raises(asyncio.TimeoutError):
        async with api.session.get(
            api.lab.bmc_url("enc1-bay1") + "/redfish/v1/", timeout=aiohttp.ClientTimeout(total=0.3)
        ) as r:
            await r.read()
    assert (await api.redfish("enc1-bay2", "GET", "/redfish/v1/Systems/1"))[0] == 200
    await api.fault("bmc_error", server="enc1-bay2")
    status, body = await api.redfish("enc1-bay2", "GET", "/redfish/v1/Systems/1")
    assert status == 500 and "error" in body
    assert (await api.redfish("enc1-bay2", "GET", "/redfish/v1/", auth=False))[0] == 500
    await api.ok("DELETE", "/lab/v1/faults")
    assert (await api.redfish("enc1-bay2", "GET", "/redfish/v1/Systems/1"))[0] == 200


async def test_domain_faults(api: Api) -> None:
    fault_id = await api.fault("domain_incompatible", domain="vcd-enc1")
    assert (await api.ok("GET", "/api/v1/domains/vcd-enc1"))["status"] == "incompatible"
    assert (await api.ok("GET", "/api/v1/domains/vcd-enc2"))["status"] == "ok"
    await api.ok("PUT", "/lab/v1/servers/enc1-bay2", {"power": "Off"})
    status, body = await api.call(
        "POST", "/api/v1/profiles/prof-enc1-bay2/move", {"from": "enc1-bay2", "to": "enc1-bay10"}
    )
    assert status == 409 and "incompatible" in body["error"]
    await api.ok("DELETE", f"/lab/v1/faults/{fault_id}")
    await api.fault("domain_unmanaged", server="enc2-bay1")  # the server's domain
    await api.fault("domain_unlicensed", domain="vcd-enc3")
    statuses = {d["id"]: d["status"] for d in (await api.ok("GET", "/api/v1/inventory"))["domains"]}
    assert statuses == {"vcd-enc1": "ok", "vcd-enc2": "unmanaged", "vcd-enc3": "unlicensed", "vcd-enc4": "ok"}
    status, body = await api.call("POST", "/lab/v1/faults", {"fault": "domain_unmanaged"})
    assert status == 400 and "error" in body
    status, _ = await api.call("POST", "/lab/v1/faults", {"fault": "meteor_strike", "server": "enc1-bay1"})
    assert status == 400
    status, _ = await api.call("POST", "/lab/v1/faults", {"fault": "bmc_error", "server": "enc9-bay1"})
    assert status == 404


async def test_fault_spare_missing(api: Api) -> None:
    await api.fault("spare_missing", server="enc1-bay9")
    server = await api.server("enc1-bay9")
    assert server["present"] is False and server["bmc"] is None
    await api.ok("PUT", "/lab/v1/servers/enc1-bay7", {"power": "Off"})
    status, body = await api.call(
        "POST", "/api/v1/profiles/prof-enc1-bay7/move", {"from": "enc1-bay7", "to": "enc1-bay9"}
    )
    assert status == 409 and "not present" in body["error"]
    await api.ok("DELETE", "/lab/v1/faults")
    assert (await api.server("enc1-bay9"))["present"] is True


# --- control API and the oracle -----------------------------------------------------------------------


async def test_control_server_state(api: Api) -> None:
    await api.ok("PUT", "/lab/v1/servers/enc1-bay3", {"health": "Critical"})
    _, system = await api.redfish("enc1-bay3", "GET", "/redfish/v1/Systems/1")
    assert system["Status"]["Health"] == "Critical"
    assert (await api.server("enc1-bay3"))["health"] == "Critical"
    # pulling a blade: the manager reads present: false and its BMC stops listening
    pulled = await api.ok("PUT", "/lab/v1/servers/enc1-bay10", {"present": False})
    assert pulled["present"] is False and pulled["bmc"] is None
    bay10 = api.lab.world.servers["enc1-bay10"]
    url = f"https://{bay10.bmc_ip}:{bay10.bmc_port}/redfish/v1/"
    with pytest.raises(aiohttp.ClientError):
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as fresh,
            fresh.get(url) as r,
        ):
            await r.read()
    await api.ok("PUT", "/lab/v1/servers/enc1-bay10", {"present": True})
    assert (await api.redfish("enc1-bay10", "GET", "/redfish/v1/", auth=False))[0] == 200
    assert (await api.call("PUT", "/lab/v1/servers/enc1-bay8", {"present": True}))[0] == 409
    assert (await api.call("PUT", "/lab/v1/servers/enc1-bay1", {"power": "Sideways"}))[0] == 400
    latency = await api.ok("PUT", "/lab/v1/latency", {"bmc_ms": 5})
    assert latency == {**FAST, "bmc_ms": 5}
    assert (await api.call("PUT", "/lab/v1/latency", {"bmc_ms": -1}))[0] == 400


async def test_oracle_records_two_running_copies_of_a_profile(api: Api) -> None:
    # the wrong sequence: the profile leaves a blade that is still On, the spare is powered on; each
    # wrong step is recorded as it happens
    await api.ok("POST", "/api/v1/profiles/prof-enc1-bay1/move", {"from": "enc1-bay1", "to": "enc1-bay9"})
    assert [v["kind"] for v in await api.ok("GET", "/lab/v1/violations")] == ["move_off_running"]
    assert (await api.reset("enc1-bay9", "On"))[0] == 200
    await api.wait_power("enc1-bay9", "On")
    violations = await api.ok("GET", "/lab/v1/violations")
    assert [v["kind"] for v in violations] == [
        "move_off_running", "power_on_while_previous_runs", "shared_identity",
    ]
    for v in violations:
        assert v["profile"] == "prof-enc1-bay1"
        assert v["servers"] == ["enc1-bay1", "enc1-bay9"]
        assert set(v) == {"time", "kind", "servers", "profile", "monitor", "job", "epoch", "detail"}


async def test_oracle_quiet_on_a_correct_failover(api: Api) -> None:
    assert (await api.reset("enc1-bay1", "ForceOff"))[0] == 200
    await api.wait_power("enc1-bay1", "Off")
    await api.ok("POST", "/api/v1/profiles/prof-enc1-bay1/move", {"from": "enc1-bay1", "to": "enc1-bay9"})
    assert (await api.reset("enc1-bay9", "On"))[0] == 200
    await api.wait_power("enc1-bay9", "On")
    assert (await api.reset("enc1-bay1", "On"))[0] == 200  # the failed blade comes back without a profile
    await api.wait_power("enc1-bay1", "On")
    assert await api.ok("GET", "/lab/v1/violations") == []
    _, system = await api.redfish("enc1-bay9", "GET", "/redfish/v1/Systems/1")
    assert system["HostName"] == "host11.lab.example"


async def test_api_token() -> None:
    async with (
        LabSimulator(fast_config(enclosures=1, api_token="s3cret")) as lab,
        aiohttp.ClientSession() as session,
    ):
        async with session.get(lab.manager_url + "/api/v1/inventory") as r:
            assert r.status == 401 and "error" in await r.json()
        async with session.get(
            lab.manager_url + "/lab/v1/log", headers={"Authorization": "Bearer nope"}
        ) as r:
            assert r.status == 401
        async with session.get(
            lab.manager_url + "/api/v1/inventory", headers={"Authorization": "Bearer s3cret"}
        ) as r:
            assert r.status == 200


# --- startup and configuration ------------------------------------------------------------------------


async def test_bind_errors_are_clear() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(LabStartError, match=f"cannot listen on 127.0.0.1:{port}"):
            async with LabSimulator(fast_config(enclosures=1, listen=f"127.0.0.1:{port}")):
                pass
    with socket.socket() as busy:
        busy.bind(("127.77.1.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(LabStartError, match="cannot start the BMC of enc1-bay1"):
            async with LabSimulator(fast_config(enclosures=1, bmc_port=port)):
                pass


def test_config_errors_have_file_and_line() -> None:
    text = "listen: 127.0.0.1:0\nlatency:\n  power_on_s: -1\n  bogus: 3\nenclosures: many\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "lab.yaml")
    lines = str(info.value).splitlines()
    assert any(line.startswith("lab.yaml:3: latency.power_on_s: ") for line in lines), lines
    assert any(line.startswith("lab.yaml:4: latency.bogus: ") for line in lines), lines
    assert any(line.startswith("lab.yaml:5: enclosures: ") for line in lines), lines
    with pytest.raises(
        ConfigError, match=r"^lab.yaml:2: api_token: environment variable LAB_NOPE is not set"
    ):
        parse_config("seed: 3\napi_token: ${LAB_NOPE}\n", "lab.yaml", environ={})
    cfg = parse_config(
        "api_token: ${LAB_TOKEN}\ncredentials: {password: '${LAB_PW:-dflt}'}\n",
        "x",
        environ={"LAB_TOKEN": "t"},
    )
    assert cfg.api_token == "t" and cfg.credentials.password == "dflt"
    with pytest.raises(ConfigError, match=r"^x:2: \(yaml\): mapping values are not allowed"):
        parse_config("seed: 3\nlisten: a: b\n", "x")


def test_default_config_file_is_valid() -> None:
    text = (REPO / "config" / "lab.yaml").read_text(encoding="utf-8")
    assert parse_config(text, "config/lab.yaml", environ={}) == LabConfig()


@pytest.mark.slow
async def test_python_m_lab_subprocess(tmp_path: Path) -> None:
    config = tmp_path / "lab.yaml"
    config.write_text("listen: 127.0.0.1:0\nenclosures: 1\n", encoding="utf-8")
    ready = tmp_path / "ready.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lab", "-c", str(config), "--ready-file", str(ready),
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:

        async def is_ready() -> bool:
            assert proc.returncode is None, "lab exited early"
            return ready.exists()

        await eventually(is_ready, 20)
        info = json.loads(ready.read_text(encoding="utf-8"))
        assert info["pid"] == proc.pid and info["manager"].startswith("http://127.0.0.1:")
        async with (
            aiohttp.ClientSession() as session,
            session.get(info["manager"] + "/api/v1/inventory") as r,
        ):
            assert r.status == 200
            assert (await r.json())["domain_groups"] == [{"id": "dg1"}]
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=20)
        assert proc.returncode == 0, stderr.decode()
        assert not ready.exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
