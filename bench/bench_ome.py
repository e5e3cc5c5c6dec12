#!/usr/bin/env python
"""Failover time with Dell OME-Modular as the profile manager, against the lab's OME face with its
realistic durations, by step; and the monitor's own overhead on top of the emulated durations.

The lab runs in-process with `ome.enabled` and its default durations (a job starts Running after
`job_start_s` 2 s, a MigrateProfile job runs `migrate_s` 60 s and names itself in the profile's
DeploymentTaskId after `job_id_delay_s` 3 s; BMC ForceOff and power-on reach Off/On after
`latency.power_off_s` / `power_on_s` 1 s each). `--scale 0.1` divides them all by ten. The daemon runs
in-process with `manager.kind: ome` (the lab's SIM role for host records) and the shipped
`failover.poll_interval` (1 s; `--poll` changes it).

Baseline (the emulated durations the job must wait whatever the monitor does): power_off_source =
power_off_s; move_profile = job_start_s + migrate_s; power_on_spare = power_on_s. Overhead = the step's
measured time less that. Run: `.venv/bin/python bench/bench_ome.py [--scale S] [--poll P] [--runs N]
[--json FILE]`. Loopback only; the last line of stdout is the results as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
from datetime import datetime
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

PAIRS = ["enc1-bay1", "enc1-bay2", "enc2-bay1", "enc2-bay2", "enc1-bay3"]
"""Production blades that are On, each with a qualified spare in dg1 (one failover per run)."""


def seconds(start: str | None, end: str | None) -> float:
    if start is None or end is None:
        return float("nan")
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


async def one_run(scale: float, poll: float, server: str, tmp: Path) -> dict[str, Any]:
    base = LabConfig()
    ome = base.ome.model_copy(update={"enabled": True, "job_start_s": base.ome.job_start_s * scale,
                                      "job_id_delay_s": base.ome.job_id_delay_s * scale,
                                      "migrate_s": base.ome.migrate_s * scale,
                                      "power_s": base.ome.power_s * scale})
    latency = base.latency.model_copy(update={"power_off_s": base.latency.power_off_s * scale,
                                              "power_on_s": base.latency.power_on_s * scale})
    lab_cfg = base.model_copy(update={"listen": "127.0.0.1:0", "ome": ome, "latency": latency})
    async with LabSimulator(lab_cfg) as lab:
        cfg = MonitorConfig.model_validate({
            "instance": "bench", "http": {"listen": "127.0.0.1:0"}, "store": str(tmp / f"{server}.db"),
            "inventory": {"source": "lab", "lab": {"url": lab.manager_url}},
            "manager": {"kind": "ome", "ome": {
                "url": lab.ome_url, "username": "admin", "password": "lab-password", "verify_tls": False,
                "poll_interval": min(poll, 1.0),
                "bmc": {"username": "admin", "password": "lab-password", "verify_tls": False}}},
            "redfish_events": {"poll_interval": 0},
            "failover": {"poll_interval": poll},
        })
        daemon = Daemon(LoadedConfig(cfg, None))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await asyncio.wait_for(daemon.ready.wait(), 60)
        runner = daemon.runner
        assert runner is not None
        done = asyncio.Event()
        final: list[Job] = []

        async def listen(job: Job) -> None:
            if not job.state.active:
                final.append(job)
                done.set()

        runner.add_listener(listen)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await runner.submit(server, {"kind": "manual", "reason": "bench"})
        await asyncio.wait_for(done.wait(), 600)
        total = loop.time() - t0
        stop.set()
        await asyncio.wait_for(task, 60)
        job = final[-1]
        assert job.state.value == "completed", (job.error, [s.detail for s in job.steps])
        assert len(lab.ome.migrate_requests) == 1 if lab.ome else False
        assert lab.world.violations == []
        steps = {s.step: seconds(s.started.isoformat() if s.started else None,
                                 s.finished.isoformat() if s.finished else None) for s in job.steps}
        emulated = {"power_off_source": latency.power_off_s,
                    "move_profile": ome.job_start_s + ome.migrate_s,
                    "power_on_spare": latency.power_on_s}
        return {"server": server, "total_s": total, "steps": steps, "emulated": emulated,
                "overhead_s": total - sum(emulated.values())}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the emulated durations")
    parser.add_argument("--poll", type=float, default=1.0, help="failover.poll_interval (s)")
    parser.add_argument("--runs", type=int, default=1, choices=range(1, len(PAIRS) + 1))
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for server in PAIRS[:args.runs]:
            print(f"failover of {server} (scale {args.scale:g}, poll {args.poll:g} s) ...", file=sys.stderr)
            results.append(await one_run(args.scale, args.poll, server, Path(tmp)))
    print(f"{'step':<22}{'measured s':>12}{'emulated s':>12}{'overhead s':>12}")
    for step in STEPS:
        measured = statistics.median(r["steps"][step] for r in results)
        emulated = results[0]["emulated"].get(step, 0.0)
        print(f"{step:<22}{measured:>12.2f}{emulated:>12.2f}{measured - emulated:>12.2f}")
    total = statistics.median(r["total_s"] for r in results)
    overhead = statistics.median(r["overhead_s"] for r in results)
    print(f"{'submit -> completed':<22}{total:>12.2f}{total - overhead:>12.2f}{overhead:>12.2f}")
    out = {"scale": args.scale, "poll_interval": args.poll, "runs": results, "median_total_s": total,
           "median_overhead_s": overhead}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
