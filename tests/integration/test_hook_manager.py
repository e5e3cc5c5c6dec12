"""`manager.kind: webhook | command` (adapters/hooks): the move sent to the site's own automation, the
inventory a static file whose state is in the store, power through the lab's real Redfish BMCs. A webhook
server in the test and a command (a Python script run as a process) each implement the contract with a
task that runs for a while: the seed flow to completed, a failed task (the profile stays, undone), a hook
that times out or answers garbage (nothing moved), and a takeover while the task runs (one `move`)."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from lab.main import LabSimulator
from monitor.core.config import MonitorConfig, load_config
from monitor.core.errors import ConfigError
from monitor.core.model import STEPS
from tests.support.harness import DaemonFactory, Harness, monitor_config

SOURCE, SPARE, PROFILE = "enc1-bay1", "enc1-bay9", "prof-enc1-bay1"
HOOK_TOKEN = "hook-secret"


async def static_inventory(lab: LabSimulator, path: Path) -> Path:
    """A static inventory file of the lab's enc1 (its real BMCs), written from the lab's manager API."""
    async with aiohttp.ClientSession() as s, s.get(lab.manager_url.rstrip("/") + "/api/v1/inventory") as r:
        inv = await r.json()
    servers = []
    for x in inv["servers"]:
        if x["id"] not in (SOURCE, SPARE, "enc1-bay10"):
            continue
        entry: dict[str, Any] = {"bay": x["bay"], "product": x["product"], "spare": x["spare"],
                                 "serial": x["serial_number"], "uuid": x["uuid"], "bmc": x["bmc"]}
        if x["profile"]:
            entry["profile"] = x["profile"]
            entry["host"] = x["host"]
        servers.append(entry)
    path.write_text(yaml.safe_dump({"domain_groups": [{"id": "dg1", "domains": [
        {"id": "vcd-enc1", "status": "ok", "enclosures": [{"id": "enc1", "servers": servers}]}]}]}))
    return path


def config(lab: LabSimulator, tmp_path: Path, inventory: Path, manager: dict[str, Any], *,
           instance: str = "test", **failover: Any) -> MonitorConfig:
    base = monitor_config(lab.manager_url, tmp_path, "api-token", **failover).model_dump(mode="json")
    base["http"]["token"] = "api-token"
    base["instance"] = instance
    base["inventory"] = {"source": "static", "file": str(inventory)}
    base["manager"] = manager
    base["cluster"] = {"lease": 2.0, "heartbeat": 0.5, "fence_grace": 0.5}
    return MonitorConfig.model_validate(base)


def states(job: dict[str, Any]) -> dict[str, str]:
    return {s["step"]: s["state"] for s in job["steps"]}


class Automation:
    """The site's automation behind the webhook: a move task that runs `reads` task reads (or until
    `release` is set, when `hold`), then ends as `outcome`. Every request is kept."""

    def __init__(self, *, reads: int = 3, outcome: str = "completed", hold: bool = False) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.tasks: dict[str, dict[str, Any]] = {}
        self.reads, self.outcome, self.hold = reads, outcome, hold
        self.release = asyncio.Event()
        self.move_answer: Any = None  # "garbage" or "slow": how the move request is answered
        self.slow = asyncio.Event()
        self.started = asyncio.Event()
        self.unavailable = 0  # this many task reads answer 503 first
        self.reads_before: int | None = None  # set: `read_again` fires at the next read of the task
        self.read_again = asyncio.Event()

    def moves(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["action"] == "move"]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {HOOK_TOKEN}":
            return web.json_response({"error": "who are you"}, status=401)
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        action = body["action"]
        if action == "move":
            if self.move_answer == "garbage":
                return web.Response(text="<html>Proxy error</html>", content_type="text/html")
            if self.move_answer == "slow":
                await self.slow.wait()  # never answered in time; the task never starts
                return web.json_response({})
            tid = f"T-{len(self.tasks) + 1}"
            self.tasks[tid] = {"intent": body["intent"], "profile": body["profile"],
                               "target": body["target"], "reads": 0}
            if self.move_answer == "late":  # the task runs; its id is told only much later
                self.started.set()
                await self.slow.wait()
            return web.json_response({"task": tid})
        if action == "find_move":
            found = [t for t, v in self.tasks.items() if v["intent"] == body["intent"]]
            return web.json_response({"task": found[0] if found else None})
        if action == "task" and self.unavailable > 0:
            self.unavailable -= 1
            return web.json_response({"error": "maintenance"}, status=503)
        if action == "task":
            t = self.tasks.get(body["task"])
            if t is None:
                return web.json_response({"error": "no such task"}, status=404)
            t["reads"] += 1
            if self.reads_before is not None and t["reads"] > self.reads_before:
                self.read_again.set()
            if (self.release.is_set() if self.hold else t["reads"] > self.reads):
                if self.outcome == "failed":
                    return web.json_response({"state": "failed", "message": "playbook failed: vc_move"})
                return web.json_response({"state": "completed", "message": "ok=12 changed=3"})
            return web.json_response({"state": "running", "percent": min(90, 10 * t["reads"]),
                                      "message": "TASK [vc : move profile]"})
        if action == "spare":
            return web.json_response({"ticket": "CHG-2"})
        return web.json_response({"error": f"unknown action {action}"}, status=400)


@pytest.fixture
async def automation(tcp_socket: socket.socket) -> AsyncIterator[tuple[str, Automation]]:
    auto = Automation()
    app = web.Application()
    app.router.add_post("/hook", auto.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.SockSite(runner, tcp_socket).start()
    yield f"http://127.0.0.1:{tcp_socket.getsockname()[1]}/hook", auto
    auto.slow.set()
    await runner.cleanup()


def webhook(url: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "webhook", "webhook": {"url": url, "token": HOOK_TOKEN, "timeout": 2,
                                           "retry_interval": 0.05, **extra}}


async def on_spare(h: Harness) -> tuple[str | None, bool]:
    p = await h.daemon.adapters.manager.profile(PROFILE)
    spare = await h.daemon.adapters.manager.server(SPARE)
    return p.server, spare.spare


async def test_webhook_seed_flow_completes(lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path,
                                           automation: tuple[str, Automation]) -> None:
    url, auto = automation
    inv = await static_inventory(lab, tmp_path / "inventory.yaml")
    h = await start_daemon(config(lab, tmp_path, inv, webhook(url)))
    job = await h.wait_job(await h.failover(SOURCE, "hook"))
    assert job["state"] == "completed", job
    assert set(states(job).values()) == {"done"} and job["spare"] == SPARE
    move = job["steps"][STEPS.index("move_profile")]["detail"]
    assert f"profile {PROFILE} moved {SOURCE} -> {SPARE}" in move
    assert await on_spare(h) == (SPARE, False)
    assert [r["action"] for r in auto.requests][:1] == ["move"] and len(auto.moves()) == 1
    m = auto.moves()[0]
    assert (m["profile"], m["source"], m["target"]) == (PROFILE, SOURCE, SPARE)
    assert m["job"] == job["job"] and m["epoch"] == 1 and m["monitor"] == "test" and m["intent"]
    fence = auto.headers[0]["X-Failover-Fence"]
    assert fence == f"job={job['job']}; epoch=1; monitor=test"
    assert h.jobs[job["job"]].context.move.task == "T-1"  # the task's id was recorded
    assert lab.world.servers[SPARE].power == "On" and lab.world.servers[SOURCE].power == "Off"


async def test_webhook_over_the_lab_inventory(lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path,
                                             automation: tuple[str, Automation]) -> None:
    """With `inventory.source: lab` the completed task is recorded by the lab manager's own move."""
    url, auto = automation
    base = monitor_config(lab.manager_url, tmp_path, "api-token").model_dump(mode="json")
    base["http"]["token"] = "api-token"
    base["manager"] = webhook(url)
    h = await start_daemon(MonitorConfig.model_validate(base))
    job = await h.wait_job(await h.failover(SOURCE))
    assert job["state"] == "completed", job
    assert lab.world.profiles[PROFILE].server == SPARE and lab.world.servers[SPARE].power == "On"
    assert len(auto.moves()) == 1 and lab.world.violations == []


async def test_webhook_failed_task_leaves_the_profile_on_the_source(
        lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path,
        automation: tuple[str, Automation]) -> None:
    url, auto = automation
    auto.outcome = "failed"
    inv = await static_inventory(lab, tmp_path / "inventory.yaml")
    h = await start_daemon(config(lab, tmp_path, inv, webhook(url)))
    job = await h.wait_job(await h.failover(SOURCE))
    assert job["state"] == "failed"
    st = states(job)
    assert st["move_profile"] == "failed" and st["power_on_spare"] == "skipped"
    assert "task T-1" in job["error"] and "playbook failed: vc_move" in job["error"], job["error"]
    assert f"{SPARE} is a spare again" in job["error"] and f"stays on {SOURCE}" in job["error"]
    assert await on_spare(h) == (SOURCE, True)
    assert (await h.daemon.adapters.manager.server(SOURCE)).host is not None  # host record restored
    assert len(auto.moves()) == 1 and lab.world.servers[SPARE].power == "Off"


async def test_spare_designations_through_the_hook(
        lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path,
        automation: tuple[str, Automation]) -> None:
    url, auto = automation
    auto.outcome = "failed"  # the undo puts the designation back, through the hook too
    inv = await static_inventory(lab, tmp_path / "inventory.yaml")
    h = await start_daemon(config(lab, tmp_path, inv, webhook(url, spare="hook")))
    job = await h.wait_job(await h.failover(SOURCE))
    assert job["state"] == "failed"
    spares = [(r["server"], r["spare"], r["epoch"]) for r in auto.requests if r["action"] == "spare"]
    assert spares == [(SPARE, False, 1), (SPARE, True, 1)]
    assert auto.requests[0]["action"] == "spare"  # before the move
    assert all("X-Failover-Fence" in hd for r, hd in zip(auto.requests, auto.headers, strict=True)
               if r["action"] == "spare")
    assert await on_spare(h) == (SOURCE, True)


async def test_webhook_reads_are_retried_with_backoff(
        lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path,
        automation: tuple[str, Automation]) -> None:
    url, auto = automation
    auto.unavailable = 2  # two 503s: within one read's retries (2)
    inv = await static_inventory(lab, tmp_path / "inventory.yaml")
    h = await start_daemon(config(lab, tmp_path, inv, webhook(url)))
    job = await h.wait_job(await h.failover(SOURCE))
    assert job["state"] == "completed", job
    assert auto.unavailable == 0 and len(auto.moves()) == 1
    assert await on_spare(h) == (SPARE, False)


@pytest.mark.parametrize("answer", ["garbage", "slow"])
async def test_webhook_garbage_or_timeout_moves_nothing(
        lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path,
        automation: tuple[str, Automation], answer: str) -> None:
    url, auto = automation
    auto.move_answer = answer
    inv = await static_inventory(lab, tmp_path / "inventory.yaml")
    h = await start_daemon(config(lab, tmp_path, inv, webhook(url, timeout=0.5)))
    job = await h.wait_job(await h.failover(SOURCE))
    assert job["state"] == "failed"
    expect = "not JSON: '<html>Proxy error</html>'" if answer == "garbage" else "did not answer within 0.5 s"
    assert expect in job["error"] and "not started" in job["error"], job["error"]
    assert await on_spare(h) == (SOURCE, True)
    assert len(auto.moves()) == 1  # the move is sent once; find_move said it never started
    assert [r["action"] for r in auto.requests] == ["move", "find_move", "find_move"]
    assert lab.world.servers[SPARE].power == "Off"


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["task_recorded", "sent_not_recorded"])
async def test_takeover_while_the_task_runs_follows_it(
        lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path,
        automation: tuple[str, Automation], moment: str) -> None:
    """The owner dies while the hook's task runs: with its id recorded, or after the move was sent but
    before the hook named the task (the new owner asks `find_move`). Exactly one `move` reaches the hook."""
    url, auto = automation
    auto.hold = True
    if moment == "sent_not_recorded":
        auto.move_answer = "late"
    inv = await static_inventory(lab, tmp_path / "inventory.yaml")
    hook = webhook(url, timeout=30)
    first = await start_daemon(config(lab, tmp_path, inv, hook, instance="a", shutdown_grace=0))
    job_id = await first.failover(SOURCE)
    if moment == "task_recorded":
        await first.wait_for(lambda: job_id in first.jobs
                             and first.jobs[job_id].context.move.task is not None)
    else:
        await asyncio.wait_for(auto.started.wait(), 20)
        assert first.jobs[job_id].context.move.intent is not None
        assert first.jobs[job_id].context.move.task is None
    first.daemon_stop()  # no shutdown grace: the job is cancelled mid-step
    await first.stopped()
    assert len(auto.moves()) == 1
    auto.reads_before = auto.tasks["T-1"]["reads"]
    second = await start_daemon(config(lab, tmp_path, inv, hook, instance="b"))
    await asyncio.wait_for(auto.read_again.wait(), 20)  # the new owner reads the running task
    auto.release.set()  # the playbook ends only now, while the new owner follows its task
    job = await second.wait_job(job_id)
    assert job["state"] == "completed", job
    assert job["owner"] == "b" and job["epoch"] == 2
    assert len(auto.moves()) == 1, auto.moves()  # exactly one move, ever
    assert auto.moves()[0]["monitor"] == "a"
    if moment == "sent_not_recorded":
        assert [r["action"] for r in auto.requests][:2] == ["move", "find_move"]
    assert await on_spare(second) == (SPARE, False)
    assert lab.world.servers[SPARE].power == "On"


# --- the command ----------------------------------------------------------------------------------------

SCRIPT = r'''
import json, os, sys, time
state = sys.argv[1]
req = json.load(sys.stdin)
log = os.path.join(state, "requests.jsonl")
with open(log, "a") as f:
    f.write(json.dumps({**req, "fence": os.environ.get("FAILOVER_FENCE")}) + "\n")
tasks_file = os.path.join(state, "tasks.json")
tasks = json.load(open(tasks_file)) if os.path.exists(tasks_file) else {}
mode = open(os.path.join(state, "mode")).read().strip()
a = req["action"]
if a == "move":
    if mode == "refuse":
        sys.stderr.write("ticket CHG-1 rejected by change board\n")
        sys.exit(2)
    if mode == "hang":
        time.sleep(60)
    tid = "job-%d" % (len(tasks) + 1)
    tasks[tid] = {"intent": req["intent"], "reads": 0}
    out = {"task": tid}
elif a == "find_move":
    found = [t for t, v in tasks.items() if v["intent"] == req["intent"]]
    out = {"task": found[0] if found else None}
elif a == "task":
    t = tasks.get(req["task"])
    if t is None:
        sys.exit(4)
    t["reads"] += 1
    out = ({"state": "completed"} if t["reads"] > 2 else {"state": "running", "percent": 50})
else:
    sys.exit(64)
json.dump(tasks, open(tasks_file, "w"))
json.dump(out, sys.stdout)
'''


def command_hook(tmp_path: Path, mode: str, **extra: Any) -> tuple[dict[str, Any], Path]:
    state = tmp_path / "hook-state"
    state.mkdir(exist_ok=True)
    (state / "mode").write_text(mode)
    script = tmp_path / "move_hook.py"
    script.write_text(SCRIPT)
    return {"kind": "command", "command": {"argv": [sys.executable, str(script), str(state)],
                                           "timeout": 10, "retry_interval": 0.05, **extra}}, state


def requests_of(state: Path) -> list[dict[str, Any]]:
    path = state / "requests.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_command_seed_flow_completes(lab: LabSimulator, start_daemon: DaemonFactory,
                                           tmp_path: Path) -> None:
    inv = await static_inventory(lab, tmp_path / "inventory.yaml")
    manager, state = command_hook(tmp_path, "ok")
    h = await start_daemon(config(lab, tmp_path, inv, manager))
    job = await h.wait_job(await h.failover(SOURCE))
    assert job["state"] == "completed", job
    assert await on_spare(h) == (SPARE, False)
    reqs = requests_of(state)
    assert [r["action"] for r in reqs] == ["move", "task", "task", "task"]
    assert reqs[0]["fence"] == f"job={job['job']}; epoch=1; monitor=test"
    assert reqs[1]["fence"] is None  # a read is not an action: no FAILOVER_FENCE
    assert h.jobs[job["job"]].context.move.task == "job-1"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["refuse", "hang"])
async def test_command_refusing_or_hanging_moves_nothing(lab: LabSimulator, start_daemon: DaemonFactory,
                                                         tmp_path: Path, mode: str) -> None:
    inv = await static_inventory(lab, tmp_path / "inventory.yaml")
    manager, state = command_hook(tmp_path, mode, timeout=1)
    h = await start_daemon(config(lab, tmp_path, inv, manager))
    job = await h.wait_job(await h.failover(SOURCE))
    assert job["state"] == "failed"
    if mode == "refuse":
        assert "refused (exit 2): ticket CHG-1 rejected by change board" in job["error"], job["error"]
    else:
        assert "ran over 1 s (killed)" in job["error"] and "not started" in job["error"], job["error"]
    assert await on_spare(h) == (SOURCE, True)
    assert [r["action"] for r in requests_of(state)][:1] == ["move"]
    assert lab.world.servers[SPARE].power == "Off"


def test_config_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "monitor.yaml"
    path.write_text("store: m.db\nmanager:\n  kind: command\n  command:\n    argv: []\n    timeout: -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert f"{path}:5: manager.command.argv" in text and f"{path}:6: manager.command.timeout" in text, text
    path.write_text("store: m.db\nmanager:\n  kind: webhook\n")
    with pytest.raises(ConfigError, match=r"manager\.webhook is required"):
        load_config(path)


async def test_a_move_past_its_fence_is_not_sent(tmp_path: Path) -> None:
    from adapters.hooks import CommandHook
    from monitor.core.clock import SystemClock
    from monitor.core.config import CommandHookConfig
    from monitor.core.errors import FenceLost
    from monitor.core.fencing import Fence, acting

    manager, state = command_hook(tmp_path, "ok")
    hook = CommandHook(CommandHookConfig.model_validate(manager["command"]), SystemClock())
    move = {"action": "move", "profile": PROFILE, "source": SOURCE, "target": SPARE, "intent": "i-1"}
    with acting(Fence(7, 3, "m1", valid=lambda: False)), pytest.raises(FenceLost):
        await hook.call(move)
    assert requests_of(state) == []  # past the action's deadline: never run
    with acting(Fence(7, 3, "m1", valid=lambda: True)):
        assert await hook.call(move) == {"task": "job-1"}
    assert [(r["fence"], r["job"], r["epoch"]) for r in requests_of(state)] == [
        ("job=7; epoch=3; monitor=m1", 7, 3)]
