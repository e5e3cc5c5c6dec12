"""Acting on the right machine: the inventory names each server's BMC system (a URL with a Systems path,
or `system:`), a service with several systems is never acted on without one, the system's serial
number and UUID are checked before every power action, mutating requests carry the fencing header and
are checked right before they are sent, and events from a BMC service several servers share are
attributed by their OriginOfCondition. Against sushy-tools' emulator with several systems (fake driver),
the in-process lab (a BMC that reports SerialNumber), and `check-config`."""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import yaml

from adapters.redfish.client import check_identity
from adapters.redfish.listener import bmc_token
from adapters.redfish.payload import parse_event_payload
from adapters.redfish.power import RedfishPower
from lab.main import LabSimulator
from monitor.app.cli import main
from monitor.core.config import MonitorConfig
from monitor.core.errors import AdapterError, FenceLost, FenceRefused, IdentityMismatch
from monitor.core.events import Event
from monitor.core.fencing import FENCE_HEADER, Fence, acting
from monitor.core.inventory_file import load_inventory_file
from monitor.core.model import BmcEndpoint, Inventory, PowerState, Server
from monitor.pipeline.resolve import (
    AMBIGUOUS_ORIGIN,
    AMBIGUOUS_SENDER,
    HPE_SERVER_SERIAL,
    UNKNOWN_SYSTEM,
    Resolver,
)
from tests.integration.test_pipeline import wait_decisions
from tests.peers.sushy import SushyPeer, start_sushy
from tests.support.harness import DaemonFactory

pytestmark = pytest.mark.slow

U1, U2, U3, U4 = (str(uuid.UUID(int=0xB1DE0000 + i)) for i in (1, 2, 3, 4))
SYSTEMS = [
    {"uuid": U1, "name": "bay1", "power_state": "On", "nics": [{"mac": "00:5c:52:31:3b:01"}]},
    {"uuid": U2, "name": "bay2", "power_state": "On", "nics": [{"mac": "00:5c:52:31:3b:02"}]},
    {"uuid": U3, "name": "bay3", "power_state": "Off", "nics": [{"mac": "00:5c:52:31:3b:03"}]},
    {"uuid": U4, "name": "bay4", "power_state": "On", "nics": [{"mac": "00:5c:52:31:3b:04"}]},
]
POLL_DEADLINE = 25.0  # sushy applies a reset after a random 1-11 s
RESET = "/Actions/ComputerSystem.Reset"


@dataclass(frozen=True, slots=True)
class Sent:
    method: str
    path: str
    headers: dict[str, str]


class Recorder:
    """An aiohttp session that records every request the adapter sends (what reached the wire)."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(self._start)
        self.session = aiohttp.ClientSession(trace_configs=[trace])

    async def _start(self, _session: aiohttp.ClientSession, _ctx: SimpleNamespace,
                     params: aiohttp.TraceRequestStartParams) -> None:
        self.sent.append(Sent(params.method, params.url.path, dict(params.headers)))

    def posts(self) -> list[Sent]:
        return [s for s in self.sent if s.method == "POST"]


@pytest.fixture
async def sushy(tmp_path: Path) -> AsyncIterator[SushyPeer]:
    async with start_sushy(tmp_path, SYSTEMS) as peer:
        yield peer


@pytest.fixture
async def wire() -> AsyncIterator[tuple[RedfishPower, Recorder]]:
    recorder = Recorder()
    power = RedfishPower(timeout=5.0, session=recorder.session)
    try:
        yield power, recorder
    finally:
        await power.close()
        await recorder.session.close()


def server(sid: str, bmc: BmcEndpoint | None, **extra: Any) -> Server:
    return Server(sid, "dg1", "vcd1", "enc1", int(sid[-1]), "ProLiant BL460c Gen8", bmc=bmc, **extra)


def at(peer: SushyPeer, path: str = "", **extra: Any) -> BmcEndpoint:
    return BmcEndpoint(peer.url + path, peer.username, peer.password, verify_tls=False, **extra)


async def states(peer: SushyPeer) -> dict[str, PowerState]:
    """Every sushy system's power state, read through endpoints naming each (a separate adapter)."""
    reader = RedfishPower(timeout=5.0)
    try:
        return {u: await reader.power_state(server(f"x{i}", at(peer, system=u)))
                for i, u in enumerate(peer.system_ids())}
    finally:
        await reader.close()


async def wait_power(peer: SushyPeer, system: str, goal: PowerState) -> None:
    deadline = time.monotonic() + POLL_DEADLINE
    while (now := (await states(peer))[system]) is not goal:
        assert time.monotonic() < deadline, f"{system} still {now.value} (wanted {goal.value})"
        await asyncio.sleep(0.5)


# --- the system named by the URL's path --------------------------------------------------------------


async def test_path_form_url_acts_on_its_system(sushy: SushyPeer, wire: tuple[RedfishPower, Recorder],
                                                tmp_path: Path) -> None:
    """`url: https://H:P/redfish/v1/Systems/ID` without `system:`: ForceOff reaches system 2 and no
    other (on main it went to the first system the service lists: system 1)."""
    power, recorder = wire
    inv = tmp_path / "inv.yaml"
    systems = f"{sushy.url}/redfish/v1/Systems"
    inv.write_text(yaml.safe_dump(inventory_doc(sushy, {1: {"url": f"{systems}/{U1}"},
                                                        2: {"url": f"{systems}/{U2}/"}})))
    servers = load_inventory_file(inv).servers
    bay2 = servers["enc1-bay2"]
    assert bay2.bmc is not None and bay2.bmc.url == sushy.url
    assert bay2.bmc.system == f"/redfish/v1/Systems/{U2}"
    assert await power.power_state(bay2) is PowerState.ON
    await power.force_off(bay2)
    assert [p.path for p in recorder.posts()] == [f"/redfish/v1/Systems/{U2}{RESET}"]
    await wait_power(sushy, U2, PowerState.OFF)
    now = await states(sushy)
    assert now[U1] is PowerState.ON and now[U4] is PowerState.ON  # the bystanders were not touched
    assert await power.power_state(servers["enc1-bay1"]) is PowerState.ON


async def test_no_system_named_on_a_multi_system_service_is_refused(
        sushy: SushyPeer, wire: tuple[RedfishPower, Recorder]) -> None:
    power, recorder = wire
    unnamed = server("enc1-bay1", at(sushy, "/redfish/v1/"))  # the service root: names no system
    assert unnamed.bmc is not None and unnamed.bmc.system is None
    for action in (power.force_off, power.power_on, power.power_state, power.health):
        with pytest.raises(AdapterError, match=r"lists 4 ComputerSystems .*names none: refusing to guess"):
            await action(unnamed)
    assert recorder.posts() == [] and {s.path for s in recorder.sent} == {"/redfish/v1/Systems"}
    assert await states(sushy) == {U1: PowerState.ON, U2: PowerState.ON, U3: PowerState.OFF,
                                   U4: PowerState.ON}


# --- identity: serial number and UUID ------------------------------------------------------------


async def test_serial_mismatch_is_refused_before_the_reset(sushy: SushyPeer,
                                                           wire: tuple[RedfishPower, Recorder]) -> None:
    """sushy's ComputerSystem reports no SerialNumber: an inventory serial is not confirmed, so nothing
    is sent; a UUID that differs is refused naming both values. Checked afresh before each action,
    also after a successful first contact."""
    power, recorder = wire
    with_serial = server("enc1-bay4", at(sushy, f"/redfish/v1/Systems/{U4}"), serial="SGH123XYZ")
    with pytest.raises(IdentityMismatch, match="reports no SerialNumber, the inventory says serial "
                                               "'SGH123XYZ'") as caught:
        await power.force_off(with_serial)
    assert caught.value.field == "serial" and caught.value.actual is None
    assert caught.value.endpoint == sushy.url

    right = server("enc1-bay4", at(sushy, f"/redfish/v1/Systems/{U4}"), uuid=U4)
    assert await power.power_state(right) is PowerState.ON  # first contact: the UUID matches (cached)
    wrong = replace(right, uuid=U1)  # the inventory now describes another machine
    for action in (power.force_off, power.power_on):
        with pytest.raises(IdentityMismatch) as caught:
            await action(wrong)
        assert U1 in str(caught.value) and U4 in str(caught.value)  # both values named
        assert (caught.value.expected, caught.value.actual) == (U1, U4)
    assert recorder.posts() == []  # refused before the reset was sent
    assert recorder.sent[-1].method == "GET" and recorder.sent[-1].path == f"/redfish/v1/Systems/{U4}"
    assert (await states(sushy))[U4] is PowerState.ON


async def test_uuid_match_passes_with_a_fresh_read_before_the_post(
        sushy: SushyPeer, wire: tuple[RedfishPower, Recorder]) -> None:
    power, recorder = wire
    spare = server("enc1-bay3", at(sushy, system="bay3"), uuid="{" + U3.upper() + "}")  # by name: a 307
    assert await power.power_state(spare) is PowerState.OFF
    before = len(recorder.sent)
    await power.power_on(spare)
    # the cached path is read again, the identity checked, and only then the reset is posted
    assert [(s.method, s.path) for s in recorder.sent[before:]] == [
        ("GET", f"/redfish/v1/Systems/{U3}"), ("POST", f"/redfish/v1/Systems/{U3}{RESET}")]
    await wait_power(sushy, U3, PowerState.ON)


async def test_mutating_requests_carry_the_fence_and_are_checked_before_sending(
        sushy: SushyPeer, wire: tuple[RedfishPower, Recorder]) -> None:
    power, recorder = wire
    target = server("enc1-bay1", at(sushy, f"/redfish/v1/Systems/{U1}"), uuid=U1)
    lost = Fence(job=7, epoch=2, monitor="m1", valid=lambda: False)
    with acting(lost), pytest.raises(FenceLost):  # not an AdapterError: it propagates as is
        await power.force_off(target)
    assert recorder.posts() == [] and recorder.sent[-1].method == "GET"  # reads are not fenced
    assert not issubclass(FenceLost, AdapterError)
    with acting(Fence(job=7, epoch=3, monitor="m1", valid=lambda: True)):
        await power.force_off(target)
    (post,) = recorder.posts()
    assert post.headers[FENCE_HEADER] == "job=7; epoch=3; monitor=m1"
    assert all(FENCE_HEADER not in s.headers for s in recorder.sent if s.method == "GET")
    await wait_power(sushy, U1, PowerState.OFF)


async def test_serial_mismatch_against_a_bmc_that_reports_one(lab: LabSimulator) -> None:
    """The lab's BMCs report SerialNumber and UUID (as the manager does): a match passes, case-insensitive;
    another serial is refused naming both."""
    async with aiohttp.ClientSession() as http, http.get(lab.manager_url + "/api/v1/servers/enc1-bay1") as r:
        data = await r.json()
    bmc = BmcEndpoint(data["bmc"]["url"], data["bmc"]["username"], data["bmc"]["password"], verify_tls=False)
    real = server("enc1-bay1", bmc, serial=data["serial_number"].lower(), uuid=data["uuid"].upper())
    power = RedfishPower(timeout=5.0)
    try:
        assert await power.power_state(real) is PowerState.ON
        with pytest.raises(IdentityMismatch) as caught:
            await power.force_off(replace(real, serial="CZJ0000000"))
        assert f"SerialNumber {data['serial_number']!r}" in str(caught.value)
        assert "'CZJ0000000'" in str(caught.value)
        assert await power.power_state(real) is PowerState.ON
    finally:
        await power.close()


async def test_a_stale_fence_refused_by_the_bmc_stops_the_action(lab: LabSimulator) -> None:
    """The lab's BMC refuses a reset under an epoch older than one it has seen for the job (409
    ResourceInUse): FenceRefused, not an adapter error and never the "already in that state" quirk."""
    async with aiohttp.ClientSession() as http, http.get(lab.manager_url + "/api/v1/servers/enc1-bay1") as r:
        data = await r.json()
    bmc = BmcEndpoint(data["bmc"]["url"], data["bmc"]["username"], data["bmc"]["password"], verify_tls=False)
    blade = server("enc1-bay1", bmc, serial=data["serial_number"], uuid=data["uuid"])
    power = RedfishPower(timeout=5.0)
    try:
        with acting(Fence(job=9, epoch=5, monitor="adopter", valid=lambda: True)):
            await power.power_on(blade)  # already On: the quirk, treated as done; the lab saw epoch 5
        with acting(Fence(job=9, epoch=4, monitor="paused", valid=lambda: True)), \
                pytest.raises(FenceRefused, match="stale fencing token: job 9 epoch 4 < 5"):
            await power.force_off(blade)
        assert await power.power_state(blade) is PowerState.ON
    finally:
        await power.close()


def test_identity_rules() -> None:
    s = server("enc1-bay1", None, serial="abc123", uuid="{0000ABCD-0000-4000-8000-000000000001}")
    ok = {"SerialNumber": "ABC123", "UUID": "0000abcd-0000-4000-8000-000000000001"}
    check_identity(s, ok, endpoint="e", path="p")
    check_identity(s, {**ok, "SerialNumber": "board-1", "SKU": " ABC123 "}, endpoint="e", path="p")  # Dell
    for bad, field in (({**ok, "SerialNumber": "X"}, "serial"), ({**ok, "UUID": None}, "uuid"),
                       ({"UUID": ok["UUID"]}, "serial"), ({**ok, "UUID": "0000abcd"}, "uuid")):
        with pytest.raises(IdentityMismatch) as caught:
            check_identity(s, bad, endpoint="e", path="p")
        assert caught.value.field == field
    check_identity(server("enc1-bay1", None), {}, endpoint="e", path="p")  # nothing given: nothing checked


# --- events from a BMC service several servers share ---------------------------------------------------


def shared_inventory(base: str = "https://bmc.example:8443") -> Inventory:
    bmc = BmcEndpoint(base, "u", "p")
    servers = {
        "enc1-bay1": server("enc1-bay1", replace(bmc, system=f"/redfish/v1/Systems/{U1}"), uuid=U1,
                            management_addresses=("192.0.2.50",), serial="SER1"),
        "enc1-bay2": server("enc1-bay2", replace(bmc, system="bay2"), uuid=U2,
                            management_addresses=("192.0.2.50",), serial="SER2"),
        "enc1-bay4": server("enc1-bay4", replace(bmc, system=U4)),
        "enc1-bay5": server("enc1-bay5", BmcEndpoint("https://bmc.example:9443", "u", "p", system="1")),
    }
    return Inventory({}, {}, {}, servers, {})


def redfish_event(origin: object, service: str = "https://bmc.example:8443") -> Event:
    body = {"Events": [{"MessageId": "iLOEvents.2.3.ProcessorStatusFailed", "OriginOfCondition": origin}]}
    (event,) = parse_event_payload(body, sender="bmc.example", source="redfish", received=time_now(),
                                   service=service)
    return event


def time_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def test_events_are_attributed_by_origin_of_condition() -> None:
    r = Resolver(shared_inventory())
    cases: list[tuple[object, str | None, str | None]] = [
        ({"@odata.id": f"/redfish/v1/Systems/{U2}/Processors/1"}, "enc1-bay2", None),  # by UUID
        (f"/redfish/v1/Systems/{U1}", "enc1-bay1", None),
        ("/redfish/v1/Systems/bay2/Memory/3", "enc1-bay2", None),  # by the system's name
        (f"https://bmc.example:8443/redfish/v1/Systems/{U4}/Bios", "enc1-bay4", None),
        (None, None, AMBIGUOUS_ORIGIN),  # never the first server
        ("/redfish/v1/Chassis/1", None, AMBIGUOUS_ORIGIN),
        ("/redfish/v1/Systems/somebody-else", None, UNKNOWN_SYSTEM),
    ]
    for origin, want, reason in cases:
        got = r.attribute(redfish_event(origin))
        assert (got.server, got.reason) == (want, reason), (origin, got)
    # another service on the same host: its own single server, whatever the host's other servers
    other = r.attribute(redfish_event("/redfish/v1/Systems/1/Processors/2", service="https://BMC.example:9443"))
    assert other.server == "enc1-bay5"
    assert r.attribute(redfish_event("/redfish/v1/Systems/2", "https://bmc.example:9443")).reason \
        == UNKNOWN_SYSTEM


def test_traps_from_a_shared_address_need_an_identifying_varbind() -> None:
    r = Resolver(shared_inventory())
    now = time_now()
    bare = r.attribute(Event(source="snmp", time=now, sender="192.0.2.50", trap_oid="1.3.6.1.4.1.232.0.1026"))
    assert bare.server is None and bare.reason == AMBIGUOUS_SENDER and "enc1-bay1, enc1-bay2" in bare.how
    named = r.attribute(Event(source="snmp", time=now, sender="192.0.2.50", trap_oid="1.3.6.1.4.1.232.0.1026",
                              varbinds={HPE_SERVER_SERIAL: "ser2"}))
    assert named.server == "enc1-bay2"
    # the health poller names its server; a server outside the shared address is not accepted
    polled = Event(source="redfish-poll", time=now, sender="192.0.2.50", server="enc1-bay1")
    assert r.attribute(polled).server == "enc1-bay1"
    assert r.attribute(polled.model_copy(update={"server": "enc1-bay5"})).server is None
    # a Redfish event posted with the shared sender but no service: its origin decides
    posted = Event(source="redfish", time=now, sender="192.0.2.50", origin=f"/redfish/v1/Systems/{U2}")
    assert r.attribute(posted).server == "enc1-bay2"


# --- through the daemon: an event for bay 2 fences bay 2 ------------------------------------------------


def inventory_doc(peer: SushyPeer, bmcs: dict[int, dict[str, Any]],
                  extra: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    products = {1: "ProLiant BL460c Gen8", 2: "ProLiant BL460c Gen8", 3: "ProLiant BL460c Gen9",
                4: "ProLiant BL460c Gen8"}
    servers = []
    for bay, bmc in sorted(bmcs.items()):
        entry: dict[str, Any] = {"bay": bay, "product": products[bay], **(extra or {}).get(bay, {}),
                                 "bmc": {"username": peer.username, "password": peer.password,
                                         "verify_tls": False, **bmc}}
        servers.append(entry)
    return {"domain_groups": [{"id": "dg1", "domains": [{"id": "vcd-enc1", "status": "ok", "enclosures": [
        {"id": "enc1", "servers": servers}]}]}]}


SECRET = "bmc-identity-secret"
RULES = {"rules": [{"id": "cpu-failed", "action": "failover", "source": "redfish",
                    "match": {"message_id": "iLOEvents.*.ProcessorStatusFailed"}}],
         "guards": {"storm": None, "rate_limit": None}}


async def test_an_event_for_bay_2_fences_bay_2(sushy: SushyPeer, start_daemon: DaemonFactory, tmp_path: Path,
                                               token: str) -> None:
    systems = {1: U1, 2: U2, 3: U3, 4: U4}
    urls = {b: {"url": f"{sushy.url}/redfish/v1/Systems/{u}"} for b, u in systems.items()}
    doc = inventory_doc(sushy, urls,
                        {1: {"profile": "web01", "uuid": U1}, 2: {"profile": "db01", "uuid": U2},
                         3: {"spare": True, "uuid": U3}, 4: {"profile": "app01", "uuid": U4}})
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump(doc))
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(RULES))
    h = await start_daemon(MonitorConfig.model_validate({
        "http": {"listen": "127.0.0.1:0", "token": token},
        "store": str(tmp_path / "m.db"),
        "inventory": {"source": "static", "file": str(tmp_path / "inventory.yaml")},
        "redfish": {"timeout": 10},
        "redfish_events": {"secret": SECRET, "poll_interval": 0},
        "rules": {"builtin": False, "files": [str(tmp_path / "rules.yaml")]},
        # sushy's systems always read Health OK: attribution is under test here, not confirmation.
        "failover": {"poll_interval": 0.25, "power_off_timeout": 25, "power_on_timeout": 25,
                     "rediscovery": {"delay": 0}, "confirm": "never"},
    }))
    listener = f"/api/v1/events/redfish/{bmc_token(SECRET, sushy.url)}"

    def event(origin: str | None) -> dict[str, Any]:
        record: dict[str, Any] = {"MessageId": "iLOEvents.2.3.ProcessorStatusFailed", "Severity": "Critical",
                                  "EventType": "Alert"}
        if origin:
            record["OriginOfCondition"] = {"@odata.id": origin}
        return {"@odata.type": "#Event.v1_3_0.Event", "Events": [record]}

    # No OriginOfCondition: four servers share the service, none is named: unresolved, nothing fails over.
    status, _ = await h.api("POST", listener, event(None), token=None)
    assert status == 204
    await wait_decisions(h, 1)
    status, rows = await h.api("GET", "/api/v1/decisions?limit=5")
    assert status == 200 and rows[0]["server"] is None and "unknown server" in rows[0]["guard"]
    assert h.jobs == {}
    _, metrics = await h.api("GET", "/metrics")
    assert 'events_unresolved_total{reason="ambiguous_origin",source="redfish"} 1' in metrics

    status, _ = await h.api("POST", listener, event(f"/redfish/v1/Systems/{U2}/Processors/1"), token=None)
    assert status == 204
    await h.wait_for(lambda: any(j.server == "enc1-bay2" for j in h.jobs.values()), 10)
    (job_id,) = [j.id for j in h.jobs.values()]
    job = await h.wait_job(job_id, timeout=90)
    assert job["state"] == "completed" and job["server"] == "enc1-bay2" and job["spare"] == "enc1-bay3", job
    assert job["trigger"]["resolved_by"] == f"OriginOfCondition /redfish/v1/Systems/{U2}/Processors/1"
    now = await states(sushy)
    assert now == {U1: PowerState.ON, U2: PowerState.OFF, U3: PowerState.ON, U4: PowerState.ON}


# --- check-config ---------------------------------------------------------------------------------------


def check(tmp_path: Path, servers: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, Path]:
    inv = tmp_path / "inv.yaml"
    inv.write_text(
        "bmc_defaults: {username: a, password: b}\n"
        "domain_groups:\n"
        "  - id: dg1\n"
        "    domains:\n"
        "      - id: vcd1\n"
        "        enclosures:\n"
        "          - id: enc1\n"
        "            servers:\n" + servers)
    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"inventory:\n  source: static\n  file: {inv}\n")
    code = main(["check-config", "-c", str(cfg)])
    return code, capsys.readouterr().out, inv


S = "domain_groups[0].domains[0].enclosures[0].servers"


def test_check_config_rejects_ambiguous_bmc_systems(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out, inv = check(tmp_path, (
        "              - bay: 1\n"                                                                # 9
        "                product: ProLiant BL460c Gen8\n"
        "                bmc: https://10.0.0.5:8443/redfish/v1/Systems/1\n"                       # 11
        "              - bay: 2\n"
        "                product: ProLiant BL460c Gen8\n"
        "                bmc: {url: 'https://10.0.0.5:8443'}\n"                                   # 14
        "              - bay: 3\n"
        "                product: ProLiant BL460c Gen8\n"
        "                bmc: {url: 'https://10.0.0.5:8443/redfish/v1', system: /redfish/v1/Systems/1/}\n"
        "                serial: SGH1\n"                                                          # 18
        "              - bay: 4\n"
        "                product: ProLiant BL460c Gen8\n"
        "                bmc: {url: 'https://10.0.0.6/redfish/v1/Managers/1'}\n"                  # 21
        "              - bay: 5\n"
        "                product: ProLiant BL460c Gen8\n"
        "                bmc: {url: 'https://10.0.0.7/redfish/v1/Systems/2', system: '3'}\n"      # 24
        "              - bay: 6\n"
        "                product: ProLiant BL460c Gen8\n"
        "                serial: sgh1\n"                                                          # 27
    ), capsys)
    assert code == 1
    # the URL path and `system:` problems are found first (field errors)
    assert (f"{inv}:21: {S}[3].bmc.url: Value error, BMC URL path '/redfish/v1/Managers/1' is not a "
            "Systems member") in out
    assert (f"{inv}:24: {S}[4].bmc.system: Value error, system '3' disagrees with the BMC URL's "
            "system '2'") in out
    code, out, inv = check(tmp_path, (
        "              - bay: 1\n"
        "                product: ProLiant BL460c Gen8\n"
        "                bmc: https://10.0.0.5:8443/redfish/v1/Systems/1\n"                       # 11
        "              - bay: 2\n"
        "                product: ProLiant BL460c Gen8\n"
        "                bmc: {url: 'https://10.0.0.5:8443'}\n"                                   # 14
        "              - bay: 3\n"
        "                product: ProLiant BL460c Gen8\n"
        "                bmc: {url: 'https://10.0.0.5:8443/redfish/v1', system: /redfish/v1/Systems/1/}\n"
        "                serial: SGH1\n"                                                          # 18
        "              - bay: 6\n"
        "                product: ProLiant BL460c Gen8\n"
        "                serial: sgh1\n"                                                          # 21
    ), capsys)
    assert code == 1
    assert (f"{inv}:14: {S}[1].bmc: https://10.0.0.5:8443 serves 3 servers of this inventory "
            "(enc1-bay1, enc1-bay2, enc1-bay3): name the system of enc1-bay2") in out
    assert f"{inv}:17: {S}[2].bmc: BMC system '1' of https://10.0.0.5:8443 is also enc1-bay1's" in out
    assert f"{inv}:21: {S}[3].serial: serial 'sgh1' is also enc1-bay3's" in out
    assert len([line for line in out.splitlines() if line.startswith(str(inv))]) == 3


def test_check_config_accepts_named_systems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = check(tmp_path, (
        "              - bay: 1\n"
        "                product: ProLiant BL460c Gen8\n"
        "                bmc: https://10.0.0.5:8443/redfish/v1/Systems/1\n"
        "              - bay: 2\n"
        "                product: ProLiant BL460c Gen8\n"
        "                bmc: {url: 'https://10.0.0.5:8443/redfish/v1/Systems/2', system: '2'}\n"
        "                uuid: 30313233-3435-3637-3839-414243444546\n"
        "              - bay: 3\n"
        "                product: ProLiant BL460c Gen8\n"
        "                bmc: {url: 'https://10.0.0.5:8443/', system: /redfish/v1/Systems/3}\n"
        "              - bay: 4\n"
        "                product: ProLiant BL460c Gen8\n"
        "                bmc: https://10.0.0.6\n"
    ), capsys)
    assert code == 0, out
