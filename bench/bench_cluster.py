#!/usr/bin/env python
"""Several monitors on one store: takeover time, kill rounds, and jobs per second through the store.

  a) kill rounds (the rounds of tests/e2e/test_cluster.py): three daemons (separate processes) on one store
     and one lab (`enclosures` sized for the rounds); each round fails a blade over through the API,
     SIGKILLs the monitor running the job at a random moment (uniform over a calibrated job duration),
     restarts it under the same name, waits for the job to end and checks the invariants (every profile
     on exactly one server, no lab violation, no group locked, no job left active). Reported: rounds
     survived with zero violations, and the takeover time from the SIGKILL to another monitor owning the
     job (median, max) against the lease. With the bench's short lease (`--lease`, 3 s) and, unless
     `--quick`, a few rounds with the default lease (15 s, heartbeat 5 s);
  b) jobs per second through the store: three store handles (three monitors' worth) on one store, each
     running jobs with the store traffic of a real failover (create, lock the group, write-ahead save
     before and after each step, unlock, finish) with 8 jobs in flight per handle; SQLite (one shared
     file, `synchronous=full`) is the baseline, PostgreSQL (tests/peers/postgres.py,
     monitor/store/postgres.py) when available, and the ratio.

Run: `.venv/bin/python bench/bench_cluster.py [--rounds 50] [--quick] [--backends sqlite,postgresql]
[--json FILE]`. Everything binds 127.0.0.1 (the lab's BMCs 127.77.x.y). The last line of stdout is the
results as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.core.model import JobState, StepState  # noqa: E402
from monitor.store.sqlite import SqliteStore  # noqa: E402
from tests.e2e.test_cluster import (  # noqa: E402
    GRACE,
    SLACK,
    BackendMissing,
    Round,
    calibrate,
    cluster,
    kill_round,
)

HANDLES = 3
IN_FLIGHT = 8


def pg_available() -> bool:
    return (importlib.util.find_spec("tests.peers.postgres") is not None
            and importlib.util.find_spec("monitor.store.postgres") is not None)


# --- a) kill rounds --------------------------------------------------------------------------------


async def kill_rounds(backend: str, rounds: int, lease: float, heartbeat: float, seed: int,
                      log: Callable[[str], None]) -> dict[str, Any]:
    rng = random.Random(seed)
    enclosures = max(4, min(32, 2 * ((rounds + 1) // 12 + 1)))
    t0 = time.monotonic()
    done: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http,
                    cluster(Path(tmp), http, backend, monitors=3, lease=lease, heartbeat=heartbeat,
                            enclosures=enclosures, skip_missing=False) as c):
            used: set[str] = set()
            duration = await calibrate(c, rng, used)
            for n in range(1, rounds + 1):
                try:
                    r = await kill_round(c, n, rng, used, duration,
                                         restart="immediate" if n % 4 == 0 else "after-takeover")
                except AssertionError as exc:  # a round that could not end: count it as failed
                    log(f"  round {n}: {exc}")
                    done.append(Round(n, "?", 0, "?", 0.0, "?", "?", problems=[str(exc)]))
                    break
                done.append(r)
                log(f"  round {n:3}: {r.server:11} killed {r.victim} after {r.kill_after:4.2f} s"
                    f" ({r.at_kill}), takeover "
                    f"{'-' if r.takeover is None else f'{r.takeover:.2f} s'} by {r.adopter or r.victim},"
                    f" {r.final}{' PROBLEMS ' + repr(r.problems) if r.problems else ''}")
    takeovers = [r.takeover for r in done if r.takeover is not None]
    bound = lease + GRACE + 2 * heartbeat + SLACK
    return {
        "backend": backend, "lease": lease, "heartbeat": heartbeat, "seed": seed,
        "rounds": rounds, "rounds_run": len(done),
        "survived": sum(not r.problems for r in done),
        "completed": sum(r.final == "completed" for r in done),
        "failed": [f"round {r.n}: {r.error}" for r in done if r.final == "failed"],
        "problems": [f"round {r.n}: {p}" for r in done for p in r.problems],
        "job_duration_s": round(duration, 2),
        "takeovers": len(takeovers),
        "takeover_median_s": round(statistics.median(takeovers), 2) if takeovers else None,
        "takeover_max_s": round(max(takeovers), 2) if takeovers else None,
        "takeover_min_s": round(min(takeovers), 2) if takeovers else None,
        "within_lease": sum(t <= lease for t in takeovers),
        "within_bound": sum(t <= bound for t in takeovers),
        "killed_in": sorted({r.at_kill for r in done}),
        "wall_s": round(time.monotonic() - t0, 1),
    }


# --- b) jobs per second through the store ------------------------------------------------------------


async def store_jobs(store: Any, owner: str, first: int, count: int) -> None:
    """`count` jobs with the store traffic of a failover, IN_FLIGHT at a time."""
    now = datetime.now(UTC)

    async def one(i: int) -> None:
        job = await store.create_job(f"bench-{first + i}", f"bg-{first + i}", {"kind": "bench"}, now,
                                     owner=owner)
        job.state = JobState.RUNNING
        await store.save_job(job)
        assert await store.lock_group(job.group, job.id, time.time()) is None
        for step in job.steps[:-1]:
            step.state, step.started, step.detail = StepState.RUNNING, now, f"about to {step.step}"
            await store.save_job(job)
            step.state, step.finished, step.detail = StepState.DONE, now, "done"
            await store.save_job(job)
        await store.unlock_group(job.group, job.id)
        job.steps[-1].state = StepState.DONE
        job.state, job.finished = JobState.COMPLETED, now
        await store.save_job(job)

    queue = list(range(count))

    async def worker() -> None:
        while queue:
            await one(queue.pop())

    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))


async def jobs_per_second(open_store: Callable[[], Awaitable[Any]], jobs: int) -> float:
    stores = [await open_store() for _ in range(HANDLES)]
    try:
        for i, s in enumerate(stores):  # warm up (connections, schema)
            await store_jobs(s, f"bench-m{i}", 10_000_000 + i * 1000, 4)
        t0 = time.perf_counter()
        await asyncio.gather(*(store_jobs(s, f"bench-m{i}", i * jobs, jobs) for i, s in enumerate(stores)))
        return HANDLES * jobs / (time.perf_counter() - t0)
    finally:
        for s in stores:
            await s.close()


async def store_throughput(backend: str, jobs: int, tmp: Path) -> float:
    if backend == "sqlite":
        path = str(tmp / "throughput.db")

        async def open_sqlite() -> Any:
            s = SqliteStore(path)
            await s.open()
            return s

        return await jobs_per_second(open_sqlite, jobs)
    pg_peer: Any = importlib.import_module("tests.peers.postgres")
    store_pg: Any = importlib.import_module("monitor.store.postgres")
    async with pg_peer.start_postgres(tmp) as pg:
        url = pg.url()

        async def open_pg() -> Any:
            s = store_pg.PostgresStore(url)
            await s.open()
            return s

        return float(await jobs_per_second(open_pg, jobs))


# --- main ------------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> dict[str, Any]:
    def log(text: str) -> None:
        print(text, flush=True)

    backends = [b for b in args.backends.split(",") if b]
    notes: list[str] = []
    if "postgresql" in backends and not pg_available():
        notes.append("PostgreSQL store not available yet (tests/peers/postgres.py or "
                     "monitor/store/postgres.py missing): SQLite only")
        backends.remove("postgresql")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    out: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(), "seed": seed,
                           "kill_rounds": [], "store": {}, "notes": notes}
    for backend in backends:
        log(f"== kill rounds, {backend}, {args.rounds} rounds, lease {args.lease:g} s,"
            f" heartbeat {args.heartbeat:g} s")
        try:
            out["kill_rounds"].append(await kill_rounds(backend, args.rounds, args.lease, args.heartbeat,
                                                        seed, log))
        except BackendMissing as exc:
            notes.append(f"{backend}: {exc}")
            continue
        if not args.quick and args.default_lease_rounds:
            log(f"== kill rounds, {backend}, {args.default_lease_rounds} rounds, default lease 15 s,"
                " heartbeat 5 s")
            out["kill_rounds"].append(await kill_rounds(backend, args.default_lease_rounds, 15.0, 5.0,
                                                        seed, log))
    jobs = 50 if args.quick else args.store_jobs
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        for backend in backends:
            log(f"== jobs per second through the store, {backend}, {HANDLES} handles x {jobs} jobs")
            try:
                out["store"][backend] = round(await store_throughput(backend, jobs, Path(tmp)), 1)
            except Exception as exc:  # report and go on: the other backend's figure still counts
                notes.append(f"store throughput {backend}: {type(exc).__name__}: {exc}")
    if "sqlite" in out["store"] and "postgresql" in out["store"]:
        out["store"]["ratio_pg_to_sqlite"] = round(out["store"]["postgresql"] / out["store"]["sqlite"], 2)
    return out


def report(out: dict[str, Any]) -> None:
    print()
    print("| store | lease / heartbeat | rounds survived | jobs completed | takeovers | takeover median |"
          " takeover max | within the lease | wall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in out["kill_rounds"]:
        print(f"| {k['backend']} | {k['lease']:g} s / {k['heartbeat']:g} s | {k['survived']}/{k['rounds']} |"
              f" {k['completed']}/{k['rounds_run']} | {k['takeovers']} | {k['takeover_median_s']} s |"
              f" {k['takeover_max_s']} s | {k['within_lease']}/{k['takeovers']} | {k['wall_s']} s |")
    store = out["store"]
    print()
    print("| store | jobs/s through the store | baseline | ratio |")
    print("|---|---|---|---|")
    if "sqlite" in store:
        print(f"| SQLite, one shared file | {store['sqlite']:,.0f}/s | (baseline) | |")
    if "postgresql" in store:
        ratio = store.get("ratio_pg_to_sqlite")
        print(f"| PostgreSQL | {store['postgresql']:,.0f}/s | {store.get('sqlite', 0):,.0f}/s SQLite |"
              f" x{ratio} |")
    for note in out["notes"]:
        print(f"note: {note}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="10 rounds, no default-lease run, 50 jobs")
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--default-lease-rounds", type=int, default=2,
                        help="rounds with the default lease (15 s), 0 to skip")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--store-jobs", type=int, default=300, help="jobs per store handle")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    ns = parser.parse_args()
    if ns.quick and ns.rounds == 50:
        ns.rounds = 10
    result = asyncio.run(main(ns))
    report(result)
    if ns.json is not None:
        ns.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
