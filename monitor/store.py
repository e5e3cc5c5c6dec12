"""The durable store: jobs and their steps, group locks, durable timers, and static inventory state.

SQLite is the embedded default. Every write is its own committed transaction, made before the action it
describes (write-ahead). All SQLite work runs on one dedicated thread, so the event loop never blocks on
disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from monitor.model import STEPS, Job, JobState, Step, StepState

T = TypeVar("T")

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    server TEXT NOT NULL,
    grp TEXT NOT NULL,
    state TEXT NOT NULL,
    trigger TEXT NOT NULL,
    profile TEXT,
    spare TEXT,
    error TEXT,
    created REAL NOT NULL,
    finished REAL,
    context TEXT NOT NULL DEFAULT '{}',
    notes TEXT NOT NULL DEFAULT '[]',
    rediscovery TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS one_active_job_per_server
    ON jobs(server) WHERE state IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state);
CREATE TABLE IF NOT EXISTS steps (
    job INTEGER NOT NULL REFERENCES jobs(id),
    position INTEGER NOT NULL,
    step TEXT NOT NULL,
    state TEXT NOT NULL,
    started REAL,
    finished REAL,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job, position)
);
CREATE TABLE IF NOT EXISTS group_locks (
    grp TEXT PRIMARY KEY,
    job INTEGER NOT NULL,
    acquired REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS timers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    job INTEGER NOT NULL,
    server TEXT NOT NULL,
    due REAL NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    detail TEXT NOT NULL DEFAULT '',
    UNIQUE (kind, job)
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    server TEXT,
    action TEXT NOT NULL,
    rule TEXT,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_server ON decisions(server, id);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS inventory_state (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
"""


class StoreError(Exception):
    """The store could not do what was asked."""


class ActiveJobExists(StoreError):
    def __init__(self, server: str, job: int) -> None:
        super().__init__(f"server {server} already has active job {job}")
        self.server = server
        self.job = job


@dataclass(frozen=True, slots=True)
class Timer:
    id: int
    kind: str
    job: int
    server: str
    due: float
    state: str
    attempts: int
    detail: str


def _ts(t: datetime | None) -> float | None:
    return t.timestamp() if t else None


def _dt(v: float | None) -> datetime | None:
    return datetime.fromtimestamp(v, UTC) if v is not None else None


class SqliteStore:
    """The embedded store. Open with `await store.open()`, close with `await store.close()`."""

    def __init__(self, path: str, *, synchronous: Literal["full", "normal"] = "full") -> None:
        self.path = path
        self._sync = synchronous
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None

    # --- plumbing ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, conn)

    async def open(self) -> None:
        def _open() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._sync.upper()}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta(key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                conn.close()
                raise StoreError(f"store schema {row[0]} is newer than this program ({SCHEMA_VERSION})")
            return conn

        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._executor, _open)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)

    async def ping(self) -> None:
        await self._run(lambda c: c.execute("SELECT 1").fetchone())

    # --- jobs ---------------------------------------------------------------------------------

    async def create_job(self, server: str, group: str, trigger: dict[str, Any], now: datetime) -> Job:
        """Create a queued job; ActiveJobExists when the server already has an active one."""

        def _create(c: sqlite3.Connection) -> int:
            try:
                c.execute("BEGIN IMMEDIATE")
                cur = c.execute(
                    "INSERT INTO jobs(server, grp, state, trigger, created) VALUES (?, ?, 'queued', ?, ?)",
                    (server, group, json.dumps(trigger), now.timestamp()),
                )
                job_id = int(cur.lastrowid or 0)
                c.executemany(
                    "INSERT INTO steps(job, position, step, state) VALUES (?, ?, ?, 'pending')",
                    [(job_id, i, name) for i, name in enumerate(STEPS)],
                )
                c.execute("COMMIT")
                return job_id
            except sqlite3.IntegrityError:
                c.execute("ROLLBACK")
                row = c.execute(
                    "SELECT id FROM jobs WHERE server=? AND state IN ('queued','running')", (server,)
                ).fetchone()
                raise ActiveJobExists(server, int(row[0]) if row else 0) from None
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise

        job_id = await self._run(_create)
        return Job(
            id=job_id, server=server, group=group, state=JobState.QUEUED, trigger=trigger, created=now,
            steps=[Step(name) for name in STEPS],
        )

    async def save_job(self, job: Job) -> None:
        """Write the job and all its steps in one committed transaction."""
        row = (
            job.state.value, job.profile, job.spare, job.error, _ts(job.finished),
            json.dumps(job.context), json.dumps(job.notes),
            json.dumps(job.rediscovery) if job.rediscovery is not None else None, job.id,
        )
        steps = [
            (s.state.value, _ts(s.started), _ts(s.finished), s.detail, job.id, i)
            for i, s in enumerate(job.steps)
        ]

        def _save(c: sqlite3.Connection) -> None:
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute(
                    "UPDATE jobs SET state=?, profile=?, spare=?, error=?, finished=?, context=?, notes=?,"
                    " rediscovery=? WHERE id=?",
                    row,
                )
                c.executemany(
                    "UPDATE steps SET state=?, started=?, finished=?, detail=? WHERE job=? AND position=?",
                    steps,
                )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

        await self._run(_save)

    @staticmethod
    def _job_from(c: sqlite3.Connection, r: sqlite3.Row) -> Job:
        steps = [
            Step(s["step"], StepState(s["state"]), _dt(s["started"]), _dt(s["finished"]), s["detail"])
            for s in c.execute("SELECT * FROM steps WHERE job=? ORDER BY position", (r["id"],))
        ]
        return Job(
            id=r["id"], server=r["server"], group=r["grp"], state=JobState(r["state"]),
            trigger=json.loads(r["trigger"]), created=_dt(r["created"]) or datetime.now(UTC),
            steps=steps, profile=r["profile"], spare=r["spare"], error=r["error"],
            finished=_dt(r["finished"]), context=json.loads(r["context"]), notes=json.loads(r["notes"]),
            rediscovery=json.loads(r["rediscovery"]) if r["rediscovery"] else None,
        )

    async def get_job(self, job_id: int) -> Job | None:
        def _get(c: sqlite3.Connection) -> Job | None:
            r = c.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            return self._job_from(c, r) if r else None

        return await self._run(_get)

    async def list_jobs(
        self, *, state: str | None = None, server: str | None = None, limit: int = 100
    ) -> list[Job]:
        def _list(c: sqlite3.Connection) -> list[Job]:
            where, args = [], []
            if state:
                where.append("state=?")
                args.append(state)
            if server:
                where.append("server=?")
                args.append(server)
            sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
            sql += " ORDER BY id DESC LIMIT ?"
            return [self._job_from(c, r) for r in c.execute(sql, (*args, limit)).fetchall()]

        return await self._run(_list)

    async def active_jobs(self) -> list[Job]:
        def _active(c: sqlite3.Connection) -> list[Job]:
            rows = c.execute(
                "SELECT * FROM jobs WHERE state IN ('queued','running') ORDER BY id"
            ).fetchall()
            return [self._job_from(c, r) for r in rows]

        return await self._run(_active)

    async def active_by_server(self) -> dict[str, int]:
        def _q(c: sqlite3.Connection) -> dict[str, int]:
            rows = c.execute("SELECT server, id FROM jobs WHERE state IN ('queued','running')")
            return {r[0]: int(r[1]) for r in rows}

        return await self._run(_q)

    async def job_counts(self) -> dict[str, int]:
        def _q(c: sqlite3.Connection) -> dict[str, int]:
            return {r[0]: int(r[1]) for r in c.execute("SELECT state, count(*) FROM jobs GROUP BY state")}

        return await self._run(_q)

    # --- group locks ---------------------------------------------------------------------------

    async def lock_group(self, group: str, job: int, now: float) -> int | None:
        """Record that `job` holds `group`. Returns None on success, or the job that holds it."""

        def _lock(c: sqlite3.Connection) -> int | None:
            c.execute("BEGIN IMMEDIATE")
            try:
                row = c.execute("SELECT job FROM group_locks WHERE grp=?", (group,)).fetchone()
                if row is not None and int(row[0]) != job:
                    c.execute("COMMIT")
                    return int(row[0])
                if row is None:
                    c.execute(
                        "INSERT INTO group_locks(grp, job, acquired) VALUES (?, ?, ?)", (group, job, now)
                    )
                c.execute("COMMIT")
                return None
            except BaseException:
                c.execute("ROLLBACK")
                raise

        return await self._run(_lock)

    async def unlock_group(self, group: str, job: int) -> bool:
        def _unlock(c: sqlite3.Connection) -> bool:
            cur = c.execute("DELETE FROM group_locks WHERE grp=? AND job=?", (group, job))
            return cur.rowcount > 0

        return await self._run(_unlock)

    async def group_locks(self) -> dict[str, int]:
        def _q(c: sqlite3.Connection) -> dict[str, int]:
            return {r[0]: int(r[1]) for r in c.execute("SELECT grp, job FROM group_locks")}

        return await self._run(_q)

    # --- durable timers --------------------------------------------------------------------------

    async def add_timer(self, kind: str, job: int, server: str, due: float) -> Timer:
        """Schedule a timer once per (kind, job); scheduling it again returns the existing one."""

        def _add(c: sqlite3.Connection) -> Timer:
            c.execute(
                "INSERT OR IGNORE INTO timers(kind, job, server, due, state)"
                " VALUES (?, ?, ?, ?, 'scheduled')",
                (kind, job, server, due),
            )
            r = c.execute("SELECT * FROM timers WHERE kind=? AND job=?", (kind, job)).fetchone()
            return Timer(**dict(r))

        return await self._run(_add)

    async def scheduled_timers(self) -> list[Timer]:
        def _q(c: sqlite3.Connection) -> list[Timer]:
            rows = c.execute("SELECT * FROM timers WHERE state='scheduled' ORDER BY due, id")
            return [Timer(**dict(r)) for r in rows]

        return await self._run(_q)

    async def update_timer(
        self, timer_id: int, *, state: str, due: float | None = None, attempts: int | None = None,
        detail: str = "",
    ) -> None:
        def _u(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE timers SET state=?, due=coalesce(?, due), attempts=coalesce(?, attempts), detail=?"
                " WHERE id=?",
                (state, due, attempts, detail, timer_id),
            )

        await self._run(_u)

    # --- decisions -----------------------------------------------------------------------------

    async def add_decisions(self, rows: list[tuple[float, str | None, str, str | None, dict[str, Any]]],
                            keep: int = 100_000) -> list[int]:
        """Store decisions (time, server, action, rule, body) in one transaction; return their ids.
        Only the newest `keep` are kept."""

        def _add(c: sqlite3.Connection) -> list[int]:
            c.execute("BEGIN IMMEDIATE")
            try:
                ids = []
                for t, server, action, rule, body in rows:
                    cur = c.execute(
                        "INSERT INTO decisions(time, server, action, rule, body) VALUES (?, ?, ?, ?, ?)",
                        (t, server, action, rule, json.dumps(body)))
                    ids.append(int(cur.lastrowid or 0))
                if ids and ids[-1] % 1000 < len(ids):
                    c.execute("DELETE FROM decisions WHERE id <= ?", (ids[-1] - keep,))
                c.execute("COMMIT")
                return ids
            except BaseException:
                c.execute("ROLLBACK")
                raise

        return await self._run(_add)

    async def list_decisions(self, *, server: str | None = None, action: str | None = None,
                             limit: int = 100) -> list[dict[str, Any]]:
        def _q(c: sqlite3.Connection) -> list[dict[str, Any]]:
            where, args = [], []
            if server:
                where.append("server=?")
                args.append(server)
            if action:
                where.append("action=?")
                args.append(action)
            sql = "SELECT id, body FROM decisions" + (" WHERE " + " AND ".join(where) if where else "")
            rows = c.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
            return [{**json.loads(r[1]), "id": int(r[0])} for r in rows]

        return await self._run(_q)

    # --- small durable values (rule state snapshot, pause switch) --------------------------------

    async def get_value(self, key: str) -> Any:
        def _q(c: sqlite3.Connection) -> Any:
            row = c.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
            return json.loads(row[0]) if row else None

        return await self._run(_q)

    async def set_value(self, key: str, value: Any) -> None:
        def _s(c: sqlite3.Connection) -> None:
            if value is None:
                c.execute("DELETE FROM kv WHERE key=?", (key,))
            else:
                c.execute("INSERT INTO kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                          "value=excluded.value", (key, json.dumps(value)))

        await self._run(_s)

    # --- state of the static inventory ---------------------------------------------------------

    async def get_state(self, kind: str) -> dict[str, Any]:
        def _q(c: sqlite3.Connection) -> dict[str, Any]:
            rows = c.execute("SELECT key, value FROM inventory_state WHERE kind=?", (kind,))
            return {r[0]: json.loads(r[1]) for r in rows}

        return await self._run(_q)

    async def set_state(self, kind: str, key: str, value: Any) -> None:
        await self.set_states([(kind, key, value)])

    async def set_states(self, changes: list[tuple[str, str, Any]]) -> None:
        """Several state changes in one transaction (all or none)."""

        def _s(c: sqlite3.Connection) -> None:
            c.execute("BEGIN IMMEDIATE")
            try:
                for kind, key, value in changes:
                    if value is None:
                        c.execute("DELETE FROM inventory_state WHERE kind=? AND key=?", (kind, key))
                    else:
                        c.execute(
                            "INSERT INTO inventory_state(kind, key, value) VALUES (?, ?, ?)"
                            " ON CONFLICT(kind, key) DO UPDATE SET value=excluded.value",
                            (kind, key, json.dumps(value)),
                        )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

        await self._run(_s)
