"""The nemesis suite: the fencing promise attacked from outside, Jepsen-style, with real processes on a
real PostgreSQL and the lab (harness: tests/nemesis.py).

1. 20 rounds (`FAILOVER_NEMESIS_ROUNDS`; `FAILOVER_NEMESIS_ATTACKS=pause,skew` to pick attacks,
   `FAILOVER_NEMESIS_SEED` to replay), each a failover of a fresh blade under one attack: the owner
   SIGSTOPped or SIGKILLed at a random point, cut or blackholed from the store, a monitor's clock ±30 s,
   a duplicate instance name, a crash inside the job's finish. The oracle runs after every round. Then,
   with the lab enforcing its fence, a stale-epoch request sent by the test is refused and seen as such.
2. With the lab only recording (`fencing: record`), the same stale request is accepted: the lab and the
   oracle must both report it (the oracle can fail).

PostgreSQL only: the store several monitors share. Skipped when tests/pg_peer.py cannot start it."""

from __future__ import annotations

import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests import nemesis

pytestmark = pytest.mark.slow

ROUNDS = int(os.environ.get("FAILOVER_NEMESIS_ROUNDS", "20"))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
        yield s


@pytest.mark.timeout(300 + 60 * ROUNDS)
async def test_nemesis_rounds_keep_the_fencing_promise(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    seed = nemesis.seed_from_env()
    print(f"FAILOVER_NEMESIS_SEED={seed}")  # to replay a failing run
    rng = random.Random(seed)
    attacks = nemesis.plan(ROUNDS, rng, nemesis.attacks_from_env())
    t0 = time.monotonic()
    async with nemesis.nemesis_cluster(tmp_path, http, monitors=3,
                                       enclosures=nemesis.enclosures_for(ROUNDS)) as c:
        print(f"lease {c.lease:g} s, heartbeat {c.heartbeat:g} s, fence_grace {c.fence_grace:g} s;"
              f" rounds: {', '.join(attacks)}")
        results = await nemesis.run_rounds(c, attacks, rng)
        fence = await nemesis.fence_round(c, len(results) + 1)
        print(fence.line())
        results.append(fence)
        bound = c.bound
        api_problems = list(c.api_problems)
    print(nemesis.summary(results, bound))
    clean = sum(not r.problems for r in results)
    print(f"{clean}/{len(results)} rounds clean in {time.monotonic() - t0:.0f} s")
    report = nemesis.failure_report(results, seed, api_problems, ROUNDS, bound, tmp_path)
    assert not report, report


FAIL_SAFE_ROUNDS = int(os.environ.get("FAILOVER_NEMESIS_FAIL_SAFE_ROUNDS", "5"))


@pytest.mark.timeout(240 + 60 * FAIL_SAFE_ROUNDS)
async def test_fail_safe_adopters_keep_the_fencing_promise(tmp_path: Path,
                                                          http: aiohttp.ClientSession) -> None:
    """Adopters that fail a taken-over job safe (undo the half-done move, restore the spare) while the
    lost owner, paused or cut off for less than the store timeout, still has an action pending."""
    seed = nemesis.seed_from_env()
    print(f"FAILOVER_NEMESIS_SEED={seed}")
    rng = random.Random(seed)
    attacks = nemesis.plan(FAIL_SAFE_ROUNDS, rng, mix=nemesis.FAIL_SAFE_MIX)
    async with nemesis.nemesis_cluster(tmp_path, http, monitors=3, enclosures=4,
                                       failover={"recovery": "fail_safe"}) as c:
        c.points = nemesis.FAIL_SAFE_POINTS
        results = await nemesis.run_rounds(c, attacks, rng)
        bound, api_problems = c.bound, list(c.api_problems)
    print(nemesis.summary(results, bound))
    report = nemesis.failure_report(results, seed, api_problems, FAIL_SAFE_ROUNDS, bound, tmp_path)
    assert not report, report


@pytest.mark.timeout(240)
async def test_the_oracle_catches_a_stale_action(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """The lab set to record stale requests rather than refuse them: a request carrying a job's first
    epoch after another monitor took the job over lands, and both the lab's violations and the oracle's
    epoch check report it."""
    rng = random.Random(nemesis.seed_from_env())
    async with nemesis.nemesis_cluster(tmp_path, http, monitors=2, enclosures=2,
                                       lab_extra={"fencing": "record"}) as c:
        kill = await nemesis.run_round(c, 1, "kill", rng)
        print(kill.line())
        assert kill.takeover is not None, f"the job was not taken over: {kill.line()}\n{kill.tails}"
        r = nemesis.RoundResult(2, "stale")
        r.log_mark = len(await c.lab_get("/lab/v1/log"))
        r.violation_mark = len(await c.lab_get("/lab/v1/violations"))
        status, entry, job = await nemesis.stale_request(c, kill.job)
        assert status < 400, f"in record mode the lab accepts a stale request; got {status}: {entry}"
        problems = await c.oracle(r, None)
        kinds = {p.invariant for p in problems}
        print("\n".join(str(p) for p in problems))
        assert "lab-violation" in kinds, f"the lab did not record the stale action: {problems}; {entry}"
        assert "stale-action" in kinds, (f"the oracle missed an action by a monitor that no longer owned"
                                         f" job {kill.job}: {problems}; entry {entry};"
                                         f" owners {job.get('owners')}")
        fencing = await c.lab_get("/lab/v1/fencing")
        assert not fencing.get("fenced"), f"record mode refused something: {fencing}"
