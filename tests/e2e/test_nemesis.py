"""The nemesis suite: the fencing promise attacked from outside, Jepsen-style, with real processes on a
real PostgreSQL and the lab (harness: tests/e2e/nemesis.py).

1. 20 rounds (`FAILOVER_NEMESIS_ROUNDS`; `FAILOVER_NEMESIS_ATTACKS=pause,skew` to pick attacks,
   `FAILOVER_NEMESIS_SEED` to replay), each a failover of a fresh blade under one attack: the owner
   SIGSTOPped or SIGKILLed at a random point, cut or blackholed from the store, a monitor's clock ±30 s,
   a duplicate instance name, a crash inside the job's finish. The oracle runs after every round. Then,
   with the lab enforcing its fence, a stale-epoch request sent by the test is refused and seen as such.
2. Adopters that fail taken-over jobs safe (`recovery: fail_safe`): 4 rounds of pause, partition and
   kill at the moments where an undo and a late action of the old owner meet
   (`FAILOVER_NEMESIS_FAIL_SAFE_ROUNDS`).
3. With the lab only recording (`fencing: record`), the same stale request is accepted: the lab and the
   oracle must both report it (the oracle can fail).
4. Fast (not slow): each check of the oracle made to fail on a hand-made world and log, the attack
   points, the plan, and the store proxy against an echo server.

The slow tests run on PostgreSQL only (the store several monitors share) and are skipped when
tests/peers/postgres.py cannot start it; the skew rounds need libfaketime (installed with apt-get when missing
and root, like PostgreSQL). About 5 minutes on two cores.
5. The same attacks with the monitors on OneView (the lab's OneView face, `manager.kind: oneview`): 6 rounds
   (`FAILOVER_NEMESIS_ONEVIEW_ROUNDS`), pauses and kills also while the move's task runs; the oracle also
   counts the profile PUTs the face received: one per job."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e import nemesis

ROUNDS = int(os.environ.get("FAILOVER_NEMESIS_ROUNDS", "20"))

pytestmark = pytest.mark.serial
"""Bounds on takeover times: run alone, never beside other tests (./dev test's second phase)."""


@pytest.mark.slow
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


ONEVIEW_ROUNDS = int(os.environ.get("FAILOVER_NEMESIS_ONEVIEW_ROUNDS", "6"))
ONEVIEW_DURATIONS = {"task_start_s": 0.2, "profile_move_s": 1.5, "power_s": 0.5}
"""Short but realistic in shape: the move's task runs 1.7 s, long enough for a pause to land in it."""


@pytest.mark.slow
@pytest.mark.timeout(240 + 60 * ONEVIEW_ROUNDS)
async def test_nemesis_rounds_on_oneview_keep_the_fencing_promise(tmp_path: Path,
                                                                  http: aiohttp.ClientSession) -> None:
    """The same attacks with the monitors on `manager.kind: oneview` against the lab's OneView face: the
    pauses and kills also land while the move's task runs (the adopter follows it), and the oracle also
    counts the profile PUTs the face received (one per job)."""
    seed = nemesis.seed_from_env()
    print(f"FAILOVER_NEMESIS_SEED={seed}")
    rng = random.Random(seed)
    attacks = nemesis.plan(ONEVIEW_ROUNDS, rng, nemesis.attacks_from_env())
    t0 = time.monotonic()
    enclosures = nemesis.enclosures_for(ONEVIEW_ROUNDS)
    async with nemesis.nemesis_cluster(tmp_path, http, monitors=3, enclosures=enclosures,
                                       oneview={"durations": ONEVIEW_DURATIONS}) as c:
        print(f"OneView; lease {c.lease:g} s, heartbeat {c.heartbeat:g} s, fence_grace {c.fence_grace:g} s;"
              f" rounds: {', '.join(attacks)}")
        results = await nemesis.run_rounds(c, attacks, rng)
        bound, api_problems = c.bound, list(c.api_problems)
        puts = (await c.oneview_control())["counts"].get("profile_put", 0)
    for r in results:
        if r.error:
            print(f"round {r.n} ({r.attack}, job {r.job}) ended {r.final}: {r.error}")
    print(nemesis.summary(results, bound))
    clean = sum(not r.problems for r in results)
    print(f"{clean}/{len(results)} rounds clean in {time.monotonic() - t0:.0f} s;"
          f" {puts} profile PUT(s) reached OneView")
    report = nemesis.failure_report(results, seed, api_problems, ONEVIEW_ROUNDS, bound, tmp_path)
    assert not report, report


FAIL_SAFE_ROUNDS = int(os.environ.get("FAILOVER_NEMESIS_FAIL_SAFE_ROUNDS", "4"))


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_the_oracle_catches_a_stale_action(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """The lab set to record stale requests rather than refuse them: a request carrying a job's first
    epoch after another monitor took the job over lands, and both the lab's violations and the oracle's
    epoch check report it."""
    rng = random.Random(nemesis.seed_from_env())
    async with nemesis.nemesis_cluster(tmp_path, http, monitors=2, enclosures=2,
                                       lab_extra={"fencing": "record"}) as c:
        # Killed right after announcing its power-off: the adopter then acts (ForceOff or move) under its
        # own epoch, so the lab has seen the newer epoch when the stale request comes.
        c.points = tuple(p for p in nemesis.PAUSE_POINTS if p.detail == "about to power off")
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


# --- the oracle and the proxy on their own (fast: no processes) ----------------------------------------


def _inventory() -> dict[str, Any]:
    servers = [
        {"id": "e1-b1", "profile": None, "spare": False, "present": True, "power": "Off"},
        {"id": "e1-b9", "profile": "prof-e1-b1", "spare": False, "present": True, "power": "On"},
        {"id": "e1-b2", "profile": "prof-e1-b2", "spare": False, "present": True, "power": "On"},
        {"id": "e1-b10", "profile": None, "spare": True, "present": True, "power": "Off"},
    ]
    profiles = [{"id": "prof-e1-b1", "server": "e1-b9", "host": {"name": "h11", "ip": "10.1.0.1"}},
                {"id": "prof-e1-b2", "server": "e1-b2", "host": {"name": "h12", "ip": "10.1.0.2"}}]
    return {"servers": servers, "profiles": profiles}


SPARES = frozenset({"e1-b9", "e1-b10"})
HOSTS = [{"server": "e1-b2", "name": "h12", "ip": "10.1.0.2"}]


def test_the_world_after_a_good_failover_is_clean() -> None:
    assert nemesis.world_problems(_inventory(), HOSTS, SPARES) == []
    job = {"job": 1, "server": "e1-b1", "spare": "e1-b9", "profile": "prof-e1-b1", "state": "completed",
           "error": None}
    assert nemesis.job_problems(job, _inventory(), HOSTS) == []


def test_the_world_checks_fail_on_each_broken_invariant() -> None:
    cases: list[tuple[str, Callable[[dict[str, Any]], None], list[dict[str, Any]]]] = [
        ("profile-placement", lambda inv: inv["servers"][0].update(profile="prof-e1-b1"), HOSTS),
        ("spare-flag", lambda inv: inv["servers"][1].update(spare=True), HOSTS),
        ("spare-flag", lambda inv: inv["servers"][3].update(spare=False), HOSTS),
        ("powered-without-profile", lambda inv: inv["servers"][3].update(power="PoweringOn"), HOSTS),
        ("host-record", lambda inv: None, [*HOSTS, {"server": "e1-b1", "name": "h11", "ip": "10.1.0.1"}]),
        ("host-record", lambda inv: None, [{"server": "e1-b2", "name": "h11", "ip": "10.1.0.1"}]),
    ]
    for invariant, breaks, hosts in cases:
        inv = _inventory()
        breaks(inv)
        found = {p.invariant for p in nemesis.world_problems(inv, hosts, SPARES)}
        assert invariant in found, (invariant, found)


def test_a_job_state_untrue_to_the_world_is_reported() -> None:
    inv = _inventory()
    done = {"job": 1, "server": "e1-b1", "spare": "e1-b10", "profile": "prof-e1-b1", "state": "completed",
            "error": None}
    assert {p.invariant for p in nemesis.job_problems(done, inv, HOSTS)} == {"job-false"}
    inv["servers"][1]["power"] = "Off"
    done["spare"] = "e1-b9"
    assert [p.invariant for p in nemesis.job_problems(done, inv, HOSTS)] == ["job-false"]  # spare Off
    failed = {**done, "state": "failed", "error": "profile stays on e1-b1"}
    assert [p.invariant for p in nemesis.job_problems(failed, _inventory(), HOSTS)] == ["job-false"]
    failed["error"] = "power-on failed; profile prof-e1-b1 is on e1-b9: power it on by hand"
    assert nemesis.job_problems(failed, _inventory(), HOSTS) == []
    # Failed with the profile back on the source: its host record must be back too.
    inv = _inventory()
    inv["servers"][0]["profile"], inv["servers"][1]["profile"] = "prof-e1-b1", None
    inv["servers"][1]["spare"] = True
    inv["profiles"][0]["server"] = "e1-b1"
    failed = {**failed, "error": "profile stays on e1-b1"}
    assert [p.invariant for p in nemesis.job_problems(failed, inv, HOSTS)] == ["job-false"]
    restored = [*HOSTS, {"server": "e1-b1", "name": "h11", "ip": "10.1.0.1"}]
    assert nemesis.job_problems(failed, inv, restored) == []


def _owners() -> dict[int, dict[str, Any]]:
    return {7: {"job": 7, "epoch": 2, "owner": "bravo", "owners": [
        {"epoch": 1, "owner": "alpha", "since": "2026-01-01T00:00:00.000Z"},
        {"epoch": 2, "owner": "bravo", "since": "2026-01-01T00:00:10.000Z"}]}}


T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def _action(t: float, monitor: str, epoch: int,
            detail: str = "ForceOff: accepted (PoweringOff)") -> dict[str, Any]:
    return {"time": T0 + t, "kind": "reset", "server": "e1-b1", "detail": detail, "monitor": monitor,
            "job": 7, "epoch": epoch}


def test_an_action_sent_while_its_epoch_was_current_is_clean() -> None:
    entries = [_action(1, "alpha", 1), _action(9.999, "alpha", 1), _action(10, "bravo", 2)]
    assert nemesis.action_problems(entries, _owners()) == []


def test_an_action_by_a_monitor_that_no_longer_owned_the_job_is_reported() -> None:
    problems = nemesis.action_problems([_action(10.0, "alpha", 1)], _owners())  # no slack at all
    assert [p.invariant for p in problems] == ["stale-action"], problems
    assert "no longer owned the job" in problems[0].detail
    assert [p.invariant for p in nemesis.action_problems([_action(12, "alpha", 2)], _owners())] \
        == ["wrong-monitor"]
    assert [p.invariant for p in nemesis.action_problems([_action(12, "bravo", 3)], _owners())] \
        == ["stale-action"]
    blind = {"time": T0, "kind": "move", "server": "e1-b1", "detail": "ok"}
    assert [p.invariant for p in nemesis.action_problems([blind], _owners())] == ["no-fencing-token"]


def test_a_request_the_fence_refused_is_not_an_action() -> None:
    refused = {**_action(12, "alpha", 1, "ForceOff: rejected (stale fencing token: job 7 epoch 1 < 2"
                                         " (monitor alpha))"), "accepted": False}
    assert nemesis.fence_refused(refused)
    assert nemesis.action_problems([refused], _owners()) == []
    assert nemesis.fence_refused({**refused, "detail": "x", "fenced": True})
    assert not nemesis.fence_refused(_action(12, "alpha", 1, "ForceOff: rejected (already Off)"))
    recorded = {**_action(12, "alpha", 1, "spare=true (stale epoch)"), "accepted": True}
    assert not nemesis.fence_refused(recorded)


def test_actions_sent_twice_are_counted() -> None:
    job = {"job": 7, "server": "e1-b1", "spare": "e1-b9", "profile": "prof-e1-b1"}
    once = [_action(1, "alpha", 1),
            {**_action(2, "alpha", 1, "On: accepted (PoweringOn)"), "server": "e1-b9"},
            {"time": T0 + 2, "kind": "move", "server": "e1-b1", "detail": "prof-e1-b1 e1-b1 -> e1-b9: ok"}]
    assert nemesis.acted_twice(once, job) == []
    twice = [*once, _action(3, "alpha", 1)]
    assert [p.detail for p in nemesis.acted_twice(twice, job)] == \
        ["job 7: ForceOff to the source sent 2 times"]


def _put(t: float, epoch: int, status: int = 202, job: int = 7) -> dict[str, Any]:
    return {"time": T0 + t, "kind": "profile_put", "status": status, "job": job, "epoch": epoch,
            "monitor": "alpha" if epoch == 1 else "bravo"}


def test_a_move_carried_out_by_a_task_is_judged_at_its_put() -> None:
    # alpha's PUT accepted at 9 s, its task takes effect at 11 s, after bravo took the job over at 10 s.
    effect = {**_action(11, "alpha", 1, "prof-e1-b1 e1-b1 -> e1-b9: ok"), "kind": "move"}
    assert [p.invariant for p in nemesis.action_problems([effect], _owners())] == ["stale-action"]
    retimed = nemesis.retimed_task_moves([effect], [_put(9, 1)])
    assert retimed[0]["time"] == T0 + 9 and nemesis.action_problems(retimed, _owners()) == []
    # No accepted PUT of that epoch (refused, or another epoch's): the effect keeps its own time.
    for puts in ([_put(9, 1, status=409)], [_put(9, 2)], []):
        kept = nemesis.retimed_task_moves([effect], puts)
        assert [p.invariant for p in nemesis.action_problems(kept, _owners())] == ["stale-action"], puts
    # A PUT sent after the takeover is itself stale.
    late = nemesis.retimed_task_moves([effect], [_put(10.5, 1)])
    assert [p.invariant for p in nemesis.action_problems(late, _owners())] == ["stale-action"]


def test_profile_puts_are_counted_per_job() -> None:
    done = {"job": 7, "state": "completed"}
    assert nemesis.profile_put_problems(done, [_put(1, 1), _put(2, 1, job=8), _put(3, 2, job=8)]) == []
    twice = nemesis.profile_put_problems(done, [_put(1, 1), _put(12, 2, status=409)])
    assert [p.invariant for p in twice] == ["profile-puts"] and "2 profile PUTs" in twice[0].detail
    none = nemesis.profile_put_problems(done, [_put(1, 1, status=412)])
    assert [p.invariant for p in none] == ["profile-puts"] and "0 accepted" in none[0].detail
    failed = {"job": 7, "state": "failed"}
    assert nemesis.profile_put_problems(failed, []) == []
    assert nemesis.profile_put_problems(failed, [_put(1, 1, status=400)]) == []


def _job(running: str | None, detail: str = "", done: tuple[str, ...] = ()) -> dict[str, Any]:
    steps = [{"step": s, "state": "done" if s in done else "running" if s == running else "pending",
              "detail": detail if s == running else ""} for s in ("check_domain", "power_off_source",
                                                                  "move_profile", "unlock_group")]
    return {"state": "running", "steps": steps}


def test_attack_points_are_reached_at_their_moment_or_once_passed() -> None:
    point = nemesis.Point("after the save", "move_profile", "about to move profile")
    assert not point.reached(_job("power_off_source", "about to power off"))
    assert not point.reached(_job("move_profile", "about to remove the spare designation"))
    assert point.reached(_job("move_profile", "about to move profile prof-x from a to b"))
    assert point.reached(_job("unlock_group", done=("check_domain", "power_off_source", "move_profile")))
    assert point.reached({**_job(None), "state": "completed"})
    assert nemesis.Point("created", "").reached(_job(None))


def test_the_plan_mixes_every_attack_and_replays_from_its_seed() -> None:
    one = nemesis.plan(20, random.Random(5))
    assert sorted(one) == sorted(nemesis.MIX)
    assert one == nemesis.plan(20, random.Random(5))
    assert set(nemesis.plan(6, random.Random(1))) == set(nemesis.ATTACK_NAMES)
    assert set(nemesis.plan(7, random.Random(1), ["skew", "kill"])) == {"skew", "kill"}


async def test_the_store_proxy_cuts_blackholes_delays_and_heals() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = nemesis.StoreProxy(f"postgresql://postgres@127.0.0.1:{port}/db")
    await proxy.start()
    assert proxy.url == f"postgresql://postgres@127.0.0.1:{proxy.port}/db"

    async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes,
                        timeout: float = 2.0) -> bytes:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(data)), timeout)

    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await roundtrip(reader, writer, b"ping") == b"ping"
        proxy.blackhole()  # the connection stays open, nothing goes through
        with pytest.raises(TimeoutError):
            await roundtrip(reader, writer, b"held", timeout=0.5)
        proxy.heal()  # what was held arrives
        assert await asyncio.wait_for(reader.readexactly(4), 2) == b"held"
        proxy.delay = 0.3
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await roundtrip(reader, writer, b"slow") == b"slow"
        assert loop.time() - t0 >= 0.3
        proxy.delay = 0
        proxy.cut()  # dropped, and new connections refused
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(reader2.read(), 2) == b""
        writer2.close()
        proxy.heal()
        reader3, writer3 = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await roundtrip(reader3, writer3, b"back") == b"back"
        writer3.close()
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()
