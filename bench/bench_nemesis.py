#!/usr/bin/env python
"""The nemesis rounds at length: how often the fencing promise survives, and how fast a takeover is.

The rounds of tests/e2e/test_nemesis.py (harness: tests/e2e/nemesis.py): one lab, three daemons on one
PostgreSQL store (each through a TCP proxy the bench controls), a failover of a fresh blade per round under
one attack (owner SIGSTOPped or SIGKILLed at a random point, cut or blackholed from the store, a clock ±30 s,
a duplicate instance name, a crash inside the job's finish), the oracle after every round. A fresh
cluster every `--rounds-per-cluster` rounds (the lab runs out of fresh blades).

Reported: rounds survived with zero violations; per attack, the invariants broken; the takeover time
(from the attack to another monitor owning the job) after a pause and after a kill, median and max, and
the same as ratios to the bound lease + fence_grace; when the lab's log carries epochs, the time to the
adopter's first action too.

Run: `.venv/bin/python bench/bench_nemesis.py [--rounds 200] [--seed N] [--attacks pause,kill]
[--recovery fail_safe] [--json FILE]`. Everything binds 127.0.0.1 (the lab's BMCs 127.77.x.y). 200 rounds
take about 40 minutes on two cores. The last line of stdout is the results as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e import nemesis  # noqa: E402
from tests.e2e.test_cluster import BackendMissing  # noqa: E402

BENCH_MIX = ("pause", "kill", "partition", "pause", "skew", "kill", "finish", "pause", "partition",
             "duplicate", "kill", "pause", "partition", "finish", "pause", "kill", "skew", "partition",
             "pause", "duplicate")
"""20 rounds: pause 6, kill 4, partition 4, and two of each other attack (takeover figures for both
the pause and the kill)."""


async def run(args: argparse.Namespace, seed: int,
              log: Any) -> tuple[list[nemesis.RoundResult], float, list[str]]:
    rng = random.Random(seed)
    attacks = nemesis.plan(args.rounds, rng, args.attacks, mix=BENCH_MIX)
    results: list[nemesis.RoundResult] = []
    notes: list[str] = []
    bound = nemesis.LEASE
    failover = {"recovery": args.recovery}
    for start in range(0, len(attacks), args.rounds_per_cluster):
        chunk = attacks[start:start + args.rounds_per_cluster]
        with tempfile.TemporaryDirectory(prefix="bench-nemesis-") as tmp:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
                try:
                    async with nemesis.nemesis_cluster(Path(tmp), http, monitors=3,
                                                       enclosures=nemesis.enclosures_for(len(chunk)),
                                                       failover=failover, skip_missing=False) as c:
                        bound = c.bound
                        log(f"== cluster {start // args.rounds_per_cluster + 1}: rounds {start + 1}-"
                            f"{start + len(chunk)}, lease {c.lease:g} s, fence_grace {c.fence_grace:g} s")
                        notes += [str(p) for p in c.api_problems if str(p) not in notes]
                        results += await nemesis.run_rounds(c, chunk, rng, log=log, first=start + 1)
                except BackendMissing as exc:
                    notes.append(f"PostgreSQL unavailable: {exc}")
                    break
    return results, bound, notes


def figures(results: list[nemesis.RoundResult], bound: float, seed: int, wall: float,
            notes: list[str], args: argparse.Namespace) -> dict[str, Any]:
    per_attack: dict[str, Any] = {}
    for attack in nemesis.ATTACK_NAMES:
        rs = [r for r in results if r.attack == attack]
        if not rs:
            continue
        broken: dict[str, int] = {}
        for r in rs:
            for inv in {p.invariant for p in r.problems}:
                broken[inv] = broken.get(inv, 0) + 1
        per_attack[attack] = {"rounds": len(rs), "clean": sum(not r.problems for r in rs), "broken": broken}
    return {
        "python": platform.python_version(), "cpus": os.cpu_count(), "seed": seed,
        "recovery": args.recovery, "rounds": len(results),
        "survived": sum(not r.problems for r in results),
        "lease": nemesis.LEASE, "heartbeat": nemesis.HEARTBEAT, "bound_s": bound,
        "per_attack": per_attack,
        "takeover_after_pause": nemesis.takeover_stats([r for r in results if r.attack == "pause"], bound),
        "takeover_after_kill": nemesis.takeover_stats([r for r in results if r.attack == "kill"], bound),
        "takeover_after_partition": nemesis.takeover_stats(
            [r for r in results if r.attack == "partition"], bound),
        "wall_s": round(wall, 1),
        "notes": notes,
    }


def report(out: dict[str, Any], results: list[nemesis.RoundResult]) -> None:
    print()
    print(f"rounds survived with zero violations: {out['survived']}/{out['rounds']}"
          f" (seed {out['seed']}, recovery {out['recovery']}, {out['wall_s']} s)")
    print(nemesis.summary(results, out["bound_s"]))
    print()
    print("| after | takeovers | takeover median, max | ratio to lease + fence_grace |"
          " adopter's first action median, max | ratio to lease + fence_grace |")
    print("|---|---|---|---|---|---|")
    for what in ("pause", "kill", "partition"):
        t = out[f"takeover_after_{what}"]
        print(f"| a {what} | {t['takeovers']} | {t['median_s']} s, {t['max_s']} s |"
              f" {t['median_ratio']}, {t['max_ratio']} | {t['acting_median_s']} s, {t['acting_max_s']} s |"
              f" {t['acting_median_ratio']}, {t['acting_max_ratio']} |")
    print("(takeover: from the attack to another monitor owning the job; first action: to the first action"
          " of the new epoch in the lab's log)")
    print(f"bound: lease {out['lease']:g} s + fence_grace {out['bound_s'] - out['lease']:g} s ="
          f" {out['bound_s']:g} s")
    for note in out["notes"]:
        print(f"note: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--rounds-per-cluster", type=int, default=60)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--attacks", type=lambda v: [a for a in v.split(",") if a], default=None,
                        help=f"comma-separated, from {','.join(nemesis.ATTACK_NAMES)}")
    parser.add_argument("--recovery", choices=("resume", "fail_safe"), default="resume")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"seed {seed}", flush=True)

    def log(text: str) -> None:
        print(text, flush=True)

    t0 = time.monotonic()
    results, bound, notes = asyncio.run(run(args, seed, log))
    out = figures(results, bound, seed, time.monotonic() - t0, notes, args)
    report(out, results)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
