"""`manager.kind: oneview` against the lab's OneView face (lab/oneview.py): the whole seed flow, every exit
of the move through this manager (task Error, the source back On, an eTag conflict, the session expiring
mid-task, 5xx, a hung task), the adapter and the emulator on their own, and crashes while the move's task
runs (the new owner follows the recorded task, or the one `find_move` names: one profile PUT in all)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from adapters.oneview import BmcAccess, OneViewClient, OneViewFenceRejected, OneViewManager
from lab.config import LabConfig
from lab.main import LabSimulator
from lab.oneview import OneViewFace
from monitor.core.clock import SystemClock
from monitor.core.config import ManagerConfig, MonitorConfig
from monitor.core.errors import AdapterError, AuthenticationFailed, OperationRejected
from monitor.core.fencing import Fence, acting
from monitor.core.model import STEPS, Job
from monitor.core.ports import TaskState
from tests.peers.processes import Client, DaemonProcess, LabProcess
from tests.support.harness import FAST_LATENCY, DaemonFactory, Harness, monitor_config
from tests.support.net import reserve_port, shared_bmc_port
from tests.support.wait import eventually

USER, PASSWORD = "administrator", "lab-oneview"
OV_FAST = {"task_start_s": 0.02, "profile_move_s": 0.3, "power_s": 0.05}
SOURCE, PROFILE = "enc1-bay1", "prof-enc1-bay1"
INTENT = "0b9a3f0e-7c52-4d8e-9a51-2f7e64c1d2a3"


def lab_config(bmc_port: int, **oneview: Any) -> LabConfig:
    return LabConfig.model_validate({
        "listen": "127.0.0.1:0", "bmc_port": bmc_port, "latency": FAST_LATENCY,
        "oneview": {"enabled": True, "durations": {**OV_FAST, **oneview.pop("durations", {})}, **oneview}})


@pytest.fixture
async def ov_lab() -> AsyncIterator[LabSimulator]:
    async with LabSimulator(lab_config(shared_bmc_port())) as sim:
        yield sim


def face(lab: LabSimulator) -> OneViewFace:
    assert lab.oneview is not None
    return lab.oneview


def manager_section(lab: LabSimulator, **extra: Any) -> dict[str, Any]:
    return {"kind": "oneview", "oneview": {
        "address": lab.oneview_url, "username": USER, "password": PASSWORD, "verify_tls": False,
        "timeout": 5, "spare_label": "spare",
        "bmc": {"username": "admin", "password": "lab-password", "port": lab.config.bmc_port,
                "verify_tls": False}, **extra}}


def ov_config(lab: LabSimulator, tmp_path: Path, token: str, **failover: Any) -> MonitorConfig:
    cfg = monitor_config(lab.manager_url, tmp_path, token, **failover)
    return cfg.model_copy(update={"manager": ManagerConfig.model_validate(manager_section(lab))})


def manager(lab: LabSimulator, **kwargs: Any) -> OneViewManager:
    client = OneViewClient(lab.oneview_url, USER, PASSWORD, tls=False, timeout=5)
    return OneViewManager(client, SystemClock(), bmc=BmcAccess("admin", "lab-password",
                                                               port=lab.config.bmc_port, verify_tls=False),
                          poll_interval=0.02, **kwargs)


def move_detail(job: dict[str, Any]) -> str:
    return str(job["steps"][STEPS.index("move_profile")]["detail"])


def on_job(h: Harness, when: Callable[[Job], bool], do: Callable[[], object]) -> asyncio.Event:
    """Run `do` once, inside the job's own save, the first time `when(job)` holds (deterministic: the
    flow goes on only after the listener returned)."""
    fired = asyncio.Event()

    async def listener(job: Job) -> None:
        if not fired.is_set() and when(job):
            fired.set()
            do()

    assert h.daemon.runner is not None
    h.daemon.runner.add_listener(listener)
    return fired


def detail_of(job: Job, step: str = "move_profile") -> str:
    return job.step(step).detail


def profile_puts(lab: LabSimulator) -> list[dict[str, Any]]:
    """The profile PUTs answered so far, with their status."""
    return [r for r in face(lab).requests if r["kind"] == "profile_put"]


def puts_received(lab: LabSimulator) -> int:
    """The profile PUTs that reached the appliance (counted on arrival, answered or not)."""
    return face(lab).counts.get("profile_put", 0)


# --- the whole flow ---------------------------------------------------------------------------------------


async def test_failover_through_oneview_completes(ov_lab: LabSimulator, start_daemon: DaemonFactory,
                                                  tmp_path: Path, token: str) -> None:
    h = await start_daemon(ov_config(ov_lab, tmp_path, token))
    job = await h.wait_job(await h.failover(SOURCE, "CPU IERR"))
    assert job["state"] == "completed", job
    assert {s["state"] for s in job["steps"]} == {"done"}
    assert job["profile"] == PROFILE and job["spare"] == "enc1-bay9"
    assert "moved enc1-bay1 -> enc1-bay9" in move_detail(job)
    w = ov_lab.world
    assert w.profiles[PROFILE].server == "enc1-bay9"
    assert w.servers[SOURCE].power == "Off" and w.servers[SOURCE].profile is None
    assert w.servers["enc1-bay9"].power == "On" and w.servers["enc1-bay9"].spare is False
    assert SOURCE not in w.hosts  # the host record went with the lab's discovery service
    assert w.violations == []
    puts = profile_puts(ov_lab)
    assert len(puts) == 1 and puts[0]["status"] == 202
    assert puts[0]["job"] == job["job"] and puts[0]["epoch"] == 1  # the fencing token went along
    tasks = [t for t in face(ov_lab).tasks.values() if t.kind == "profile"]
    assert [t.state for t in tasks] == ["Completed"]
    # OneView shows it: the profile on the spare's hardware, the spare label gone.
    m = manager(ov_lab)
    try:
        assert (await m.profile(PROFILE)).server == "enc1-bay9"
        assert (await m.server("enc1-bay9")).spare is False
    finally:
        await m.close()
    # The record the flow wrote ahead and the task it followed.
    stored = await h.daemon.store.get_job(job["job"])
    assert stored is not None and stored.context.move.task == tasks[0].uri
    assert stored.context.move.intent is not None


async def test_the_spare_has_the_profiles_server_hardware_type(
        ov_lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str) -> None:
    """OneView keeps a profile on its server-hardware type (one per generation): the first spare of the
    group by the spare rules (generation ignored) is passed over when its type differs (found by the
    nemesis on OneView: the PUT was refused with SERVER_HARDWARE_TYPE_MISMATCH)."""
    w = ov_lab.world
    source = "enc2-bay1"
    product = w.servers[source].product
    firsts = [s for s in ("enc1-bay9", "enc1-bay10") if w.servers[s].product != product]
    assert firsts, "the lab's world no longer has a spare of another generation ahead in enc2-bay1's group"
    h = await start_daemon(ov_config(ov_lab, tmp_path, token))
    job = await h.wait_job(await h.failover(source))
    assert job["state"] == "completed", job
    assert w.servers[job["spare"]].product == product, (job["spare"], w.servers[job["spare"]].product)
    assert "hardware type" in job["steps"][STEPS.index("select_spare")]["detail"]
    assert [p["status"] for p in profile_puts(ov_lab)] == [202] and w.violations == []


async def test_task_error_leaves_the_profile_on_the_source(ov_lab: LabSimulator,
                                                          start_daemon: DaemonFactory, tmp_path: Path,
                                                          token: str) -> None:
    w = ov_lab.world
    host_before = w.hosts[SOURCE]
    w.add_fault("oneview_task_error", SOURCE, None)
    h = await start_daemon(ov_config(ov_lab, tmp_path, token))
    job = await h.wait_job(await h.failover(SOURCE))
    assert job["state"] == "failed", job
    assert job["steps"][STEPS.index("move_profile")]["state"] == "failed"
    assert job["steps"][STEPS.index("power_on_spare")]["state"] == "skipped"
    assert "AssignProfileToDeviceBayError" in job["error"], job["error"]
    assert "stays on enc1-bay1" in job["error"] and "enc1-bay9 is a spare again" in job["error"]
    assert w.profiles[PROFILE].server == SOURCE
    assert w.servers["enc1-bay9"].spare is True and w.servers["enc1-bay9"].power == "Off"
    assert w.hosts[SOURCE] == host_before
    assert puts_received(ov_lab) == 1 and w.violations == []


async def test_source_back_on_means_no_move(ov_lab: LabSimulator, start_daemon: DaemonFactory,
                                            tmp_path: Path, token: str) -> None:
    h = await start_daemon(ov_config(ov_lab, tmp_path, token))
    w = ov_lab.world
    on_job(h, lambda j: "host record from the management server" in detail_of(j),
           lambda: w.control_server(SOURCE, power="On"))
    job = await h.wait_job(await h.failover(SOURCE))
    assert job["state"] == "failed", job
    assert "no longer reads Off" in job["error"] and "profile not moved" in job["error"]
    assert puts_received(ov_lab) == 0  # never sent
    assert w.profiles[PROFILE].server == SOURCE
    assert w.servers["enc1-bay9"].spare is True and SOURCE in w.hosts
    assert w.violations == []


async def test_etag_conflict_is_a_clear_error(ov_lab: LabSimulator, start_daemon: DaemonFactory,
                                              tmp_path: Path, token: str) -> None:
    ov_lab.world.add_fault("oneview_etag_conflict", SOURCE, None)
    h = await start_daemon(ov_config(ov_lab, tmp_path, token))
    job = await h.wait_job(await h.failover(SOURCE))
    assert job["state"] == "failed", job
    err = job["error"]
    assert "the manager refused the move of profile prof-enc1-bay1 to enc1-bay9" in err, err
    assert "HTTP 412" in err and "If-Match" in err and "RESOURCE_ETAG_MISMATCH" in err
    assert "stays on enc1-bay1" in err and "enc1-bay9 is a spare again" in err
    assert [p["status"] for p in profile_puts(ov_lab)] == [412]
    assert ov_lab.world.profiles[PROFILE].server == SOURCE and ov_lab.world.violations == []


@pytest.mark.slow
async def test_session_expiring_mid_task_logs_in_again_and_follows(
        ov_lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str) -> None:
    face(ov_lab).durations = face(ov_lab).durations.model_copy(update={"profile_move_s": 0.6})
    h = await start_daemon(ov_config(ov_lab, tmp_path, token))
    w = ov_lab.world
    on_job(h, lambda j: "started: task" in detail_of(j),
           lambda: w.add_fault("oneview_sessions_expire", None, None))
    job = await h.wait_job(await h.failover(SOURCE))
    assert job["state"] == "completed", job
    counts = face(ov_lab).counts
    assert counts["login"] == 2 and counts.get("status_4xx", 0) >= 1  # the 401, then a new session
    assert puts_received(ov_lab) == 1 and w.violations == []


async def test_5xx_while_following_the_task_is_tried_again(
        ov_lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str) -> None:
    h = await start_daemon(ov_config(ov_lab, tmp_path, token))
    w = ov_lab.world
    on_job(h, lambda j: "started: task" in detail_of(j),
           lambda: w.add_fault("oneview_unavailable", None, None))
    on_job(h, lambda j: "not read" in detail_of(j) and "HTTP 503" in detail_of(j), w.clear_faults)
    job = await h.wait_job(await h.failover(SOURCE))
    assert job["state"] == "completed", job
    assert face(ov_lab).counts["status_5xx"] >= 1
    assert puts_received(ov_lab) == 1 and w.violations == []


async def test_no_answer_to_the_move_request_finds_its_task(
        ov_lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str) -> None:
    # The appliance takes the PUT, starts its task, and answers after the client's time limit.
    face(ov_lab).durations = face(ov_lab).durations.model_copy(update={"put_answer_delay_s": 1.0})
    cfg = ov_config(ov_lab, tmp_path, token)
    section = manager_section(ov_lab, timeout=0.5)
    h = await start_daemon(cfg.model_copy(update={"manager": ManagerConfig.model_validate(section)}))
    job = await h.wait_job(await h.failover(SOURCE))
    assert job["state"] == "completed", job
    assert puts_received(ov_lab) == 1 and ov_lab.world.violations == []
    assert ov_lab.world.profiles[PROFILE].server == "enc1-bay9"


async def test_appliance_unavailable_at_the_move_moves_nothing(
        ov_lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str) -> None:
    h = await start_daemon(ov_config(ov_lab, tmp_path, token))
    w = ov_lab.world
    on_job(h, lambda j: "about to move profile" in detail_of(j),
           lambda: w.add_fault("oneview_unavailable", None, None))
    job = await h.wait_job(await h.failover(SOURCE))
    assert job["state"] == "failed", job
    err = job["error"]
    assert "HTTP 503" in err and "whether the manager started it cannot be read" in err, err
    # The place of the profile could not be read either: nothing was undone, and the error says so.
    assert "in an unknown place" in err
    assert puts_received(ov_lab) == 0
    assert w.profiles[PROFILE].server == SOURCE and w.violations == []


@pytest.mark.slow
async def test_hung_task_ends_the_step_at_its_time_limit(ov_lab: LabSimulator,
                                                         start_daemon: DaemonFactory, tmp_path: Path,
                                                         token: str) -> None:
    ov_lab.world.add_fault("oneview_task_hangs", SOURCE, None)
    h = await start_daemon(ov_config(ov_lab, tmp_path, token, step_timeouts={"move_profile": 1.0}))
    job = await h.wait_job(await h.failover(SOURCE))
    assert job["state"] == "failed", job
    err = job["error"]
    assert "move_profile did not finish within 1 s" in err and "running, 60%" in err, err
    assert "in an unknown place" in err  # the task still runs: OneView shows the profile in transition
    assert ov_lab.world.profiles[PROFILE].server == SOURCE
    tasks = [t for t in face(ov_lab).tasks.values() if t.kind == "profile"]
    assert [t.state for t in tasks] == ["Running"] and puts_received(ov_lab) == 1


# --- the adapter and the emulator on their own -------------------------------------------------------------


async def _force_off(lab: LabSimulator, m: OneViewManager, server: str) -> None:
    ref = await m.manager_force_off(server)
    assert ref is not None and ref.startswith("/rest/tasks/")
    while (status := await m.task(ref)).state is TaskState.RUNNING:
        await asyncio.sleep(0.02)
    assert status.state is TaskState.COMPLETED, status
    assert lab.world.servers[server].power == "Off"
    assert await m.manager_force_off(server) is None  # already Off: nothing sent


async def _follow(m: OneViewManager, ref: str) -> Any:
    while (status := await m.task(ref)).state is TaskState.RUNNING:
        await asyncio.sleep(0.02)
    return status


async def test_inventory_by_enclosure_group_and_by_scope(ov_lab: LabSimulator) -> None:
    for group_by, dg in (("enclosure_group", "dg1"), ("scope", "dg1-scope")):
        m = manager(ov_lab, group_by=group_by)
        try:
            inv = await m.inventory()
            assert set(inv.groups) == {dg, dg.replace("1", "2")}
            s = inv.servers["enc1-bay1"]
            assert (s.domain_group, s.domain, s.product, s.profile) == (dg, "enc1", "ProLiant BL460c Gen8",
                                                                        PROFILE)
            assert s.bmc is not None and s.bmc.url == ov_lab.bmc_url("enc1-bay1")
            assert inv.servers["enc1-bay9"].spare and not s.spare
            assert inv.servers["enc2-bay15"].span == 2  # Integrity BL870c
            assert inv.domains["enc1"].normal and inv.profiles[PROFILE].server == "enc1-bay1"
            assert len(await m.group_servers(dg)) == len(inv.in_group(dg)) == 28
        finally:
            await m.close()
    ov_lab.world.add_fault("domain_unmanaged", None, "vcd-enc2")
    m = manager(ov_lab)
    try:
        assert (await m.domain("enc2")).status == "unmanaged"
    finally:
        await m.close()


async def test_pages_labels_power_and_the_fence(ov_lab: LabSimulator) -> None:
    face(ov_lab).config.page_size = 5  # every collection comes in pages
    m = manager(ov_lab)
    try:
        assert len((await m.inventory()).servers) == 56
        await m.set_spare("enc1-bay9", False)
        assert ov_lab.world.servers["enc1-bay9"].spare is False
        await m.set_spare("enc1-bay9", True)
        assert (await m.server("enc1-bay9")).spare is True
        await _force_off(ov_lab, m, "enc1-bay2")
        # A stale fencing token is refused by the appliance's face, as by the lab's manager.
        with acting(Fence(7, 3, "m2", lambda: True)):
            await m.set_spare("enc1-bay10", False)
        with pytest.raises(OneViewFenceRejected), acting(Fence(7, 2, "m1", lambda: True)):
            await m.set_spare("enc1-bay10", True)
        assert ov_lab.world.servers["enc1-bay10"].spare is False
    finally:
        await m.close()


async def test_the_oracle_watches_the_oneview_face(ov_lab: LabSimulator) -> None:
    """`fencing: record` lets a stale move through OneView: the oracle flags it when the task takes effect."""
    w = ov_lab.world
    w.set_fencing_mode("record")
    m = manager(ov_lab)
    try:
        await _force_off(ov_lab, m, SOURCE)
        with acting(Fence(9, 2, "m2", lambda: True)):
            await m.set_spare("enc1-bay9", False)
        with acting(Fence(9, 1, "m1", lambda: True)):
            ref = await m.start_move(PROFILE, SOURCE, "enc1-bay9", intent=INTENT)
        assert (await _follow(m, ref)).state is TaskState.COMPLETED
        assert [(v["kind"], v["epoch"]) for v in w.violations] == [("stale_epoch", 1)]
    finally:
        await m.close()


def test_config_needs_the_oneview_section() -> None:
    with pytest.raises(ValueError, match=r"manager\.oneview is required"):
        ManagerConfig.model_validate({"kind": "oneview"})
    with pytest.raises(ValueError, match="address"):
        ManagerConfig.model_validate({"kind": "oneview", "oneview": {
            "address": "http://plain", "username": "u", "password": "p",
            "bmc": {"username": "a", "password": "b"}}})


async def test_login_and_version_errors(ov_lab: LabSimulator) -> None:
    bad = OneViewClient(ov_lab.oneview_url, USER, "wrong", tls=False, timeout=5)
    with pytest.raises(AuthenticationFailed, match=r"Invalid user name or password.*AUTHN_AUTH_FAIL.*401"):
        await bad.get("/rest/server-hardware")
    await bad.close()
    old = OneViewClient(ov_lab.oneview_url, USER, PASSWORD, api_version=99999, tls=False, timeout=5)
    with pytest.raises(AdapterError, match="supports API versions 120 to 5200, not the configured 99999"):
        await old.get("/rest/server-hardware")
    await old.close()
    ok = OneViewClient(ov_lab.oneview_url, USER, PASSWORD, tls=False, timeout=5)
    assert (await ok.get("/rest/version"))["currentVersion"] == 5200 and ok.version == 5200
    await ok.close()
    async with aiohttp.ClientSession() as s, s.get(ov_lab.oneview_url + "/rest/server-hardware", ssl=False,
                                                  headers={"X-API-Version": "1"}) as r:
        assert r.status == 412 and (await r.json())["errorCode"] == "INVALID_API_VERSION"


@pytest.mark.slow
async def test_preconditions_of_a_move(ov_lab: LabSimulator) -> None:
    m = manager(ov_lab)
    w = ov_lab.world
    try:
        # The source powered on: refused at once (409, OneView's words), nothing moves.
        with pytest.raises(OperationRejected,
                           match=r"powered on.*ServerNotOffWithCauseForNoServerChange") as e:
            await m.start_move(PROFILE, SOURCE, "enc1-bay9", intent=INTENT)
        assert e.value.status == 409
        await _force_off(ov_lab, m, SOURCE)
        # Not on the source named: refused before anything is sent.
        with pytest.raises(OperationRejected, match="is on enc1-bay1, not on enc1-bay2"):
            await m.start_move(PROFILE, "enc1-bay2", "enc1-bay9", intent=INTENT)
        # A target of another model: refused (400).
        with pytest.raises(OperationRejected, match="SERVER_HARDWARE_TYPE_MISMATCH"):
            await m.start_move(PROFILE, SOURCE, "enc1-bay10", intent=INTENT)
        # The target powered on while the task runs: the task ends in Error, nothing moved.
        ref = await m.start_move(PROFILE, SOURCE, "enc1-bay9", intent=INTENT)
        assert await m.find_move(PROFILE, "enc1-bay9", intent=INTENT) == ref
        with pytest.raises(OperationRejected, match="RESOURCE_LOCKED"):  # one change at a time
            await m.start_move(PROFILE, SOURCE, "enc1-bay9", intent=INTENT)
        w.control_server("enc1-bay9", power="On")
        status = await _follow(m, ref)
        assert status.state is TaskState.FAILED and "ServerNotOffWithCauseForNoServerChange" in status.message
        assert w.profiles[PROFILE].server == SOURCE
        # The failed request is still found by its intent (a new owner follows it, it does not resend).
        assert await m.find_move(PROFILE, "enc1-bay9", intent=INTENT) == ref
        assert await m.find_move(PROFILE, "enc1-bay9", intent="another") is None
        w.control_server("enc1-bay9", power="Off")
        # Keeping the old enclosureBay in the body: accepted, and nothing moves (python-hpOneView #300).
        client = m.client
        doc = await client.get(face(ov_lab).docs[PROFILE].uri)
        doc["serverHardwareUri"] = face(ov_lab).sh_uri["enc1-bay9"]
        reply = await client.request("PUT", doc["uri"], doc, headers={"If-Match": doc["eTag"]})
        quirk = await _follow(m, reply.headers["Location"])
        assert quirk.state is TaskState.COMPLETED and w.profiles[PROFILE].server == SOURCE
        # A stale If-Match: 412.
        with pytest.raises(OperationRejected, match="412") as e:
            await client.request("PUT", doc["uri"], doc, headers={"If-Match": doc["eTag"]})
        assert e.value.status == 412
        # Done right: the move completes; the oracle saw nothing wrong.
        ref = await m.start_move(PROFILE, SOURCE, "enc1-bay9", intent=INTENT)
        assert (await _follow(m, ref)).state is TaskState.COMPLETED
        assert (await m.profile(PROFILE)).server == "enc1-bay9" and w.violations == []
        # The synchronous form (ProfileManager.move_profile) follows the task itself.
        await m.move_profile(PROFILE, "enc1-bay9", "enc2-bay9")
        assert w.profiles[PROFILE].server == "enc2-bay9"
    finally:
        await m.close()


# --- crashes while the task runs (separate processes) ----------------------------------------------------

pytest_slow = pytest.mark.slow
TOKEN = "oneview-crash-token"


@asynccontextmanager
async def lab_and_daemon(tmp_path: Path, http: aiohttp.ClientSession,
                         durations: dict[str, float]) -> AsyncIterator[tuple[Client, Client, int,
                                                                              Callable[[], Awaitable[None]],
                                                                              DaemonProcess, str]]:
    bmc_port = shared_bmc_port()
    lab = LabProcess(tmp_path, {"power_off_s": 0.1, "power_on_s": 0.1, "boot_s": 0}, bmc_port=bmc_port,
                     oneview={"enabled": True, "durations": durations})
    await lab.start()
    oneview_url = json.loads(lab.ready_file.read_text())["oneview"]
    port = reserve_port()
    cfg = tmp_path / "monitor.yaml"
    cfg.write_text(yaml.safe_dump({
        "instance": "ov-e2e",
        "http": {"listen": f"127.0.0.1:{port}", "token": TOKEN},
        "store": "monitor.db",
        "inventory": {"source": "lab", "lab": {"url": lab.url, "timeout": 5}},
        "manager": {"kind": "oneview", "oneview": {
            "address": oneview_url, "username": USER, "password": "${OV_PASSWORD}", "verify_tls": False,
            "timeout": 3, "bmc": {"username": "admin", "password": "lab-password", "port": bmc_port,
                                  "verify_tls": False}}},
        "redfish": {"timeout": 3},
        "redfish_events": {"poll_interval": 0},
        "cluster": {"lease": 4, "heartbeat": 1, "fence_grace": 2},
        "failover": {"poll_interval": 0.05, "power_off_timeout": 20, "power_on_timeout": 20},
    }))
    env = {"OV_PASSWORD": PASSWORD}
    api = Client(f"http://127.0.0.1:{port}", TOKEN, http)
    ov = Client(oneview_url, "", http)
    daemons = [DaemonProcess(cfg, tmp_path / "daemon1.log", env)]

    async def restart() -> None:
        daemons.append(DaemonProcess(cfg, tmp_path / "daemon2.log", env))
        await eventually(api.healthy, 30, "the restarted daemon to be healthy")

    try:
        await eventually(api.healthy, 30, "the daemon to be healthy")
        status, body = await api.call("POST", "/api/v1/failovers", {"server": SOURCE, "reason": "t"})
        assert status == 202, body
        try:
            yield api, ov, int(body["job"]), restart, daemons[0], lab.url
        except AssertionError:
            for d in daemons:
                print(d.tail())
            print(lab.tail())
            raise
    finally:
        daemons[0].kill()
        for d in daemons[1:]:
            assert d.terminate() == 0, d.tail()
        lab.terminate()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10),
                                     connector=aiohttp.TCPConnector(ssl=False)) as s:
        yield s


async def _job(api: Client, job: int) -> dict[str, Any] | None:
    status, body = await api.call("GET", f"/api/v1/jobs/{job}")
    return body if status == 200 else None


async def _ended(api: Client, job: int) -> dict[str, Any] | None:
    body = await _job(api, job)
    return body if body is not None and body["state"] in ("completed", "failed") else None


async def _oneview(ov: Client) -> dict[str, Any]:
    status, body = await ov.call("GET", "/lab/v1/oneview")
    assert status == 200, body
    return dict(body)


async def _check_one_put(final: dict[str, Any], ov: Client, lab: Client) -> None:
    seen = await _oneview(ov)
    assert seen["counts"].get("profile_put") == 1, seen["requests"]  # the move was never sent again
    assert final["state"] == "completed", final
    assert any("resumed after a restart at move_profile" in n for n in final["notes"]), final["notes"]
    assert [t["taskState"] for t in seen["tasks"] if t["name"] == "Update"] == ["Completed"]
    status, violations = await lab.call("GET", "/lab/v1/violations")
    assert status == 200 and violations == []
    status, spare = await lab.call("GET", f"/api/v1/servers/{final['spare']}")
    assert spare["profile"] == PROFILE and spare["power"] == "On"


@pytest_slow
async def test_takeover_follows_the_recorded_task(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    # The task outlasts the restart (the new incarnation waits out the lease and the fence grace, 6 s).
    async with lab_and_daemon(tmp_path, http, {"task_start_s": 0.1, "profile_move_s": 9.0,
                                                "power_s": 0.1}) as (api, ov, job, restart, first, lab_url):
        async def task_recorded() -> bool:
            body = await _job(api, job)
            return body is not None and "task /rest/tasks/" in move_detail(body)

        await eventually(task_recorded, 30, "the move's task to be recorded", interval=0.02)
        first.kill()
        assert (await _oneview(ov))["counts"].get("profile_put") == 1
        await restart()
        # The new incarnation took the job over while OneView still runs the task.
        assert [t["taskState"] for t in (await _oneview(ov))["tasks"] if t["name"] == "Update"] == ["Running"]
        final = await eventually(lambda: _ended(api, job), 60, "the job to end")
        await _check_one_put(final, ov, Client(lab_url, "", http))


@pytest_slow
async def test_crash_between_sending_and_recording_finds_the_task(tmp_path: Path,
                                                                  http: aiohttp.ClientSession) -> None:
    # The appliance holds its answer to the PUT back for 3 s: the task exists, the monitor has not read it.
    durations = {"task_start_s": 0.1, "profile_move_s": 9.0, "power_s": 0.1, "put_answer_delay_s": 3.0}
    async with lab_and_daemon(tmp_path, http, durations) as (api, ov, job, restart, first, lab_url):
        async def task_started() -> bool:
            return any(t["name"] == "Update" for t in (await _oneview(ov))["tasks"])

        await eventually(task_started, 30, "the move's task to exist", interval=0.02)
        body = await _job(api, job)
        assert body is not None and "about to move profile" in move_detail(body), body  # not recorded
        first.kill()
        await restart()
        final = await eventually(lambda: _ended(api, job), 60, "the job to end")
        await _check_one_put(final, ov, Client(lab_url, "", http))
