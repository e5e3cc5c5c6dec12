"""The stores: numbering, one active job per server, durability across reopen, locks, timers, leases —
every test against SQLite and a real PostgreSQL (tests/peers/postgres.py). Then what only PostgreSQL has: two
monitors (two connection pools) racing for the same job, lock, timer and trap; migrations from an empty
database under concurrent starts; `db upgrade`; the database restarted between two calls."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from monitor.app.cli import main
from monitor.core.errors import ActiveJobExists, LostOwnership, MembershipLost, StoreError, StoreUnavailable
from monitor.core.model import FlowContext, JobState, MoveRecord, StepState
from monitor.store import JobWrites, Store, TimerWrite
from monitor.store.postgres import MIGRATIONS, PostgresStore, redact
from monitor.store.rows import JOB_WRITES, SCHEMA_VERSION
from monitor.store.sqlite import SqliteStore
from tests.peers.postgres import PgCluster, start_postgres

NOW = datetime(2026, 11, 27, 11, 0, tzinfo=UTC)

Opener = Callable[[], Store]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def location(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """Where the test's store lives: a SQLite file, or a fresh PostgreSQL database."""
    if backend == "sqlite":
        return str(tmp_path / "s.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def opener(backend: str, location: str) -> Opener:
    """Makes a new (not yet opened) store on the test's storage: a second monitor, or a restart."""

    def make() -> Store:
        return SqliteStore(location) if backend == "sqlite" else PostgresStore(location, max_size=4)

    return make


@pytest.fixture
async def store(opener: Opener) -> AsyncIterator[Store]:
    s = opener()
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def pg(request: pytest.FixtureRequest) -> PgCluster:
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster


@pytest.fixture
def db(request: pytest.FixtureRequest) -> str:
    """A fresh PostgreSQL database (PostgreSQL-only tests)."""
    return str(request.getfixturevalue("pg_url"))


# --- both stores --------------------------------------------------------------------------------------


async def test_job_numbers_increase_and_survive_reopen(opener: Opener) -> None:
    s = opener()
    await s.open()
    a = await s.create_job("enc1-bay1", "dg1", {"kind": "manual"}, NOW)
    a.state = JobState.COMPLETED
    await s.save_job(a)
    b = await s.create_job("enc1-bay2", "dg1", {"kind": "manual"}, NOW)
    await s.close()
    s2 = opener()
    await s2.open()
    c = await s2.create_job("enc1-bay3", "dg1", {"kind": "manual"}, NOW)
    await s2.close()
    assert a.id < b.id < c.id


async def test_one_active_job_per_server(store: Store) -> None:
    job = await store.create_job("enc1-bay1", "dg1", {"kind": "manual"}, NOW)
    with pytest.raises(ActiveJobExists) as err:
        await store.create_job("enc1-bay1", "dg1", {"kind": "manual"}, NOW)
    assert err.value.job == job.id
    job.state = JobState.FAILED
    await store.save_job(job)
    again = await store.create_job("enc1-bay1", "dg1", {"kind": "manual"}, NOW)
    assert again.id > job.id


async def test_save_and_read_back_every_field(store: Store) -> None:
    job = await store.create_job("enc1-bay1", "dg1", {"kind": "rule", "rule": "r1"}, NOW)
    job.state = JobState.RUNNING
    job.profile, job.spare = "p1", "enc1-bay9"
    job.context = FlowContext(move=MoveRecord(spare_cleared=True))
    job.notes = ["resumed"]
    job.rediscovery = {"state": "scheduled"}
    step = job.step("power_off_source")
    step.state, step.started, step.detail = StepState.RUNNING, NOW, "about to power off enc1-bay1"
    await store.save_job(job)
    back = await store.get_job(job.id)
    assert back is not None
    assert back.public() == job.public()
    assert back.context == job.context
    assert [j.id for j in await store.active_jobs()] == [job.id]
    assert await store.active_by_server() == {"enc1-bay1": job.id}
    assert await store.get_job(job.id + 100) is None
    job.state, job.finished = JobState.COMPLETED, NOW
    await store.save_job(job)
    assert await store.job_counts() == {"completed": 1}


async def test_list_filters_newest_first(store: Store) -> None:
    ids = [(await store.create_job(f"s{i}", "dg1", {}, NOW)).id for i in range(5)]
    assert [j.id for j in await store.list_jobs(limit=3)] == ids[::-1][:3]
    assert [j.id for j in await store.list_jobs(server="s2")] == [ids[2]]
    assert len(await store.list_jobs(state="queued")) == 5
    assert await store.list_jobs(state="completed") == []


async def running(store: Store, server: str, group: str = "dg1", *, waiting: bool = True) -> int:
    """A running job; `waiting`: its lock_group step runs (it waits for or holds its group)."""
    job = await store.create_job(server, group, {}, NOW)
    job.state = JobState.RUNNING
    if waiting:
        job.step("lock_group").state = StepState.RUNNING
    await store.save_job(job)
    return job.id


async def test_group_lock_rows(store: Store) -> None:
    a, b = await running(store, "s1"), await running(store, "s2")
    assert await store.lock_group("dg1", a, 0.0) is None
    assert await store.lock_group("dg1", a, 0.0) is None  # re-entrant for its holder
    assert await store.lock_group("dg1", b, 0.0) == a
    assert await store.group_locks() == {"dg1": a}
    assert not await store.unlock_group("dg1", b)
    assert await store.unlock_group("dg1", a)
    assert await store.group_locks() == {}


async def test_group_lock_goes_to_the_lowest_waiting_job_and_stale_rows_are_replaced(
        store: Store) -> None:
    a, b, c = [await running(store, f"s{i}") for i in range(3)]
    assert await store.lock_group("dg1", b, 0.0) == a  # a waits too and goes first
    assert await store.lock_group("dg1", a, 0.0) is None
    job = await store.get_job(a)
    assert job is not None
    job.state = JobState.FAILED  # a ended without unlocking (a crash of its monitor's last step)
    await store.save_job(job)
    assert await store.lock_group("dg1", c, 0.0) == b
    assert await store.lock_group("dg1", b, 0.0) is None  # the row of a finished job is stale
    assert await store.group_locks() == {"dg1": b}


def job_commits(store: Store) -> int:
    return sum(store.commits[k] for k in JOB_WRITES)


async def test_a_job_row_and_its_lock_timer_and_unlock_are_one_commit(store: Store) -> None:
    """save_job with JobWrites: the row and the lock (granted or queued), the timer and the unlock, each
    save one transaction, counted once in `commits`; a refused save writes none of them."""
    job = await store.create_job("s1", "dg1", {}, NOW, owner="m1", token="t1")
    other = await store.create_job("s2", "dg1", {}, NOW, owner="m1", token="t1")
    assert store.commits["create_job"] == 2
    base = job_commits(store)
    job.state = JobState.RUNNING
    job.step("lock_group").state = StepState.RUNNING
    assert (await store.save_job(job, JobWrites(lock="dg1"))).holder is None
    assert job_commits(store) - base == 1 and store.commits["lock_group"] == 0
    assert await store.group_locks() == {"dg1": job.id}
    other.state = JobState.RUNNING
    other.step("lock_group").state = StepState.RUNNING
    assert (await store.save_job(other, JobWrites(lock="dg1"))).holder == job.id
    queued = await store.get_job(other.id)  # the row is committed all the same: it waits in the queue
    assert queued is not None and queued.step("lock_group").state is StepState.RUNNING
    job.state, job.finished = JobState.COMPLETED, NOW
    job.step("unlock_group").state = StepState.DONE
    saved = await store.save_job(job, JobWrites(unlock="dg1", timer=TimerWrite("rediscovery", "s9", 50.0)))
    assert saved.unlocked and saved.timer is not None and saved.timer.state == "scheduled"
    assert job_commits(store) - base == 3, store.commits
    assert await store.group_locks() == {}
    assert [(t.job, t.server, t.due) for t in await store.scheduled_timers()] == [(job.id, "s9", 50.0)]
    back = await store.get_job(job.id)
    assert back is not None and back.state is JobState.COMPLETED
    # A save under an old epoch (another monitor took the job over) writes nothing of `also`.
    assert (await store.join("m2", "t2", "h2", 15.0, 0.0, now=0.0)).joined
    (adopted,) = await store.adopt_jobs("m2", "t2", 0.0, now=4e9)
    assert adopted.id == other.id
    with pytest.raises(LostOwnership):
        await store.save_job(other, JobWrites(lock="dg1", timer=TimerWrite("rediscovery", "s8", 60.0)))
    assert await store.group_locks() == {}
    assert [t.job for t in await store.scheduled_timers()] == [job.id]
    assert job_commits(store) - base == 3


async def test_ownership_adoption_epochs_and_dedupe(store: Store) -> None:
    assert (await store.join("m1", "t1", "h1", 15.0, 5.0, now=100.0)).joined
    assert (await store.join("m2", "t2", "h2", 15.0, 5.0, now=100.0)).joined
    job = await store.create_job("s1", "dg1", {}, NOW, owner="m1", token="t1")
    assert job.epoch == 1 and [o["owner"] for o in job.owners] == ["m1"]
    assert await store.adopt_jobs("m2", "t2", 5.0, now=110.0) == []  # m1's lease holds
    assert await store.adopt_jobs("m2", "t2", 5.0, now=116.0) == []  # over, but within the fence grace
    (adopted,) = await store.adopt_jobs("m2", "t2", 5.0, now=120.5)  # lease and grace ran out
    assert adopted.id == job.id and adopted.owner == "m2" and adopted.epoch == 2
    assert [(o["epoch"], o["owner"]) for o in adopted.owners] == [(1, "m1"), (2, "m2")]
    with pytest.raises(LostOwnership) as err:
        await store.save_job(job)  # m1 (epoch 1) may not act on it any more
    assert err.value.owner == "m2"
    await store.save_job(adopted)
    assert await store.adopt_jobs("m2", "t2", 5.0, now=200.0) == []  # never its own (it runs them)
    assert await store.dedupe("k", "m1", 100.0, 60.0) is None
    assert await store.dedupe("k", "m2", 130.0, 60.0) == "m1"
    assert await store.dedupe("k", "m2", 161.0, 60.0) is None
    assert {m["instance"] for m in await store.members()} == {"m1", "m2"}


async def test_a_name_is_held_by_one_process(store: Store) -> None:
    assert (await store.join("m1", "t1", "h1", 15.0, 5.0, now=100.0)).joined
    other = await store.join("m1", "t9", "h9", 15.0, 5.0, now=101.0)  # a second process, same name
    assert not other.joined and other.holder == "t1" and other.lease_until == 115.0
    assert other.wait == pytest.approx(19.0)  # lease plus grace
    await store.heartbeat("m1", "t1", "h1", 15.0, now=105.0)
    with pytest.raises(MembershipLost):
        await store.heartbeat("m1", "t9", "h9", 15.0, now=105.0)
    assert not (await store.join("m1", "t9", "h9", 15.0, 5.0, now=124.0)).joined  # renewed: 120 + 5
    assert (await store.join("m1", "t9", "h9", 15.0, 5.0, now=125.5)).joined  # t1 is gone
    with pytest.raises(MembershipLost):  # t1 comes back: the name is t9's now
        await store.heartbeat("m1", "t1", "h1", 15.0, now=126.0)


async def test_a_heartbeat_says_whether_the_lease_had_ended(store: Store) -> None:
    """A renewal after the lease ended still renews it (the name is still this process's), but says so:
    the jobs held under it may have been taken over meanwhile."""
    assert (await store.join("m1", "t1", "h1", 15.0, 5.0, now=100.0)).joined
    assert await store.heartbeat("m1", "t1", "h1", 15.0, now=110.0) is False  # lease until 115
    assert await store.heartbeat("m1", "t1", "h1", 15.0, now=124.0) is False  # until 125
    assert await store.heartbeat("m1", "t1", "h1", 15.0, now=139.0) is True  # it ended at 139
    assert await store.heartbeat("m1", "t1", "h1", 15.0, now=200.0) is True
    (m,) = await store.members(now=201.0)
    assert m["lease_until"] == 215.0


async def test_leave_ends_the_lease_at_once(store: Store) -> None:
    assert (await store.join("m1", "t1", "h1", 15.0, 5.0, now=100.0)).joined
    await store.heartbeat("m1", "t1", "h1b", 15.0, now=105.0)
    (m,) = await store.members(now=106.0)
    assert m == {"instance": "m1", "address": "h1b", "incarnation": "t1", "started": 100.0,
                 "lease_until": 120.0, "lease_left": 14.0, "lease_delta": 14.0}
    job = await store.create_job("s1", "dg1", {}, NOW, owner="m1", token="t1")
    await store.leave("m1", "t1", 5.0, now=106.0)  # clean: dated back by the grace
    (m,) = await store.members(now=106.0)
    assert m["lease_left"] is None
    assert [j.id for j in await store.adopt_jobs("m2", "t2", 5.0, now=106.0)] == [job.id]


async def test_stale_locks_released_in_one_call(store: Store) -> None:
    a, b = await running(store, "s1", "dg1"), await running(store, "s2", "dg2")
    assert await store.lock_group("dg1", a) is None and await store.lock_group("dg2", b) is None
    job = await store.get_job(a)
    assert job is not None
    job.state = JobState.FAILED  # a crash in its finish left the lock
    await store.save_job(job)
    assert await store.release_stale_locks() == {"dg1": a}
    assert await store.group_locks() == {"dg2": b}  # an active job's lock is never touched


async def test_timers_fire_on_one_monitor(store: Store) -> None:
    await store.add_timer("rediscovery", 1, "s9", 100.0)
    assert await store.claim_due_timers("m1", 99.0, 30.0) == []
    (t,) = await store.claim_due_timers("m1", 100.0, 30.0)
    assert await store.claim_due_timers("m2", 110.0, 30.0) == []  # held by m1
    assert [x.id for x in await store.claim_due_timers("m2", 131.0, 30.0)] == [t.id]  # m1 died
    await store.update_timer(t.id, state="done")
    assert await store.claim_due_timers("m1", 500.0, 30.0) == []


async def test_timers_are_idempotent_per_job(store: Store) -> None:
    t1 = await store.add_timer("rediscovery", 7, "enc1-bay9", 100.0)
    t2 = await store.add_timer("rediscovery", 7, "enc1-bay9", 999.0)
    assert t1 == t2
    await store.update_timer(t1.id, state="scheduled", due=200.0, attempts=1, detail="retry")
    (t,) = await store.scheduled_timers()
    assert (t.due, t.attempts, t.detail) == (200.0, 1, "retry")
    await store.update_timer(t1.id, state="done", detail="found")
    assert await store.scheduled_timers() == []


async def test_inventory_state(store: Store) -> None:
    await store.set_states([("profile", "p1", "enc1-bay9"), ("spare", "enc1-bay9", False)])
    assert await store.get_state("profile") == {"p1": "enc1-bay9"}
    assert await store.get_state("spare") == {"enc1-bay9": False}
    await store.set_state("profile", "p1", None)
    assert await store.get_state("profile") == {}


async def test_decisions_and_values(store: Store) -> None:
    ids = await store.add_decisions([(1.0, "s1", "failover", "r1", {"a": 1}),
                                     (2.0, None, "ignore", None, {"b": [1, 2]}),
                                     (3.0, "s1", "alert", "r2", {"c": "x"})])
    assert len(ids) == 3 and ids == sorted(ids)
    assert await store.add_decisions([]) == []
    assert [d["id"] for d in await store.list_decisions()] == ids[::-1]
    assert await store.list_decisions(server="s1", action="alert") == [{"c": "x", "id": ids[2]}]
    assert len(await store.list_decisions(limit=1)) == 1
    assert await store.get_value("pause") is None
    await store.set_value("pause", {"reason": "maintenance", "n": 1.5})
    assert await store.get_value("pause") == {"reason": "maintenance", "n": 1.5}
    await store.set_value("pause", None)
    assert await store.get_value("pause") is None
    await store.ping()


async def test_decisions_keep_only_the_newest(store: Store) -> None:
    rows: list[tuple[float, str | None, str, str | None, dict[str, Any]]] = [
        (float(i), "s", "alert", None, {"i": i}) for i in range(1500)]
    ids = await store.add_decisions(rows, keep=100)
    assert len(ids) == 1500
    kept = await store.list_decisions(limit=5000)
    assert len(kept) == 100 and kept[0]["i"] == 1499


async def test_a_nul_character_in_a_detail_does_not_stop_a_job(store: Store) -> None:
    job = await store.create_job("s1", "dg1", {}, NOW)
    job.step("check_domain").detail = "BMC said \x00 oops"
    await store.save_job(job)
    back = await store.get_job(job.id)
    assert back is not None and back.step("check_domain").detail.startswith("BMC said ")


async def test_a_newer_schema_is_refused(backend: str, location: str, opener: Opener) -> None:
    s = opener()
    await s.open()
    await s.close()
    if backend == "sqlite":
        with sqlite3.connect(location) as c:
            c.execute("UPDATE meta SET value='99' WHERE key='schema'")
    else:
        conn = await asyncpg.connect(location)
        await conn.execute("INSERT INTO schema_migrations(version) VALUES (99)")
        await conn.close()
    s2 = opener()
    with pytest.raises(StoreError, match="newer"):
        await s2.open()
    await s2.close()


def test_db_upgrade_is_idempotent(backend: str, location: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "monitor.yaml"
    cfg.write_text(yaml.safe_dump({"store": location, "postgres": {"timeout": 5}}))
    assert main(["db", "upgrade", "-c", str(cfg)]) == 0
    assert capsys.readouterr().out.strip() == f"store schema 0 -> {SCHEMA_VERSION} (upgraded)"
    assert main(["db", "upgrade", "-c", str(cfg)]) == 0
    v = SCHEMA_VERSION
    assert capsys.readouterr().out.strip() == f"store schema {v} -> {v} (up to date)"


# --- SQLite only ----------------------------------------------------------------------------------------


async def test_sqlite_schema_1_is_migrated(tmp_path: Path) -> None:
    from monitor.store.sqlite import _SCHEMA

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as c:
        c.executescript(_SCHEMA)
        c.execute("INSERT INTO meta(key, value) VALUES ('schema', '1')")
        c.execute("INSERT INTO jobs(server, grp, state, trigger, created) VALUES ('s', 'g', 'completed',"
                  " '{}', 0)")
    s = SqliteStore(str(path))
    await s.open()
    (job,) = await s.list_jobs()
    assert job.owner is None and job.server == "s"
    await s.close()
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == str(SCHEMA_VERSION)


# --- PostgreSQL only: migrations, several monitors at once, the server going away -----------------------


async def test_postgres_schema_1_is_migrated(db: str) -> None:
    conn = await asyncpg.connect(db)
    async with conn.transaction():
        await conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
                           " applied DOUBLE PRECISION NOT NULL DEFAULT 0)")
        for sql in MIGRATIONS[1]:
            await conn.execute(sql)
        await conn.execute("INSERT INTO schema_migrations(version) VALUES (1)")
        await conn.execute("INSERT INTO jobs(server, grp, state, trigger, created)"
                           " VALUES ('s', 'g', 'completed', '{}', 0)")
    await conn.close()
    s = PostgresStore(db)
    await s.open()
    (job,) = await s.list_jobs()
    assert job.owner is None and job.server == "s"
    assert await s.schema_version() == SCHEMA_VERSION
    await s.close()


async def test_monitors_starting_together_migrate_an_empty_database_once(db: str) -> None:
    probe = PostgresStore(db)
    await probe.open(upgrade=False)
    assert await probe.schema_version() == 0
    stores = [PostgresStore(db, max_size=2) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    conn = await asyncpg.connect(db)
    assert [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")] == \
        list(range(1, SCHEMA_VERSION + 1))
    await conn.close()
    assert await probe.schema_version() == SCHEMA_VERSION
    for s in [*stores, probe]:
        await s.close()


@pytest.fixture
async def two(db: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two monitors: two stores, each with its own connection pool, on one database."""
    a, b = PostgresStore(db, max_size=8), PostgresStore(db, max_size=8)
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    await b.close()


async def test_racing_create_job_one_wins(two: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = two
    for server in ("s1", "s2", "s3"):
        calls = [s.create_job(server, "dg1", {}, NOW, owner=f"m{i}") for i in range(8) for s in (a, b)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        won = [r for r in results if not isinstance(r, BaseException)]
        assert len(won) == 1, results
        lost = [r for r in results if isinstance(r, BaseException)]
        assert all(isinstance(e, ActiveJobExists) and e.job == won[0].id for e in lost), lost
    ids = sorted((await a.active_by_server()).values())
    assert len(set(ids)) == 3


async def test_racing_lock_group_one_holder(two: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = two
    # Nobody waits yet (lock_group steps pending): whoever comes first takes it, and only one does.
    free = [await running(a, f"f{i}", "dg-free", waiting=False) for i in range(8)]
    results = await asyncio.gather(*(s.lock_group("dg-free", j, 1.0) for j in free for s in (a, b)))
    winners = {j for j, r in zip([j for j in free for _ in (a, b)], results, strict=True) if r is None}
    assert len(winners) == 1
    (holder,) = winners
    assert await b.group_locks() == {"dg-free": holder}
    assert all(r in (None, holder) for r in results)
    # Everyone waits: the lowest-numbered job gets it, whatever the order of the calls.
    waiting = [await running(b, f"w{i}", "dg-wait") for i in range(8)]
    results = await asyncio.gather(*(s.lock_group("dg-wait", j, 1.0) for j in waiting[::-1] for s in (a, b)))
    assert sum(r is None for r in results) == 2  # the lowest, once per monitor (re-entrant)
    assert await a.group_locks() == {"dg-free": holder, "dg-wait": waiting[0]}


async def test_racing_timer_claims_fire_each_once(two: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = two
    timers = [await a.add_timer("rediscovery", i, f"s{i}", 100.0 + i) for i in range(40)]
    claims = await asyncio.gather(*(s.claim_due_timers(f"{name}-{k}", 200.0, 30.0)
                                    for k in range(4) for name, s in (("a", a), ("b", b))))
    claimed = [t.id for batch in claims for t in batch]
    assert sorted(claimed) == sorted(t.id for t in timers)  # every timer, each exactly once
    assert all(batch == sorted(batch, key=lambda t: (t.due, t.id)) for batch in claims)
    assert await b.claim_due_timers("late", 210.0, 30.0) == []


async def test_racing_dedupe_one_winner(two: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = two
    for key in ("enc1-bay1/cpu", "enc1-bay2/cpu"):
        names = [f"m{i}" for i in range(10)]
        results = await asyncio.gather(*(s.dedupe(key, n, 100.0, 60.0)
                                         for n, s in zip(names, [a, b] * 5, strict=True)))
        assert results.count(None) == 1
        winner = names[results.index(None)]
        assert {r for r in results if r is not None} == {winner}


async def test_racing_adoption_each_job_once(two: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = two
    assert (await a.join("dead", "td", "", 1.0, 0.0, now=0.0)).joined
    ids = {(await a.create_job(f"s{i}", "dg1", {}, NOW, owner="dead", token="td")).id for i in range(20)}
    assert (await a.join("m1", "t1", "", 60.0, 0.0, now=100.0)).joined
    assert (await b.join("m2", "t2", "", 60.0, 0.0, now=100.0)).joined
    got1, got2 = await asyncio.gather(a.adopt_jobs("m1", "t1", 5.0, now=100.0),
                                      b.adopt_jobs("m2", "t2", 5.0, now=100.0))
    one, other = {j.id for j in got1}, {j.id for j in got2}
    assert not one & other and one | other == ids
    assert all(j.owner == "m1" and j.epoch == 2 for j in got1) and all(len(j.steps) == 9 for j in got1 + got2)


async def test_racing_joins_one_name_one_process(two: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = two
    results = await asyncio.gather(*(s.join("m1", f"t{i}-{n}", "", 15.0, 5.0)
                                     for i in range(6) for n, s in enumerate((a, b))))
    assert sum(r.joined for r in results) == 1
    holders = {r.holder for r in results if not r.joined}
    assert len(holders) == 1


async def test_leases_are_on_the_database_clock(two: tuple[PostgresStore, PostgresStore]) -> None:
    a, _b = two
    db = await a.clock()
    assert (await a.join("m1", "t1", "", 15.0, 5.0)).joined
    (m,) = await a.members()
    assert m["lease_until"] == pytest.approx(db + 15.0, abs=2.0)
    assert m["lease_left"] == pytest.approx(15.0, abs=2.0)


async def test_a_save_after_a_takeover_is_fenced(two: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = two
    job = await a.create_job("s1", "dg1", {}, NOW, owner="m1", token="t1")
    assert (await b.join("m2", "t2", "", 60.0, 0.0, now=100.0)).joined
    (theirs,) = await b.adopt_jobs("m2", "t2", 5.0, now=100.0)
    job.state = JobState.RUNNING
    job.step("check_domain").state = StepState.DONE
    with pytest.raises(LostOwnership):
        await a.save_job(job)
    back = await b.get_job(job.id)
    assert back is not None and back.public() == theirs.public()  # neither the job nor a step changed


@pytest.mark.slow
async def test_the_database_restarted_between_two_calls(tmp_path: Path) -> None:
    async with start_postgres(tmp_path) as cluster:
        s = PostgresStore(cluster.url(), max_size=4, timeout=3.0)
        await s.open()
        job = await s.create_job("s1", "dg1", {}, NOW, owner="m1")
        await asyncio.gather(*(s.job_counts() for _ in range(8)))  # several pooled connections

        await asyncio.to_thread(cluster.restart)  # every connection of the pool is now dead
        job.state = JobState.RUNNING
        try:
            await s.save_job(job)
        except StoreUnavailable:
            await s.save_job(job)  # the retry gets a fresh connection
        back = await s.get_job(job.id)
        assert back is not None and back.state is JobState.RUNNING
        for _ in range(3):  # and so does every call after it
            await asyncio.gather(*(s.job_counts() for _ in range(8)))

        await asyncio.to_thread(cluster.stop)
        with pytest.raises(StoreUnavailable) as err:
            await s.ping()
        assert "postgres@127.0.0.1" in str(err.value)
        await asyncio.to_thread(cluster.start)
        try:
            await s.ping()
        except StoreUnavailable:
            await s.ping()
        assert (await s.job_counts()) == {"running": 1}
        await s.close()


async def test_an_unreachable_database_fails_open_as_unavailable() -> None:
    from tests.support.net import reserve_port

    s = PostgresStore(f"postgresql://u:secret@127.0.0.1:{reserve_port()}/x", timeout=2.0)
    with pytest.raises(StoreUnavailable) as err:
        await s.open()
    assert "secret" not in str(err.value) and "u:***@" in str(err.value)
    assert redact("postgres://me:pw@h/db") == "postgres://me:***@h/db"
    assert redact("postgresql://h/db") == "postgresql://h/db"
    await s.close()


def test_the_factory_chooses_by_the_store_setting(tmp_path: Path) -> None:
    from monitor.core.config import MonitorConfig
    from monitor.store import open_store

    for url in ("postgresql://fm@db.example:5432/failover", "postgres://db.example/failover"):
        cfg = MonitorConfig.model_validate({"store": url, "postgres": {"max_size": 3, "timeout": 2}})
        s = open_store(cfg, "unused")
        assert isinstance(s, PostgresStore) and (s.url, s.max_size, s.timeout) == (url, 3, 2.0)
    s2 = open_store(MonitorConfig(store="x.db"), str(tmp_path / "x.db"))
    assert isinstance(s2, SqliteStore) and s2.path == str(tmp_path / "x.db")
    with pytest.raises(ValueError, match="min_size"):
        MonitorConfig.model_validate({"store": "x.db", "postgres": {"min_size": 5, "max_size": 2}})


# --- maintenance silences and the operators' actions (schema 4), both stores ---------------------------


async def test_silences_are_shared_expired_and_kept(opener: Opener) -> None:
    a, b = opener(), opener()  # two monitors on one store
    await a.open()
    await b.open()
    try:
        t = NOW.timestamp()
        s1 = await a.add_silence("server", "enc1-bay1", "alice", "PSU swap", t, t + 3600, t)
        s2 = await a.add_silence("group", "dg1", "bob", "", t + 600, t + 1200, t)
        assert s2.id > s1.id
        seen = await b.list_silences(since=t)
        assert [(s.id, s.kind, s.target, s.author, s.comment) for s in seen] == [
            (s1.id, "server", "enc1-bay1", "alice", "PSU swap"), (s2.id, "group", "dg1", "bob", "")]
        assert seen[0].active(t) and not seen[1].active(t) and seen[1].active(t + 600)
        assert seen[0].public(t)["state"] == "active" and seen[1].public(t)["state"] == "pending"
        expired = await b.expire_silence(s1.id, "carol", t + 60)
        assert expired is not None and expired.ends == t + 60 and expired.expired_by == "carol"
        again = await a.expire_silence(s1.id, "dave", t + 90)  # already over: left as it is
        assert again is not None and again.ends == t + 60 and again.expired_by == "carol"
        assert await a.expire_silence(999_999, "x", t) is None
        pending = await a.expire_silence(s2.id, "carol", t + 60)  # not started yet: starts and ends now
        assert pending is not None and pending.starts == pending.ends == t + 60
        assert await a.list_silences(since=t + 60) == []
        assert len(await a.list_silences()) == 2  # kept, for the record
    finally:
        await a.close()
        await b.close()
    s = opener()  # durable across a reopen
    await s.open()
    try:
        assert [x.expired_by for x in await s.list_silences()] == ["carol", "carol"]
    finally:
        await s.close()


async def test_audit_records_operator_actions(store: Store) -> None:
    first = await store.add_audit("alice", "spare", "enc1-bay1", {"power": "Off"}, NOW.timestamp())
    second = await store.add_audit("bob", "guards_reset", "dg1", {"rate_limit": 2})
    assert second > first
    rows = await store.list_audit(limit=10)
    assert [(r["author"], r["action"], r["target"], r["detail"]) for r in rows] == [
        ("bob", "guards_reset", "dg1", {"rate_limit": 2}), ("alice", "spare", "enc1-bay1", {"power": "Off"})]
    assert rows[1]["time"].startswith("2026-11-27T11:00:00")
    assert len(await store.list_audit(limit=1)) == 1


async def test_a_transaction_left_open_by_a_silent_monitor_releases_its_locks(
        db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A monitor silent between two statements of a transaction (cut off, paused): the server ends the
    transaction after idle_in_transaction_session_timeout (0.5 s here), so another monitor's write to the
    same row goes through instead of waiting for TCP to notice, hours later; the silent monitor's next
    statement is StoreUnavailable (it retries, as after any outage), and its next call works."""
    monkeypatch.setattr("monitor.store.postgres.IDLE_IN_TRANSACTION", 0.5)
    silent = PostgresStore(db, timeout=10.0)
    await silent.open()
    other = await asyncpg.connect(db)
    locked, resume = asyncio.Event(), asyncio.Event()

    async def hold(c: Any) -> None:
        async with c.transaction():
            await c.execute("UPDATE jobs SET owner='silent' WHERE id=$1", job)  # the row lock held
            locked.set()
            await resume.wait()  # silent: no statement, no commit
            await c.execute("UPDATE jobs SET owner='late' WHERE id=$1", job)

    try:
        job = await other.fetchval("INSERT INTO jobs(server, grp, state, trigger, created)"
                                   " VALUES ('s', 'g', 'running', '{}', 0) RETURNING id")
        held = asyncio.create_task(silent._run(hold))
        await asyncio.wait_for(locked.wait(), 10)
        started = time.monotonic()
        await asyncio.wait_for(other.execute("UPDATE jobs SET owner='adopter' WHERE id=$1", job), 10)
        assert time.monotonic() - started < 5, "the lock was released by the server, not by a commit"
        resume.set()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(held, 10)
        assert await other.fetchval("SELECT owner FROM jobs WHERE id=$1", job) == "adopter"
        assert [j.id for j in await silent.list_jobs()] == [job], "the silent monitor's store works again"
    finally:
        await other.close()
        await silent.close()
