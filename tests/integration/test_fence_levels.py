"""Fence levels (failover.fencing), each against a real peer, and the fall-through in whole failovers.

- `manager`: the lab's manager power API (fenced like its other mutating calls);
- `oa`: the lab's Onboard Administrators, an asyncssh server speaking the OA CLI (lab/oa_ssh.py);
- `ipmi`: OpenIPMI's ipmi_sim (tests/ipmi_peer.py), standalone: off, status, wrong password, no answer;
- `bmc`: the lab's Redfish BMCs (the existing adapter), dead under the lab's `bmc_down` fault.

Whole failovers through the daemon: a dead BMC falls through to the manager or the OA and the job
completes with every level's result in the step's detail; every level failing keeps the profile where it
is; the re-check before the move reads every level, and levels that cannot be read are not Off.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh
import pytest
from pydantic import ValidationError

from adapters.fence.ipmi import IpmiFence
from adapters.fence.oa_ssh import OaSsh
from adapters.lab_manager import FenceRejected, LabClient, LabManager
from adapters.redfish.power import RedfishPower
from lab.config import LabConfig
from lab.main import LabSimulator
from monitor.core.config import MonitorConfig
from monitor.core.errors import (
    AdapterError,
    AdapterTimeout,
    AdapterUnavailable,
    AuthenticationFailed,
    FenceLost,
    NotFound,
)
from monitor.core.fence_config import FencingConfig, IpmiSettings, OaSettings
from monitor.core.fence_levels import BmcLevel, FenceLevel, ManagerLevel, reads_off
from monitor.core.fencing import Fence, acting
from monitor.core.model import STEPS, BmcEndpoint, Job, PowerState, Server, StepState
from tests.integration.test_flow_lab import assert_unlocked, states
from tests.peers.ipmi import IpmiSim, start_ipmi_sim
from tests.support.harness import FAST_LATENCY, DaemonFactory, LabControl, monitor_config
from tests.support.wait import eventually

OA_USER, OA_PASSWORD = "Administrator", "oa-secret"


def valid_fence(job: int, epoch: int, monitor: str = "m1") -> Fence:
    return Fence(job=job, epoch=epoch, monitor=monitor, valid=lambda: True)


async def wait_state(level: FenceLevel, server: Server, want: PowerState, timeout: float = 5.0) -> None:
    """Poll a level until it reads `want` (the lab's power transitions take latency.power_off_s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (state := await level.power_state(server)) is not want:
        assert loop.time() < deadline, f"{level.name} still reads {state} for {server.id}"
        await asyncio.sleep(0.02)  # poll with a deadline


# --- the peers ---------------------------------------------------------------------------------------


@pytest.fixture
async def oa_lab() -> AsyncIterator[LabSimulator]:
    """The lab with an Onboard Administrator on enclosures 1 and 2."""
    cfg = LabConfig.model_validate({"listen": "127.0.0.1:0", "latency": FAST_LATENCY,
                                    "oa": {"enclosures": ["enc1", "enc2"], "username": OA_USER,
                                           "password": OA_PASSWORD}})
    async with LabSimulator(cfg) as sim:
        yield sim


@pytest.fixture
async def oa_control(oa_lab: LabSimulator) -> AsyncIterator[LabControl]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield LabControl(oa_lab.manager_url, s)


def known_hosts(sim: LabSimulator, tmp_path: Path) -> Path:
    assert sim.oa is not None
    path = tmp_path / "oa_known_hosts"
    path.write_text(sim.oa.known_hosts())
    return path


def oa_settings(sim: LabSimulator, **over: Any) -> OaSettings:
    assert sim.oa is not None
    enclosures = {e.enclosure: f"{e.host}:{e.port}" for e in sim.oa.endpoints.values()}
    spec: dict[str, Any] = {"username": OA_USER, "password": OA_PASSWORD, "enclosures": enclosures,
                            "accept_any_host_key": True, "request_timeout": 3}
    spec.update(over)
    return OaSettings.model_validate(spec)


async def lab_server(url: str, server_id: str) -> Server:
    client = LabClient(url, timeout=5.0)
    try:
        return await LabManager(client).server(server_id)
    finally:
        await client.close()


def ipmi_server(sim: IpmiSim, server_id: str = "enc1-bay1") -> Server:
    """A server whose BMC (in the inventory) is the ipmi_sim: the IPMI level takes host and account from
    it, the port from the level's settings."""
    return Server(id=server_id, domain_group="dg1", domain="vcd-enc1", enclosure="enc1", bay=1,
                  product="ProLiant BL460c Gen8",
                  bmc=BmcEndpoint(f"https://127.0.0.1:{sim.port}", sim.username, sim.password))


# --- configuration -----------------------------------------------------------------------------------


def test_the_default_is_the_bmc_alone() -> None:
    fencing = MonitorConfig().failover.fencing
    assert fencing.levels == ["bmc"]
    assert fencing.order_for("enc1-bay1", "dg1") == ["bmc"]
    assert MonitorConfig().failover.step_timeout("power_off_source") == 120.0 * 3 + 60.0  # as before


def test_orders_per_server_then_group_then_default_and_their_budget() -> None:
    fencing = FencingConfig.model_validate({
        "levels": ["bmc", "manager"], "groups": {"dg1": ["bmc", "ipmi"]}, "servers": {"enc1-bay3": ["ipmi"]},
        "bmc": {"attempts": 1, "timeout": 10}, "ipmi": {"timeout": 30}})
    assert fencing.order_for("enc1-bay3", "dg1") == ["ipmi"]
    assert fencing.order_for("enc1-bay1", "dg1") == ["bmc", "ipmi"]
    assert fencing.order_for("enc3-bay1", "dg2") == ["bmc", "manager"]
    # each order's waiting (power_off_attempts 3 x power_off_timeout 120 where a level sets nothing):
    # [bmc, manager] 1 x 10 + 3 x 120, [bmc, ipmi] 1 x 10 + 3 x 30, [ipmi] 3 x 30: the longest counts
    assert fencing.longest(3, 120.0) == 10 + 360
    cfg = MonitorConfig.model_validate({"failover": {"fencing": fencing.model_dump(mode="json")}})
    assert cfg.failover.step_timeout("power_off_source") == 10 + 360 + 60


@pytest.mark.parametrize(("fencing", "says"), [
    ({"levels": ["bmc", "pdu"]}, "unknown fence level 'pdu'; the levels are bmc, manager, oa, ipmi"),
    ({"levels": []}, "at least one level"),
    ({"levels": ["bmc", "bmc"]}, "fence level bmc is listed twice"),
    ({"groups": {"dg1": ["snmp"]}}, "dg1: unknown fence level 'snmp'"),
    ({"levels": ["bmc", "oa"]}, "fence level oa is used but failover.fencing.oa is not configured"),
    ({"servers": {"enc1-bay1": ["ipmi"]}}, "fence level ipmi is used but failover.fencing.ipmi"),
    ({"levels": ["oa"], "oa": {"username": "a", "password": "b", "enclosures": {"enc1": "10.0.0.1"}}},
     "needs known_hosts"),
    ({"levels": ["oa"], "oa": {"username": "a", "password": "b", "known_hosts": "k",
                               "enclosures": {"enc1": "10.0.0.1:99999"}}}, "port 99999 out of range"),
    ({"levels": ["ipmi"], "ipmi": {"servers": {"enc1-bay1": {"adress": "x"}}}}, "adress"),
])
def test_invalid_fencing_is_a_clear_error(fencing: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError) as info:
        MonitorConfig.model_validate({"failover": {"fencing": fencing}})
    assert says in str(info.value), str(info.value)


def test_the_manager_level_needs_a_manager_with_power(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("domain_groups: []\n")
    with pytest.raises(ValidationError) as info:
        MonitorConfig.model_validate({"inventory": {"source": "static", "file": str(inventory)},
                                      "failover": {"fencing": {"levels": ["bmc", "manager"]}}})
    assert "fence level manager needs a profile manager with power control" in str(info.value)


def test_the_reference_config_documents_fencing() -> None:
    text = (Path(__file__).parents[2] / "config" / "reference.yaml").read_text()
    for key in ("fencing:", "levels: [bmc]", "known_hosts:", "request_timeout:", "ipmi:", "oa:"):
        assert key in text, key


# --- manager: the lab's manager power API -----------------------------------------------------------------


async def test_manager_level_reads_and_forces_off_through_the_manager(
        lab: LabSimulator, lab_control: LabControl) -> None:
    client = LabClient(lab.manager_url, timeout=5.0)
    try:
        level = ManagerLevel(LabManager(client))
        source = await LabManager(client).server("enc1-bay1")
        await lab_control.fault("bmc_down", server="enc1-bay1")  # the manager does not need the BMC
        assert await level.power_state(source) is PowerState.ON
        with acting(valid_fence(7, 2)):
            await level.force_off(source)
        await wait_state(level, source, PowerState.OFF)
        with acting(valid_fence(7, 2)):
            await level.force_off(source)  # already off: not an error
        assert await level.power_state(source) is PowerState.OFF
        entries = [e for e in await lab_control.log() if e["kind"] == "power"]
        assert [(e["server"], e["detail"], e["job"], e["epoch"]) for e in entries] == [
            ("enc1-bay1", "manager ForceOff: accepted (PoweringOff)", 7, 2),
            ("enc1-bay1", "manager ForceOff: accepted (Off)", 7, 2)]
        # the power call is fenced like the manager's other mutating calls
        with acting(valid_fence(7, 1, "stale")), pytest.raises(FenceRejected):
            await level.force_off(source)
        with acting(Fence(7, 3, "m1", valid=lambda: False)), pytest.raises(FenceLost):
            await level.force_off(source)  # past its deadline: not sent
        assert len([e for e in await lab_control.log() if e["kind"] == "power"]) == 3  # + the refusal
        with pytest.raises(NotFound):
            await level.power_state(Server("enc9-bay1", "dg1", "vcd-enc1", "enc9", 1, "x"))
    finally:
        await client.close()


# --- oa: the lab's Onboard Administrators over SSH ------------------------------------------------------


async def test_oa_level_reads_and_forces_off_through_the_oa(
        oa_lab: LabSimulator, oa_control: LabControl, tmp_path: Path) -> None:
    pinned = known_hosts(oa_lab, tmp_path)
    level = OaSsh(oa_settings(oa_lab, accept_any_host_key=False, known_hosts=str(pinned)), known_hosts=pinned)
    try:
        source = await lab_server(oa_lab.manager_url, "enc1-bay2")
        await oa_control.fault("bmc_down", server="enc1-bay2")  # the OA does not need the blade's iLO
        assert await level.power_state(source) is PowerState.ON
        await level.force_off(source)
        await wait_state(level, source, PowerState.OFF)
        await level.force_off(source)  # already off: not an error
        empty = await lab_server(oa_lab.manager_url, "enc1-bay8")  # an empty bay
        with pytest.raises(AdapterError, match="shows no power state for bay 8"):
            await level.power_state(empty)
        other = await lab_server(oa_lab.manager_url, "enc3-bay1")
        with pytest.raises(NotFound, match="no Onboard Administrator configured for enclosure enc3"):
            await level.power_state(other)
        entries = [(e["server"], e["detail"]) for e in await oa_control.log() if e["kind"] == "power"]
        assert entries == [("enc1-bay2", "oa ForceOff: accepted (PoweringOff)"),
                           ("enc1-bay2", "oa ForceOff: accepted (Off)")]
        assert (await oa_control.server("enc1-bay2"))["power"] == "Off"
    finally:
        await level.close()


async def test_the_lab_oa_speaks_the_cli_over_a_pty(oa_lab: LabSimulator, oa_control: LabControl) -> None:
    """The peer itself, driven by hand: banner and prompt, the commands fence_hpblade sends, exit."""
    assert oa_lab.oa is not None
    endpoint = oa_lab.oa.endpoints["enc2"]
    assert (await oa_control.call("GET", "/lab/v1/oa"))["enclosures"]["enc2"] == {
        "host": endpoint.host, "port": endpoint.port}
    async with asyncssh.connect(endpoint.host, endpoint.port, username=OA_USER, password=OA_PASSWORD,
                                known_hosts=None, client_keys=None, agent_path=None, config=None) as conn:
        process = await conn.create_process(term_type="vt100")

        async def until_prompt() -> str:
            text = ""
            async with asyncio.timeout(5):
                while not text.rstrip().endswith("enc2oa>"):
                    text += (await process.stdout.read(4096)).replace("\r", "")
            return text

        assert "Onboard Administrator" in await until_prompt()
        process.stdin.write("show enclosure info\n")
        assert "Enclosure Type: BladeSystem c7000" in await until_prompt()
        process.stdin.write("SHOW SERVER STATUS 9\n")  # a spare, Off; commands are case-insensitive
        assert "Power: Off" in await until_prompt()
        process.stdin.write("poweron server 9\n")
        assert "Powering on blade 9." in await until_prompt()
        process.stdin.write("show server status 16\n")  # covered by the BL870c in bays 15-16
        assert "There is no blade installed in bay 16." in await until_prompt()
        process.stdin.write("reboot everything\n")
        assert "Invalid command: reboot everything" in await until_prompt()
        process.stdin.write("exit\n")
        async with asyncio.timeout(5):
            await process.wait_closed()
    assert (await oa_control.server("enc2-bay9"))["power"] in ("PoweringOn", "On")
    assert [(e["server"], e["detail"]) for e in await oa_control.log() if e["kind"] == "power"] == [
        ("enc2-bay9", "oa On: accepted (PoweringOn)")]


async def test_oa_level_refuses_wrong_credentials_and_a_wrong_host_key(
        oa_lab: LabSimulator, tmp_path: Path) -> None:
    source = await lab_server(oa_lab.manager_url, "enc1-bay1")
    wrong = OaSsh(oa_settings(oa_lab, password="not-it"))
    with pytest.raises(AuthenticationFailed, match="refused the login of Administrator"):
        await wrong.power_state(source)
    await wrong.close()
    forged = tmp_path / "forged_known_hosts"
    other_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    assert oa_lab.oa is not None
    forged.write_text("".join(f"[{e.host}]:{e.port} {other_key}\n" for e in oa_lab.oa.endpoints.values()))
    pinned = OaSsh(oa_settings(oa_lab, accept_any_host_key=False, known_hosts=str(forged)),
                   known_hosts=forged)
    with pytest.raises(AuthenticationFailed, match="host key"):
        await pinned.power_state(source)
    await pinned.close()
    assert (await lab_server(oa_lab.manager_url, "enc1-bay1")).power is PowerState.ON


async def test_oa_level_times_out_on_a_silent_oa_and_reports_a_refused_one(oa_lab: LabSimulator) -> None:
    source = await lab_server(oa_lab.manager_url, "enc1-bay1")
    accepted = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepts the TCP connection and never says a word (a hung OA)
        accepted.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    level = OaSsh(oa_settings(oa_lab, enclosures={"enc1": f"127.0.0.1:{port}"}, request_timeout=0.5))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(AdapterTimeout, match=r"no answer within 0\.5 s"):
        await level.power_state(source)
    assert accepted.is_set() and loop.time() - started < 2.0
    for w in held:
        w.close()
    server.close()
    await server.wait_closed()
    with pytest.raises(AdapterUnavailable, match="cannot reach the OA"):
        await level.power_state(source)  # nothing listens there any more: refused
    await level.close()


# --- ipmi: OpenIPMI's ipmi_sim ------------------------------------------------------------------------------


async def test_ipmi_level_reads_and_powers_off_an_ipmi_sim(tmp_path: Path) -> None:
    async with start_ipmi_sim(tmp_path, username="fence", password="fence-pass") as sim:
        level = IpmiFence(IpmiSettings(port=sim.port, request_timeout=5))
        server = ipmi_server(sim)
        try:
            assert await level.power_state(server) is PowerState.ON
            await level.force_off(server)
            assert sim.power() == "off"
            assert await level.power_state(server) is PowerState.OFF
            await level.force_off(server)  # already off: nothing sent, no error
            assert sim.power() == "off"
            with acting(Fence(3, 1, "m1", valid=lambda: False)):
                sim.set_power(True)
                with pytest.raises(FenceLost):
                    await level.force_off(server)  # the fence follows into pyghmi's thread
            assert sim.power() == "on"
        finally:
            await level.close()


async def test_ipmi_level_refuses_a_wrong_password(tmp_path: Path) -> None:
    async with start_ipmi_sim(tmp_path, username="fence", password="fence-pass") as sim:
        level = IpmiFence(IpmiSettings.model_validate({"port": sim.port, "password": "wrong-pass"}))
        try:
            with pytest.raises(AuthenticationFailed, match="refused the session of fence"):
                await level.power_state(ipmi_server(sim))
            with pytest.raises(AuthenticationFailed):
                await level.force_off(ipmi_server(sim))
            assert sim.power() == "on"
        finally:
            await level.close()


@pytest.mark.slow
async def test_ipmi_level_times_out_when_the_bmc_is_stopped(tmp_path: Path) -> None:
    async with start_ipmi_sim(tmp_path, username="fence", password="fence-pass") as sim:
        level = IpmiFence(IpmiSettings.model_validate(
            {"request_timeout": 0.5, "servers": {"enc1-bay1": {"address": "127.0.0.1", "port": sim.port}}}))
        server = ipmi_server(sim)
        loop = asyncio.get_running_loop()
        try:
            sim.pause()  # SIGSTOP: nothing answers
            started = loop.time()
            with pytest.raises(AdapterTimeout, match=r"no answer within 0\.5 s"):
                await level.force_off(server)
            assert loop.time() - started < 1.5
            sim.resume()
            await sim.stop()
            with pytest.raises(AdapterTimeout):
                await level.power_state(server)
            assert sim.power() == "on"  # nothing was done
        finally:
            await level.close()


# --- the re-check reads every level ---------------------------------------------------------------------


async def test_off_needs_a_level_that_answers_and_no_level_that_reads_otherwise(
        lab: LabSimulator, lab_control: LabControl) -> None:
    """An unreadable level is not Off; every level that answers must read Off."""
    client = LabClient(lab.manager_url, timeout=5.0)
    power = RedfishPower(timeout=1.0)
    try:
        manager = ManagerLevel(LabManager(client))
        bmc = BmcLevel(power)
        source = await LabManager(client).server("enc1-bay7")  # a production blade that is Off
        assert (await reads_off([bmc, manager], source)).off
        await lab_control.fault("bmc_down", server="enc1-bay7")
        check = await reads_off([bmc], source)
        assert not check.off, check.text()  # the only level is unreadable: not Off
        assert check.text().startswith("bmc unreadable (")
        assert (await reads_off([bmc, manager], source)).off  # the manager answers Off
        await lab_control.call("PUT", "/lab/v1/servers/enc1-bay7", {"power": "On"})
        check = await reads_off([bmc, manager], source)
        assert not check.off and "manager On" in check.text()
        await lab_control.call("DELETE", "/lab/v1/faults")
        await lab_control.call("PUT", "/lab/v1/servers/enc1-bay7", {"power": "Off"})
        assert (await reads_off([bmc, manager], source)).off
    finally:
        await power.close()
        await client.close()


# --- whole failovers -----------------------------------------------------------------------------------


def fenced_config(url: str, tmp_path: Path, token: str, fencing: dict[str, Any],
                  **failover: Any) -> MonitorConfig:
    cfg = monitor_config(url, tmp_path, token, power_off_timeout=2, power_off_attempts=2,
                         fencing=fencing, **failover)
    return cfg.model_copy(update={"redfish": cfg.redfish.model_copy(update={"timeout": 1})})


def power_off_detail(job: dict[str, Any]) -> str:
    return str(job["steps"][STEPS.index("power_off_source")]["detail"])


async def test_a_dead_bmc_falls_through_to_the_manager_and_the_job_completes(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    fencing = {"levels": ["bmc", "manager"], "bmc": {"attempts": 1, "timeout": 0.5}}
    h = await start_daemon(fenced_config(lab.manager_url, tmp_path, token, fencing))
    await lab_control.fault("bmc_down", server="enc1-bay1")
    job = await h.wait_job(await h.failover("enc1-bay1", "iLO dead"))
    assert job["state"] == "completed", job
    detail = power_off_detail(job)
    assert "confirmed Off by manager" in detail, detail
    assert "bmc: failed after" in detail and "onnect" in detail, detail  # why the BMC failed
    assert "manager: ok after" in detail and "confirmed Off, attempt 1" in detail, detail
    stored = h.daemon.runner.d.store if h.daemon.runner else None
    assert stored is not None
    stored_job = await stored.get_job(job["job"])
    assert stored_job is not None
    record = stored_job.context.power_off
    assert record is not None and record.confirmed
    assert [line.split(":")[0] for line in record.levels] == ["bmc", "manager"]
    assert await lab_control.profile_holders("prof-enc1-bay1") == [job["spare"]]
    power = [e for e in await lab_control.log() if e["kind"] == "power"]
    assert [(e["server"], e["detail"].split(":")[0], e["job"]) for e in power] == [
        ("enc1-bay1", "manager ForceOff", job["job"])]  # through the gate: the job's fencing token
    assert await lab_control.violations() == []
    await assert_unlocked(h)


async def test_a_dead_bmc_falls_through_to_the_oa_and_the_job_completes(
        oa_lab: LabSimulator, oa_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    oa = oa_settings(oa_lab, accept_any_host_key=False, known_hosts=str(known_hosts(oa_lab, tmp_path)))
    fencing = {"levels": ["bmc", "oa"], "bmc": {"attempts": 1, "timeout": 0.5},
               "oa": oa.model_dump(mode="json") | {"password": OA_PASSWORD}}
    h = await start_daemon(fenced_config(oa_lab.manager_url, tmp_path, token, fencing))
    await oa_control.fault("bmc_down", server="enc1-bay1")
    job = await h.wait_job(await h.failover("enc1-bay1", "iLO dead"))
    assert job["state"] == "completed", job
    detail = power_off_detail(job)
    assert "confirmed Off by oa" in detail and "bmc: failed after" in detail and "oa: ok after" in detail
    assert await oa_control.profile_holders("prof-enc1-bay1") == [job["spare"]]
    assert [(e["server"], e["detail"]) for e in await oa_control.log() if e["kind"] == "power"] == [
        ("enc1-bay1", "oa ForceOff: accepted (PoweringOff)")]
    assert await oa_control.violations() == []
    await assert_unlocked(h)


@pytest.mark.slow
async def test_every_level_failing_keeps_the_profile_on_the_source(
        oa_lab: LabSimulator, oa_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    oa = oa_settings(oa_lab)
    fencing = {"levels": ["bmc", "manager", "oa"], "bmc": {"attempts": 1, "timeout": 0.3},
               "manager": {"attempts": 1, "timeout": 0.3}, "oa": oa.model_dump(mode="json") | {
                   "password": OA_PASSWORD, "attempts": 2, "timeout": 0.3}}
    h = await start_daemon(fenced_config(oa_lab.manager_url, tmp_path, token, fencing))
    await oa_control.fault("bmc_down", server="enc1-bay2")
    await oa_control.fault("power_off_hangs", server="enc1-bay2")  # accepted, never goes Off
    job = await h.wait_job(await h.failover("enc1-bay2"))
    assert job["state"] == "failed", job
    st = states(job)
    assert st["power_off_source"] == "failed"
    assert all(st[s] == "skipped" for s in STEPS[STEPS.index("power_off_source") + 1:-1]), st
    error = job["error"]
    assert "not confirmed by any fence level" in error and "the profile was not moved" in error, error
    for says in ("bmc: failed after", "manager: failed after", "oa: failed after", "1 attempt(s) of 0.3 s",
                 "2 attempt(s) of 0.3 s", "last read On"):
        assert says in error, (says, error)
    assert power_off_detail(job) == error
    assert await oa_control.profile_holders("prof-enc1-bay2") == ["enc1-bay2"]
    log = await oa_control.log()
    assert not any(e["kind"] in ("move", "spare", "host") for e in log)
    assert [e["detail"].split(":")[0] for e in log if e["kind"] == "power"] == [
        "manager ForceOff", "oa ForceOff", "oa ForceOff"]
    assert await oa_control.violations() == []
    await assert_unlocked(h)


async def test_source_back_on_before_the_move_with_no_level_readable_is_not_moved(
        oa_lab: LabSimulator, oa_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    """The OA confirms Off (the BMC is dead); then, before the move, the OA goes away and the source is
    switched back on: the re-check reads no level, so the profile stays (an unreadable level is not Off)."""
    fencing = {"levels": ["bmc", "oa"], "bmc": {"attempts": 1, "timeout": 0.3},
               "oa": oa_settings(oa_lab).model_dump(mode="json") | {"password": OA_PASSWORD}}
    h = await start_daemon(fenced_config(oa_lab.manager_url, tmp_path, token, fencing))
    await oa_control.fault("bmc_down", server="enc1-bay1")
    assert oa_lab.oa is not None and h.daemon.runner is not None
    fired = asyncio.Event()

    async def behind_its_back(job: Job) -> None:
        step = job.step("move_profile")
        if (not fired.is_set() and step.state is StepState.RUNNING
                and step.detail.startswith("about to remove enc1-bay1's host record")):
            fired.set()
            assert oa_lab.oa is not None
            await oa_lab.oa.stop()  # the OA is unreachable from now on
            await oa_control.call("PUT", "/lab/v1/servers/enc1-bay1", {"power": "On"})

    h.daemon.runner.add_listener(behind_its_back)
    job = await h.wait_job(await h.failover("enc1-bay1"))
    assert fired.is_set()
    assert job["state"] == "failed", job
    assert states(job)["move_profile"] == "failed"
    assert "enc1-bay1 no longer reads Off" in job["error"], job["error"]
    assert "bmc unreadable" in job["error"] and "oa unreadable" in job["error"], job["error"]
    assert await oa_control.profile_holders("prof-enc1-bay1") == ["enc1-bay1"]
    assert await oa_control.violations() == []
    await assert_unlocked(h)



def _with_cpu_rule(cfg: MonitorConfig, tmp_path: Path) -> MonitorConfig:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - id: cpu-failed\n    action: failover\n    severity: critical\n"
                    "    source: snmp\n    match: {trap_oid: 1.3.6.1.4.1.232.0.1026}\n")
    return cfg.model_copy(update={"rules": cfg.rules.model_copy(update={"builtin": False,
                                                                        "files": [str(path)]})})


async def test_a_dead_bmc_does_not_decline_a_rule_failover_the_manager_reads_off(
        lab: LabSimulator, lab_control: LabControl, start_daemon: DaemonFactory, tmp_path: Path,
        token: str) -> None:
    """The confirmation before a rule's failover: the BMC cannot be read, so the other fence levels
    are; the manager reads the server Off (it went down), so the failover is confirmed and runs. The
    same event for a server the manager reads On is declined (its BMC may be all that hung)."""
    fencing = {"levels": ["bmc", "manager"], "bmc": {"attempts": 1, "timeout": 0.5}}
    h = await start_daemon(_with_cpu_rule(fenced_config(lab.manager_url, tmp_path, token, fencing,
                                                        confirm_timeout=2), tmp_path))
    await lab_control.call("POST", "/api/v1/servers/enc1-bay1/power", {"action": "ForceOff"})
    for server in ("enc1-bay1", "enc1-bay2"):
        await lab_control.fault("bmc_down", server=server)
    await eventually(lambda: lab.world.server("enc1-bay1").power == "Off", 5, "enc1-bay1 Off")
    cpu = "1.3.6.1.4.1.232.0.1026"
    for server in ("enc1-bay1", "enc1-bay2"):
        ip = lab.world.server(server).bmc_ip
        status, body = await h.api("POST", "/api/v1/events",
                                   {"source": "snmp", "sender": ip, "trap_oid": cpu})
        assert status == 202, body

    async def decided() -> list[dict[str, Any]]:
        _, rows = await h.api("GET", "/api/v1/decisions?limit=10")
        return [d for d in rows if d.get("rule") == "cpu-failed"]

    rows = await eventually(lambda: _two(decided()), 20, "both decisions")
    by_server = {d["server"]: d for d in rows}
    down, running = by_server["enc1-bay1"], by_server["enc1-bay2"]
    assert down["action"] == "failover", down
    assert "the other fence levels read the server Off" in down["confirmation"]["reason"], down
    assert running["action"] == "declined", running
    assert "the other fence levels: manager On" in running["confirmation"]["reason"], running
    job = await h.wait_job(int(down["job"]))
    assert job["state"] == "completed", job
    assert await lab_control.violations() == []


async def _two(rows: Any) -> list[dict[str, Any]] | None:
    got: list[dict[str, Any]] = await rows
    return got if len({d["server"] for d in got}) >= 2 else None
