"""The durable store: jobs and their steps, group locks, durable timers, and static inventory state.

SQLite is the embedded default. Every write is one committed transaction, made before the action it
describes (write-ahead); `save_job` also carries the job's group lock, unlock and rediscovery timer
(`JobWrites`) in the job row's own transaction. `commits` counts the committed write transactions per
method. All SQLite work runs on one dedicated thread, so the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Literal, TypeVar

from monitor.core.errors import ActiveJobExists, LostOwnership, MembershipLost, StoreError, StoreUnavailable
from monitor.core.model import STEPS, Job
from monitor.store.rows import (
    SCHEMA_VERSION,
    SILENCE_COLS,
    JobWrites,
    JoinResult,
    Saved,
    SilenceRow,
    Timer,
    audit_from,
    job_from,
    member_row,
    owner_entry,
    silence_from,
    sqlite_param,
    step_from,
    ts,
    where,
)

T = TypeVar("T")


# Versioned migrations: each takes the store from version N-1 to N. Version 1 is _SCHEMA itself.
_MIGRATIONS: dict[int, list[str]] = {
    2: [
        "ALTER TABLE jobs ADD COLUMN owner TEXT",
        "ALTER TABLE timers ADD COLUMN claimed_by TEXT",
        "ALTER TABLE timers ADD COLUMN claim_until REAL",
        """CREATE TABLE IF NOT EXISTS members (
            instance TEXT PRIMARY KEY, address TEXT NOT NULL DEFAULT '', started REAL NOT NULL,
            lease_until REAL NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS dedupe (
            key TEXT PRIMARY KEY, instance TEXT NOT NULL, until REAL NOT NULL)""",
    ],
    3: [
        "ALTER TABLE jobs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN owner_token TEXT",
        "ALTER TABLE members ADD COLUMN incarnation TEXT NOT NULL DEFAULT ''",
        """CREATE TABLE IF NOT EXISTS job_owners (
            job INTEGER NOT NULL, epoch INTEGER NOT NULL, owner TEXT, token TEXT, since REAL NOT NULL,
            PRIMARY KEY (job, epoch))""",
    ],
    4: [
        """CREATE TABLE IF NOT EXISTS silences (
            id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, target TEXT NOT NULL,
            author TEXT NOT NULL, comment TEXT NOT NULL DEFAULT '', starts REAL NOT NULL, ends REAL NOT NULL,
            created REAL NOT NULL, expired_by TEXT)""",
        "CREATE INDEX IF NOT EXISTS silences_by_end ON silences(ends)",
        """CREATE TABLE IF NOT EXISTS audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, author TEXT NOT NULL,
            action TEXT NOT NULL, target TEXT NOT NULL DEFAULT '', body TEXT NOT NULL)""",
    ],
}

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


class SqliteStore:
    """The embedded store. Open with `await store.open()`, close with `await store.close()`."""

    def __init__(self, path: str, *, synchronous: Literal["full", "normal"] = "full",
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._sync = synchronous
        self._clock = clock
        """The store's clock (one host: the monitors sharing a SQLite file share its clock)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self.commits: Counter[str] = Counter()
        """Committed write transactions, per method (a write that changed nothing is not counted)."""

    # --- plumbing ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T], commit: str = "") -> T:
        """Run `fn` on the store's thread; `commit`: the method's name, counted in `commits` once `fn`
        returned (a write transaction committed)."""
        conn = self._conn
        if conn is None:
            raise StoreError("store is not open")
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, fn, conn)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"store {self.path}: {exc}") from exc
        if commit:
            self.commits[commit] += 1
        return result

    async def open(self) -> None:
        def _open() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._sync.upper()}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            # One write transaction for the schema and its migrations: several monitors opening a new
            # file at once take turns (busy_timeout) and each sees the version the previous one left.
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', '1')")
                version = int(conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0])
                if version > SCHEMA_VERSION:
                    raise StoreError(f"store schema {version} is newer than this program ({SCHEMA_VERSION})")
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for sql in _MIGRATIONS[target]:
                        conn.execute(sql)
                    conn.execute("UPDATE meta SET value=? WHERE key='schema'", (str(target),))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                conn.close()
                raise
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

    async def clock(self) -> float:
        """The store's clock (seconds since the epoch): leases, claims and due times are in it."""
        return self._clock()

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    # --- jobs ---------------------------------------------------------------------------------

    async def create_job(self, server: str, group: str, trigger: dict[str, Any], now: datetime,
                         owner: str | None = None, token: str | None = None) -> Job:
        """Create a queued job owned by `owner` (incarnation `token`) at epoch 1; ActiveJobExists when
        the server has an active one."""
        since = self._clock()

        def _create(c: sqlite3.Connection) -> int:
            try:
                c.execute("BEGIN IMMEDIATE")
                cur = c.execute(
                    "INSERT INTO jobs(server, grp, state, trigger, created, owner, epoch, owner_token)"
                    " VALUES (?, ?, 'queued', ?, ?, ?, 1, ?)",
                    (server, group, json.dumps(trigger), now.timestamp(), owner, token),
                )
                job_id = int(cur.lastrowid or 0)
                c.executemany(
                    "INSERT INTO steps(job, position, step, state) VALUES (?, ?, ?, 'pending')",
                    [(job_id, i, name) for i, name in enumerate(STEPS)],
                )
                c.execute("INSERT INTO job_owners(job, epoch, owner, token, since) VALUES (?, 1, ?, ?, ?)",
                          (job_id, owner, token, since))
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

        job_id = await self._run(_create, "create_job")
        return Job.queued(job_id, server, group, trigger, now, owner, token, since)

    async def save_job(self, job: Job, also: JobWrites | None = None) -> Saved:
        """Write the job and all its steps in one committed transaction — only while `job.epoch` is still
        the job's epoch (LostOwnership otherwise: another monitor, or a later start of this one, took the
        job over; nothing of `also` is written then). `also`: the group lock, unlock and timer written in
        the same transaction, after the row (see JobWrites)."""
        row = (
            job.state.value, job.profile, job.spare, job.error, ts(job.finished),
            job.context.model_dump_json(), json.dumps(job.notes),
            json.dumps(job.rediscovery) if job.rediscovery is not None else None, job.id,
        )
        steps = [
            (s.state.value, ts(s.started), ts(s.finished), s.detail, job.id, i)
            for i, s in enumerate(job.steps)
        ]
        now = self._clock()

        def _save(c: sqlite3.Connection) -> Saved:
            c.execute("BEGIN IMMEDIATE")
            try:
                cur = c.execute(
                    "UPDATE jobs SET state=?, profile=?, spare=?, error=?, finished=?, context=?, notes=?,"
                    " rediscovery=? WHERE id=? AND owner IS ? AND epoch=?",
                    (*row, job.owner, job.epoch),
                )
                if cur.rowcount == 0:
                    holder = c.execute("SELECT owner FROM jobs WHERE id=?", (job.id,)).fetchone()
                    c.execute("ROLLBACK")
                    raise LostOwnership(job.id, holder[0] if holder else None)
                c.executemany(
                    "UPDATE steps SET state=?, started=?, finished=?, detail=? WHERE job=? AND position=?",
                    steps,
                )
                saved = Saved()
                if also is not None:
                    holder_ = self._lock_in(c, also.lock, job.id, now) if also.lock else None
                    unlocked = self._unlock_in(c, also.unlock, job.id) if also.unlock else False
                    timer = (self._add_timer_in(c, also.timer.kind, job.id, also.timer.server, also.timer.due)
                             if also.timer else None)
                    saved = Saved(holder_, unlocked, timer)
                c.execute("COMMIT")
                return saved
            except LostOwnership:
                raise
            except BaseException:
                c.execute("ROLLBACK")
                raise

        return await self._run(_save, "save_job")

    @staticmethod
    def _job_from(c: sqlite3.Connection, r: sqlite3.Row) -> Job:
        steps = [step_from(s) for s in c.execute("SELECT * FROM steps WHERE job=? ORDER BY position",
                                                 (r["id"],))]
        owners = [
            owner_entry(o["epoch"], o["owner"], o["since"])
            for o in c.execute("SELECT epoch, owner, since FROM job_owners WHERE job=? ORDER BY epoch",
                               (r["id"],))
        ]
        return job_from(r, steps, owners)

    async def get_job(self, job_id: int) -> Job | None:
        def _get(c: sqlite3.Connection) -> Job | None:
            r = c.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            return self._job_from(c, r) if r else None

        return await self._run(_get)

    async def list_jobs(
        self, *, state: str | None = None, server: str | None = None, limit: int = 100
    ) -> list[Job]:
        def _list(c: sqlite3.Connection) -> list[Job]:
            clause, args = where({"state": state, "server": server}, sqlite_param)
            sql = "SELECT * FROM jobs" + clause + " ORDER BY id DESC LIMIT ?"
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

    async def lock_group(self, group: str, job: int, now: float | None = None) -> int | None:
        """Take `group` for `job`. Returns None on success, or the job that holds it or goes first.

        Fair across monitors: the group goes to the lowest-numbered active job of the group that is
        waiting for it (its lock_group step running). A row left by a job that is no longer active is
        stale and replaced."""
        at = self._now(now)

        def _lock(c: sqlite3.Connection) -> tuple[int | None, bool]:
            c.execute("BEGIN IMMEDIATE")
            try:
                before = c.total_changes
                holder = self._lock_in(c, group, job, at)
                wrote = c.total_changes != before
                c.execute("COMMIT")
                return holder, wrote
            except BaseException:
                c.execute("ROLLBACK")
                raise

        holder, wrote = await self._run(_lock)
        if wrote:
            self.commits["lock_group"] += 1
        return holder

    @staticmethod
    def _lock_in(c: sqlite3.Connection, group: str, job: int, now: float) -> int | None:
        """lock_group's decision and write, inside the caller's transaction."""
        row = c.execute(
            "SELECT l.job FROM group_locks l JOIN jobs j ON j.id = l.job"
            " WHERE l.grp=? AND j.state IN ('queued','running')", (group,)).fetchone()
        if row is not None and int(row[0]) != job:
            return int(row[0])
        if row is not None:
            return None  # held by this job already
        first = c.execute(
            "SELECT min(j.id) FROM jobs j JOIN steps s ON s.job = j.id AND s.step = 'lock_group'"
            " WHERE j.grp=? AND j.state='running' AND s.state='running'", (group,)).fetchone()
        if first is not None and first[0] is not None and int(first[0]) < job:
            return int(first[0])
        c.execute(
            "INSERT INTO group_locks(grp, job, acquired) VALUES (?, ?, ?)"
            " ON CONFLICT(grp) DO UPDATE SET job=excluded.job, acquired=excluded.acquired",
            (group, job, now),
        )
        return None

    @staticmethod
    def _unlock_in(c: sqlite3.Connection, group: str, job: int) -> bool:
        return c.execute("DELETE FROM group_locks WHERE grp=? AND job=?", (group, job)).rowcount > 0

    async def unlock_group(self, group: str, job: int) -> bool:
        released = await self._run(lambda c: self._unlock_in(c, group, job))
        if released:
            self.commits["unlock_group"] += 1
        return released

    async def group_locks(self) -> dict[str, int]:
        def _q(c: sqlite3.Connection) -> dict[str, int]:
            return {r[0]: int(r[1]) for r in c.execute("SELECT grp, job FROM group_locks")}

        return await self._run(_q)

    async def release_stale_locks(self) -> dict[str, int]:
        """Release, in one transaction, every group lock held by a job that is no longer active (left
        by a crash in a job's finish); returns them. A lock of an active job, this monitor's or
        another's, is never touched."""

        def _release(c: sqlite3.Connection) -> dict[str, int]:
            c.execute("BEGIN IMMEDIATE")
            try:
                rows = c.execute("SELECT grp, job FROM group_locks WHERE job NOT IN"
                                 " (SELECT id FROM jobs WHERE state IN ('queued','running'))").fetchall()
                c.executemany("DELETE FROM group_locks WHERE grp=? AND job=?", [(r[0], r[1]) for r in rows])
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return {r[0]: int(r[1]) for r in rows}

        done = await self._run(_release)
        if done:  # a transaction that wrote something
            self.commits["release_stale_locks"] += 1
        return done

    # --- durable timers --------------------------------------------------------------------------

    async def add_timer(self, kind: str, job: int, server: str, due: float) -> Timer:
        """Schedule a timer once per (kind, job); scheduling it again returns the existing one."""

        def _add(c: sqlite3.Connection) -> tuple[Timer, bool]:
            before = c.total_changes
            timer = self._add_timer_in(c, kind, job, server, due)
            return timer, c.total_changes != before

        timer, wrote = await self._run(_add)
        if wrote:
            self.commits["add_timer"] += 1
        return timer

    @classmethod
    def _add_timer_in(cls, c: sqlite3.Connection, kind: str, job: int, server: str, due: float) -> Timer:
        c.execute("INSERT OR IGNORE INTO timers(kind, job, server, due, state)"
                  " VALUES (?, ?, ?, ?, 'scheduled')", (kind, job, server, due))
        r = c.execute("SELECT id FROM timers WHERE kind=? AND job=?", (kind, job)).fetchone()
        timer = cls._timer(c, int(r[0]))
        assert timer is not None
        return timer

    async def claim_due_timers(self, instance: str, now: float | None, hold: float) -> list[Timer]:
        """Claim the due timers nobody holds (or whose claim ran out): each fires on one monitor.
        `now`: None for the store's clock."""
        now = self._now(now)

        def _claim(c: sqlite3.Connection) -> list[Timer]:
            c.execute("BEGIN IMMEDIATE")
            try:
                rows = c.execute(
                    "SELECT id FROM timers WHERE state='scheduled' AND due<=?"
                    " AND (claim_until IS NULL OR claim_until<?) ORDER BY due, id", (now, now)).fetchall()
                ids = [int(r[0]) for r in rows]
                c.executemany("UPDATE timers SET claimed_by=?, claim_until=? WHERE id=?",
                              [(instance, now + hold, i) for i in ids])
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return [t for t in (self._timer(c, i) for i in ids) if t is not None]

        done = await self._run(_claim)
        if done:  # a transaction that wrote something
            self.commits["claim_due_timers"] += 1
        return done

    @staticmethod
    def _timer(c: sqlite3.Connection, timer_id: int) -> Timer | None:
        r = c.execute("SELECT id, kind, job, server, due, state, attempts, detail FROM timers WHERE id=?",
                      (timer_id,)).fetchone()
        return Timer(**dict(r)) if r else None

    async def scheduled_timers(self) -> list[Timer]:
        def _q(c: sqlite3.Connection) -> list[Timer]:
            rows = c.execute("SELECT id, kind, job, server, due, state, attempts, detail FROM timers"
                             " WHERE state='scheduled' ORDER BY due, id")
            return [Timer(**dict(r)) for r in rows]

        return await self._run(_q)

    async def update_timer(
        self, timer_id: int, *, state: str, due: float | None = None, attempts: int | None = None,
        detail: str = "", claimed_by: str | None = None,
    ) -> bool:
        def _u(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE timers SET state=?, due=coalesce(?, due), attempts=coalesce(?, attempts), detail=?,"
                " claimed_by=NULL, claim_until=NULL WHERE id=? AND (? IS NULL OR claimed_by=?)",
                (state, due, attempts, detail, timer_id, claimed_by, claimed_by),
            )
            return cur.rowcount > 0

        return await self._run(_u, "update_timer")

    # --- several monitors: membership, adoption, de-duplication ------------------------------------

    async def join(self, instance: str, token: str, address: str, lease: float, grace: float,
                   now: float | None = None) -> JoinResult:
        """Take the name `instance` for the process `token`: when nobody has it, it is `token`'s
        already, or its holder's lease plus `grace` ran out (a crashed predecessor). Otherwise the
        answer says who holds it and for how long; the caller waits and asks again (a holder that keeps
        renewing is a second live monitor with the same name)."""
        now = self._now(now)

        def _join(c: sqlite3.Connection) -> JoinResult:
            c.execute("BEGIN IMMEDIATE")
            try:
                row = c.execute("SELECT incarnation, lease_until FROM members WHERE instance=?",
                                (instance,)).fetchone()
                if row is not None and row[0] != token and float(row[1]) + grace > now:
                    c.execute("COMMIT")
                    return JoinResult(False, str(row[0]), float(row[1]), float(row[1]) + grace - now)
                c.execute("INSERT INTO members(instance, address, started, lease_until, incarnation)"
                          " VALUES (?, ?, ?, ?, ?) ON CONFLICT(instance) DO UPDATE SET"
                          " address=excluded.address,"
                          " started=excluded.started, lease_until=excluded.lease_until,"
                          " incarnation=excluded.incarnation", (instance, address, now, now + lease, token))
                c.execute("COMMIT")
                return JoinResult(True)
            except BaseException:
                c.execute("ROLLBACK")
                raise

        return await self._run(_join, "join")

    async def heartbeat(self, instance: str, token: str, address: str, lease: float,
                        now: float | None = None) -> bool:
        """Renew this process's membership lease (its jobs are its own while the lease holds); whether
        the lease had already ended (its jobs may have been taken over meanwhile). MembershipLost when
        another process holds the name now."""
        now = self._now(now)

        def _hb(c: sqlite3.Connection) -> bool:
            c.execute("BEGIN IMMEDIATE")
            try:
                row = c.execute("SELECT lease_until FROM members WHERE instance=? AND incarnation=?",
                                (instance, token)).fetchone()
                if row is None:
                    raise MembershipLost(f"instance name {instance} is held by another process")
                c.execute("UPDATE members SET address=?, lease_until=? WHERE instance=? AND incarnation=?",
                          (address, now + lease, instance, token))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return float(row[0]) <= now

        return await self._run(_hb, "heartbeat")

    async def leave(self, instance: str, token: str, grace: float = 0.0, now: float | None = None) -> None:
        """A stop: the lease ends now. `grace`: how far back to date it, so that the others need not
        wait the fence grace (a clean stop has no action in flight)."""
        now = self._now(now)
        await self._run(lambda c: c.execute(
            "UPDATE members SET lease_until=? WHERE instance=? AND incarnation=?",
            (now - grace, instance, token)), "leave")

    async def members(self, now: float | None = None) -> list[dict[str, Any]]:
        """The monitors that joined, with `lease_left` (seconds of the store's clock; None when over)."""
        now = self._now(now)

        def _q(c: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = c.execute("SELECT instance, address, incarnation, started, lease_until FROM members"
                             " ORDER BY instance")
            return [member_row(dict(r), now) for r in rows]

        return await self._run(_q)

    async def adopt_jobs(self, instance: str, token: str, grace: float,
                         now: float | None = None) -> list[Job]:
        """Take over the active jobs whose owning process's lease ended more than `grace` seconds ago
        (or that name no live process): each job's epoch grows by one and the new ownership is recorded.
        Returns the jobs now owned by `token`, which it must run (or fail safe)."""
        now = self._now(now)

        def _adopt(c: sqlite3.Connection) -> list[Job]:
            c.execute("BEGIN IMMEDIATE")
            try:
                rows = c.execute(
                    "SELECT id, epoch FROM jobs WHERE state IN ('queued','running')"
                    " AND (owner_token IS NULL OR owner_token <> ?) AND (owner_token IS NULL OR owner_token"
                    " NOT IN (SELECT incarnation FROM members WHERE lease_until + ? > ?)) ORDER BY id",
                    (token, grace, now)).fetchall()
                grants = [(int(r[0]), int(r[1]) + 1) for r in rows]
                c.executemany("UPDATE jobs SET owner=?, owner_token=?, epoch=? WHERE id=?",
                              [(instance, token, e, i) for i, e in grants])
                c.executemany("INSERT OR REPLACE INTO job_owners(job, epoch, owner, token, since)"
                              " VALUES (?, ?, ?, ?, ?)", [(i, e, instance, token, now) for i, e in grants])
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            jobs = []
            for i, _e in grants:
                r = c.execute("SELECT * FROM jobs WHERE id=?", (i,)).fetchone()
                jobs.append(self._job_from(c, r))
            return jobs

        done = await self._run(_adopt)
        if done:  # a transaction that wrote something
            self.commits["adopt_jobs"] += 1
        return done

    async def dedupe(self, key: str, instance: str, now: float | None, ttl: float) -> str | None:
        """Claim `key` for `ttl` seconds. None: this monitor has it; else the monitor that had it first.
        `now`: None for the store's clock."""
        now = self._now(now)

        def _d(c: sqlite3.Connection) -> str | None:
            c.execute("BEGIN IMMEDIATE")
            try:
                row = c.execute("SELECT instance FROM dedupe WHERE key=? AND until>?", (key, now)).fetchone()
                if row is not None and row[0] != instance:
                    c.execute("COMMIT")
                    return str(row[0])
                c.execute("INSERT INTO dedupe(key, instance, until) VALUES (?, ?, ?) ON CONFLICT(key)"
                          " DO UPDATE SET instance=excluded.instance, until=excluded.until",
                          (key, instance, now + ttl))
                c.execute("DELETE FROM dedupe WHERE until<=?", (now,))
                c.execute("COMMIT")
                return None
            except BaseException:
                c.execute("ROLLBACK")
                raise

        return await self._run(_d, "dedupe")

    # --- decisions -----------------------------------------------------------------------------

    async def add_decisions(self, rows: list[tuple[float, str | None, str, str | None, dict[str, Any]]],
                            keep: int = 100_000) -> list[int]:
        """Store decisions (time, server, action, rule, body) in one transaction; return their ids.
        Only the newest `keep` are kept."""

        if not rows:
            return []
        def _add(c: sqlite3.Connection) -> list[int]:
            # serialised here, in the store's thread: not on the event loop in one piece
            params = [(t, server, action, rule, json.dumps(body)) for t, server, action, rule, body in rows]
            c.execute("BEGIN IMMEDIATE")
            try:
                c.executemany("INSERT INTO decisions(time, server, action, rule, body)"
                              " VALUES (?, ?, ?, ?, ?)", params)
                # One writer inside BEGIN IMMEDIATE: the rows took consecutive ids ending at the last.
                last = int(c.execute("SELECT last_insert_rowid()").fetchone()[0])
                ids = list(range(last - len(params) + 1, last + 1))
                if ids[-1] % 1000 < len(ids):
                    c.execute("DELETE FROM decisions WHERE id <= ?", (ids[-1] - keep,))
                c.execute("COMMIT")
                return ids
            except BaseException:
                c.execute("ROLLBACK")
                raise

        return await self._run(_add, "add_decisions")

    async def list_decisions(self, *, server: str | None = None, action: str | None = None,
                             limit: int = 100) -> list[dict[str, Any]]:
        def _q(c: sqlite3.Connection) -> list[dict[str, Any]]:
            clause, args = where({"server": server, "action": action}, sqlite_param)
            sql = "SELECT id, body FROM decisions" + clause
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

        await self._run(_s, "set_value")

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

        await self._run(_s, "set_states")

    # --- maintenance silences and the operators' actions ---------------------------------------

    async def add_silence(self, kind: str, target: str, author: str, comment: str, starts: float,
                          ends: float, created: float | None = None) -> SilenceRow:
        created = self._now(created)

        def _add(c: sqlite3.Connection) -> SilenceRow:
            cur = c.execute("INSERT INTO silences(kind, target, author, comment, starts, ends, created)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?)", (kind, target, author, comment, starts, ends,
                                                              created))
            r = c.execute(f"SELECT {SILENCE_COLS} FROM silences WHERE id=?", (cur.lastrowid,)).fetchone()
            return silence_from(r)

        return await self._run(_add, "add_silence")

    async def list_silences(self, *, since: float | None = None) -> list[SilenceRow]:
        def _q(c: sqlite3.Connection) -> list[SilenceRow]:
            if since is None:
                rows = c.execute(f"SELECT {SILENCE_COLS} FROM silences ORDER BY id")
            else:
                rows = c.execute(f"SELECT {SILENCE_COLS} FROM silences WHERE ends>? ORDER BY id", (since,))
            return [silence_from(r) for r in rows]

        return await self._run(_q)

    async def expire_silence(self, silence_id: int, by: str, now: float | None = None) -> SilenceRow | None:
        now = self._now(now)

        def _e(c: sqlite3.Connection) -> SilenceRow | None:
            c.execute("UPDATE silences SET starts=min(starts, ?), ends=?, expired_by=coalesce(expired_by, ?)"
                      " WHERE id=? AND ends>?", (now, now, by, silence_id, now))
            r = c.execute(f"SELECT {SILENCE_COLS} FROM silences WHERE id=?", (silence_id,)).fetchone()
            return silence_from(r) if r else None

        return await self._run(_e, "expire_silence")

    async def add_audit(self, author: str, action: str, target: str, detail: dict[str, Any],
                        now: float | None = None) -> int:
        now = self._now(now)

        def _a(c: sqlite3.Connection) -> int:
            cur = c.execute("INSERT INTO audit(time, author, action, target, body) VALUES (?, ?, ?, ?, ?)",
                            (now, author, action, target, json.dumps(detail)))
            return int(cur.lastrowid or 0)

        return await self._run(_a, "add_audit")

    async def list_audit(self, *, limit: int = 100) -> list[dict[str, Any]]:
        def _q(c: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = c.execute("SELECT id, time, author, action, target, body FROM audit ORDER BY id DESC"
                             " LIMIT ?", (limit,))
            return [audit_from(r) for r in rows]

        return await self._run(_q)
