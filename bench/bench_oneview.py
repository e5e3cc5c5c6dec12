#!/usr/bin/env python
"""Failover time through OneView (`manager.kind: oneview`) against the lab's OneView face, by step, and
the monitor's own overhead on top of the emulated durations.

The lab runs in-process with its OneView face; its durations are "realistic" figures scaled by
`--scale` (realistic: ForceOff reaches Off in 5 s, power-on reaches On in 5 s, a task starts in 1 s, a
profile move task runs 30 s). The daemon runs in-process (SQLite, synchronous=full) with
`manager.kind: oneview`; power goes through the lab's BMCs (Redfish), the move through OneView.

* **Baseline** (per job): the emulated durations the flow must wait for, step by step: power_off_source
  = power_off_s, move_profile = task_start_s + profile_move_s, power_on_spare = power_on_s; the other
  steps emulate nothing (0).
* **Measured**: each step's started -> finished as the job records it, and the job's created ->
  finished; the median over `--jobs` sequential failovers of distinct blades (each to its own spare).
* **Overhead** = measured - baseline; ratio = measured / baseline. Run once per `--poll` value
  (`failover.poll_interval`: the power and task polls), since the overhead is mostly polling granularity.

Run: `.venv/bin/python bench/bench_oneview.py [--scale 0.2] [--jobs 3] [--poll 1.0,0.1] [--json FILE]`.
Everything binds loopback (127.0.0.1:0, BMCs on 127.77.E.B); the last line of stdout is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lab.config import LabConfig  # noqa: E402
from lab.main import LabSimulator  # noqa: E402
from monitor.app.daemon import Daemon  # noqa: E402
from monitor.core.config import LoadedConfig, MonitorConfig  # noqa: E402
from monitor.core.model import STEPS, Job  # noqa: E402

REALISTIC = {"power_off_s": 5.0, "power_on_s": 5.0, "task_start_s": 1.0, "profile_move_s": 30.0}
SOURCES = ("enc1-bay1", "enc1-bay2", "enc1-bay3", "enc2-bay1", "enc2-bay2", "enc1-bay4")
"""Production blades that are On, each with a spare of its own in dg1."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def baseline(d: dict[str, float]) -> dict[str, float]:
    by_step = dict.fromkeys(STEPS, 0.0)
    by_step["power_off_source"] = d["power_off_s"]
    by_step["move_profile"] = d["task_start_s"] + d["profile_move_s"]
    by_step["power_on_spare"] = d["power_on_s"]
    return by_step


async def run(scale: float, jobs: int, poll: float) -> dict[str, Any]:
    d = {k: v * scale for k, v in REALISTIC.items()}
    bmc_port = free_port()
    lab_cfg = LabConfig.model_validate({
        "listen": "127.0.0.1:0", "bmc_port": bmc_port,
        "latency": {"power_off_s": d["power_off_s"], "power_on_s": d["power_on_s"], "boot_s": 0},
        "oneview": {"enabled": True, "durations": {"task_start_s": d["task_start_s"],
                                                   "profile_move_s": d["profile_move_s"],
                                                   "power_s": 0.0}}})
    results: list[dict[str, float]] = []
    async with LabSimulator(lab_cfg) as lab:
        with tempfile.TemporaryDirectory(prefix="bench-oneview-") as tmp:
            cfg = MonitorConfig.model_validate({
                "instance": "bench", "http": {"listen": "127.0.0.1:0", "token": "bench-token"},
                "store": str(Path(tmp) / "monitor.db"),
                "inventory": {"source": "lab", "lab": {"url": lab.manager_url, "timeout": 10}},
                "manager": {"kind": "oneview", "oneview": {
                    "address": lab.oneview_url, "username": "administrator", "password": "lab-oneview",
                    "verify_tls": False, "timeout": 10,
                    "bmc": {"username": "admin", "password": "lab-password", "port": bmc_port,
                            "verify_tls": False}}},
                "redfish_events": {"poll_interval": 0},
                "failover": {"poll_interval": poll, "confirm": "never"},
            })
            daemon = Daemon(LoadedConfig(cfg, None))
            stop = asyncio.Event()
            task = asyncio.create_task(daemon.run(stop))
            await asyncio.wait_for(daemon.ready.wait(), 60)
            runner = daemon.runner
            assert runner is not None
            ended: dict[int, asyncio.Event] = {}
            final: dict[int, Job] = {}

            async def listener(job: Job) -> None:
                if not job.state.active and job.id in ended:
                    final[job.id] = job
                    ended[job.id].set()

            runner.add_listener(listener)
            try:
                for source in SOURCES[:jobs]:
                    start = time.perf_counter()
                    job = await runner.submit(source, {"kind": "manual", "reason": "bench"})
                    ended[job.id] = asyncio.Event()
                    if job.id in final:
                        ended[job.id].set()
                    await asyncio.wait_for(ended[job.id].wait(), 600)
                    wall = time.perf_counter() - start
                    done = final[job.id]
                    if done.error:
                        raise SystemExit(f"job {done.id} of {source} failed: {done.error}")
                    row = {s.step: (s.finished - s.started).total_seconds()
                           for s in done.steps if s.started and s.finished}
                    assert done.finished is not None
                    row["total"] = (done.finished - done.created).total_seconds()
                    row["wall"] = wall
                    results.append(row)
                    print(f"poll {poll:g}: {source} -> {done.spare} in {row['total']:.2f} s",
                          file=sys.stderr)
                violations = list(lab.world.violations)
            finally:
                stop.set()
                await asyncio.wait_for(task, 60)
    base = baseline(d)
    steps: dict[str, dict[str, float | None]] = {}
    for step in (*STEPS, "total"):
        measured = statistics.median(r.get(step, 0.0) for r in results)
        b = sum(base.values()) if step == "total" else base[step]
        steps[step] = {"baseline_s": round(b, 3), "measured_s": round(measured, 3),
                       "overhead_s": round(measured - b, 3),
                       "ratio": round(measured / b, 3) if b > 0 else None}
    return {"poll_interval": poll, "scale": scale, "durations": d, "jobs": len(results), "steps": steps,
            "violations": violations}


def table(result: dict[str, Any]) -> str:
    lines = [f"poll_interval {result['poll_interval']:g} s, durations x{result['scale']:g} "
             f"({', '.join(f'{k} {v:g}' for k, v in result['durations'].items())}), "
             f"median of {result['jobs']} jobs",
             f"{'step':<22}{'baseline s':>12}{'measured s':>12}{'overhead s':>12}{'ratio':>8}"]
    for step, row in result["steps"].items():
        ratio = "" if row["baseline_s"] == 0 else f"{row['ratio']:.3f}"
        lines.append(f"{step:<22}{row['baseline_s']:>12.3f}{row['measured_s']:>12.3f}"
                     f"{row['overhead_s']:>12.3f}{ratio:>8}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", type=float, default=0.2, help="realistic durations times this")
    parser.add_argument("--jobs", type=int, default=3, choices=range(1, len(SOURCES) + 1))
    parser.add_argument("--poll", default="1.0,0.1", help="failover.poll_interval values, comma-separated")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    polls = [float(p) for p in args.poll.split(",") if p.strip()]
    out = [asyncio.run(run(args.scale, args.jobs, p)) for p in polls]
    for r in out:
        print(table(r))
        print()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
