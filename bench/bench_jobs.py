#!/usr/bin/env python
"""Benchmarks of the durable failover job, each against a baseline measured in the same run.

  a) one job's own overhead: `runner.submit` -> `completed` (daemon in-process, lab in-process, all lab
     latencies zero), versus the same FailoverFlow steps called directly (no job record, no-op note);
  b) N simultaneous failovers in N domain groups (one per group), daemon versus direct step calls under
     asyncio.gather; SQLite synchronous=full and normal;
  c) a 10,000-server static inventory: `load_inventory_file` and `StaticInventory.current()` versus a
     plain `yaml.safe_load` of the same file (time, VmRSS added, tracemalloc peak), each in a fresh
     child process so the memory figures do not mix.

Run: `.venv/bin/python bench/bench_jobs.py [--quick] [--only a,b,c] [--json FILE]`.
Everything binds 127.0.0.1 port 0 (the lab's BMCs bind 127.77.x.y); nothing leaves loopback. The last
line of stdout is the results as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import yaml  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from adapters.static_inventory import StaticInventory  # noqa: E402
from lab.config import LabConfig  # noqa: E402
from lab.main import LabSimulator  # noqa: E402
from monitor.app.daemon import Adapters, Daemon, build_adapters  # noqa: E402
from monitor.core.clock import SystemClock  # noqa: E402
from monitor.core.config import LoadedConfig, MonitorConfig  # noqa: E402
from monitor.core.inventory_file import load_inventory_file  # noqa: E402
from monitor.core.model import STEPS, Job, JobState, Step, identify_product  # noqa: E402
from monitor.jobs import JobRunner  # noqa: E402
from monitor.jobs.flow import FailoverFlow, FlowDeps, Note  # noqa: E402
from monitor.jobs.locks import GroupLocks  # noqa: E402
from monitor.store.rows import JOB_WRITES  # noqa: E402
from monitor.store.sqlite import SqliteStore  # noqa: E402

Sync = Literal["full", "normal"]
ZERO_LATENCY = {"bmc_ms": 0, "manager_ms": 0, "power_off_s": 0, "power_on_s": 0, "boot_s": 0}
TARGET_OVERHEAD_MS = 50.0
TARGET_PARALLEL_S = 3.0
TARGET_LOAD_S = 2.0
TARGET_LOAD_MB = 200.0


# --- small helpers ---------------------------------------------------------------------------------


def pctl(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def vmrss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Row:
    bench: str
    figure: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_what: str = ""
    target: str = ""
    ok: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def as_dict(self) -> dict[str, Any]:
        return {
            "bench": self.bench, "figure": self.figure, "value": round(self.value, 4), "unit": self.unit,
            "baseline": None if self.baseline is None else round(self.baseline, 4),
            "baseline_what": self.baseline_what,
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "target": self.target, "target_met": self.ok, "note": self.note,
        }


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        ratio = f" (x{row.ratio:.2f} of baseline {row.baseline:.3f})" if row.ratio is not None else ""
        log(f"{row.bench}: {row.figure} = {row.value:.3f} {row.unit}{ratio}")


# --- the lab and the daemon --------------------------------------------------------------------------


def _enclosure_cap() -> int:
    for meta in LabConfig.model_fields["enclosures"].metadata:
        le = getattr(meta, "le", None)
        if isinstance(le, int):
            return le
    return 64


def lab_config(enclosures: int, domains_per_group: int, notes: list[str] | None = None) -> LabConfig:
    """Zero-latency lab. Past the lab's validated cap on enclosures, the count is set without validation
    (the generator and the BMC address plan handle it; only the config field is capped)."""
    raw: dict[str, Any] = {"listen": "127.0.0.1:0", "enclosures": enclosures,
                           "domains_per_group": domains_per_group, "latency": ZERO_LATENCY}
    try:
        return LabConfig.model_validate(raw)
    except ValidationError:
        cap = _enclosure_cap()
        if enclosures <= cap:
            raise
    cfg = LabConfig.model_validate({**raw, "enclosures": cap}).model_copy(update={"enclosures": enclosures})
    if notes is not None:
        msg = (f"lab/config.py caps LabConfig.enclosures at {cap}; the bench sets {enclosures} with "
               "model_copy (no validation) to run the requested size")
        if msg not in notes:
            notes.append(msg)
    return cfg


def monitor_config(lab_url: str, store: Path, sync: Sync) -> MonitorConfig:
    return MonitorConfig.model_validate({
        "instance": "bench",
        "http": {"listen": "127.0.0.1:0"},
        "store": str(store),
        "sqlite": {"synchronous": sync},
        "inventory": {"source": "lab", "lab": {"url": lab_url, "timeout": 60}},
        "redfish": {"timeout": 60},
        "redfish_events": {"poll_interval": 0},
        # poll_interval only matters if a poll reads PoweringOff/PoweringOn; with zero lab latency the
        # first poll normally reads the final state. The same settings drive the direct baseline.
        "failover": {"poll_interval": 0.01, "power_off_timeout": 60, "power_on_timeout": 60,
                     "shutdown_grace": 5},
    })


async def lab_inventory(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(url + "/api/v1/inventory") as r:
        r.raise_for_status()
        data: dict[str, Any] = await r.json()
        return data


async def lab_violations(lab: LabSimulator) -> int:
    return len(lab.world.violations)


@dataclass(frozen=True)
class Pair:
    group: str
    source: str
    spare: str  # the spare the bench expects; the flow picks its own, any qualified one


def failover_pairs(inv: dict[str, Any]) -> list[Pair]:
    """Production blades that are On, carry a profile and have a qualified spare of their own in their
    domain group (each spare used once), ordered by group then enclosure then bay."""

    def key(s: dict[str, Any]) -> tuple[int, int, int]:
        return (int(str(s["domain_group"]).removeprefix("dg")), int(str(s["enclosure"]).removeprefix("enc")),
                int(s["bay"]))

    def kind(s: dict[str, Any]) -> tuple[str, str, int] | None:
        info = identify_product(s["product"] or "")
        if info is None:
            return None
        return (info.family, info.model, int(info.span or s["span"]))

    servers = sorted(inv["servers"], key=key)
    pool: dict[tuple[str, tuple[str, str, int]], list[str]] = {}
    for s in servers:
        k = kind(s)
        if k is not None and s["spare"] and s["present"] and not s["profile"] and s["power"] == "Off":
            pool.setdefault((s["domain_group"], k), []).append(s["id"])
    pairs: list[Pair] = []
    for s in servers:
        k = kind(s)
        if k is None or s["spare"] or not s["profile"] or s["power"] != "On" or not s["present"]:
            continue
        spares = pool.get((s["domain_group"], k))
        if spares:
            pairs.append(Pair(s["domain_group"], s["id"], spares.pop(0)))
    return pairs


@contextlib.asynccontextmanager
async def running_daemon(config: MonitorConfig) -> AsyncIterator[Daemon]:
    daemon = Daemon(LoadedConfig(config, None))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop), name="bench-daemon")
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()
        raise RuntimeError("daemon stopped during start-up")
    if not daemon.ready.is_set():
        raise RuntimeError("daemon not ready within 60 s")
    try:
        yield daemon
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


class JobWatcher:
    """A runner listener: an asyncio.Event per server, set (with the time) when its job ends."""

    def __init__(self, runner: JobRunner) -> None:
        self.events: dict[str, asyncio.Event] = {}
        self.ended: dict[str, float] = {}
        self.jobs: dict[str, Job] = {}
        self.told: dict[int, int] = {}
        """Per job: how many times the listeners were told of it (every step change)."""
        runner.add_listener(self._on_job)

    def expect(self, server: str) -> asyncio.Event:
        ev = asyncio.Event()
        self.events[server] = ev
        return ev

    async def _on_job(self, job: Job) -> None:
        self.told[job.id] = self.told.get(job.id, 0) + 1
        if job.state.active:
            return
        ev = self.events.get(job.server)
        if ev is not None and not ev.is_set():
            self.ended[job.server] = time.perf_counter()
            self.jobs[job.server] = job
            ev.set()


async def _noop_note(text: str, *, durable: bool = True) -> None:
    return None


T = TypeVar("T")


class _Unfenced:
    """The baseline's actor: runs each action directly (no lease, no fencing token)."""

    async def act(self, what: str, op: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        return await op()


@contextlib.asynccontextmanager
async def direct_deps(config: MonitorConfig) -> AsyncIterator[FlowDeps]:
    """The FlowDeps the daemon would build (same adapters, GroupLocks, store), without a JobRunner."""
    loaded = LoadedConfig(config, None)
    store = SqliteStore(loaded.store_path, synchronous=config.sqlite.synchronous)
    await store.open()
    adapters: Adapters | None = None
    try:
        adapters = build_adapters(loaded, store)
        clock = SystemClock()
        yield FlowDeps(store, adapters.manager, adapters.power, adapters.discovery,
                       GroupLocks(store, clock), clock, config.failover)
    finally:
        if adapters is not None:
            for closer in (adapters.power.close, adapters.manager.close, adapters.discovery.close):
                with contextlib.suppress(Exception):
                    await closer()
        await store.close()


async def direct_failover(deps: FlowDeps, job_id: int, pair: Pair) -> float:
    """Every step of the flow, in order, on a throwaway Job; returns the seconds it took."""
    t0 = time.perf_counter()
    job = Job(id=job_id, server=pair.source, group=pair.group, state=JobState.RUNNING,
              trigger={"kind": "bench"}, created=deps.clock.now(), steps=[Step(n) for n in STEPS])
    flow = FailoverFlow(job, deps, _Unfenced())
    for name in STEPS:
        step: Callable[[Note], Awaitable[str]] = getattr(flow, name)
        await step(_noop_note)
    dt = time.perf_counter() - t0
    if job.spare is None:
        raise RuntimeError(f"direct failover of {pair.source}: no spare chosen")
    return dt


async def job_failover(runner: JobRunner, watcher: JobWatcher, pair: Pair) -> tuple[float, Job]:
    ev = watcher.expect(pair.source)
    t0 = time.perf_counter()
    await runner.submit(pair.source, {"kind": "bench", "reason": "bench"})
    await ev.wait()
    job = watcher.jobs[pair.source]
    if job.state is not JobState.COMPLETED:
        raise RuntimeError(f"job for {pair.source} ended {job.state.value}: {job.error}")
    return watcher.ended[pair.source] - t0, job


# --- a) one job's overhead --------------------------------------------------------------------------


@dataclass
class SeqRun:
    times: list[float]
    saves_per_job: float = 0.0
    """Store commits of the job's own writes (Store.commits over rows.JOB_WRITES), per job."""
    violations: int = 0
    told_per_job: float = 0.0


async def _seq_direct(pairs: list[Pair], tmp: Path, sync: Sync, gap: float, enclosures: int) -> SeqRun:
    async with LabSimulator(lab_config(enclosures, 2)) as lab:
        cfg = monitor_config(lab.manager_url, tmp / f"direct-seq-{sync}.db", sync)
        times: list[float] = []
        async with direct_deps(cfg) as deps:
            for i, pair in enumerate(pairs, start=1):
                times.append(await direct_failover(deps, i, pair))
                await asyncio.sleep(gap)
        return SeqRun(times[1:], 0.0, await lab_violations(lab))  # the first is a warm-up


async def _seq_jobs(pairs: list[Pair], tmp: Path, sync: Sync, gap: float, enclosures: int) -> SeqRun:
    async with LabSimulator(lab_config(enclosures, 2)) as lab:
        cfg = monitor_config(lab.manager_url, tmp / f"jobs-seq-{sync}.db", sync)
        async with running_daemon(cfg) as daemon:
            assert daemon.runner is not None
            watcher = JobWatcher(daemon.runner)
            await asyncio.sleep(gap)  # the start-up inventory refresh
            times: list[float] = []
            commits: list[int] = []
            told: list[int] = []
            counter = daemon.runner.store.commits

            def job_writes() -> int:
                return sum(counter[k] for k in JOB_WRITES)

            for pair in pairs:
                before = job_writes()
                dt, job = await job_failover(daemon.runner, watcher, pair)
                times.append(dt)
                commits.append(job_writes() - before)
                told.append(watcher.told[job.id])
                await asyncio.sleep(gap)  # let the after-job inventory refresh run outside the window
        return SeqRun(times[1:], statistics.mean(commits[1:]), await lab_violations(lab),
                      statistics.mean(told[1:]))


async def bench_overhead(res: Results, quick: bool, tmp: Path) -> None:
    n = 5 if quick else 20
    enclosures = 4
    async with LabSimulator(lab_config(enclosures, 2)) as lab:
        pairs = failover_pairs(await lab_inventory(lab.manager_url))
    if len(pairs) < n + 1:
        raise RuntimeError(f"only {len(pairs)} failover pairs in a {enclosures}-enclosure lab")
    pairs = pairs[: n + 1]  # +1 warm-up (excluded): first lab connection, first code paths
    gap = 0.1
    log(f"a) {n} sequential failovers (+1 warm-up), fresh lab per run, {enclosures} enclosures")
    res.extra["a_servers"] = [p.source for p in pairs[1:]]
    for sync in ("full", "normal"):
        direct = await _seq_direct(pairs, tmp, sync, gap, enclosures)
        jobs = await _seq_jobs(pairs, tmp, sync, gap, enclosures)
        d_med, j_med = statistics.median(direct.times), statistics.median(jobs.times)
        d_p95, j_p95 = pctl(direct.times, 95), pctl(jobs.times, 95)
        over = (j_med - d_med) * 1000
        res.extra[f"a_{sync}"] = {
            "job_ms": [round(t * 1000, 2) for t in jobs.times],
            "direct_ms": [round(t * 1000, 2) for t in direct.times],
            "store_commits_per_job": jobs.saves_per_job,
            "listener_calls_per_job": jobs.told_per_job,
            "lab_violations": direct.violations + jobs.violations,
        }
        tag = f"a) job overhead, sync={sync}"
        res.add(Row(tag, "job submit->completed, median", j_med * 1000, "ms", d_med * 1000,
                    "direct step calls, median"))
        res.add(Row(tag, "job submit->completed, p95", j_p95 * 1000, "ms", d_p95 * 1000,
                    "direct step calls, p95"))
        res.add(Row(tag, "overhead = job - direct (medians)", over, "ms",
                    target=f"< {TARGET_OVERHEAD_MS:g} ms", ok=over < TARGET_OVERHEAD_MS,
                    note=f"{jobs.saves_per_job:.0f} store commits/job; "
                         f"{over / max(jobs.saves_per_job, 1):.2f} ms per commit"))
        res.add(Row(tag, "overhead, p95 - p95", (j_p95 - d_p95) * 1000, "ms",
                    target=f"< {TARGET_OVERHEAD_MS:g} ms", ok=(j_p95 - d_p95) * 1000 < TARGET_OVERHEAD_MS))
        if direct.violations or jobs.violations:
            res.notes.append(f"a) sync={sync}: the lab recorded oracle violations")


# --- b) N simultaneous failovers in N groups ----------------------------------------------------------


@dataclass
class LabProc:
    manager_url: str

    async def violations(self) -> list[Any]:
        async with aiohttp.ClientSession() as s, s.get(self.manager_url + "/lab/v1/violations") as r:
            return list(await r.json())


@contextlib.asynccontextmanager
async def lab_process(enclosures: int, domains_per_group: int) -> AsyncIterator[LabProc]:
    """The lab as a separate process (as BMCs are separate machines): the daemon's own cost is then
    measured without the simulated BMCs' TLS and JSON work on the same core."""
    with tempfile.TemporaryDirectory(prefix="bench-lab-") as d:
        cfg, ready = Path(d) / "lab.yaml", Path(d) / "ready.json"
        cfg.write_text(yaml.safe_dump({"listen": "127.0.0.1:0", "enclosures": enclosures,
                                       "domains_per_group": domains_per_group, "latency": ZERO_LATENCY}))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lab", "-c", str(cfg), "--ready-file", str(ready),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not ready.exists():
                if proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError("the lab process did not start")
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.05)
            yield LabProc(json.loads(ready.read_text())["manager"])
        finally:
            proc.terminate()
            await proc.wait()


async def _par_direct(pairs: list[Pair], tmp: Path, sync: Sync, groups: int, notes: list[str]) -> float:
    async with lab_process(groups, 1) as lab:
        cfg = monitor_config(lab.manager_url, tmp / f"direct-par-{sync}.db", sync)
        async with direct_deps(cfg) as deps:
            t0 = time.perf_counter()
            await asyncio.gather(*(direct_failover(deps, i, p) for i, p in enumerate(pairs, start=1)))
            wall = time.perf_counter() - t0
        if await lab.violations():
            notes.append(f"b) direct sync={sync}: the lab recorded oracle violations")
        return wall


async def _par_jobs(pairs: list[Pair], tmp: Path, sync: Sync, groups: int,
                    notes: list[str]) -> tuple[float, float]:
    async with lab_process(groups, 1) as lab:
        cfg = monitor_config(lab.manager_url, tmp / f"jobs-par-{sync}.db", sync)
        async with running_daemon(cfg) as daemon:
            runner = daemon.runner
            assert runner is not None
            watcher = JobWatcher(runner)
            await asyncio.sleep(0.5)  # the start-up inventory refresh of a big lab
            events = [watcher.expect(p.source) for p in pairs]
            t0 = time.perf_counter()
            await asyncio.gather(*(runner.submit(p.source, {"kind": "bench"}) for p in pairs))
            submitted = time.perf_counter() - t0
            await asyncio.gather(*(ev.wait() for ev in events))
            wall = max(watcher.ended.values()) - t0
            failed = [j for j in watcher.jobs.values() if j.state is not JobState.COMPLETED]
            if failed:
                raise RuntimeError(f"{len(failed)} job(s) failed, e.g. {failed[0].server}: {failed[0].error}")
        if await lab.violations():
            notes.append(f"b) jobs sync={sync}: the lab recorded oracle violations")
        return wall, submitted


async def bench_parallel(res: Results, quick: bool, tmp: Path, groups: int) -> None:
    groups = 8 if quick else groups
    async with LabSimulator(lab_config(groups, 1, res.notes)) as lab:
        by_group: dict[str, Pair] = {}
        for p in failover_pairs(await lab_inventory(lab.manager_url)):
            by_group.setdefault(p.group, p)
        pairs = list(by_group.values())
        bmcs = len(lab.world.bmc_servers())
    if len(pairs) != groups:
        raise RuntimeError(f"{len(pairs)} groups with a failover pair, expected {groups}")
    log(f"b) {groups} simultaneous failovers in {groups} domain groups ({bmcs} BMCs), fresh lab process "
        "per run")
    res.extra["b_lab"] = {"enclosures": groups, "domain_groups": groups, "bmcs": bmcs}
    for sync in ("full", "normal"):
        direct = await _par_direct(pairs, tmp, sync, groups, res.notes)
        wall, submitted = await _par_jobs(pairs, tmp, sync, groups, res.notes)
        res.extra[f"b_{sync}"] = {"submit_all_s": round(submitted, 4)}
        res.add(Row(f"b) {groups} parallel failovers, sync={sync}", "wall time, all jobs completed", wall,
                    "s", direct, "direct step calls under asyncio.gather",
                    target=f"< {TARGET_PARALLEL_S:g} s", ok=wall < TARGET_PARALLEL_S,
                    note=f"{groups} submits took {submitted * 1000:.0f} ms"))


# --- c) 10,000-server static inventory ------------------------------------------------------------------

PRODUCTION = ("ProLiant BL460c Gen8", "ProLiant BL460c Gen9", "ProLiant BL465c G7")
SPARES = ("ProLiant BL460c Gen8", "ProLiant BL460c Gen9", "ProLiant BL465c G7", "ProLiant BL460c Gen9")


def write_inventory(path: Path, enclosures: int, domains_per_group: int = 2) -> int:
    """Bays 1-12 production (profile, host, BMC), 13-16 designated spares (BMC): 16 servers/enclosure.

    Written as an operator's generator would: credentials once in `bmc_defaults`, one line per server.
    A `.json` path gets the same inventory as JSON."""
    groups: list[dict[str, Any]] = []
    servers = 0
    for first in range(1, enclosures + 1, domains_per_group):
        domains: list[dict[str, Any]] = []
        for e in range(first, min(first + domains_per_group, enclosures + 1)):
            bays: list[dict[str, Any]] = []
            for bay in range(1, 17):
                ip = f"10.{e // 250}.{e % 250}.{bay}"
                if bay <= 12:
                    entry: dict[str, Any] = {
                        "bay": bay, "product": PRODUCTION[(e + bay) % 3], "profile": f"prof-enc{e}-bay{bay}",
                        "host": {"name": f"host-{e}-{bay}.example.com", "ip": ip}}
                else:
                    entry = {"bay": bay, "product": SPARES[bay - 13], "spare": True}
                entry["bmc"] = f"https://127.{e // 250}.{e % 250}.{bay}:1"  # one BMC service each
                bays.append(entry)
                servers += 1
            domains.append({"id": f"vcd-enc{e}", "status": "ok",
                            "enclosures": [{"id": f"enc{e}", "servers": bays}]})
        groups.append({"id": f"dg{(first - 1) // domains_per_group + 1}", "domains": domains})
    inventory = {"bmc_defaults": {"username": "admin", "password": "bench-password", "verify_tls": False},
                 "domain_groups": groups}
    if path.suffix == ".json":
        path.write_text(json.dumps(inventory), encoding="utf-8")
        return servers
    lines = ["# generated by bench/bench_jobs.py; the BMCs are never contacted",
             "bmc_defaults: {username: admin, password: bench-password, verify_tls: false}",
             "domain_groups:"]
    for g in groups:
        lines += [f"  - id: {g['id']}", "    domains:"]
        for d in g["domains"]:
            lines += [f"      - id: {d['id']}", "        status: ok", "        enclosures:"]
            for enc in d["enclosures"]:
                lines += [f"          - id: {enc['id']}", "            servers:"]
                for sv in enc["servers"]:
                    lines.append("              - " + yaml.safe_dump(sv, default_flow_style=True,
                                                                    width=1 << 16).strip())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return servers


def _child_measure(kind: str, path: Path, repeats: int) -> dict[str, Any]:
    """Run in a fresh interpreter: time (first and median of `repeats`), VmRSS added, tracemalloc peak."""
    result: dict[str, Any] = {"kind": kind}
    if kind == "static":
        async def static(tmp: Path) -> dict[str, Any]:
            store = SqliteStore(str(tmp / "static.db"), synchronous="full")
            await store.open()
            try:
                await store.ping()
                gc.collect()
                rss0 = vmrss_kib()
                t0 = time.perf_counter()
                inv = StaticInventory(path, store)
                t_load = time.perf_counter() - t0
                t1 = time.perf_counter()
                current = await inv.current()
                t_current = time.perf_counter() - t1
                rss1 = vmrss_kib()
                currents = [t_current]
                for _ in range(repeats - 1):
                    t1 = time.perf_counter()
                    await inv.current()
                    currents.append(time.perf_counter() - t1)
                gc.collect()
                tracemalloc.start()
                inv2 = StaticInventory(path, store)
                await inv2.current()
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                return {"first_s": t_load, "current_first_s": t_current,
                        "current_median_s": statistics.median(currents),
                        "rss_added_mb": (rss1 - rss0) * 1024 / 1e6,
                        "tracemalloc_peak_mb": peak / 1e6, "servers": len(current.servers)}
            finally:
                await store.close()

        with tempfile.TemporaryDirectory(prefix="bench-static-") as d:
            result.update(asyncio.run(static(Path(d))))
        return result

    fn: Callable[[], Any]
    if kind == "yaml":
        def fn() -> Any:
            return yaml.safe_load(path.read_text(encoding="utf-8"))
    elif kind == "cyaml":
        def fn() -> Any:
            return yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    elif kind == "load":
        def fn() -> Any:
            return load_inventory_file(path)
    else:
        raise ValueError(kind)
    gc.collect()
    rss0 = vmrss_kib()
    t0 = time.perf_counter()
    kept = fn()
    first = time.perf_counter() - t0
    rss1 = vmrss_kib()
    times = [first]
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    del kept
    gc.collect()
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    result.update({"first_s": first, "median_s": statistics.median(times),
                   "rss_added_mb": (rss1 - rss0) * 1024 / 1e6, "tracemalloc_peak_mb": peak / 1e6})
    return result


def _run_child(kind: str, path: Path, repeats: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--child-file", str(path),
         "--child-repeats", str(repeats)],
        capture_output=True, text=True, timeout=900, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {kind} failed ({proc.returncode}):\n{proc.stderr}")
    data: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return data


def bench_static(res: Results, quick: bool, tmp: Path) -> None:
    enclosures = 63 if quick else 625
    repeats = 2 if quick else 3
    path = tmp / "inventory.yaml"
    servers = write_inventory(path, enclosures)
    size_mib = path.stat().st_size / 2**20
    log(f"c) static inventory: {servers} servers, {enclosures} enclosures, {size_mib:.1f} MiB YAML")
    res.extra["c_file"] = {"servers": servers, "enclosures": enclosures, "mib": round(size_mib, 2)}
    base = _run_child("yaml", path, repeats)
    load = _run_child("load", path, repeats)
    static = _run_child("static", path, repeats)
    cyaml = _run_child("cyaml", path, repeats)
    path_json = tmp / "inventory.json"
    write_inventory(path_json, enclosures)
    load_json = _run_child("load", path_json, repeats)
    res.extra["c_children"] = {"yaml": base, "load": load, "static": static, "cyaml": cyaml,
                               "load_json": load_json}
    tag = f"c) {servers:,} servers static inventory"
    res.add(Row(tag, "load_inventory_file, first", load["first_s"], "s", base["first_s"],
                "yaml.safe_load (SafeLoader), first",
                target=f"< {TARGET_LOAD_S:g} s", ok=load["first_s"] < TARGET_LOAD_S))
    res.add(Row(tag, f"load_inventory_file, median of {repeats}", load["median_s"], "s", base["median_s"],
                f"yaml.safe_load, median of {repeats}"))
    res.add(Row(tag, "StaticInventory(...) construction", static["first_s"], "s", base["first_s"],
                "yaml.safe_load, first"))
    res.add(Row(tag, f"StaticInventory.current(), median of {repeats}", static["current_median_s"], "s",
                note=f"first call {static['current_first_s'] * 1000:.0f} ms (empty store)"))
    res.add(Row(tag, "VmRSS added by load_inventory_file", load["rss_added_mb"], "MB",
                base["rss_added_mb"], "VmRSS added by yaml.safe_load",
                target=f"< {TARGET_LOAD_MB:g} MB", ok=load["rss_added_mb"] < TARGET_LOAD_MB))
    res.add(Row(tag, "VmRSS added by StaticInventory + current()", static["rss_added_mb"], "MB",
                base["rss_added_mb"], "VmRSS added by yaml.safe_load",
                target=f"< {TARGET_LOAD_MB:g} MB", ok=static["rss_added_mb"] < TARGET_LOAD_MB))
    res.add(Row(tag, "tracemalloc peak, load_inventory_file", load["tracemalloc_peak_mb"], "MB",
                base["tracemalloc_peak_mb"], "tracemalloc peak, yaml.safe_load",
                target=f"< {TARGET_LOAD_MB:g} MB", ok=load["tracemalloc_peak_mb"] < TARGET_LOAD_MB))
    res.add(Row(tag, "load_inventory_file of the same inventory as .json, first", load_json["first_s"], "s",
                base["first_s"], "yaml.safe_load of the YAML, first",
                target=f"< {TARGET_LOAD_S:g} s", ok=load_json["first_s"] < TARGET_LOAD_S,
                note=f"VmRSS added {load_json['rss_added_mb']:.0f} MB"))
    res.add(Row(tag, "(reference) yaml CSafeLoader (libyaml), first", cyaml["first_s"], "s", base["first_s"],
                "yaml.safe_load, first",
                note=f"tracemalloc peak {cyaml['tracemalloc_peak_mb']:.0f} MB"))


# --- report ----------------------------------------------------------------------------------------------


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        s = f"{v:.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.3f}" if unit == "s" else f"{v:.2f}"
    return f"{s} {unit}".strip()


def print_table(res: Results) -> None:
    header = ("benchmark", "figure", "value", "baseline", "ratio", "target", "met")
    lines = [header]
    for r in res.rows:
        lines.append((r.bench, r.figure, fmt(r.value, r.unit), fmt(r.baseline, r.unit),
                      f"x{r.ratio:.2f}" if r.ratio is not None else "-", r.target or "-",
                      "-" if r.ok is None else ("yes" if r.ok else "NO")))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    sep = "+".join("-" * (w + 2) for w in widths)
    print()
    for i, row in enumerate(lines):
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print(sep)
    baselines = {(r.bench, r.baseline_what) for r in res.rows if r.baseline_what}
    if baselines:
        print("\nbaselines:")
        for bench, what in sorted(baselines):
            print(f"  {bench}: {what}")
    notes = res.notes + [r.note and f"{r.bench} / {r.figure}: {r.note}" for r in res.rows]
    notes = [n for n in notes if n]
    if notes:
        print("\nnotes:")
        for n in notes:
            print(f"  - {n}")
    print()


async def run_async(args: argparse.Namespace, res: Results, tmp: Path) -> None:
    if "a" in args.only:
        await bench_overhead(res, args.quick, tmp)
    if "b" in args.only:
        await bench_parallel(res, args.quick, tmp, args.groups)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="small sizes (5 jobs, 8 groups, 1,008 servers)")
    p.add_argument("--only", default="a,b,c", help="which parts to run, e.g. a,c (default: all)")
    p.add_argument("--groups", type=int, default=100, help="b) domain groups = enclosures (default 100)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-file", help=argparse.SUPPRESS)
    p.add_argument("--child-repeats", type=int, default=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child_measure(args.child, Path(args.child_file), args.child_repeats)))
        return 0
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    res = Results()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as d:
        tmp = Path(d)
        asyncio.run(run_async(args, res, tmp))
        if "c" in args.only:
            bench_static(res, args.quick, tmp)
    print_table(res)
    out = {
        "benchmark": "bench_jobs",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "sqlite": __import__("sqlite3").sqlite_version, "platform": platform.platform()},
        "seconds": round(time.perf_counter() - started, 1),
        "rows": [r.as_dict() for r in res.rows],
        "notes": res.notes,
        "extra": res.extra,
    }
    text = json.dumps(out, separators=(",", ":"))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
