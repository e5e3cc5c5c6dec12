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


async def test_group_lock_rows(store: SqliteStore) -> None:
    assert await store.lock_group("dg1", 1, 0.0) is None
    assert await store.lock_group("dg1", 1, 0.0) is None  # re-entrant for its holder
    assert await store.lock_group("dg1", 2, 0.0) == 1
    assert await store.group_locks() == {"dg1": 1}
    assert not await store.unlock_group("dg1", 2)
    assert await store.unlock_group("dg1", 1)
    assert await store.group_locks() == {}


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
