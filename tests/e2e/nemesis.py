"""The nemesis harness: attacks on the fencing promise from outside, Jepsen-style, against real processes.

One lab (`python -m lab`), three daemons (`python -m monitor run`) on one PostgreSQL store, each daemon
talking to PostgreSQL through its own TCP proxy in the test process (`StoreProxy`), so the test can cut
one monitor off the store while its BMCs and the lab manager stay reachable. Each round fails over a
fresh blade (`tests.e2e.test_cluster.pick_source`) and attacks it once:

- `pause`: SIGSTOP the job's owner at a random point (between two commits, or the moment one of the
  job's commits — the lock, a write-ahead save — shows up in the job, seen through another monitor's API
  with a tight poll; the owner's store replies are held a little meanwhile, so the stop lands between
  the save and the action it announces), keep it stopped past lease + fence_grace until another monitor
  adopted the job, then SIGCONT;
- `kill`: the same points, SIGKILL, restarted once its lease is over;
- `partition`: the owner's store proxy cut (connections dropped, new ones refused) or blackholed
  (connections kept open, no byte forwarded) past lease + fence_grace until the job was adopted, then
  healed;
- `skew`: one monitor restarted under libfaketime (+30 s or -30 s on its wall clock, the monotonic clock
  untouched): nobody may steal a healthy monitor's job, nor act on one it does not own;
- `duplicate`: a second daemon with the instance name of the job's owner: it must refuse to start
  (non-zero exit within a deadline, its message naming the instance) and never act;
- `finish`: the move made to fail (the lab's `move_error`), the owner's store slowed, and the owner
  SIGKILLed inside the job's finish (after the failure's own commit, while the undo runs and before the
  one commit of its outcome, the unlock and the final state), the fault cleared: a job seen failed must
  never be resumed into `completed`.

After every round the oracle (`NemesisCluster.oracle`) checks, for what the round could have changed:
the lab's own violations (none); every action in the lab's log carrying (job, epoch) was sent by that
epoch's owner while the epoch was current (its time before the `since` of the job's next epoch; same host
clock, no slack), and every action carries a token at all; no action reached the job's servers after the
job was seen ended (this one needs no epochs); the adopter acted no earlier than the old owner's lease
plus fence_grace; every profile on exactly one server, no server holding a profile flagged spare, every
former spare without a profile still a spare, nothing without a profile powered on, every host record
the record of the profile its server holds; no group locked, no job active; the job's final state true
to the world (completed: the profile on the job's spare, the spare On, the source Off; failed: the
profile on the source with its host record back, or where the error says it is); no job seen failed
ends completed; the API shows `epoch`/`owners`, `fence_grace`, `incarnation`, `lease_left` null once
over. Problems carry the invariant's name (`Problem.invariant`); `summary()` tabulates them per attack.

With `oneview=` (a lab config `oneview` section: its task durations), the lab serves its OneView face and
every monitor runs `manager.kind: oneview` against it (inventory, spare labels, the profile move as a PUT
and its task; power still through the BMCs): the move points then include the task's run, a `finish`
round's fault is the task ending in Error (`oneview_task_error`), and the oracle also checks the face's
own record (`GET /lab/v1/oneview`): at most one profile PUT reached the appliance per job, exactly one
accepted for a job that moved its profile; the world's log entry of a move a task carried out is judged
at the time its PUT was accepted (the task takes effect later by design: the adopter follows it).

The rounds are seeded (`FAILOVER_NEMESIS_SEED`); the random moments are deliberately not synchronised
with anything, everything else waits on a condition with a deadline. Used by tests/e2e/test_nemesis.py and
bench/bench_nemesis.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import yaml

from tests.e2e.test_cluster import (
    ENDED,
    TOKEN,
    Cluster,
    Monitor,
    pick_source,
    shared_store,
    write_monitor_config,
)
from tests.peers.processes import Client, DaemonProcess, LabProcess
from tests.support.net import reserve_port, shared_bmc_port
from tests.support.wait import eventually

LEASE = 3.0
HEARTBEAT = 1.0
SLACK = 2.5
"""Seconds allowed on top of a bound for a loaded two-core machine."""
POLL = 0.01
"""Seconds between two reads of the attacked job (through a monitor that is not attacked)."""
LATENCY = {"power_off_s": 1.0, "power_on_s": 0.5, "boot_s": 0.0, "manager_ms": 100}
"""manager_ms widens the moments between a write-ahead save and the manager's answer."""
REQUEST_TIMEOUT = 4.0
"""redfish.timeout and the lab manager's timeout of the daemons (an action's own time limit)."""
JOB_DEADLINE = 120.0
"""Seconds for a job to end once its round's attack is over."""
ROUND_DEADLINE = 300.0
DUPLICATE_DEADLINE = 30.0
"""Seconds a monitor with a taken name may take to refuse to start."""
FINISH_STORE_DELAY = 0.05
"""Seconds the owner's store traffic is held per chunk in `finish` rounds (widens the finish)."""
REPLY_DELAY = 0.06
"""Seconds the owner's store replies are held while it runs the step of a save-point attack."""
SKEW = 30
INSTANCES = ("alpha", "bravo", "charlie", "delta")
"""Instance names that appear nowhere else (a duplicate's message must name its instance)."""
MIX = ("pause", "partition", "skew", "finish", "duplicate", "kill", "pause", "partition", "pause", "skew",
       "finish", "pause", "partition", "duplicate", "pause", "finish", "skew", "pause", "partition", "pause")
"""20 rounds: every attack in each block of six, pause and partition most often."""
ATTACK_NAMES = ("pause", "kill", "partition", "skew", "duplicate", "finish")


def seed_from_env() -> int:
    return int(os.environ.get("FAILOVER_NEMESIS_SEED", str(random.randrange(1 << 30))))


def attacks_from_env() -> list[str] | None:
    """`FAILOVER_NEMESIS_ATTACKS=pause,skew` restricts the rounds to those attacks."""
    raw = os.environ.get("FAILOVER_NEMESIS_ATTACKS", "").strip()
    if not raw:
        return None
    names = [a.strip() for a in raw.split(",") if a.strip()]
    unknown = sorted(set(names) - set(ATTACK_NAMES))
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; attacks are {', '.join(ATTACK_NAMES)}")
    return names


def plan(rounds: int, rng: random.Random, attacks: Iterable[str] | None = None,
         mix: Iterable[str] = MIX) -> list[str]:
    """The attack of each round: the mix repeated, shuffled within each block of the mix's length."""
    wanted = list(attacks) if attacks is not None else None
    base = [a for a in mix if wanted is None or a in wanted] or list(wanted or ATTACK_NAMES)
    out = [base[i % len(base)] for i in range(rounds)]
    for i in range(0, rounds, len(base)):
        block = out[i:i + len(base)]
        rng.shuffle(block)
        out[i:i + len(base)] = block
    return out


def enclosures_for(rounds: int) -> int:
    """Enough enclosures that every round finds a fresh blade with a spare (about ten per group), with
    room for groups set aside after a round left them locked."""
    return max(6, min(32, 2 * (rounds // 10 + 2)))


# --- problems and rounds -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.invariant}] {self.detail}"


BREAKING = {"group-locked", "job-active", "round-error"}
"""Problems that leave a domain group unusable for later rounds (it is set aside)."""


@dataclass
class RoundResult:
    n: int
    attack: str
    variant: str = ""
    server: str = ""
    group: str = ""
    job: int = 0
    victim: str = ""
    at: str = ""
    """The job's state and running step (with its detail) when the attack hit."""
    takeover: float | None = None
    """Seconds from the attack to another monitor owning the job (seen through the API)."""
    acting: float | None = None
    """Seconds from the attack to the first action of the job's new epoch in the lab's log."""
    final: str = ""
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    log_mark: int = 0
    violation_mark: int = 0
    attack_wall: float | None = None
    old_lease_end: float | None = None
    """Wall time the attacked owner's lease ended, as the store showed it right after the attack."""
    epoch_before: int | None = None
    ended_wall: float | None = None
    """Wall time the job was first seen ended (through the API: it had ended by then)."""
    servers: set[str] = field(default_factory=set)
    """The job's source and every spare it named."""
    actions: list[dict[str, Any]] = field(default_factory=list)
    """The lab's log during the round."""
    expect_one_owner: bool = False
    """Skew and duplicate rounds: nobody may take the job over."""
    tails: str = ""
    wall: float = 0.0

    def line(self) -> str:
        def secs(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f} s"

        text = (f"round {self.n:3} {self.attack:9} {self.variant[:48]:48} {self.server:11} job {self.job:<4}"
                f" victim {self.victim or '-':7} at {self.at[:60]!r}; takeover {secs(self.takeover)},"
                f" acting {secs(self.acting)}; {self.final or '?'}")
        if self.problems:
            text += f"; {len(self.problems)} PROBLEM(S): " + "; ".join(str(p) for p in self.problems[:4])
        return text


def describe(job: dict[str, Any] | None) -> str:
    if job is None:
        return "just created"
    step = next((s for s in job["steps"] if s["state"] == "running"), None)
    if step is None:
        return str(job["state"])
    return f"{job['state']}/{step['step']}: {step['detail'] or ''}"


def failure_recorded(job: dict[str, Any]) -> bool:
    return bool(job.get("error")) or any(s["state"] == "failed" for s in job["steps"])


def failed_steps(job: dict[str, Any]) -> list[str]:
    return [s["step"] for s in job["steps"] if s["state"] == "failed"]


def ended(job: dict[str, Any]) -> bool:
    return job["state"] in ENDED


def _ts(iso_time: str) -> float:
    return datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp()


_REFUSED = re.compile(r"\b(refused|rejected)\b", re.I)
_BY_FENCE = re.compile(r"fenc|epoch", re.I)


def fence_refused(entry: dict[str, Any]) -> bool:
    """The lab refused this request for its stale epoch (the fence held): not an action. The one place
    that knows how the lab marks it: `accepted: false` and a detail `rejected (stale fencing token: …)`
    (lab/API.md, "Fencing")."""
    if entry.get("fenced") is True:
        return True
    if entry.get("accepted") is True:
        return False
    detail = str(entry.get("detail") or "")
    return bool(_REFUSED.search(detail) and _BY_FENCE.search(detail))


def _entry(e: dict[str, Any]) -> str:
    return (f"{e.get('kind')} {e.get('server')} '{e.get('detail')}' by {e.get('monitor')}"
            f" (job {e.get('job')}, epoch {e.get('epoch')}) at {e.get('time')}")


# --- the store proxy ---------------------------------------------------------------------------------


class StoreProxy:
    """A TCP proxy between one monitor and PostgreSQL, run by the test's event loop on 127.0.0.1:0.

    `cut()` drops every connection and refuses new ones (accepted, then closed at once);
    `blackhole()` keeps connections open and accepts new ones, but forwards no byte (what was sent waits
    and goes through after `heal()`, as TCP retransmission would deliver it); `delay` holds each chunk
    from the monitor that many seconds (a slow store), `reply_delay` each chunk to it (a save is
    committed, and seen by the others, before its owner hears so: a SIGSTOP then lands between the
    write-ahead save and the action it announces)."""

    def __init__(self, url: str) -> None:
        self._url = urlsplit(url)
        self.target = (self._url.hostname or "127.0.0.1", self._url.port or 5432)
        self.mode = "open"
        self.delay = 0.0
        self.reply_delay = 0.0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0
        self.connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        userinfo = self._url.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(self._url._replace(netloc=netloc))

    def cut(self) -> None:
        self.mode = "cut"
        self._flowing.set()  # held chunks are dropped with their connections
        for w in list(self._writers):
            w.transport.abort()

    def blackhole(self) -> None:
        self.mode = "blackhole"
        self._flowing.clear()

    def heal(self) -> None:
        self.mode = "open"
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            if self.mode == "cut":
                return
            self.connections += 1
            try:
                up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 5)
            except (OSError, TimeoutError):
                return
            upstream = up_writer
            self._writers.update((writer, up_writer))
            await asyncio.gather(self._pump(reader, up_writer, to_store=True),
                                 self._pump(up_reader, writer, to_store=False))
        except asyncio.CancelledError:
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()
            if task is not None:
                self._tasks.discard(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, to_store: bool) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                await self._flowing.wait()
                if self.mode == "cut":
                    break
                delay = self.delay if to_store else self.reply_delay
                if delay:
                    await asyncio.sleep(delay)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.transport.abort()

    async def close(self) -> None:
        self.heal()
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


# --- libfaketime ---------------------------------------------------------------------------------------

FAKETIME_GLOB = "/usr/lib/*/faketime/libfaketime.so.1"


def libfaketime() -> str | None:
    """The path of libfaketime.so.1, installing Debian's `libfaketime` when missing (as root)."""
    found = sorted(glob.glob(FAKETIME_GLOB))
    if found:
        return found[0]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "libfaketime"]
    if subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(cmd, env=env, capture_output=True, timeout=600)
    found = sorted(glob.glob(FAKETIME_GLOB))
    return found[0] if found else None


def skew_env(library: str, seconds: int) -> dict[str, str]:
    """The environment that puts a process's wall clock `seconds` off, its monotonic clock untouched."""
    return {"LD_PRELOAD": library, "FAKETIME": f"{seconds:+d}s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


async def measured_skew(env: dict[str, str]) -> float:
    """How far Python's time.time() is off under `env` (run in a child interpreter)."""
    before = time.time()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; print(repr(time.time()))", env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    after = time.time()
    assert proc.returncode == 0, err.decode(errors="replace")
    return float(out.decode().strip()) - (before + after) / 2


# --- the processes ---------------------------------------------------------------------------------------


@dataclass
class Member(Monitor):
    """A daemon of the nemesis cluster: its store proxy, its environment (libfaketime), and SIGSTOP."""

    proxy: StoreProxy | None = None
    env: dict[str, str] = field(default_factory=dict)
    skew: int = 0
    stopped: bool = False

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.starts += 1
        self.stopped = False
        self.proc = DaemonProcess(self.config, self.directory / f"{self.name}.{self.starts}.log", self.env)

    def signal(self, sig: signal.Signals) -> None:
        if self.running and self.proc is not None:
            os.kill(self.proc.p.pid, sig)

    def sigstop(self) -> None:
        self.signal(signal.SIGSTOP)
        self.stopped = True

    def sigcont(self) -> None:
        self.signal(signal.SIGCONT)
        self.stopped = False

    def kill(self) -> None:
        super().kill()
        self.stopped = False

    @property
    def reachable(self) -> bool:
        return self.running and not self.stopped and (self.proxy is None or self.proxy.mode == "open")

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.p.poll()

    def logs(self) -> list[Path]:
        return sorted(self.directory.glob(f"{self.name}.*.log"), key=lambda p: p.stat().st_mtime)


@dataclass
class NemesisCluster(Cluster):
    directory: Path = Path()
    http: aiohttp.ClientSession | None = None
    pg_url: str = ""
    fence_grace: float = 0.0
    failover: dict[str, Any] = field(default_factory=dict)
    baseline_spares: frozenset[str] = frozenset()
    api_problems: list[Problem] = field(default_factory=list)
    poisoned: set[str] = field(default_factory=set)
    used: set[str] = field(default_factory=set)
    known: set[str] = field(default_factory=set)
    faketime: str | None = None
    skews: dict[int, float] = field(default_factory=dict)
    duplicates: int = 0
    takeover_jobs: list[int] = field(default_factory=list)
    """Jobs that changed hands (the lab's fence is tried on them at the end)."""
    points: tuple[Point, ...] = ()
    """The points pause, kill and partition rounds choose from (empty: every point of the attack)."""
    oneview_url: str = ""
    """The lab's OneView face, when the monitors run `manager.kind: oneview` (empty: the lab's manager)."""
    _inventory_cache: list[dict[str, Any]] = field(default_factory=list)

    @property
    def members(self) -> list[Member]:
        return cast(list[Member], self.monitors)

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def reachable(self, avoid: Iterable[str] = ()) -> list[Member]:
        skip = set(avoid)
        return [m for m in self.members if m.reachable and m.name not in skip]

    @property
    def bound(self) -> float:
        """The fencing bound: an adopter acts no earlier than the old lease + fence_grace."""
        return self.lease + self.fence_grace

    def session(self) -> aiohttp.ClientSession:
        assert self.http is not None
        return self.http

    async def call(self, m: Member | Client, method: str, path: str, body: Any = None,
                   timeout: float = 3.0) -> tuple[int, Any]:
        api = m.api if isinstance(m, Member) else m
        try:
            async with self.session().request(
                    method, api.base + path, json=body, timeout=aiohttp.ClientTimeout(total=timeout),
                    headers={"Authorization": f"Bearer {api.token}"}) as r:
                return r.status, await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return 0, None

    async def ask(self, path: str, avoid: Iterable[str] = (), timeout: float = 30.0) -> Any:
        """GET `path` from any reachable monitor (not in `avoid`), until one answers 200."""
        skip = set(avoid)
        deadline = time.monotonic() + timeout
        last: tuple[int, Any] = (0, None)
        while True:
            for m in self.reachable(skip):
                last = await self.call(m, "GET", path)
                if last[0] == 200:
                    return last[1]
            if time.monotonic() > deadline:
                raise AssertionError(f"GET {path}: no monitor answered 200 within {timeout:g} s "
                                     f"(last: {last[0]} {str(last[1])[:200]})")
            await asyncio.sleep(0.1)

    async def lab_get(self, path: str) -> Any:
        return await self.get(self.lab_api, path)

    async def lab_call(self, method: str, path: str, body: Any = None,
                       headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.session().request(method, self.lab_api.base + path, json=body,
                                          headers=headers or {},
                                          timeout=aiohttp.ClientTimeout(total=15)) as r:
            return r.status, await r.json(content_type=None)

    async def oneview_control(self) -> dict[str, Any]:
        """The OneView face's own record (`GET /lab/v1/oneview`: requests, counts, tasks)."""
        async with self.session().get(self.oneview_url + "/lab/v1/oneview", ssl=False,
                                      timeout=aiohttp.ClientTimeout(total=15)) as r:
            assert r.status == 200, f"GET /lab/v1/oneview: {r.status}"
            return dict(await r.json(content_type=None))

    async def set_move_task(self, seconds: float) -> None:
        """How long the OneView face's next profile-move tasks run."""
        async with self.session().put(self.oneview_url + "/lab/v1/oneview/durations", ssl=False,
                                      json={"profile_move_s": seconds},
                                      timeout=aiohttp.ClientTimeout(total=15)) as r:
            assert r.status == 200, f"PUT /lab/v1/oneview/durations: {r.status} {await r.text()}"

    @property
    def move_fault(self) -> str:
        """The lab fault that makes a profile move fail (the task's Error on the OneView face)."""
        return "oneview_task_error" if self.oneview_url else "move_error"

    async def member_view(self, name: str, avoid: Iterable[str] = ()) -> dict[str, Any] | None:
        state = await self.ask("/api/v1/cluster", avoid=avoid)
        return next((m for m in state["members"] if m["instance"] == name), None)

    async def lease_end(self, name: str) -> float:
        """Wall time `name`'s lease ends, as the store shows it (now when it is over)."""
        view = await self.member_view(name, avoid={name})
        left = None if view is None else view.get("lease_left")
        return time.time() + max(0.0, float(left)) if isinstance(left, int | float) else time.time()

    async def wait_lease_over(self, name: str, timeout: float = 60.0) -> bool:
        """Until the store shows `name`'s lease over (a restarted monitor is not a live duplicate)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                view = await self.member_view(name, avoid={name})
            except AssertionError:
                view = None
            if view is None or not view.get("alive") or view.get("lease_left") is None \
                    or float(view["lease_left"]) <= 0:
                return True
            await asyncio.sleep(0.1)
        return False

    async def healthy(self, m: Member) -> bool:
        status, _ = await self.call(m, "GET", "/healthz")
        return status == 200

    async def wait_member_healthy(self, m: Member, timeout: float = 60.0) -> None:
        async def ok() -> bool:
            assert m.running, f"{m.name} exited ({m.exit_code()}):\n{m.tail()}"
            return await self.healthy(m)

        await eventually(ok, timeout, f"{m.name} to be healthy", interval=0.1)

    async def stop_gracefully(self, m: Member, timeout: float = 30.0) -> None:
        """SIGTERM without blocking the loop (the store proxies run in it), SIGKILL after `timeout`."""
        if not m.running or m.proc is None:
            return
        m.sigcont()
        m.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while m.running and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        m.kill()

    async def restart(self, m: Member, r: RoundResult | None = None) -> None:
        """Start `m` again once its lease is over (started earlier it is a live duplicate of itself)."""
        if m.running:
            return
        if not await self.wait_lease_over(m.name) and r is not None:
            r.notes.append(f"{m.name}'s lease still showed alive after 60 s; started anyway")
        m.start()

    async def set_skew(self, m: Member, seconds: int) -> None:
        """Restart `m` with its wall clock `seconds` off (0: the true clock)."""
        if m.skew == seconds and m.running:
            return
        env: dict[str, str] = {}
        if seconds:
            assert self.faketime is not None, "libfaketime is not available"
            env = skew_env(self.faketime, seconds)
            if seconds not in self.skews:
                self.skews[seconds] = await measured_skew(env)
            got = self.skews[seconds]
            assert abs(got - seconds) < 2.0, \
                f"libfaketime FAKETIME={seconds:+d}s moved time.time() by {got:+.2f} s"
        await self.stop_gracefully(m)
        m.env, m.skew = env, seconds
        await self.restart(m)
        await self.wait_member_healthy(m)

    def pick(self, rng: random.Random) -> str:
        inv_servers = self._inventory_cache
        inv = {"servers": [s for s in inv_servers if s["domain_group"] not in self.poisoned]}
        server = pick_source(inv, self.used, rng)
        assert server is not None, (f"no production blade with a qualified spare left (groups set aside:"
                                    f" {sorted(self.poisoned)})")
        self.used.add(server)
        return server

    async def refresh_inventory(self) -> dict[str, Any]:
        inv: dict[str, Any] = await self.lab_get("/api/v1/inventory")
        self._inventory_cache = list(inv["servers"])
        return inv

    def tails(self, n: int = 2500) -> str:
        parts = []
        for m in self.members:
            for log in m.logs()[-2:]:
                parts.append(f"--- {log.name} ---\n{log.read_text(errors='replace')[-n:]}")
        for log in sorted(self.directory.glob("dup-*.log"))[-1:]:
            parts.append(f"--- {log.name} ---\n{log.read_text(errors='replace')[-n:]}")
        parts.append(f"--- lab ---\n{self.lab.tail(n)}")
        return "\n".join(parts)

    # --- the oracle ----------------------------------------------------------------------------------

    async def settle(self, quiet: float = 1.0, timeout: float = 30.0) -> None:
        """Until the lab's log has not grown for `quiet` seconds (late actions of a lost owner land)."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            n = len(await self.lab_get("/lab/v1/log"))
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            await asyncio.sleep(0.25)

    async def oracle(self, r: RoundResult, final: dict[str, Any] | None) -> list[Problem]:
        """Every invariant, for what round `r` could have changed (the lab's log and violations since
        the round began; the world and the store as they are now)."""
        problems: list[Problem] = []
        inv = await self.refresh_inventory()
        hosts = await self.lab_get("/api/v1/hosts")
        log: list[dict[str, Any]] = await self.lab_get("/lab/v1/log")
        violations: list[dict[str, Any]] = await self.lab_get("/lab/v1/violations")
        problems += [Problem("lab-violation", f"{v.get('detail') or v} (at {v.get('time')})")
                     for v in violations[r.violation_mark:]]
        problems += world_problems(inv, hosts, self.baseline_spares)
        entries = log[r.log_mark:]
        puts: list[dict[str, Any]] = []
        if self.oneview_url:
            puts = [q for q in (await self.oneview_control())["requests"] if q.get("kind") == "profile_put"]
            entries = retimed_task_moves(entries, puts)
        r.actions = entries
        if r.ended_wall is not None:
            end = r.ended_wall
            late = [e for e in entries if e.get("server") in r.servers and not fence_refused(e)
                    and e.get("kind") in ("reset", "move", "spare", "host") and float(e["time"]) > end]
            problems += [Problem("action-after-end", f"job {r.job} had ended (seen at {end:.3f}) when"
                                                     f" {_entry(e)} reached the lab") for e in late]
        jobs: dict[int, dict[str, Any]] = {}
        for j in sorted({int(e["job"]) for e in entries if e.get("job") is not None} | {r.job} - {0}):
            jobs[j] = await self.ask(f"/api/v1/jobs/{j}")
        problems += action_problems(entries, jobs)
        if final is not None:
            problems += job_problems(final, inv, hosts)
            problems += self._round_checks(r, entries, jobs.get(r.job, final))
            if self.oneview_url:
                problems += profile_put_problems(final, puts)
        state = await self.ask("/api/v1/cluster")
        for g in state["groups"]:
            problems.append(Problem("group-locked", f"group {g['group']} still locked by job {g['job']}"
                                                    f" ({g.get('owner')})"))
            self.poisoned.add(str(g["group"]))
        for j in state["jobs"]:
            problems.append(Problem("job-active", f"job {j['job']} ({j['server']}) still {j['state']},"
                                                  f" owned by {j['owner']}"))
        for m in state["members"]:
            left = m.get("lease_left")
            if not m.get("alive") and left is not None:  # the value left out: reported once per member
                problems.append(Problem("api-missing", f"/api/v1/cluster: lease_left of {m['instance']},"
                                                       " whose lease is over, is a number (expected null)"))
        return problems

    def _round_checks(self, r: RoundResult, entries: list[dict[str, Any]],
                      job: dict[str, Any]) -> list[Problem]:
        problems: list[Problem] = []
        owners = job.get("owners")
        epoch = job.get("epoch")
        if not isinstance(epoch, int) or not isinstance(owners, list):
            problems.append(Problem("api-missing", "job JSON has no `epoch` (int) and `owners` (list): "
                                                   f"keys are {sorted(job)}"))
            owners = None
        if owners is not None:
            epochs = [o.get("epoch") for o in owners]
            if not owners or epochs != sorted(set(epochs)) or owners[-1].get("epoch") != epoch \
                    or owners[-1].get("owner") != job.get("owner"):
                problems.append(Problem("owners", f"job {r.job}: owners {owners} do not end with the job's"
                                                  f" epoch {epoch} and owner {job.get('owner')}"))
            if r.takeover is not None and r.epoch_before is not None and isinstance(epoch, int) \
                    and epoch <= r.epoch_before:
                problems.append(Problem("owners", f"job {r.job} changed hands but its epoch stayed {epoch}"))
            if r.expect_one_owner and len(owners) > 1:
                problems.append(Problem("stolen", f"job {r.job} changed hands: owners {owners}"))
        mine = [e for e in entries if e.get("job") is not None and int(e["job"]) == r.job
                and not fence_refused(e)]
        if r.epoch_before is not None and r.attack_wall is not None:
            newer = [e for e in mine if isinstance(e.get("epoch"), int) and e["epoch"] > r.epoch_before]
            if newer:
                first = min(float(e["time"]) for e in newer)
                r.acting = first - r.attack_wall
                if r.old_lease_end is not None and first < r.old_lease_end + self.fence_grace - 0.15:
                    problems.append(Problem(
                        "early-action",
                        f"job {r.job}: the adopter acted {r.old_lease_end + self.fence_grace - first:.2f} s"
                        f" before the old owner's lease + fence_grace ({self.fence_grace:g} s) had passed:"
                        f" {_entry(min(newer, key=lambda e: float(e['time'])))}"))
        if r.expect_one_owner:
            problems += acted_twice(entries, job)
        return problems


def world_problems(inv: dict[str, Any], hosts: list[dict[str, Any]],
                   baseline_spares: frozenset[str]) -> list[Problem]:
    """The world itself: profiles, spare flags, power without a profile, host records."""
    problems: list[Problem] = []
    servers = {s["id"]: s for s in inv["servers"]}
    holders: dict[str, list[str]] = {}
    for s in inv["servers"]:
        if s["profile"]:
            holders.setdefault(s["profile"], []).append(s["id"])
    host_of: dict[str, tuple[str, str]] = {}
    for p in inv["profiles"]:
        on = holders.get(p["id"], [])
        if len(on) != 1:
            problems.append(Problem("profile-placement", f"profile {p['id']} is on {on or 'no server'}"))
        elif p.get("server") != on[0]:
            problems.append(Problem("profile-placement", f"profile {p['id']} says server {p.get('server')},"
                                                         f" but {on[0]} holds it"))
        if p.get("host"):
            host_of[p["id"]] = (p["host"]["name"], p["host"]["ip"])
    for s in inv["servers"]:
        if s["profile"] and s["spare"]:
            problems.append(Problem("spare-flag", f"{s['id']} holds {s['profile']} and is flagged spare"))
        if not s["profile"] and s["id"] in baseline_spares and not s["spare"]:
            problems.append(Problem("spare-flag", f"{s['id']} was a spare, holds no profile and is no longer"
                                                  " flagged spare"))
        if not s["profile"] and s["present"] and s["power"] != "Off":
            spare = " (a spare)" if s["id"] in baseline_spares else ""
            problems.append(Problem("powered-without-profile",
                                    f"{s['id']} reads {s['power']} without a profile{spare}"))
    for h in hosts:
        s = servers.get(h["server"])
        if s is None or not s["profile"]:
            problems.append(Problem("host-record", f"host record {h['name']} ({h['ip']}) on {h['server']},"
                                                   " which holds no profile"))
        elif host_of.get(s["profile"]) != (h["name"], h["ip"]):
            problems.append(Problem("host-record", f"host record {h['name']} ({h['ip']}) on {h['server']},"
                                                   f" which holds {s['profile']}"
                                                   f" ({host_of.get(s['profile'])})"))
    return problems


def action_problems(entries: list[dict[str, Any]], jobs: dict[int, dict[str, Any]]) -> list[Problem]:
    """Every action in the lab's log was sent by its epoch's owner while that epoch was current: at or
    after the epoch's `since`, before the `since` of the job's next epoch (one host clock: no slack)."""
    problems: list[Problem] = []
    blind = [e for e in entries if e.get("job") is None or e.get("epoch") is None]
    if blind:
        problems.append(Problem("no-fencing-token",
                                f"{len(blind)} of {len(entries)} lab action(s) carry no job and epoch, e.g."
                                f" {_entry(blind[0])}: the lab cannot tell who sent them"))
    for e in entries:
        if e.get("job") is None or e.get("epoch") is None or fence_refused(e):
            continue
        job = jobs.get(int(e["job"]))
        owners = job.get("owners") if job else None
        if not isinstance(owners, list) or not owners:
            continue  # reported as api-missing
        epoch = int(e["epoch"])
        idx = next((i for i, o in enumerate(owners) if o.get("epoch") == epoch), None)
        if idx is None:
            problems.append(Problem("stale-action", f"action with an epoch job {e['job']} never had:"
                                                    f" {_entry(e)}; owners {owners}"))
            continue
        cur = owners[idx]
        if e.get("monitor") is not None and e["monitor"] != cur.get("owner"):
            problems.append(Problem("wrong-monitor",
                                    f"{_entry(e)}, but epoch {epoch} belongs to {cur.get('owner')}"))
        t = float(e["time"])
        if cur.get("since") and t < _ts(cur["since"]):
            problems.append(Problem("stale-action",
                                    f"action before its epoch began ({cur['since']}): {_entry(e)}"))
        if idx + 1 < len(owners):
            nxt = owners[idx + 1]
            if t >= _ts(nxt["since"]):
                problems.append(Problem(
                    "stale-action",
                    f"action by a monitor that no longer owned the job: {_entry(e)},"
                    f" {t - _ts(nxt['since']):.3f} s after epoch {nxt.get('epoch')} ({nxt.get('owner')})"
                    f" began at {nxt['since']}"))
    return problems


def retimed_task_moves(entries: list[dict[str, Any]], puts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The world's log with each move a OneView task carried out timed at its profile PUT's acceptance
    (matched by job and epoch): the request is the action; its task takes effect later by design, and a
    new owner that follows it is not acting for the old epoch. An effect with no accepted PUT of its
    (job, epoch) keeps its own time."""
    accepted: dict[tuple[int, int], float] = {}
    for q in puts:
        if q.get("job") is not None and q.get("epoch") is not None and 200 <= int(q.get("status") or 0) < 300:
            key = (int(q["job"]), int(q["epoch"]))
            accepted[key] = min(accepted.get(key, float(q["time"])), float(q["time"]))
    out = []
    for e in entries:
        if e.get("kind") == "move" and str(e.get("detail") or "").endswith(": ok") \
                and e.get("job") is not None and e.get("epoch") is not None:
            sent = accepted.get((int(e["job"]), int(e["epoch"])))
            if sent is not None:
                e = {**e, "time": sent, "effect_time": e["time"]}
        out.append(e)
    return out


def profile_put_problems(job: dict[str, Any], puts: list[dict[str, Any]]) -> list[Problem]:
    """The OneView face's count: at most one profile PUT of the job reached the appliance, and exactly one
    was accepted when the profile moved (the job completed, or its profile is where its error says)."""
    mine = [q for q in puts if q.get("job") is not None and int(q["job"]) == int(job["job"])]
    ok = [q for q in mine if 200 <= int(q.get("status") or 0) < 300]
    problems = []
    if len(mine) > 1:
        shown = ", ".join(f"epoch {q.get('epoch')} by {q.get('monitor')}: {q.get('status')}" for q in mine)
        problems.append(Problem("profile-puts", f"job {job['job']}: {len(mine)} profile PUTs reached OneView"
                                                f" ({shown}); the move must be sent once"))
    if job["state"] == "completed" and len(ok) != 1:
        problems.append(Problem("profile-puts", f"job {job['job']} completed with {len(ok)} accepted profile"
                                                " PUT(s) on OneView (expected exactly one)"))
    return problems


def job_problems(job: dict[str, Any], inv: dict[str, Any], hosts: list[dict[str, Any]]) -> list[Problem]:
    """The job's final state is true to the world."""
    servers = {s["id"]: s for s in inv["servers"]}
    holder = next((s["id"] for s in inv["servers"] if job.get("profile") and s["profile"] == job["profile"]),
                  None)
    n, source, spare = job["job"], job["server"], job.get("spare")
    if job["state"] == "completed":
        problems = []
        if holder != spare or spare is None:
            problems.append(Problem("job-false", f"job {n} completed but profile {job.get('profile')} is on"
                                                 f" {holder}, not on its spare {spare}"))
        if spare is not None and servers.get(spare, {}).get("power") != "On":
            problems.append(Problem("job-false", f"job {n} completed but its spare {spare} reads"
                                                 f" {servers.get(spare, {}).get('power')}"))
        if servers.get(source, {}).get("power") != "Off":
            problems.append(Problem("job-false", f"job {n} completed but its source {source} reads"
                                                 f" {servers.get(source, {}).get('power')}"))
        return problems
    if job["state"] == "failed":
        error = str(job.get("error") or "")
        if job.get("profile") and holder != source and (holder is None or holder not in error):
            return [Problem("job-false", f"job {n} failed ({error[:160]}) but profile {job['profile']} is"
                                         f" on {holder}, neither on the source {source} nor where the error"
                                         " says")]
        profile = next((p for p in inv["profiles"] if p["id"] == job.get("profile")), None)
        if holder == source and profile is not None and profile.get("host") \
                and not any(h["server"] == source for h in hosts):
            return [Problem("job-false", f"job {n} failed with profile {profile['id']} on its source"
                                         f" {source}, but {source}'s host record ({profile['host']['name']})"
                                         " is gone")]
        return []
    return [Problem("job-active", f"job {n} is still {job['state']}")]


def acted_twice(entries: list[dict[str, Any]], job: dict[str, Any]) -> list[Problem]:
    """With no takeover, each action of the job reaches the world once."""
    source, spare, profile = job["server"], job.get("spare"), job.get("profile")
    counts: Counter[str] = Counter()
    for e in entries:
        detail = str(e.get("detail") or "")
        if e.get("kind") == "reset" and e.get("server") == source and detail.startswith("ForceOff"):
            counts["ForceOff to the source"] += 1
        elif e.get("kind") == "reset" and e.get("server") == spare and detail.startswith(("On", "ForceOn")):
            counts["power-on of the spare"] += 1
        elif (e.get("kind") == "move" and profile and detail.startswith(f"{profile} ")
              and detail.endswith(": ok")):
            counts["move of the profile"] += 1
    return [Problem("acted-twice", f"job {job['job']}: {what} sent {k} times")
            for what, k in sorted(counts.items()) if k > 1]


# --- the cluster ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def nemesis_cluster(directory: Path, http: aiohttp.ClientSession, *, monitors: int = 3,
                          enclosures: int = 8, lease: float = LEASE, heartbeat: float = HEARTBEAT,
                          latency: dict[str, float] | None = None, lab_extra: dict[str, Any] | None = None,
                          failover: dict[str, Any] | None = None,
                          oneview: dict[str, Any] | None = None,
                          skip_missing: bool = True) -> AsyncIterator[NemesisCluster]:
    """A lab and `monitors` daemons on one PostgreSQL store, each through its own StoreProxy, all
    healthy; torn down on exit. A PostgreSQL that cannot be had skips the test (or raises
    tests.e2e.test_cluster.BackendMissing with `skip_missing=False`). `oneview`: the lab's OneView face
    enabled with this config (e.g. its `durations`), and the monitors on `manager.kind: oneview`."""
    async with shared_store("postgresql", directory, skip_missing=skip_missing) as store:
        extra = dict(lab_extra or {})
        bmc_port = 0
        if oneview is not None:
            bmc_port = shared_bmc_port()  # OneView gives the iLOs' addresses; the monitors need their port
            extra.update(bmc_port=bmc_port, oneview={**oneview, "enabled": True})
        lab = LabProcess(directory, latency or LATENCY, enclosures=enclosures, **extra)
        proxies: list[StoreProxy] = []
        members: list[Member] = []
        c: NemesisCluster | None = None
        try:
            await lab.start()
            ready = json.loads(lab.ready_file.read_text())
            oneview_url = str(ready["oneview"]) if oneview is not None else ""
            flow = {"rediscovery": {"delay": 86400}, **(failover or {})}
            for name in INSTANCES[:monitors]:
                proxy = StoreProxy(store)
                await proxy.start()
                proxies.append(proxy)
                port = reserve_port()
                m = Member(name, directory, port, reserve_port(socket.SOCK_DGRAM),
                           Client(f"http://127.0.0.1:{port}", TOKEN, http), proxy=proxy)
                write_monitor_config(m, lab.url, proxy.url, lease, heartbeat, flow)
                _tune_config(m.config, oneview_url, bmc_port)
                members.append(m)
            c = NemesisCluster(lab, Client(lab.url, "", http), list(members), store, lease, heartbeat,
                               directory=directory, http=http, pg_url=store, failover=flow,
                               oneview_url=oneview_url)
            c.faketime = await asyncio.to_thread(libfaketime)
            for m in members:
                m.start()
            await c.wait_healthy()
            inv = await c.refresh_inventory()
            c.baseline_spares = frozenset(s["id"] for s in inv["servers"] if s["spare"])
            await _cluster_api_checks(c)
            yield c
        except BaseException:
            if c is not None:
                print(c.tails())
            raise
        finally:
            for m in members:
                m.kill()
            for p in proxies:
                await p.close()
            await asyncio.to_thread(lab.terminate)


ONEVIEW_MOVE_S = 1.5
"""The OneView face's profile-move task in pause, kill and partition rounds: this, or this plus lease +
fence_grace (a task still running when the job is adopted)."""
ONEVIEW_ACCOUNT = {"username": "administrator", "password": "lab-oneview"}
"""The lab's OneView face account (lab.config.OneViewLab defaults)."""


def _tune_config(path: Path, oneview_url: str = "", bmc_port: int = 0) -> None:
    """Short action deadlines (the fence grace follows them), a store timeout longer than the lease;
    with `oneview_url`, the manager is the lab's OneView face (same request time limit)."""
    cfg = yaml.safe_load(path.read_text())
    if oneview_url:
        cfg["manager"] = {"kind": "oneview", "oneview": {
            "address": oneview_url, **ONEVIEW_ACCOUNT, "verify_tls": False, "timeout": REQUEST_TIMEOUT,
            "bmc": {"username": "admin", "password": "lab-password", "port": bmc_port, "verify_tls": False}}}
    cfg["redfish"] = {"timeout": REQUEST_TIMEOUT}
    cfg["inventory"]["lab"]["timeout"] = REQUEST_TIMEOUT
    cfg["postgres"] = {"timeout": 10}
    cfg["failover"].update({"power_off_timeout": 10, "power_on_timeout": 10})
    grace = os.environ.get("FAILOVER_NEMESIS_FENCE_GRACE")
    if grace:
        cfg["cluster"]["fence_grace"] = float(grace)
    path.write_text(yaml.safe_dump(cfg))


async def _cluster_api_checks(c: NemesisCluster) -> None:
    state = await c.ask("/api/v1/cluster")
    grace = state.get("fence_grace")
    if isinstance(grace, int | float) and not isinstance(grace, bool):
        c.fence_grace = float(grace)
    else:
        c.api_problems.append(Problem("api-missing", "/api/v1/cluster has no `fence_grace` (seconds); the"
                                                     " attacks use 0"))
    lacking = [m["instance"] for m in state["members"] if "incarnation" not in m]
    if lacking:
        c.api_problems.append(Problem("api-missing",
                                      f"/api/v1/cluster members {lacking} have no `incarnation`"))


# --- the job observer --------------------------------------------------------------------------------


@dataclass
class Snapshot:
    t: float
    """time.monotonic() of the read"""
    wall: float
    job: dict[str, Any]


Trigger = tuple[Callable[[dict[str, Any]], bool], Callable[[Snapshot], None], "asyncio.Future[Snapshot]"]


class JobObserver:
    """Reads one job every POLL seconds through a monitor outside `avoid`, keeps every distinct
    snapshot, and runs triggers synchronously on the snapshot that satisfies them (so a SIGSTOP lands in
    the same loop iteration as the read that showed the moment)."""

    def __init__(self, c: NemesisCluster, job: int) -> None:
        self.c = c
        self.job = job
        self.avoid: set[str] = set()
        self.snapshots: list[Snapshot] = []
        self._triggers: list[Trigger] = []
        self._task: asyncio.Task[None] | None = None
        self._cursor = 0

    async def __aenter__(self) -> JobObserver:
        self._task = asyncio.create_task(self._run(), name=f"observe-job-{self.job}")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def last(self) -> Snapshot | None:
        return self.snapshots[-1] if self.snapshots else None

    async def _run(self) -> None:
        while True:
            choices = self.c.reachable(self.avoid)
            if choices:
                m = choices[self._cursor % len(choices)]
                status, body = await self.c.call(m, "GET", f"/api/v1/jobs/{self.job}", timeout=2.0)
                if status == 200 and isinstance(body, dict):
                    snap = Snapshot(time.monotonic(), time.time(), body)
                    if self.last is None or self.last.job != body:
                        self.snapshots.append(snap)
                    else:
                        self.snapshots[-1] = snap
                    self._fire(snap)
                else:
                    self._cursor += 1
            await asyncio.sleep(POLL)

    def _fire(self, snap: Snapshot) -> None:
        for trig in list(self._triggers):
            predicate, action, fut = trig
            if fut.done():
                self._triggers.remove(trig)
            elif predicate(snap.job):
                self._triggers.remove(trig)
                action(snap)
                fut.set_result(snap)

    async def on(self, predicate: Callable[[dict[str, Any]], bool], action: Callable[[Snapshot], None],
                 timeout: float, what: str) -> Snapshot:
        """Run `action` on the first snapshot (from now on, or the latest) satisfying `predicate`."""
        fut: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()
        self._triggers.append((predicate, action, fut))
        if self.last is not None:
            self._fire(self.last)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout:g} s waiting for job {self.job}: {what}"
                                 f" (last seen: {describe(self.last.job if self.last else None)})") from None

    async def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> Snapshot:
        return await self.on(predicate, lambda _s: None, timeout, what)

    def owners_seen(self) -> list[str]:
        out: list[str] = []
        for s in self.snapshots:
            owner = s.job.get("owner")
            if owner and (not out or out[-1] != owner):
                out.append(str(owner))
        return out

    def first(self, predicate: Callable[[dict[str, Any]], bool]) -> Snapshot | None:
        return next((s for s in self.snapshots if predicate(s.job)), None)


# --- attack points -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """A moment of the job: `step` running (with a `detail` matching, when given), then a random delay
    of up to `within` seconds. Reached also once the job is past it (the attack then hits later)."""

    label: str
    step: str
    detail: str | None = None
    within: float = 0.0
    slow_from: str = ""
    """The step whose (committed) start slows the owner's store replies for a save-point attack (so
    the stop lands between the save and the action); "" for `step` itself. A step that first shows
    running in the very commit attacked is slowed from the commit before (a job commits only ahead of
    an action: monitor.jobs.runner)."""

    def reached(self, job: dict[str, Any]) -> bool:
        if not self.step or ended(job):
            return True
        names = [s["step"] for s in job["steps"]]
        if self.step not in names:
            return True
        idx = names.index(self.step)
        here = job["steps"][idx]
        if here["state"] == "running":
            return self.detail is None or re.search(self.detail, here["detail"] or "") is not None
        return here["state"] != "pending" or any(s["state"] != "pending" for s in job["steps"][idx + 1:])


TASK_POINTS = (
    Point("right after the save 'move started: task'", "move_profile", r"started: task"),
    Point("while the move's task runs", "move_profile", r"task \S+ running", within=1.0),
)
"""A manager's move task (OneView): the request sent and its task named, then the task running. Never
used with the lab's own manager (its move is synchronous); added to the points of pause, kill and
partition rounds when the monitors run on OneView."""
PAUSE_POINTS = (
    # A lab job commits 8 times (monitor.jobs.runner): created; the group lock with the job running;
    # the write-aheads of power-off, spare flag, host record and move; the power-on's; the end (timer
    # and unlock). Each commit is attacked right after it, and the stretches between them at random.
    Point("right after the job was created", ""),
    Point("right after the save that takes the group lock", "lock_group"),
    Point("after the lock: check_product (no commit of its own)", "lock_group", within=0.2),
    Point("right after the save 'about to power off'", "power_off_source", "about to power off",
          slow_from="lock_group"),
    Point("inside power_off_source and select_spare", "power_off_source", within=1.2),
    Point("right after the save 'about to remove the spare designation'", "move_profile",
          "spare designation", slow_from="power_off_source"),
    Point("right after the save 'about to remove the host record'", "move_profile", "host record"),
    Point("right after the save 'about to move profile'", "move_profile", "about to move profile"),
    Point("inside move_profile", "move_profile", within=0.6),
    Point("right after the save 'about to power on'", "power_on_spare", "about to power on",
          slow_from="move_profile"),
    Point("inside power_on_spare, schedule_rediscovery and the unlock (committed with the end)",
          "power_on_spare", within=0.7),
)
FAIL_SAFE_MIX = ("pause", "partition", "pause", "kill", "pause")
"""Rounds against adopters that fail a taken-over job safe (`failover.recovery: fail_safe`)."""
FAIL_SAFE_POINTS = tuple(p for p in PAUSE_POINTS if p.step in ("power_off_source", "move_profile",
                                                               "power_on_spare"))
"""Where an undo by the adopter and a late action of the old owner can meet."""
PARTITION_POINTS = (
    Point("right after the job was created", ""),
    Point("right after the save that takes the group lock", "lock_group"),
    Point("inside power_off_source and select_spare", "power_off_source", within=1.2),
    Point("right after the save 'about to power off'", "power_off_source", "about to power off"),
    Point("right after the save 'about to remove the spare designation'", "move_profile",
          "spare designation"),
    Point("right after the save 'about to move profile'", "move_profile", "about to move profile"),
    Point("right after the save 'about to power on'", "power_on_spare", "about to power on"),
    Point("inside power_on_spare, schedule_rediscovery and the unlock (committed with the end)",
          "power_on_spare", within=0.7),
)


# --- the rounds --------------------------------------------------------------------------------------


async def _submit(c: NemesisCluster, via: Member, r: RoundResult, rng: random.Random,
                  server: str | None = None) -> None:
    r.server = server or c.pick(rng)
    r.group = next((s["domain_group"] for s in c._inventory_cache if s["id"] == r.server), "")
    status, body = await c.call(via, "POST", "/api/v1/failovers",
                                {"server": r.server, "reason": f"nemesis round {r.n} ({r.attack})"},
                                timeout=15)
    assert status == 202, f"POST /api/v1/failovers via {via.name}: {status} {body}"
    r.job = int(body["job"])


async def _hit_at(obs: JobObserver, point: Point, hit: Callable[[], None], rng: random.Random,
                  timeout: float = 60.0) -> Snapshot | None:
    """Hit the job at `point`: at once on the read showing it, or a random delay of up to
    `point.within` later. Returns the latest snapshot at the hit."""
    if not point.step:
        hit()
        return obs.last
    if point.within <= 0:
        await obs.on(point.reached, lambda _s: hit(), timeout, f"to reach {point.label}")
        return obs.last
    await obs.wait(point.reached, timeout, f"to reach {point.label}")
    await asyncio.sleep(rng.uniform(0, point.within))  # the random moment: on purpose
    hit()
    return obs.last


async def _wait_adopted(c: NemesisCluster, obs: JobObserver, r: RoundResult, victim: str,
                        t_attack: float) -> bool:
    """Until another monitor owns the job (or it ended); the takeover time is recorded."""
    deadline = c.bound + 2 * c.heartbeat + SLACK + 15
    try:
        snap = await obs.wait(lambda j: j.get("owner") != victim or ended(j), deadline,
                              f"another monitor to adopt it from {victim}")
    except AssertionError as exc:
        r.problems.append(Problem("no-takeover", str(exc)))
        return False
    if snap.job.get("owner") != victim:
        r.takeover = snap.t - t_attack
        c.takeover_jobs.append(r.job)
    else:
        r.notes.append(f"job ended under {victim} before any takeover")
    return True


async def _final(obs: JobObserver, r: RoundResult) -> Snapshot:
    """Until the job ended; records when it was first seen ended and every server it named."""
    await obs.wait(ended, JOB_DEADLINE, "to end")
    first = obs.first(ended)
    assert first is not None
    r.ended_wall = first.wall
    r.servers |= {str(x) for s in obs.snapshots for x in (s.job["server"], s.job.get("spare")) if x}
    return first if first.job == obs.snapshots[-1].job else obs.snapshots[-1]


async def owner_lost_round(c: NemesisCluster, r: RoundResult, rng: random.Random) -> dict[str, Any]:
    """pause, kill or partition: the job's owner is lost at a random point, and comes back after the
    job was adopted (past lease + fence_grace)."""
    owner = rng.choice(c.reachable())
    r.victim = owner.name
    points = c.points or (PARTITION_POINTS if r.attack == "partition" else PAUSE_POINTS)
    if c.oneview_url and not c.points:
        points = (*points, *TASK_POINTS, *TASK_POINTS)  # twice: the task is what the OneView rounds add
    point = rng.choice(points)
    mode = rng.choice(("cut", "blackhole")) if r.attack == "partition" else ""
    r.variant = f"{mode + ' ' if mode else ''}{point.label}"
    if c.oneview_url:
        # The move's task either ends before any adopter may act, or outlasts the takeover (the adopter
        # then follows it: it must not send the move again).
        task_s = rng.choice((ONEVIEW_MOVE_S, c.bound + ONEVIEW_MOVE_S))
        await c.set_move_task(task_s)
        r.variant = f"task {task_s:g} s; {r.variant}"

    def hit() -> None:
        if r.attack == "pause":
            owner.sigstop()
        elif r.attack == "kill":
            owner.kill()
        else:
            assert owner.proxy is not None
            owner.proxy.cut() if mode == "cut" else owner.proxy.blackhole()

    await _submit(c, owner, r, rng)
    async with JobObserver(c, r.job) as obs:
        obs.avoid.add(owner.name)
        proxy = owner.proxy
        if point.detail and r.attack != "partition" and proxy is not None:
            # From the step's start, the owner hears of its commits late: the save is seen before the
            # action it announces is sent.
            def slow(_s: Snapshot) -> None:
                proxy.reply_delay = REPLY_DELAY

            from_step = point.slow_from or point.step
            await obs.on(Point(from_step, from_step).reached, slow, 60, f"to reach {from_step}")
        try:
            snap = await _hit_at(obs, point, hit, rng)
        finally:
            if proxy is not None:
                proxy.reply_delay = 0
        t_attack, r.attack_wall = time.monotonic(), time.time()
        r.at = describe(snap.job if snap else None)
        now = await c.ask(f"/api/v1/jobs/{r.job}", avoid={owner.name})
        epoch = now.get("epoch")  # still the lost owner's: adoption takes at least the rest of its lease
        r.epoch_before = epoch if isinstance(epoch, int) and now.get("owner") == owner.name else None
        r.old_lease_end = await c.lease_end(owner.name)
        adopted = False
        if snap is not None and ended(snap.job):
            r.notes.append("the job had ended when the attack hit: lifted at once")
        else:
            adopted = await _wait_adopted(c, obs, r, owner.name, t_attack)
        if adopted and r.attack != "kill" and r.takeover is not None:
            view = await c.member_view(owner.name, avoid={owner.name})
            if view is not None and view.get("lease_left") is not None and not view.get("alive"):
                r.problems.append(Problem("api-missing", f"/api/v1/cluster: lease_left of {owner.name},"
                                                         " whose lease is over, is a number (expected null)"))
        # Stay lost past lease + fence_grace, and a random while longer (the adopter at another phase).
        hold = t_attack + c.bound + rng.uniform(0, 1.5) - time.monotonic()
        if hold > 0 and adopted:
            await asyncio.sleep(hold)
        if r.attack == "pause":
            owner.sigcont()
        elif r.attack == "partition":
            assert owner.proxy is not None
            owner.proxy.heal()
        else:
            await c.restart(owner, r)
        final = await _final(obs, r)
        if r.attack == "partition" and not owner.running:
            # A store outage must not kill the daemon (a paused one may choose to exit: a note).
            r.problems.append(Problem("monitor-died", f"{owner.name} exited ({owner.exit_code()}) after"
                                                      f" the partition: {owner.tail(600)!r}"))
        elif r.attack == "pause" and not owner.running:
            r.notes.append(f"{owner.name} exited ({owner.exit_code()}) after being resumed")
        return final.job


async def skew_round(c: NemesisCluster, r: RoundResult, rng: random.Random) -> dict[str, Any]:
    """One monitor's wall clock ±30 s: no job changes hands, the skewed monitor acts on none it does
    not own."""
    skewed = c.members[-1]
    sign = rng.choice((SKEW, -SKEW))
    r.victim, r.variant, r.expect_one_owner = skewed.name, f"{sign:+d} s on {skewed.name}", True
    if c.faketime is None:
        r.notes.append("libfaketime is not available: not skewed")
        sign = 0
    await c.set_skew(skewed, sign)
    if sign:
        r.notes.append(f"time.time() under FAKETIME={sign:+d}s measured {c.skews[sign]:+.2f} s off")
    try:
        others = [m for m in c.reachable() if m is not skewed]
        via = rng.choice(others) if sign > 0 or rng.random() < 0.5 else skewed
        r.variant += f", job owned by {via.name}"
        await _submit(c, via, r, rng)
        r.at = "the job's whole run"
        async with JobObserver(c, r.job) as obs:
            final = await _final(obs, r)
            seen = obs.owners_seen()
        if seen != [via.name]:
            r.problems.append(Problem("stolen", f"job {r.job} of healthy {via.name} changed hands: owners"
                                                f" seen {seen} (skew {sign:+d} s on {skewed.name})"))
        await c.settle()
        if via is not skewed:
            log = (await c.lab_get("/lab/v1/log"))[r.log_mark:]
            acted = [e for e in log if e.get("monitor") == skewed.name and e.get("job") is not None
                     and int(e["job"]) == r.job and not fence_refused(e)]
            if acted:
                r.problems.append(Problem("skewed-acted", f"skewed {skewed.name} acted on job {r.job} it did"
                                                          f" not own: {_entry(acted[0])}"))
        return final.job
    finally:
        await c.set_skew(skewed, 0)


async def duplicate_round(c: NemesisCluster, r: RoundResult, rng: random.Random) -> dict[str, Any]:
    """A second monitor with the instance name of a live one that owns a running job."""
    owner = rng.choice(c.reachable())
    r.victim, r.expect_one_owner = owner.name, True
    await _submit(c, owner, r, rng)
    async with JobObserver(c, r.job) as obs:
        when = rng.choice(("power_off_source", "move_profile", "check_domain"))
        r.variant = f"named {owner.name}, started during {when}"
        snap = await obs.wait(Point(when, when).reached, 60, f"to reach {when}")
        r.at = describe(snap.job)
        c.duplicates += 1
        dup_cfg = yaml.safe_load(owner.config.read_text())
        port = reserve_port()
        dup_cfg["http"]["listen"] = f"127.0.0.1:{port}"
        dup_cfg["snmp"]["listen"] = f"127.0.0.1:{reserve_port(socket.SOCK_DGRAM)}"
        dup_cfg["cluster"]["address"] = f"http://127.0.0.1:{port}"
        dup_cfg["store"] = c.pg_url
        path = c.directory / f"dup-{c.duplicates}.yaml"
        path.write_text(yaml.safe_dump(dup_cfg))
        dup = DaemonProcess(path, c.directory / f"dup-{c.duplicates}.log")
        dup_api = Client(f"http://127.0.0.1:{port}", TOKEN, c.session())
        t0 = time.monotonic()
        healthy_after: float | None = None
        try:
            while time.monotonic() - t0 < DUPLICATE_DEADLINE and dup.p.poll() is None:
                if healthy_after is None and (await c.call(dup_api, "GET", "/healthz", timeout=1))[0] == 200:
                    healthy_after = time.monotonic() - t0
                await asyncio.sleep(0.1)
            rc = dup.p.poll()
        finally:
            dup.kill()
        out = dup.tail(4000)
        health = "" if healthy_after is None else f", healthy after {healthy_after:.1f} s"
        if rc is None:
            r.problems.append(Problem(
                "duplicate-started",
                f"a second monitor named {owner.name} did not refuse to start: still running after"
                f" {DUPLICATE_DEADLINE:g} s{health}; killed. Its log: {out[-600:]!r}"))
        elif rc == 0:
            r.problems.append(Problem("duplicate-started", f"the duplicate named {owner.name} exited 0"))
        elif not re.search(rf"\b{re.escape(owner.name)}\b", out):
            r.problems.append(Problem("duplicate-message", f"the duplicate exited {rc} but its output does"
                                                           f" not name the instance {owner.name}:"
                                                           f" {out[-600:]!r}"))
        else:
            r.notes.append(f"duplicate refused to start: exit {rc} after {time.monotonic() - t0:.1f} s")
        final = await _final(obs, r)
        seen = obs.owners_seen()
        if seen != [owner.name]:
            r.problems.append(Problem("stolen",
                                      f"job {r.job} changed hands while a duplicate started: {seen}"))
        return final.job


async def finish_round(c: NemesisCluster, r: RoundResult, rng: random.Random) -> dict[str, Any]:
    """The move fails (injected), the owner's store is slowed, and the owner is SIGKILLed inside the
    job's finish; the fault is cleared at once, so a resumed move would succeed."""
    victim = rng.choice(c.reachable())
    # The failure (with its undo owed) is committed on its own; the undo's outcome, the unlock and the
    # final state are one commit after it: "the undo and the unlock run" kills in between.
    triggers = ("the failed step is seen", "the undo and the unlock run", "after the move attempt")
    # On OneView the move fails only when its task ends: a kill right after the attempt, with the fault
    # cleared at once, would let the task complete (a kill round, not a finish).
    trigger = rng.choice(triggers[:2] if c.oneview_url else triggers)
    r.victim, r.variant = victim.name, f"SIGKILL when {trigger}"
    server = c.pick(rng)
    status, fault = await c.lab_call("POST", "/lab/v1/faults", {"fault": c.move_fault, "server": server})
    assert status == 200, fault
    assert victim.proxy is not None
    victim.proxy.delay = FINISH_STORE_DELAY
    try:
        await _submit(c, victim, r, rng, server=server)
        async with JobObserver(c, r.job) as obs:
            obs.avoid.add(victim.name)
            if trigger == "the failed step is seen":
                snap = await obs.on(lambda j: failure_recorded(j) or ended(j), lambda _s: victim.kill(), 90,
                                    "a failed step")
            elif trigger == "the undo and the unlock run":
                await obs.wait(lambda j: failure_recorded(j) or ended(j), 90, "a failed step")
                await asyncio.sleep(rng.uniform(0, 0.3))  # the random moment: on purpose
                victim.kill()
                last = obs.last
                assert last is not None
                snap = last
            else:
                point = Point("move", "move_profile", "about to move profile", within=1.0)
                last = await _hit_at(obs, point, victim.kill, rng, timeout=90)
                assert last is not None
                snap = last
            t_attack, r.attack_wall = time.monotonic(), time.time()
            r.at = describe(snap.job)
            e = snap.job.get("epoch")
            r.epoch_before = e if isinstance(e, int) else None
            await c.lab_call("DELETE", f"/lab/v1/faults/{fault['id']}")
            victim.proxy.delay = 0
            r.old_lease_end = await c.lease_end(victim.name)
            if not ended(snap.job):
                await _wait_adopted(c, obs, r, victim.name, t_attack)
            await c.restart(victim, r)
            final = await _final(obs, r)
            seen = obs.first(failure_recorded)
        if seen is None:
            r.notes.append("killed before any failure was recorded")
        elif final.job["state"] == "completed":
            r.problems.append(Problem(
                "resumed-after-failure",
                f"job {r.job} was seen failed (steps {failed_steps(seen.job)} failed, at"
                f" {describe(seen.job)!r}, error {seen.job.get('error')!r}) and then ended completed"))
        elif seen.job.get("error") and str(seen.job["error"]) not in str(final.job.get("error") or ""):
            # The finish may add what its undo did; the failure recorded first must stay in the error.
            r.problems.append(Problem("resumed-after-failure",
                                      f"job {r.job}'s recorded error {seen.job['error']!r} was replaced by"
                                      f" {final.job.get('error')!r}"))
        return final.job
    finally:
        victim.proxy.delay = 0
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, KeyError):
            await c.lab_call("DELETE", f"/lab/v1/faults/{fault['id']}")


ATTACKS: dict[str, Callable[[NemesisCluster, RoundResult, random.Random], Awaitable[dict[str, Any]]]] = {
    "pause": owner_lost_round,
    "kill": owner_lost_round,
    "partition": owner_lost_round,
    "skew": skew_round,
    "duplicate": duplicate_round,
    "finish": finish_round,
}


async def restore(c: NemesisCluster, r: RoundResult) -> None:
    """Every monitor running, reachable and healthy again before the next round."""
    for m in c.members:
        if m.stopped:
            m.sigcont()
        if m.proxy is not None:
            m.proxy.heal()
            m.proxy.delay = m.proxy.reply_delay = 0
    for m in c.members:
        if not m.running:
            if m.exit_code() not in (None, -signal.SIGKILL):
                r.notes.append(f"{m.name} had exited ({m.exit_code()}); restarted")
            await c.restart(m, r)
    for m in c.members:
        for attempt in (1, 2):
            try:
                await c.wait_member_healthy(m, timeout=45)
                break
            except AssertionError as exc:
                if attempt == 2:
                    raise AssertionError(f"{m.name} cannot be made healthy again: {exc}") from exc
                r.problems.append(Problem("monitor-unhealthy", f"{m.name} not healthy 45 s after the round:"
                                                               f" {exc}; restarted"))
                m.kill()
                await c.restart(m, r)


async def run_round(c: NemesisCluster, n: int, attack: str, rng: random.Random) -> RoundResult:
    r = RoundResult(n, attack)
    r.log_mark = len(await c.lab_get("/lab/v1/log"))
    r.violation_mark = len(await c.lab_get("/lab/v1/violations"))
    await c.refresh_inventory()
    if c.oneview_url:
        await c.set_move_task(ONEVIEW_MOVE_S)  # pause, kill and partition rounds choose their own
    t0 = time.monotonic()
    final: dict[str, Any] | None = None
    try:
        final = await asyncio.wait_for(ATTACKS[attack](c, r, rng), ROUND_DEADLINE)
        r.final, r.error = final["state"], final.get("error")
    except Exception as exc:  # the round could not end: recorded, the next round goes on
        r.problems.append(Problem("round-error", f"{type(exc).__name__}: {exc}"))
    try:
        await restore(c, r)
        await c.settle()
        if final is None and r.job:
            with contextlib.suppress(AssertionError):
                final = await c.ask(f"/api/v1/jobs/{r.job}")
        r.problems += await c.oracle(r, final)
    finally:
        for m in c.members:
            if m.stopped:
                m.sigcont()
    fresh = [p for p in r.problems if str(p) not in c.known]
    c.known.update(str(p) for p in r.problems)
    r.problems = fresh
    if any(p.invariant in BREAKING for p in r.problems) and r.group:
        c.poisoned.add(r.group)
    if r.problems:
        actions = "\n".join(_entry(e) for e in r.actions[-40:])
        r.tails = f"--- the lab's actions during round {r.n} ---\n{actions}\n{c.tails()}"
    r.wall = time.monotonic() - t0
    return r


async def run_rounds(c: NemesisCluster, attacks: list[str], rng: random.Random,
                     log: Callable[[str], None] = print, first: int = 1) -> list[RoundResult]:
    results = []
    for i, attack in enumerate(attacks):
        r = await run_round(c, first + i, attack, rng)
        log(r.line())
        results.append(r)
    return results


# --- the lab's own fence, tried with a stale request --------------------------------------------------


async def stale_request(c: NemesisCluster, job: int) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Send the lab a request carrying the job's first epoch after the job changed hands: a spare flag
    set to what it already is on a spare nobody uses. Returns (HTTP status, the log entry, the job)."""
    from monitor.core.fencing import Fence  # the daemon's own header format

    j = await c.ask(f"/api/v1/jobs/{job}")
    owners = j.get("owners")
    assert isinstance(owners, list) and len(owners) >= 2, f"job {job} has no second epoch: owners {owners}"
    first = owners[0]
    inv = await c.refresh_inventory()
    target = next(s["id"] for s in inv["servers"] if s["spare"] and not s["profile"] and s["present"])
    header = Fence(job, int(first["epoch"]), str(first["owner"]), lambda: True).header()
    status, _ = await c.lab_call("PUT", f"/api/v1/servers/{target}/spare", {"spare": True},
                                 headers={"X-Failover-Fence": header})
    log = await c.lab_get("/lab/v1/log")
    entry: dict[str, Any] = next(
        (e for e in reversed(log) if e.get("server") == target and e.get("kind") == "spare"), {})
    return status, entry, j


async def fenced_job(c: NemesisCluster, fencing: dict[str, Any]) -> int:
    """A job that changed hands and whose newer epoch the lab has seen (the adopter acted)."""
    highest = {str(k): v for k, v in (fencing.get("jobs") or {}).items()}
    for job in c.takeover_jobs:
        owners = (await c.ask(f"/api/v1/jobs/{job}")).get("owners") or []
        if owners and isinstance(highest.get(str(job)), int) and highest[str(job)] > owners[0]["epoch"]:
            return job
    raise AssertionError(f"no job changed hands with its new epoch seen by the lab (jobs taken over:"
                         f" {c.takeover_jobs}; the lab's highest epochs: {highest})")


async def fence_round(c: NemesisCluster, n: int) -> RoundResult:
    """After the rounds, with the lab enforcing: a stale request is refused, recorded as fenced, and the
    oracle does not count it as an action."""
    r = RoundResult(n, "fence", variant="a stale-epoch request sent by the test")
    r.log_mark = len(await c.lab_get("/lab/v1/log"))
    r.violation_mark = len(await c.lab_get("/lab/v1/violations"))
    try:
        before = await c.lab_get("/lab/v1/fencing")
        r.job = await fenced_job(c, before)
        status, entry, _job = await stale_request(c, r.job)
        after = await c.lab_get("/lab/v1/fencing")
        r.final = f"HTTP {status}"
        if status < 400:
            r.problems.append(Problem("fence-open",
                                      f"the lab accepted a stale-epoch request ({status}): {entry}"))
        if not fence_refused(entry):
            r.problems.append(Problem("fence-unseen", f"the log entry of a refused stale request is not seen"
                                                      f" as refused by nemesis.fence_refused: {entry}"))
        if len(after.get("fenced", [])) != len(before.get("fenced", [])) + 1:
            r.problems.append(Problem("fence-unseen",
                                      f"/lab/v1/fencing `fenced` did not grow by one: {after}"))
        r.problems += await c.oracle(r, None)
    except (AssertionError, aiohttp.ClientError, TimeoutError, StopIteration) as exc:
        r.problems.append(Problem("round-error", f"{type(exc).__name__}: {exc}"))
    return r


# --- reports -----------------------------------------------------------------------------------------


def summary(results: list[RoundResult], bound: float) -> str:
    """Per attack: rounds, clean rounds, the invariants broken; then the takeover figures."""
    lines = ["| attack | rounds | clean | invariants broken (rounds) |", "|---|---|---|---|"]
    for attack in [*ATTACK_NAMES, "fence"]:
        rs = [r for r in results if r.attack == attack]
        if not rs:
            continue
        broken = Counter(p.invariant for r in rs for p in {p.invariant: p for p in r.problems}.values())
        text = ", ".join(f"{k} ({v})" for k, v in broken.most_common()) or "-"
        lines.append(f"| {attack} | {len(rs)} | {sum(not r.problems for r in rs)} | {text} |")
    for attack in ("pause", "kill", "partition", "finish"):
        stats = takeover_stats([r for r in results if r.attack == attack], bound)
        if stats["takeovers"]:
            lines.append(f"takeover after a {attack}: {stats['takeovers']} takeovers, median"
                         f" {stats['median_s']} s, max {stats['max_s']} s; bound lease + fence_grace"
                         f" {bound:g} s: median/bound {stats['median_ratio']},"
                         f" max/bound {stats['max_ratio']};"
                         f" acting median {stats['acting_median_s']} s, max {stats['acting_max_s']} s")
    return "\n".join(lines)


def takeover_stats(results: list[RoundResult], bound: float) -> dict[str, Any]:
    t = [r.takeover for r in results if r.takeover is not None]
    a = [r.acting for r in results if r.acting is not None]

    def r2(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    med = statistics.median(t) if t else None
    top = max(t) if t else None
    return {
        "takeovers": len(t),
        "median_s": r2(med), "max_s": r2(top),
        "median_ratio": r2(med / bound) if med is not None and bound else None,
        "max_ratio": r2(top / bound) if top is not None and bound else None,
        "acting_median_s": r2(statistics.median(a)) if a else None,
        "acting_max_s": r2(max(a)) if a else None,
        "acting_median_ratio": r2(statistics.median(a) / bound) if a and bound else None,
        "acting_max_ratio": r2(max(a) / bound) if a and bound else None,
        "within_bound": sum(x <= bound + SLACK for x in t),
    }


def failure_report(results: list[RoundResult], seed: int, api_problems: list[Problem], rounds: int,
                   bound: float, directory: Path | None = None) -> str:
    """Empty when every round was clean; otherwise what broke, where, the seed to replay it and the
    daemons' log tails of the first failing round."""
    bad = [r for r in results if r.problems]
    if not bad and not api_problems:
        return ""
    out = [f"{len(bad)} of {len(results)} nemesis round(s) broke an invariant. Replay:"
           f" FAILOVER_NEMESIS_SEED={seed} FAILOVER_NEMESIS_ROUNDS={rounds}"]
    out += [f"cluster: {p}" for p in api_problems]
    for r in bad:
        out.append(f"round {r.n} ({r.attack}: {r.variant}; {r.server}, job {r.job}, victim {r.victim},"
                   f" at {r.at!r}, final {r.final}):")
        out += [f"    {p}" for p in r.problems]
        out += [f"    note: {note}" for note in r.notes]
    out.append(summary(results, bound))
    if directory is not None:
        out.append(f"every log: {directory}")
    first = bad[0] if bad else None
    if first is not None and first.tails:
        out.append(f"log tails after round {first.n}:\n{first.tails}")
    return "\n".join(out)

