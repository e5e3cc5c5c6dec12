"""The SQLite store: numbering, one active job per server, durability across reopen, locks, timers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.model import JobState, StepState
from monitor.store import ActiveJobExists, SqliteStore

NOW = datetime(2026, 11, 27, 11, 0, tzinfo=UTC)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "s.db"))
    await s.open()
    yield s
    await s.close()


async def test_job_numbers_increase_and_survive_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    s = SqliteStore(path)
    await s.open()
    a = await s.create_job("enc1-bay1", "dg1", {"kind": "manual"}, NOW)
    a.state = JobState.COMPLETED
    await s.save_job(a)
    b = await s.create_job("enc1-bay2", "dg1", {"kind": "manual"}, NOW)
    await s.close()
    s2 = SqliteStore(path)
    await s2.open()
    c = await s2.create_job("enc1-bay3", "dg1", {"kind": "manual"}, NOW)
    await s2.close()
    assert a.id < b.id < c.id


async def test_one_active_job_per_server(store: SqliteStore) -> None:
    job = await store.create_job("enc1-bay1", "dg1", {"kind": "manual"}, NOW)
    with pytest.raises(ActiveJobExists) as err:
        await store.create_job("enc1-bay1", "dg1", {"kind": "manual"}, NOW)
    assert err.value.job == job.id
    job.state = JobState.FAILED
    await store.save_job(job)
    again = await store.create_job("enc1-bay1", "dg1", {"kind": "manual"}, NOW)
    assert again.id > job.id


async def test_save_and_read_back_every_field(store: SqliteStore) -> None:
    job = await store.create_job("enc1-bay1", "dg1", {"kind": "rule", "rule": "r1"}, NOW)
    job.state = JobState.RUNNING
    job.profile, job.spare = "p1", "enc1-bay9"
    job.context = {"move": {"spare_cleared": True}}
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


async def test_list_filters_newest_first(store: SqliteStore) -> None:
    ids = [(await store.create_job(f"s{i}", "dg1", {}, NOW)).id for i in range(5)]
    assert [j.id for j in await store.list_jobs(limit=3)] == ids[::-1][:3]
    assert [j.id for j in await store.list_jobs(server="s2")] == [ids[2]]
    assert len(await store.list_jobs(state="queued")) == 5
    assert await store.list_jobs(state="completed") == []


async def running(store: SqliteStore, server: str, group: str = "dg1") -> int:
    """A running job whose lock_group step runs (it waits for or holds its group)."""
    job = await store.create_job(server, group, {}, NOW)
    job.state = JobState.RUNNING
    job.step("lock_group").state = StepState.RUNNING
    await store.save_job(job)
    return job.id


async def test_group_lock_rows(store: SqliteStore) -> None:
    a, b = await running(store, "s1"), await running(store, "s2")
    assert await store.lock_group("dg1", a, 0.0) is None
    assert await store.lock_group("dg1", a, 0.0) is None  # re-entrant for its holder
    assert await store.lock_group("dg1", b, 0.0) == a
    assert await store.group_locks() == {"dg1": a}
    assert not await store.unlock_group("dg1", b)
    assert await store.unlock_group("dg1", a)
    assert await store.group_locks() == {}


async def test_group_lock_goes_to_the_lowest_waiting_job_and_stale_rows_are_replaced(
        store: SqliteStore) -> None:
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


async def test_ownership_adoption_and_dedupe(store: SqliteStore) -> None:
    from monitor.store import LostOwnership

    await store.heartbeat("m1", "h1", 100.0, 15.0)
    await store.heartbeat("m2", "h2", 100.0, 15.0)
    job = await store.create_job("s1", "dg1", {}, NOW, owner="m1")
    assert await store.adopt_jobs("m2", 110.0) == []  # m1's lease holds
    (adopted,) = await store.adopt_jobs("m2", 116.0)  # m1's lease ran out
    assert adopted.id == job.id and adopted.owner == "m2"
    with pytest.raises(LostOwnership):
        await store.save_job(job)  # m1 may not act on it any more
    assert [j.id for j in await store.adopt_jobs("m2", 200.0)] == [job.id]  # own jobs after a restart
    assert await store.dedupe("k", "m1", 100.0, 60.0) is None
    assert await store.dedupe("k", "m2", 130.0, 60.0) == "m1"
    assert await store.dedupe("k", "m2", 161.0, 60.0) is None
    assert {m["instance"] for m in await store.members()} == {"m1", "m2"}


async def test_timers_fire_on_one_monitor(store: SqliteStore) -> None:
    await store.add_timer("rediscovery", 1, "s9", 100.0)
    assert await store.claim_due_timers("m1", 99.0, 30.0) == []
    (t,) = await store.claim_due_timers("m1", 100.0, 30.0)
    assert await store.claim_due_timers("m2", 110.0, 30.0) == []  # held by m1
    assert [x.id for x in await store.claim_due_timers("m2", 131.0, 30.0)] == [t.id]  # m1 died
    await store.update_timer(t.id, state="done")
    assert await store.claim_due_timers("m1", 500.0, 30.0) == []


async def test_schema_1_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    from monitor.store import _SCHEMA

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
        assert c.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == "2"


async def test_timers_are_idempotent_per_job(store: SqliteStore) -> None:
    t1 = await store.add_timer("rediscovery", 7, "enc1-bay9", 100.0)
    t2 = await store.add_timer("rediscovery", 7, "enc1-bay9", 999.0)
    assert t1 == t2
    await store.update_timer(t1.id, state="scheduled", due=200.0, attempts=1, detail="retry")
    (t,) = await store.scheduled_timers()
    assert (t.due, t.attempts, t.detail) == (200.0, 1, "retry")
    await store.update_timer(t1.id, state="done", detail="found")
    assert await store.scheduled_timers() == []


async def test_inventory_state(store: SqliteStore) -> None:
    await store.set_states([("profile", "p1", "enc1-bay9"), ("spare", "enc1-bay9", False)])
    assert await store.get_state("profile") == {"p1": "enc1-bay9"}
    await store.set_state("profile", "p1", None)
    assert await store.get_state("profile") == {}


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    import sqlite3

    from monitor.store import StoreError

    path = tmp_path / "s.db"
    s = SqliteStore(str(path))
    await s.open()
    await s.close()
    with sqlite3.connect(path) as c:
        c.execute("UPDATE meta SET value='99' WHERE key='schema'")
    s2 = SqliteStore(str(path))
    with pytest.raises(StoreError, match="newer"):
        await s2.open()
    await s2.close()
