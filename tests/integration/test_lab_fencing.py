"""Fencing in the lab (lab/API.md, "Fencing"): the X-Failover-Fence token on mutating requests, the
refusal of stale epochs, the action log's monitor/job/epoch, the oracle's as-it-happens violations, and
the monitor's lab adapter sending the token of the current action."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from adapters.lab_manager import FenceRejected, LabClient, LabDiscovery, LabManager
from lab.config import LabConfig
from lab.main import LabSimulator
from monitor.core.clock import SystemClock
from monitor.core.errors import FenceLost, OperationRejected
from monitor.core.fencing import Fence, acting, observing
from monitor.core.metrics import Metrics
from monitor.core.model import HostRecord
from monitor.pipeline.inventory import InventoryView
from tests.support.wait import eventually

FAST = {"bmc_ms": 0, "manager_ms": 0, "power_off_s": 0.05, "power_on_s": 0.05, "boot_s": 0.0}
HEADER = "X-Failover-Fence"
RESET = "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
BASIC = {"Authorization": "Basic " + base64.b64encode(b"admin:lab-password").decode()}


def fence(job: int, epoch: int, monitor: str = "m1") -> dict[str, str]:
    return {HEADER: f"job={job}; epoch={epoch}; monitor={monitor}"}


def config(**overrides: Any) -> LabConfig:
    return LabConfig.model_validate({"listen": "127.0.0.1:0", "enclosures": 2, "latency": dict(FAST),
                                     **overrides})


class Lab:
    def __init__(self, sim: LabSimulator, session: aiohttp.ClientSession) -> None:
        self.sim = sim
        self.session = session

    async def call(self, method: str, path: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.session.request(method, self.sim.manager_url + path, json=body,
                                        headers=headers) as r:
            return r.status, await r.json(content_type=None)

    async def ok(self, method: str, path: str, body: Any = None,
                 headers: dict[str, str] | None = None) -> Any:
        status, data = await self.call(method, path, body, headers)
        assert status == 200, (method, path, status, data)
        return data

    async def reset(self, server: str, reset_type: str,
                    headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.session.post(self.sim.bmc_url(server) + RESET, json={"ResetType": reset_type},
                                     headers={**BASIC, **(headers or {})}) as r:
            return r.status, await r.json()

    async def power(self, server: str) -> str:
        power: str = (await self.ok("GET", f"/api/v1/servers/{server}"))["power"]
        return power

    async def wait_power(self, server: str, state: str) -> None:
        async def reached() -> bool:
            return await self.power(server) == state

        await eventually(reached, 5.0)

    async def world(self) -> tuple[Any, Any]:
        return await self.ok("GET", "/api/v1/inventory"), await self.ok("GET", "/api/v1/hosts")

    async def violations(self) -> list[dict[str, Any]]:
        return list(await self.ok("GET", "/lab/v1/violations"))

    async def log(self) -> list[dict[str, Any]]:
        return list(await self.ok("GET", "/lab/v1/log"))


@pytest.fixture
async def sim() -> AsyncIterator[LabSimulator]:
    async with LabSimulator(config()) as simulator:
        yield simulator


@pytest.fixture
async def lab(sim: LabSimulator) -> AsyncIterator[Lab]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as session:
        yield Lab(sim, session)


# Every fenced call of the manager API: (method, path, body). Applied to a fresh world each, each
# would change something if it were let through.
MANAGER_CALLS = [
    ("POST", "/api/v1/profiles/prof-enc1-bay7/move", {"from": "enc1-bay7", "to": "enc1-bay9"}),
    ("PUT", "/api/v1/servers/enc1-bay9/spare", {"spare": False}),
    ("DELETE", "/api/v1/hosts/enc1-bay1", None),
    ("PUT", "/api/v1/hosts/enc1-bay1", {"name": "other.lab.example", "ip": "10.9.9.9"}),
    ("POST", "/api/v1/discover/enc1-bay7", None),
]


# --- the fence ------------------------------------------------------------------------------------------


async def test_higher_and_equal_epochs_pass_a_lower_one_is_refused_and_recorded(lab: Lab) -> None:
    spare = "/api/v1/servers/enc1-bay9/spare"
    assert (await lab.ok("PUT", spare, {"spare": True}, fence(1, 2, "m2")))["spare"] is True
    assert (await lab.ok("PUT", spare, {"spare": True}, fence(1, 2, "m2")))["spare"] is True  # equal
    assert (await lab.ok("PUT", spare, {"spare": False}, fence(1, 3, "m3")))["spare"] is False  # higher
    status, body = await lab.call("PUT", spare, {"spare": True}, fence(1, 2, "m2"))
    assert status == 409
    assert body["error"] == "stale fencing token: job 1 epoch 2 < 3 (monitor m2)"
    assert body["stale_fence"] == {"monitor": "m2", "job": 1, "epoch": 2, "highest": 3,
                                   "highest_monitor": "m3"}
    assert (await lab.ok("GET", "/api/v1/servers/enc1-bay9"))["spare"] is False  # nothing changed
    fencing = await lab.ok("GET", "/lab/v1/fencing")
    assert fencing["mode"] == "enforce" and fencing["jobs"] == {"1": 3} and fencing["monitors"] == {"1": "m3"}
    [refused] = fencing["fenced"]
    assert refused["kind"] == "spare" and refused["server"] == "enc1-bay9"
    assert (refused["monitor"], refused["job"], refused["epoch"], refused["highest"]) == ("m2", 1, 2, 3)
    last = (await lab.log())[-1]
    assert last["accepted"] is False and "stale fencing token" in last["detail"]
    assert (last["monitor"], last["job"], last["epoch"]) == ("m2", 1, 2)
    assert await lab.violations() == []  # refused, so nothing stale landed


@pytest.mark.parametrize(("method", "path", "body"), MANAGER_CALLS,
                         ids=["move", "spare", "host-delete", "host-put", "discover"])
async def test_every_manager_action_is_fenced(lab: Lab, method: str, path: str, body: Any) -> None:
    await lab.ok("PUT", "/api/v1/servers/enc2-bay9/spare", {"spare": True}, fence(4, 7, "new"))
    if "discover" in path:  # make discovery find something new
        await lab.ok("PUT", "/lab/v1/servers/enc1-bay7", {"power": "On"})
        await lab.ok("DELETE", "/api/v1/hosts/enc1-bay7")
    before = await lab.world()
    status, answer = await lab.call(method, path, body, fence(4, 6, "old"))
    assert status == 409 and answer["error"].startswith("stale fencing token: job 4 epoch 6 < 7"), answer
    assert await lab.world() == before
    assert len((await lab.ok("GET", "/lab/v1/fencing"))["fenced"]) == 1
    # the same call from the owner goes through
    await lab.ok(method, path, body, fence(4, 7, "new"))
    assert await lab.world() != before


async def test_bmc_reset_is_fenced_with_a_redfish_error(lab: Lab) -> None:
    await lab.ok("PUT", "/api/v1/servers/enc1-bay9/spare", {"spare": True}, fence(2, 5, "new"))
    status, body = await lab.reset("enc1-bay1", "ForceOff", fence(2, 4, "old"))
    assert status == 409
    [info] = body["error"]["@Message.ExtendedInfo"]
    assert info["MessageId"] == "Base.1.16.ResourceInUse"
    assert "stale fencing token: job 2 epoch 4 < 5 (monitor old)" in info["Message"]
    assert await lab.power("enc1-bay1") == "On"  # not even PoweringOff
    fenced = (await lab.ok("GET", "/lab/v1/fencing"))["fenced"]
    assert [(f["kind"], f["server"], f["action"]) for f in fenced] == [("reset", "enc1-bay1", "ForceOff")]
    # the fence is the lab's, not per front end: the BMC raises the epoch the manager then enforces
    assert (await lab.reset("enc1-bay1", "ForceOff", fence(2, 6, "newer")))[0] == 200
    status, body = await lab.call("PUT", "/api/v1/servers/enc1-bay9/spare", {"spare": False},
                                  fence(2, 5, "new"))
    assert status == 409 and "< 6" in body["error"]


async def test_jobs_are_fenced_independently(lab: Lab) -> None:
    spare = "/api/v1/servers/enc1-bay9/spare"
    await lab.ok("PUT", spare, {"spare": True}, fence(1, 9))
    await lab.ok("PUT", spare, {"spare": True}, fence(2, 1))  # job 2 has its own epochs
    await lab.ok("PUT", spare, {"spare": True}, fence(3, 0))
    assert (await lab.call("PUT", spare, {"spare": True}, fence(2, 0)))[0] == 409
    assert (await lab.call("PUT", spare, {"spare": True}, fence(1, 8)))[0] == 409
    await lab.ok("PUT", spare, {"spare": True}, fence(2, 1))
    assert (await lab.ok("GET", "/lab/v1/fencing"))["jobs"] == {"1": 9, "2": 1, "3": 0}


MALFORMED = [
    "job=1; epoch=2",
    "job=1; epoch=2; monitor=",
    "job=x; epoch=2; monitor=m1",
    "job=1; epoch=-2; monitor=m1",
    "job=1; epoch=2; monitor=m 1",
    "job=1; job=2; epoch=2; monitor=m1",
    "job=1; epoch=2; monitor=m1; extra=3",
    "garbage",
    "",
]


@pytest.mark.parametrize("value", MALFORMED)
async def test_a_malformed_header_is_400_and_changes_nothing(lab: Lab, value: str) -> None:
    before = await lab.world()
    status, body = await lab.call("PUT", "/api/v1/servers/enc1-bay9/spare", {"spare": False}, {HEADER: value})
    assert status == 400 and HEADER in body["error"], body
    status, body = await lab.reset("enc1-bay1", "ForceOff", {HEADER: value})
    assert status == 400
    assert body["error"]["@Message.ExtendedInfo"][0]["MessageId"] == "Base.1.16.HeaderInvalid"
    assert await lab.world() == before and await lab.power("enc1-bay1") == "On"
    assert await lab.log() == []
    assert (await lab.ok("GET", "/lab/v1/fencing"))["jobs"] == {}
    await lab.ok("GET", "/api/v1/servers/enc1-bay9", None, {HEADER: value})  # reads ignore it


async def test_two_headers_are_400(lab: Lab) -> None:
    headers = [(HEADER, "job=1; epoch=2; monitor=m1"), (HEADER, "job=1; epoch=3; monitor=m1")]
    async with lab.session.put(lab.sim.manager_url + "/api/v1/servers/enc1-bay9/spare",
                               json={"spare": False}, headers=headers) as r:
        assert r.status == 400 and "at most once" in (await r.json())["error"]


async def test_no_header_is_accepted_and_logged_without_a_token(lab: Lab) -> None:
    spare = "/api/v1/servers/enc1-bay9/spare"
    await lab.ok("PUT", spare, {"spare": True}, fence(1, 9))
    await lab.ok("PUT", spare, {"spare": False})  # a hand-made request: no header
    assert (await lab.reset("enc1-bay1", "ForceOff"))[0] == 200
    entries = await lab.log()
    assert [(e["monitor"], e["job"], e["epoch"]) for e in entries] == [("m1", 1, 9), (None, None, None),
                                                                       (None, None, None)]
    assert all(e["accepted"] for e in entries)
    assert await lab.violations() == []


async def test_the_log_carries_monitor_job_epoch_and_time(lab: Lab) -> None:
    token = fence(12, 3, "monitor-a")
    assert (await lab.reset("enc1-bay7", "On", token))[0] == 200
    await lab.ok("PUT", "/api/v1/servers/enc1-bay9/spare", {"spare": False}, token)
    await lab.ok("DELETE", "/api/v1/hosts/enc1-bay1", None, token)
    await lab.ok("PUT", "/api/v1/hosts/enc1-bay1", {"name": "h", "ip": "10.1.0.1"}, token)
    await lab.ok("POST", "/api/v1/discover/enc1-bay2", None, token)
    await lab.ok("POST", "/api/v1/profiles/prof-enc2-bay3/move", {"from": "enc2-bay3", "to": "enc2-bay9"},
                 token)
    assert (await lab.call("POST", "/api/v1/profiles/nope/move", {"from": "enc1-bay1", "to": "enc1-bay9"},
                           token))[0] == 404
    entries = await lab.log()
    assert [e["kind"] for e in entries] == ["reset", "spare", "host", "host", "discover", "move", "move"]
    assert [e["accepted"] for e in entries] == [True] * 6 + [False]  # the 404 is logged too
    for e in entries:
        assert set(e) == {"time", "kind", "server", "detail", "accepted", "monitor", "job", "epoch"}
        assert (e["monitor"], e["job"], e["epoch"]) == ("monitor-a", 12, 3)
        assert isinstance(e["time"], float)
    assert [e["time"] for e in entries] == sorted(e["time"] for e in entries)


async def test_one_epoch_from_two_monitors_passes_but_is_a_violation(lab: Lab) -> None:
    spare = "/api/v1/servers/enc1-bay9/spare"
    await lab.ok("PUT", spare, {"spare": True}, fence(6, 2, "m1"))
    await lab.ok("PUT", spare, {"spare": True}, fence(6, 2, "m1"))
    assert await lab.violations() == []
    await lab.ok("PUT", spare, {"spare": True}, fence(6, 2, "m2"))
    [v] = await lab.violations()
    assert (v["kind"], v["monitor"], v["job"], v["epoch"]) == ("epoch_shared", "m2", 6, 2)
    assert "used by m2 and by m1" in v["detail"]


# --- the `record` mode and the oracle ---------------------------------------------------------------------


async def test_record_mode_lets_a_stale_action_through_and_the_oracle_catches_it() -> None:
    async with (
        LabSimulator(config(fencing="record")) as sim,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as session,
    ):
        lab = Lab(sim, session)
        spare = "/api/v1/servers/enc1-bay9/spare"
        await lab.ok("PUT", spare, {"spare": True}, fence(5, 2, "adopter"))
        assert (await lab.ok("PUT", spare, {"spare": False}, fence(5, 1, "paused")))["spare"] is False
        assert (await lab.reset("enc1-bay1", "ForceOff", fence(5, 1, "paused")))[0] == 200
        [v1, v2] = await lab.violations()
        assert (v1["kind"], v1["servers"], v1["monitor"], v1["job"], v1["epoch"]) == (
            "stale_epoch", ["enc1-bay9"], "paused", 5, 1)
        assert "after epoch 2 (adopter)" in v1["detail"]
        assert (v2["kind"], v2["servers"]) == ("stale_epoch", ["enc1-bay1"])
        fencing = await lab.ok("GET", "/lab/v1/fencing")
        assert fencing["mode"] == "record" and fencing["fenced"] == [] and fencing["jobs"] == {"5": 2}
        # a stale request that does not take effect (refused for its own reason) is no violation
        assert (await lab.reset("enc1-bay9", "ForceOff", fence(5, 1, "paused")))[0] == 400  # already Off
        assert len(await lab.violations()) == 2


async def test_fencing_mode_switch_and_the_clear_calls(lab: Lab) -> None:
    spare = "/api/v1/servers/enc1-bay9/spare"
    await lab.ok("PUT", spare, {"spare": True}, fence(1, 2))
    assert (await lab.ok("PUT", "/lab/v1/fencing", {"mode": "record"}))["mode"] == "record"
    await lab.ok("PUT", spare, {"spare": False}, fence(1, 1))  # let through, recorded
    assert [v["kind"] for v in await lab.violations()] == ["stale_epoch"]
    await lab.ok("PUT", "/lab/v1/fencing", {"mode": "enforce"})
    assert (await lab.call("PUT", spare, {"spare": False}, fence(1, 1)))[0] == 409
    assert (await lab.call("PUT", "/lab/v1/fencing", {"mode": "off"}))[0] == 400
    assert await lab.ok("DELETE", "/lab/v1/violations") == {"cleared": 1}
    assert await lab.ok("DELETE", "/lab/v1/log") == {"cleared": 3}
    assert await lab.ok("DELETE", "/lab/v1/fencing") == {"cleared": 1}
    assert await lab.violations() == [] and await lab.log() == []
    assert await lab.ok("GET", "/lab/v1/fencing") == {"mode": "enforce", "jobs": {}, "monitors": {},
                                                      "fenced": []}
    await lab.ok("PUT", spare, {"spare": False}, fence(1, 1))  # job 1 starts afresh


@pytest.mark.parametrize("power", ["On", "PoweringOff", "PoweringOn"])
async def test_a_move_off_a_server_not_off_is_let_through_and_recorded(lab: Lab, power: str) -> None:
    source = "enc1-bay7"  # a powered-off production blade: bring it to `power`
    await lab.ok("PUT", "/lab/v1/latency", {"power_off_s": 30, "power_on_s": 30})
    if power == "On":
        await lab.ok("PUT", f"/lab/v1/servers/{source}", {"power": "On"})
    elif power == "PoweringOff":
        await lab.ok("PUT", f"/lab/v1/servers/{source}", {"power": "On"})
        assert (await lab.reset(source, "ForceOff"))[0] == 200
    else:
        assert (await lab.reset(source, "On"))[0] == 200
    assert await lab.power(source) == power
    moved = await lab.ok("POST", "/api/v1/profiles/prof-enc1-bay7/move",
                         {"from": source, "to": "enc1-bay9"}, fence(3, 1, "m1"))
    assert moved == {"id": "prof-enc1-bay7", "server": "enc1-bay9"}  # a manager that does not check
    [v] = await lab.violations()
    assert v["kind"] == "move_off_running" and v["profile"] == "prof-enc1-bay7"
    assert v["servers"] == ["enc1-bay7", "enc1-bay9"]
    assert (v["monitor"], v["job"], v["epoch"]) == ("m1", 3, 1)
    assert f"while enc1-bay7 is {power}" in v["detail"]


async def test_a_move_off_an_off_server_is_no_violation(lab: Lab) -> None:
    await lab.ok("POST", "/api/v1/profiles/prof-enc1-bay7/move", {"from": "enc1-bay7", "to": "enc1-bay9"},
                 fence(3, 1))
    await lab.ok("POST", "/api/v1/profiles/prof-enc1-bay7/move", {"from": "enc1-bay9", "to": "enc1-bay7"},
                 fence(3, 1))
    assert (await lab.reset("enc1-bay7", "On", fence(3, 1)))[0] == 200
    await lab.wait_power("enc1-bay7", "On")
    assert await lab.violations() == []


async def test_a_power_on_while_the_previous_holder_reads_on_is_recorded(lab: Lab) -> None:
    # the correct sequence up to the move ...
    token = fence(8, 2, "m2")
    assert (await lab.reset("enc1-bay1", "ForceOff", token))[0] == 200
    await lab.wait_power("enc1-bay1", "Off")
    await lab.ok("POST", "/api/v1/profiles/prof-enc1-bay1/move", {"from": "enc1-bay1", "to": "enc1-bay9"},
                 token)
    assert await lab.violations() == []
    # ... then the source comes back On (an operator, a BMC's auto power-on) before the spare's power-on
    await lab.ok("PUT", "/lab/v1/servers/enc1-bay1", {"power": "On"})
    await lab.ok("PUT", "/lab/v1/latency", {"power_on_s": 30})
    assert (await lab.reset("enc1-bay9", "On", token))[0] == 200
    [v] = await lab.violations()  # recorded as it happens: the spare is only PoweringOn
    assert await lab.power("enc1-bay9") == "PoweringOn"
    assert v["kind"] == "power_on_while_previous_runs" and v["profile"] == "prof-enc1-bay1"
    assert v["servers"] == ["enc1-bay1", "enc1-bay9"]
    assert (v["monitor"], v["job"], v["epoch"]) == ("m2", 8, 2)
    assert "enc1-bay1, where it was moved from, is On" in v["detail"]


async def test_shared_identity_names_the_power_on_that_caused_it(lab: Lab) -> None:
    await lab.ok("POST", "/api/v1/profiles/prof-enc1-bay1/move", {"from": "enc1-bay1", "to": "enc1-bay9"})
    assert (await lab.reset("enc1-bay9", "On", fence(9, 1, "m9")))[0] == 200
    await lab.wait_power("enc1-bay9", "On")
    kinds = {v["kind"]: v for v in await lab.violations()}
    assert list(kinds) == ["move_off_running", "power_on_while_previous_runs", "shared_identity"]
    assert kinds["move_off_running"]["monitor"] is None  # the move was hand-made
    shared = kinds["shared_identity"]
    assert (shared["monitor"], shared["job"], shared["epoch"]) == ("m9", 9, 1)


# --- the monitor's lab adapter ------------------------------------------------------------------------------


@pytest.fixture
async def client(sim: LabSimulator) -> AsyncIterator[LabClient]:
    c = LabClient(sim.manager_url, timeout=5.0)
    yield c
    await c.close()


def valid_fence(job: int, epoch: int, monitor: str = "m1") -> Fence:
    return Fence(job=job, epoch=epoch, monitor=monitor, valid=lambda: True)


async def test_lab_client_sends_the_fence_of_the_current_action(lab: Lab, client: LabClient) -> None:
    manager, discovery = LabManager(client), LabDiscovery(client)
    with acting(valid_fence(7, 3, "m1")):
        await manager.set_spare("enc1-bay9", False)
        record = await discovery.remove_host("enc1-bay7")
        assert record is not None
        await manager.move_profile("prof-enc1-bay7", "enc1-bay7", "enc1-bay9")
        await discovery.restore_host("enc1-bay7", HostRecord("host17.lab.example", "10.1.0.7"))
        await discovery.discover("enc1-bay9")
        assert (await manager.server("enc1-bay9")).profile == "prof-enc1-bay7"  # reads go as before
    await manager.set_spare("enc1-bay10", False)  # outside an action: no header
    entries = await lab.log()
    assert [(e["kind"], e["monitor"], e["job"], e["epoch"]) for e in entries] == [
        ("spare", "m1", 7, 3), ("host", "m1", 7, 3), ("move", "m1", 7, 3), ("host", "m1", 7, 3),
        ("discover", "m1", 7, 3), ("spare", None, None, None),
    ]
    assert (await lab.ok("GET", "/lab/v1/fencing"))["jobs"] == {"7": 3}


async def test_lab_client_stops_an_invalid_fence_before_sending(lab: Lab, client: LabClient) -> None:
    manager, discovery = LabManager(client), LabDiscovery(client)
    before = await lab.world()
    lost = Fence(job=7, epoch=3, monitor="m1", valid=lambda: False)
    with acting(lost):
        with pytest.raises(FenceLost):
            await manager.set_spare("enc1-bay9", False)
        with pytest.raises(FenceLost):
            await manager.move_profile("prof-enc1-bay7", "enc1-bay7", "enc1-bay9")
        with pytest.raises(FenceLost):
            await discovery.remove_host("enc1-bay1")
        with pytest.raises(FenceLost):
            await discovery.discover("enc1-bay1")
        assert (await manager.server("enc1-bay9")).spare is True  # a read is not an action
    assert await lab.log() == []
    assert await lab.world() == before
    assert (await lab.ok("GET", "/lab/v1/fencing"))["jobs"] == {}  # the lab never saw the token


async def test_lab_client_maps_a_stale_fence_refusal(lab: Lab, client: LabClient) -> None:
    manager = LabManager(client)
    with acting(valid_fence(7, 4, "adopter")):
        await manager.set_spare("enc1-bay9", True)
    with acting(valid_fence(7, 3, "paused")), pytest.raises(FenceRejected) as caught:
        await manager.set_spare("enc1-bay9", False)
    assert not isinstance(caught.value, OperationRejected)  # not an adapter error: the job stops
    assert "stale fencing token: job 7 epoch 3 < 4 (monitor paused)" in str(caught.value)
    assert (await manager.server("enc1-bay9")).spare is True
    # any other 409 stays a plain OperationRejected
    with acting(valid_fence(7, 4, "adopter")), pytest.raises(OperationRejected) as other:
        await manager.move_profile("prof-enc1-bay7", "enc1-bay1", "enc1-bay9")
    assert not isinstance(other.value, FenceRejected) and other.value.status == 409


async def test_a_new_owners_first_read_fences_out_a_paused_former_owner(lab: Lab, client: LabClient) -> None:
    """The adopter of job 7 (epoch 2) only reads the world (a fail-safe end touches nothing): its reads
    carry its token, so the former owner's ForceOff under epoch 1, sent after it woke from a pause, is
    refused by the BMC, although the adopter never acted on that BMC."""
    with observing(valid_fence(7, 2, "m2")):
        await LabManager(client).profile("prof-enc1-bay1")  # a read: never refused, never an action
    assert (await lab.ok("GET", "/lab/v1/fencing"))["jobs"] == {"7": 2}
    status, body = await lab.reset("enc1-bay1", "ForceOff", fence(7, 1, "m1"))
    assert status == 409, body
    assert await lab.power("enc1-bay1") == "On"
    with observing(valid_fence(7, 1, "m1")):  # an older epoch's read changes nothing
        await LabManager(client).profile("prof-enc1-bay1")
    assert (await lab.ok("GET", "/lab/v1/fencing"))["jobs"] == {"7": 2} and await lab.violations() == []


async def test_an_unchanged_inventory_is_not_read_again(sim: LabSimulator, client: LabClient) -> None:
    """The lab's inventory carries a strong ETag; the adapter asks with If-None-Match, and a 304 hands
    back the same Inventory object, so the daemon's view keeps it and builds nothing on it again."""
    url = sim.manager_url + "/api/v1/inventory"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as r:
            etag = r.headers["ETag"]
            assert r.status == 200 and etag.startswith('"')
        async with http.get(url, headers={"If-None-Match": f'"other", {etag}'}) as r:
            assert r.status == 304 and await r.read() == b""
    manager = LabManager(client)
    view = InventoryView(SystemClock(), Metrics(), timeout=5.0, interval=30.0)
    await view.refresh(manager)
    first = view.current()
    assert first is not None and first.servers["enc1-bay9"].profile is None
    await view.refresh(manager)
    assert view.current() is first
    assert await manager.inventory() is first
    await manager.move_profile("prof-enc1-bay7", "enc1-bay7", "enc1-bay9")
    await view.refresh(manager)
    changed = view.current()
    assert changed is not first and changed is not None
    assert changed.servers["enc1-bay9"].profile == "prof-enc1-bay7"
    async with aiohttp.ClientSession() as http, http.get(url, headers={"If-None-Match": etag}) as r:
        assert r.status == 200 and r.headers["ETag"] != etag


async def test_the_view_keeps_its_inventory_when_an_equal_one_arrives(client: LabClient) -> None:
    """A manager without ETags (OneView's and OME's collections are rebuilt per read) hands back a
    new but equal Inventory: the view keeps the object it has."""
    fresh = LabManager(client)
    view = InventoryView(SystemClock(), Metrics(), timeout=5.0, interval=30.0)
    await view.refresh(fresh)
    first = view.current()
    await view.refresh(LabManager(client))  # a new adapter: no ETag known, a full read
    assert view.current() is first
