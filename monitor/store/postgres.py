"""The PostgreSQL store: the same jobs, steps, group locks, timers, leases and values as `SqliteStore`,
shared by several monitors through one database.

Every public method has SqliteStore's signature and meaning. Each call takes a connection from an asyncpg
pool and runs under a deadline (`timeout`); a database that cannot be reached (refused, reset, restarting,
the pool closed under a call, the deadline passed) raises `StoreUnavailable`, so the caller retries while
its lease holds. After such an error the pool's other connections are replaced on their next use: the
database restarting leaves every idle connection dead, and the retry must not draw another one.

Concurrency, with several monitors writing at once:
- create_job: `INSERT … ON CONFLICT (server) WHERE active DO NOTHING` against the unique partial index;
  the loser waits for the winner's transaction and reads the winner's job id.
- save_job: one statement: the job row updated only `WHERE owner IS NOT DISTINCT FROM $owner` (the row
  lock and READ COMMITTED's re-check fence it against an adoption committed meanwhile), its steps only
  when the job row was updated; with `JobWrites`, the group lock (as lock_group), unlock and timer follow
  in the same transaction.
- lock_group: a transaction holding `pg_advisory_xact_lock(LOCK_NS, hashtext(group))`, so the decision
  (holder, lowest waiting job, stale rows) is taken by one monitor at a time per group.
- claim_due_timers: `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED)`.
- adopt_jobs: one `UPDATE … RETURNING` (the row lock and re-check: two adopters never take one job).
- dedupe: `INSERT … ON CONFLICT (key) DO UPDATE … WHERE expired OR ours`.
Serialization failures and deadlocks are retried a few times inside the call. `commits` counts the
committed write transactions per method.

A transaction left open by a monitor that went silent (partitioned from the database, paused, killed
without its socket closing) would hold its row and advisory locks until the server noticed the dead
connection — TCP's keepalive, hours — and every other monitor's adoption of its jobs would wait on them.
Every session therefore sets `idle_in_transaction_session_timeout` (IDLE_IN_TRANSACTION, at most the
store's `timeout`): the server ends a transaction that waited that long for its next statement, its locks
are released, and the silent monitor's commit fails when it comes back (it retries, fenced as ever).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from monitor.core.errors import ActiveJobExists, LostOwnership, MembershipLost, StoreError, StoreUnavailable
from monitor.core.model import STEPS, Job, Step
from monitor.store.rows import (
    ACTIVE_SQL,
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
    postgres_param,
    silence_from,
    step_from,
    ts,
    where,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Conn = asyncpg.Connection | PoolConnectionProxy

IDLE_IN_TRANSACTION = 5.0
"""Seconds a transaction may wait for its next statement before the server ends it (our transactions
wait milliseconds between statements)."""

# Advisory lock namespaces (the two-int form keeps ours apart from anyone else's in the database).
LOCK_NS = 0x666D  # "fm"
_MIGRATION_LOCK = 1
_GROUP_LOCK = 2


# Versioned migrations: each takes the store from version N-1 to N, in its own transaction. The numbers
# follow SqliteStore's (version 1: the base tables, 2: owners, timer claims, members, dedupe).
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE jobs (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            server TEXT NOT NULL,
            grp TEXT NOT NULL,
            state TEXT NOT NULL,
            trigger TEXT NOT NULL,
            profile TEXT,
            spare TEXT,
            error TEXT,
            created DOUBLE PRECISION NOT NULL,
            finished DOUBLE PRECISION,
            context TEXT NOT NULL DEFAULT '{}',
            notes TEXT NOT NULL DEFAULT '[]',
            rediscovery TEXT)""",
        f"CREATE UNIQUE INDEX one_active_job_per_server ON jobs(server) WHERE state IN {ACTIVE_SQL}",
        "CREATE INDEX jobs_by_state ON jobs(state)",
        "CREATE INDEX jobs_by_group ON jobs(grp) WHERE state IN ('queued', 'running')",
        """CREATE TABLE steps (
            job BIGINT NOT NULL REFERENCES jobs(id),
            position INTEGER NOT NULL,
            step TEXT NOT NULL,
            state TEXT NOT NULL,
            started DOUBLE PRECISION,
            finished DOUBLE PRECISION,
            detail TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (job, position))""",
        """CREATE TABLE group_locks (
            grp TEXT PRIMARY KEY,
            job BIGINT NOT NULL,
            acquired DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE timers (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            kind TEXT NOT NULL,
            job BIGINT NOT NULL,
            server TEXT NOT NULL,
            due DOUBLE PRECISION NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            detail TEXT NOT NULL DEFAULT '',
            UNIQUE (kind, job))""",
        "CREATE INDEX timers_due ON timers(due, id) WHERE state = 'scheduled'",
        """CREATE TABLE decisions (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            time DOUBLE PRECISION NOT NULL,
            server TEXT,
            action TEXT NOT NULL,
            rule TEXT,
            body TEXT NOT NULL)""",
        "CREATE INDEX decisions_by_server ON decisions(server, id)",
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE inventory_state (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (kind, key))""",
    ],
    2: [
        "ALTER TABLE jobs ADD COLUMN owner TEXT",
        "ALTER TABLE timers ADD COLUMN claimed_by TEXT",
        "ALTER TABLE timers ADD COLUMN claim_until DOUBLE PRECISION",
        """CREATE TABLE members (
            instance TEXT PRIMARY KEY, address TEXT NOT NULL DEFAULT '',
            started DOUBLE PRECISION NOT NULL, lease_until DOUBLE PRECISION NOT NULL)""",
        "CREATE TABLE dedupe (key TEXT PRIMARY KEY, instance TEXT NOT NULL, until DOUBLE PRECISION NOT NULL)",
    ],
    3: [
        "ALTER TABLE jobs ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN owner_token TEXT",
        "ALTER TABLE members ADD COLUMN incarnation TEXT NOT NULL DEFAULT ''",
        """CREATE TABLE job_owners (
            job BIGINT NOT NULL, epoch BIGINT NOT NULL, owner TEXT, token TEXT,
            since DOUBLE PRECISION NOT NULL, PRIMARY KEY (job, epoch))""",
    ],
    4: [
        """CREATE TABLE silences (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kind TEXT NOT NULL, target TEXT NOT NULL,
            author TEXT NOT NULL, comment TEXT NOT NULL DEFAULT '', starts DOUBLE PRECISION NOT NULL,
            ends DOUBLE PRECISION NOT NULL, created DOUBLE PRECISION NOT NULL, expired_by TEXT)""",
        "CREATE INDEX silences_by_end ON silences(ends)",
        """CREATE TABLE audit (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, time DOUBLE PRECISION NOT NULL,
            author TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL DEFAULT '',
            body TEXT NOT NULL)""",
    ],
}
assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1)), "a migration per schema version"

_META = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL DEFAULT extract(epoch FROM now()))"""

_TIMER_COLS = "id, kind, job, server, due, state, attempts, detail"

_CLOCK = "extract(epoch FROM clock_timestamp())"
"""The database's clock: every lease, claim and due time is in it, so monitors whose own clocks are
skewed still agree."""


def _now(param: str) -> str:
    """SQL for "the caller's `now` when given (tests), else the database's clock"."""
    return f"coalesce({param}::float8, {_CLOCK})"

# Errors that mean "the database is not reachable right now", not "the request was wrong".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    ConnectionError,
    asyncpg.exceptions.PostgresConnectionError,  # 08xxx: ConnectionDoesNotExistError, …
    asyncpg.exceptions.OperatorInterventionError,  # 57xxx: admin shutdown, CannotConnectNowError, …
    asyncpg.exceptions.InsufficientResourcesError,  # 53xxx: too many connections, disk full
    asyncpg.exceptions.InterfaceError,  # the connection or pool closed under the call
    asyncpg.exceptions.InternalClientError,
    # 25P03: the server ended our transaction after it waited IDLE_IN_TRANSACTION for us (we were
    # paused or cut off): from here, the store was away
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,
)
# Worth doing again at once: another transaction got in the way.
_CONFLICT = (asyncpg.exceptions.SerializationError, asyncpg.exceptions.DeadlockDetectedError)
_ATTEMPTS = 5


def redact(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    return re.sub(r"^(\w+://[^:/@]*):[^@/]*@", r"\1:***@", url)


def _text(s: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL (SQLite's can): a BMC's message with one must not stop a job."""
    return s.replace("\x00", "\ufffd") if s and "\x00" in s else s


def _timer(r: asyncpg.Record) -> Timer:
    return Timer(id=int(r["id"]), kind=r["kind"], job=int(r["job"]), server=r["server"],
                 due=float(r["due"]), state=r["state"], attempts=int(r["attempts"]), detail=r["detail"])


class PostgresStore:
    """The shared store on PostgreSQL. Open with `await store.open()` (which applies the migrations),
    close with `await store.close()`. `url`: postgresql://[user[:password]@]host[:port]/database; the
    usual PG* environment variables (PGPASSWORD, PGSSLMODE, …) fill what it leaves out."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10, timeout: float = 10.0) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise StoreError("a PostgreSQL store URL starts with postgresql:// or postgres://")
        if not 0 <= min_size <= max_size or max_size < 1 or timeout <= 0:
            raise StoreError("PostgreSQL pool: need 0 <= min_size <= max_size, max_size >= 1, timeout > 0")
        self.url = url
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self.commits: Counter[str] = Counter()
        """Committed write transactions, per method (a write that changed nothing is not counted)."""

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.url)!r})"

    # --- plumbing ---------------------------------------------------------------------------

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        what = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            what = f"no answer within {self.timeout:g} s"
        return StoreUnavailable(f"store {redact(self.url)}: {what}")

    async def _run(self, fn: Callable[[Conn], Awaitable[T]], commit: str = "") -> T:
        """Run `fn` on a pooled connection under the deadline; map connection problems to
        StoreUnavailable and retry serialization failures and deadlocks. `commit`: the method's name,
        counted in `commits` once `fn` returned (its write committed)."""
        pool = self._pool
        if pool is None:
            raise StoreError("store is not open")
        for attempt in range(_ATTEMPTS):
            try:
                async with asyncio.timeout(self.timeout):
                    async with pool.acquire() as conn:
                        result = await fn(conn)
                if commit:
                    self.commits[commit] += 1
                return result
            except StoreError:
                raise
            except asyncpg.exceptions.DataError as exc:  # a value of the wrong type: a bug, not an outage
                raise StoreError(f"store {redact(self.url)}: {exc}") from exc
            except _CONFLICT as exc:
                if attempt == _ATTEMPTS - 1:
                    raise StoreUnavailable(f"store {redact(self.url)}: {exc}") from exc
                await asyncio.sleep(0.005 * (attempt + 1))
            except _UNAVAILABLE as exc:
                # The database went away: the pool's idle connections are dead too. Replace them on
                # their next use, so that the caller's retry gets a fresh one.
                await pool.expire_connections()
                raise self._unavailable(exc) from exc
            except asyncpg.exceptions.PostgresError as exc:
                raise StoreError(f"store {redact(self.url)}: {exc}") from exc
        raise AssertionError("unreachable")

    async def _tx(self, fn: Callable[[Conn], Awaitable[T]], commit: str = "", *,
                  isolation: str = "read_committed") -> T:
        async def _in_tx(c: Conn) -> T:
            async with c.transaction(isolation=isolation):  # type: ignore[arg-type]
                return await fn(c)

        return await self._run(_in_tx, commit)

    async def open(self, *, upgrade: bool = True) -> None:
        """Connect, and bring the schema up to SCHEMA_VERSION (refusing a newer one). `upgrade=False`
        only connects (`failover-monitor db upgrade` reads the version first)."""
        if self._pool is not None:
            return
        try:
            async with asyncio.timeout(self.timeout):
                pool = await asyncpg.create_pool(
                    self.url, min_size=self.min_size, max_size=self.max_size, timeout=self.timeout,
                    command_timeout=self.timeout, server_settings={
                        "application_name": "failover-monitor",
                        "idle_in_transaction_session_timeout": str(
                            max(1, int(1000 * min(self.timeout, IDLE_IN_TRANSACTION))))})
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc
        except asyncpg.exceptions.PostgresError as exc:  # no such database, authentication, …
            raise StoreError(f"cannot open store {redact(self.url)}: {exc}") from exc
        self._pool = pool
        if not upgrade:
            return
        try:
            await self.upgrade()
        except BaseException:
            self._pool = None
            pool.terminate()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self.timeout)
        except _UNAVAILABLE:
            pool.terminate()

    async def ping(self) -> None:
        async def _ping(c: Conn) -> None:
            await c.fetchval("SELECT 1")

        await self._run(_ping)

    async def clock(self) -> float:
        """The database's clock (seconds since the epoch): leases, claims and due times are in it."""

        async def _q(c: Conn) -> float:
            return float(await c.fetchval(f"SELECT {_CLOCK}"))

        return await self._run(_q)

    # --- schema --------------------------------------------------------------------------------

    async def schema_version(self) -> int:
        """The schema version the database is at (0: an empty database)."""

        async def _v(c: Conn) -> int:
            exists = await c.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
            if not exists:
                return 0
            return int(await c.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))

        return await self._run(_v)

    async def upgrade(self) -> int:
        """Apply the missing migrations, each in its own transaction under an advisory lock (monitors
        starting together take turns; the second finds the work done). Returns the version reached."""
        while True:

            async def _step(c: Conn) -> int | None:
                await c.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_NS, _MIGRATION_LOCK)
                await c.execute(_META)
                version = int(await c.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))
                if version > SCHEMA_VERSION:
                    raise StoreError(f"store schema {version} is newer than this program ({SCHEMA_VERSION})")
                if version == SCHEMA_VERSION:
                    return None
                target = version + 1
                for sql in MIGRATIONS[target]:
                    await c.execute(sql)
                await c.execute("INSERT INTO schema_migrations(version) VALUES ($1)", target)
                return target

            applied = await self._tx(_step)
            if applied is None:
                return SCHEMA_VERSION
            log.info("store %s: migrated to schema %d", redact(self.url), applied)

    # --- jobs ---------------------------------------------------------------------------------

    async def create_job(self, server: str, group: str, trigger: dict[str, Any], now: datetime,
                         owner: str | None = None, token: str | None = None) -> Job:
        """Create a queued job owned by `owner` (incarnation `token`) at epoch 1; ActiveJobExists when
        the server has an active one."""
        trigger_json = json.dumps(trigger)
        since = 0.0

        async def _create(c: Conn) -> int:
            nonlocal since
            for _ in range(_ATTEMPTS):
                job_id = await c.fetchval(
                    "INSERT INTO jobs(server, grp, state, trigger, created, owner, epoch, owner_token)"
                    " VALUES ($1, $2, 'queued', $3, $4, $5, 1, $6)"
                    f" ON CONFLICT (server) WHERE state IN {ACTIVE_SQL} DO NOTHING RETURNING id",
                    server, group, trigger_json, now.timestamp(), owner, token)
                if job_id is not None:
                    since = float(await c.fetchval(
                        "INSERT INTO job_owners(job, epoch, owner, token, since)"
                        f" VALUES ($1, 1, $2, $3, {_CLOCK}) RETURNING since", job_id, owner, token))
                    await c.execute(
                        "INSERT INTO steps(job, position, step, state)"
                        " SELECT $1, p - 1, s, 'pending' FROM unnest($2::text[]) WITH ORDINALITY AS u(s, p)",
                        job_id, list(STEPS))
                    return int(job_id)
                holder = await c.fetchval(
                    f"SELECT id FROM jobs WHERE server=$1 AND state IN {ACTIVE_SQL}", server)
                if holder is not None:
                    raise ActiveJobExists(server, int(holder))
                # The holder ended between the two statements: try again.
            raise ActiveJobExists(server, 0)

        job_id = await self._tx(_create, "create_job")
        return Job.queued(job_id, server, group, trigger, now, owner, token, since)

    async def save_job(self, job: Job, also: JobWrites | None = None) -> Saved:
        """Write the job and all its steps in one committed transaction — only while `job.epoch` is still
        the job's epoch (LostOwnership otherwise: another monitor, or a later start of this one, took the
        job over; nothing of `also` is written then). `also`: the group lock, unlock and timer written in
        the same transaction, after the row (see JobWrites)."""
        args = (
            job.id, job.owner, job.state.value, _text(job.profile), _text(job.spare), _text(job.error),
            ts(job.finished), _text(job.context.model_dump_json()), json.dumps(job.notes),
            json.dumps(job.rediscovery) if job.rediscovery is not None else None,
            list(range(len(job.steps))), [s.state.value for s in job.steps],
            [ts(s.started) for s in job.steps], [ts(s.finished) for s in job.steps],
            [_text(s.detail) for s in job.steps], job.epoch,
        )

        async def _save(c: Conn) -> Saved:
            # One statement is one transaction: the steps change only if the job row did.
            saved = await c.fetchval(
                "WITH j AS (UPDATE jobs SET state=$3, profile=$4, spare=$5, error=$6, finished=$7,"
                " context=$8, notes=$9, rediscovery=$10 WHERE id=$1 AND owner IS NOT DISTINCT FROM $2"
                " AND epoch=$16"
                " RETURNING id),"
                " s AS (UPDATE steps SET state=u.state, started=u.started, finished=u.finished,"
                " detail=u.detail FROM j, unnest($11::int[], $12::text[], $13::float8[], $14::float8[],"
                " $15::text[]) AS u(position, state, started, finished, detail)"
                " WHERE steps.job = j.id AND steps.position = u.position RETURNING 1)"
                " SELECT count(*) FROM j",
                *args)
            if not saved:
                holder = await c.fetchval("SELECT owner FROM jobs WHERE id=$1", job.id)
                raise LostOwnership(job.id, holder)
            if also is None:
                return Saved()
            return Saved(await self._lock_in(c, also.lock, job.id, None) if also.lock else None,
                         await self._unlock_in(c, also.unlock, job.id) if also.unlock else False,
                         await self._add_timer_in(c, also.timer.kind, job.id, also.timer.server,
                                                  also.timer.due) if also.timer else None)

        if also is None:  # one statement: its own transaction
            return await self._run(_save, "save_job")
        return await self._tx(_save, "save_job")

    @staticmethod
    async def _jobs_from(c: Conn, rows: Sequence[asyncpg.Record]) -> list[Job]:
        if not rows:
            return []
        steps: dict[int, list[Step]] = {int(r["id"]): [] for r in rows}
        for s in await c.fetch("SELECT * FROM steps WHERE job = ANY($1::bigint[]) ORDER BY job, position",
                               list(steps)):
            steps[int(s["job"])].append(step_from(s))
        owners: dict[int, list[dict[str, Any]]] = {i: [] for i in steps}
        for o in await c.fetch("SELECT job, epoch, owner, since FROM job_owners WHERE job = ANY($1::bigint[])"
                               " ORDER BY job, epoch", list(steps)):
            owners[int(o["job"])].append(owner_entry(o["epoch"], o["owner"], o["since"]))
        return [job_from(r, steps[int(r["id"])], owners[int(r["id"])]) for r in rows]

    async def _select_jobs(self, sql: str, *args: Any) -> list[Job]:
        async def _q(c: Conn) -> list[Job]:
            # One snapshot for the jobs and their steps.
            async with c.transaction(isolation="repeatable_read", readonly=True):
                return await self._jobs_from(c, await c.fetch(sql, *args))

        return await self._run(_q)

    async def get_job(self, job_id: int) -> Job | None:
        jobs = await self._select_jobs("SELECT * FROM jobs WHERE id=$1", job_id)
        return jobs[0] if jobs else None

    async def list_jobs(
        self, *, state: str | None = None, server: str | None = None, limit: int = 100
    ) -> list[Job]:
        clause, args = where({"state": state, "server": server}, postgres_param)
        args.append(limit)
        sql = "SELECT * FROM jobs" + clause
        return await self._select_jobs(sql + f" ORDER BY id DESC LIMIT ${len(args)}", *args)

    async def active_jobs(self) -> list[Job]:
        return await self._select_jobs(f"SELECT * FROM jobs WHERE state IN {ACTIVE_SQL} ORDER BY id")

    async def active_by_server(self) -> dict[str, int]:
        async def _q(c: Conn) -> dict[str, int]:
            rows = await c.fetch(f"SELECT server, id FROM jobs WHERE state IN {ACTIVE_SQL}")
            return {r[0]: int(r[1]) for r in rows}

        return await self._run(_q)

    async def job_counts(self) -> dict[str, int]:
        async def _q(c: Conn) -> dict[str, int]:
            return {r[0]: int(r[1]) for r in await c.fetch("SELECT state, count(*) FROM jobs GROUP BY state")}

        return await self._run(_q)

    # --- group locks ---------------------------------------------------------------------------

    async def lock_group(self, group: str, job: int, now: float | None = None) -> int | None:
        """Take `group` for `job`. Returns None on success, or the job that holds it or goes first.

        Fair across monitors: the group goes to the lowest-numbered active job of the group that is
        waiting for it (its lock_group step running). A row left by a job that is no longer active is
        stale and replaced."""

        async def _lock(c: Conn) -> tuple[int | None, bool]:
            wrote: list[bool] = []
            return await self._lock_in(c, group, job, now, wrote), bool(wrote)

        holder, took = await self._tx(_lock)
        if took:
            self.commits["lock_group"] += 1
        return holder

    @staticmethod
    async def _lock_in(c: Conn, group: str, job: int, now: float | None,
                       wrote: list[bool] | None = None) -> int | None:
        """lock_group's decision and write, inside the caller's transaction (`wrote` gets True when the
        lock row was written)."""
        # Decided by one monitor at a time per group; each statement after the lock sees every commit
        # made before it (READ COMMITTED).
        await c.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_NS + _GROUP_LOCK, group)
        holder = await c.fetchval(
            "SELECT l.job FROM group_locks l JOIN jobs j ON j.id = l.job"
            f" WHERE l.grp=$1 AND j.state IN {ACTIVE_SQL}", group)
        if holder is not None:
            return None if int(holder) == job else int(holder)
        first = await c.fetchval(
            "SELECT min(j.id) FROM jobs j JOIN steps s ON s.job = j.id AND s.step = 'lock_group'"
            " WHERE j.grp=$1 AND j.state='running' AND s.state='running'", group)
        if first is not None and int(first) < job:
            return int(first)
        await c.execute(
            f"INSERT INTO group_locks(grp, job, acquired) VALUES ($1, $2, {_now('$3')})"
            " ON CONFLICT (grp) DO UPDATE SET job=excluded.job, acquired=excluded.acquired",
            group, job, now)
        if wrote is not None:
            wrote.append(True)
        return None

    @staticmethod
    async def _unlock_in(c: Conn, group: str, job: int) -> bool:
        status = await c.execute("DELETE FROM group_locks WHERE grp=$1 AND job=$2", group, job)
        return bool(status != "DELETE 0")

    async def unlock_group(self, group: str, job: int) -> bool:
        async def _unlock(c: Conn) -> bool:
            return await self._unlock_in(c, group, job)

        released = await self._run(_unlock)
        if released:
            self.commits["unlock_group"] += 1
        return released

    async def group_locks(self) -> dict[str, int]:
        async def _q(c: Conn) -> dict[str, int]:
            return {r[0]: int(r[1]) for r in await c.fetch("SELECT grp, job FROM group_locks")}

        return await self._run(_q)

    async def release_stale_locks(self) -> dict[str, int]:
        """Release, in one statement, every group lock held by a job that is no longer active; returns
        them. A lock of an active job, this monitor's or another's, is never touched."""

        async def _release(c: Conn) -> dict[str, int]:
            rows = await c.fetch(
                "DELETE FROM group_locks l WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = l.job"
                f" AND j.state IN {ACTIVE_SQL}) RETURNING grp, job")
            return {r[0]: int(r[1]) for r in rows}

        done = await self._run(_release)
        if done:  # a transaction that wrote something
            self.commits["release_stale_locks"] += 1
        return done

    # --- durable timers --------------------------------------------------------------------------

    async def add_timer(self, kind: str, job: int, server: str, due: float) -> Timer:
        """Schedule a timer once per (kind, job); scheduling it again returns the existing one."""

        async def _add(c: Conn) -> tuple[Timer, bool]:
            wrote: list[bool] = []
            return await self._add_timer_in(c, kind, job, server, due, wrote), bool(wrote)

        timer, wrote = await self._run(_add)
        if wrote:
            self.commits["add_timer"] += 1
        return timer

    @staticmethod
    async def _add_timer_in(c: Conn, kind: str, job: int, server: str, due: float,
                            wrote: list[bool] | None = None) -> Timer:
        for _ in range(_ATTEMPTS):
            r = await c.fetchrow(
                "INSERT INTO timers(kind, job, server, due, state) VALUES ($1, $2, $3, $4, 'scheduled')"
                f" ON CONFLICT (kind, job) DO NOTHING RETURNING {_TIMER_COLS}", kind, job, server, due)
            if r is not None and wrote is not None:
                wrote.append(True)
            if r is None:
                r = await c.fetchrow(f"SELECT {_TIMER_COLS} FROM timers WHERE kind=$1 AND job=$2", kind, job)
            if r is not None:
                return _timer(r)
        raise StoreError(f"timer {kind} of job {job}: could not be scheduled")

    async def claim_due_timers(self, instance: str, now: float | None, hold: float) -> list[Timer]:
        """Claim the due timers nobody holds (or whose claim ran out): each fires on one monitor.
        `now`: None for the database's clock."""

        async def _claim(c: Conn) -> list[Timer]:
            rows = await c.fetch(
                f"WITH t AS (SELECT {_now('$3')} AS now)"
                " UPDATE timers SET claimed_by=$1, claim_until=(SELECT now FROM t) + $2 WHERE id IN ("
                " SELECT id FROM timers WHERE state='scheduled' AND due<=(SELECT now FROM t)"
                " AND (claim_until IS NULL OR claim_until<(SELECT now FROM t))"
                " ORDER BY due, id FOR UPDATE SKIP LOCKED)"
                f" RETURNING {_TIMER_COLS}", instance, hold, now)
            return sorted((_timer(r) for r in rows), key=lambda t: (t.due, t.id))

        done = await self._run(_claim)
        if done:  # a transaction that wrote something
            self.commits["claim_due_timers"] += 1
        return done

    async def scheduled_timers(self) -> list[Timer]:
        async def _q(c: Conn) -> list[Timer]:
            rows = await c.fetch(f"SELECT {_TIMER_COLS} FROM timers WHERE state='scheduled' ORDER BY due, id")
            return [_timer(r) for r in rows]

        return await self._run(_q)

    async def update_timer(
        self, timer_id: int, *, state: str, due: float | None = None, attempts: int | None = None,
        detail: str = "", claimed_by: str | None = None,
    ) -> bool:
        async def _u(c: Conn) -> bool:
            status = await c.execute(
                "UPDATE timers SET state=$1, due=coalesce($2, due), attempts=coalesce($3, attempts),"
                " detail=$4, claimed_by=NULL, claim_until=NULL"
                " WHERE id=$5 AND ($6::text IS NULL OR claimed_by=$6)",
                state, due, attempts, _text(detail), timer_id, claimed_by)
            return str(status).endswith(" 1")

        return await self._run(_u, "update_timer")

    # --- several monitors: membership, adoption, de-duplication ------------------------------------

    async def join(self, instance: str, token: str, address: str, lease: float, grace: float,
                   now: float | None = None) -> JoinResult:
        """Take the name `instance` for the process `token` (see SqliteStore.join), on the database's
        clock."""

        async def _join(c: Conn) -> JoinResult:
            t = float(await c.fetchval(f"SELECT {_now('$1')}", now))
            # One statement decides: two processes joining under one name at once cannot both win.
            won = await c.fetchval(
                "INSERT INTO members(instance, address, started, lease_until, incarnation)"
                " VALUES ($1, $2, $3::float8, $3::float8 + $4::float8, $5)"
                " ON CONFLICT (instance) DO UPDATE SET"
                " address=excluded.address, started=excluded.started, lease_until=excluded.lease_until,"
                " incarnation=excluded.incarnation"
                " WHERE members.incarnation = excluded.incarnation OR members.lease_until + $6::float8 <= $3"
                " RETURNING 1", instance, address, t, lease, token, grace)
            if won is not None:
                return JoinResult(True)
            row = await c.fetchrow("SELECT incarnation, lease_until FROM members WHERE instance=$1", instance)
            if row is None:  # left between the two statements: try again
                return JoinResult(False, "", 0.0, 0.0)
            return JoinResult(False, str(row[0]), float(row[1]), float(row[1]) + grace - t)

        return await self._tx(_join, "join")

    async def heartbeat(self, instance: str, token: str, address: str, lease: float,
                        now: float | None = None) -> bool:
        """Renew this process's membership lease on the database's clock; whether it had already ended
        (its jobs may have been taken over meanwhile). MembershipLost when another process holds the
        name now."""

        async def _hb(c: Conn) -> bool:
            # The old row's lease is read under the UPDATE's row lock (the FROM's FOR UPDATE): an adopter
            # that saw it over has committed before, or sees the renewed one.
            lapsed = await c.fetchval(
                f"WITH t AS (SELECT {_now('$5')} AS now),"
                " old AS (SELECT lease_until FROM members WHERE instance=$1 AND incarnation=$2 FOR UPDATE)"
                " UPDATE members SET address=$3, lease_until=t.now + $4 FROM t, old"
                " WHERE instance=$1 AND incarnation=$2 RETURNING old.lease_until <= t.now",
                instance, token, address, lease, now)
            if lapsed is None:
                raise MembershipLost(f"instance name {instance} is held by another process")
            return bool(lapsed)

        return await self._run(_hb, "heartbeat")

    async def leave(self, instance: str, token: str, grace: float = 0.0, now: float | None = None) -> None:
        """A stop: the lease ends now (dated back `grace` seconds after a clean stop)."""

        async def _leave(c: Conn) -> None:
            await c.execute(f"UPDATE members SET lease_until={_now('$4')} - $3"
                            " WHERE instance=$1 AND incarnation=$2", instance, token, grace, now)

        await self._run(_leave, "leave")

    async def members(self, now: float | None = None) -> list[dict[str, Any]]:
        """The monitors that joined, with `lease_left` (seconds of the database's clock; None when over)."""

        async def _q(c: Conn) -> list[dict[str, Any]]:
            async with c.transaction(isolation="repeatable_read", readonly=True):
                t = float(await c.fetchval(f"SELECT {_now('$1')}", now))
                rows = await c.fetch("SELECT instance, address, incarnation, started, lease_until"
                                     " FROM members ORDER BY instance")
            return [member_row(dict(r), t) for r in rows]

        return await self._run(_q)

    async def adopt_jobs(self, instance: str, token: str, grace: float,
                         now: float | None = None) -> list[Job]:
        """Take over the active jobs whose owning process's lease ended more than `grace` seconds ago
        on the database's clock (see SqliteStore.adopt_jobs); each job's epoch grows by one."""

        async def _adopt(c: Conn) -> list[Job]:
            # The row locks of the UPDATE and READ COMMITTED's re-check of a row another adopter just
            # changed: each job goes to one monitor, and its epoch grows once.
            t = float(await c.fetchval(f"SELECT {_now('$1')}", now))
            rows = await c.fetch(
                f"UPDATE jobs SET owner=$1, owner_token=$2, epoch=epoch + 1 WHERE state IN {ACTIVE_SQL}"
                " AND owner_token IS DISTINCT FROM $2 AND (owner_token IS NULL OR owner_token NOT IN"
                " (SELECT incarnation FROM members WHERE lease_until + $3 > $4)) RETURNING *",
                instance, token, grace, t)
            if rows:
                await c.execute(
                    "INSERT INTO job_owners(job, epoch, owner, token, since)"
                    " SELECT j, e, $3, $4, $5 FROM unnest($1::bigint[], $2::bigint[]) AS u(j, e)"
                    " ON CONFLICT (job, epoch) DO UPDATE SET owner=excluded.owner, token=excluded.token,"
                    " since=excluded.since",
                    [int(r["id"]) for r in rows], [int(r["epoch"]) for r in rows], instance, token, t)
            return await self._jobs_from(c, sorted(rows, key=lambda r: int(r["id"])))

        done = await self._tx(_adopt)
        if done:  # a transaction that wrote something
            self.commits["adopt_jobs"] += 1
        return done

    async def dedupe(self, key: str, instance: str, now: float | None, ttl: float) -> str | None:
        """Claim `key` for `ttl` seconds. None: this monitor has it; else the monitor that had it first.
        `now`: None for the database's clock."""

        async def _d(c: Conn) -> str | None:
            for _ in range(_ATTEMPTS):
                t = float(await c.fetchval(f"SELECT {_now('$1')}", now))
                mine = await c.fetchval(
                    "WITH gone AS (DELETE FROM dedupe WHERE until<=$3 AND key<>$1)"
                    " INSERT INTO dedupe(key, instance, until) VALUES ($1, $2, $4) ON CONFLICT (key)"
                    " DO UPDATE SET instance=excluded.instance, until=excluded.until"
                    " WHERE dedupe.until<=$3 OR dedupe.instance=excluded.instance RETURNING 1",
                    key, instance, t, t + ttl)
                if mine is not None:
                    return None
                holder = await c.fetchval("SELECT instance FROM dedupe WHERE key=$1 AND until>$2", key, t)
                if holder is not None:
                    return str(holder)
            raise StoreUnavailable(f"dedupe {key}: contended")

        return await self._run(_d, "dedupe")

    # --- decisions -----------------------------------------------------------------------------

    async def add_decisions(self, rows: list[tuple[float, str | None, str, str | None, dict[str, Any]]],
                            keep: int = 100_000) -> list[int]:
        """Store decisions (time, server, action, rule, body) in one transaction; return their ids.
        Only the newest `keep` are kept."""
        if not rows:
            return []
        cols: list[list[Any]] = [[], [], [], [], []]
        for t, server, action, rule, body in rows:
            for col, v in zip(cols, (t, _text(server), _text(action), _text(rule), json.dumps(body)),
                              strict=True):
                col.append(v)

        async def _add(c: Conn) -> list[int]:
            got = await c.fetch(
                "INSERT INTO decisions(time, server, action, rule, body)"
                " SELECT * FROM unnest($1::float8[], $2::text[], $3::text[], $4::text[], $5::text[])"
                " RETURNING id", *cols)
            ids = sorted(int(r[0]) for r in got)  # one statement: ids follow the rows' order
            if ids and ids[-1] % 1000 < len(ids):
                await c.execute("DELETE FROM decisions WHERE id <= $1", ids[-1] - keep)
            return ids

        return await self._tx(_add, "add_decisions")

    async def list_decisions(self, *, server: str | None = None, action: str | None = None,
                             limit: int = 100) -> list[dict[str, Any]]:
        clause, args = where({"server": server, "action": action}, postgres_param)
        args.append(limit)
        sql = "SELECT id, body FROM decisions" + clause
        sql += f" ORDER BY id DESC LIMIT ${len(args)}"

        async def _q(c: Conn) -> list[dict[str, Any]]:
            return [{**json.loads(r[1]), "id": int(r[0])} for r in await c.fetch(sql, *args)]

        return await self._run(_q)

    # --- small durable values (rule state snapshot, pause switch) --------------------------------

    async def get_value(self, key: str) -> Any:
        async def _q(c: Conn) -> Any:
            v = await c.fetchval("SELECT value FROM kv WHERE key=$1", key)
            return json.loads(v) if v is not None else None

        return await self._run(_q)

    async def set_value(self, key: str, value: Any) -> None:
        async def _s(c: Conn) -> None:
            if value is None:
                await c.execute("DELETE FROM kv WHERE key=$1", key)
            else:
                await c.execute("INSERT INTO kv(key, value) VALUES ($1, $2)"
                                " ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                                key, json.dumps(value))

        await self._run(_s, "set_value")

    # --- state of the static inventory ---------------------------------------------------------

    async def get_state(self, kind: str) -> dict[str, Any]:
        async def _q(c: Conn) -> dict[str, Any]:
            rows = await c.fetch("SELECT key, value FROM inventory_state WHERE kind=$1", kind)
            return {r[0]: json.loads(r[1]) for r in rows}

        return await self._run(_q)

    async def set_state(self, kind: str, key: str, value: Any) -> None:
        await self.set_states([(kind, key, value)])

    async def set_states(self, changes: list[tuple[str, str, Any]]) -> None:
        """Several state changes in one transaction (all or none)."""
        if not changes:
            return

        async def _s(c: Conn) -> None:
            for kind, key, value in changes:
                if value is None:
                    await c.execute("DELETE FROM inventory_state WHERE kind=$1 AND key=$2", kind, key)
                else:
                    await c.execute(
                        "INSERT INTO inventory_state(kind, key, value) VALUES ($1, $2, $3)"
                        " ON CONFLICT (kind, key) DO UPDATE SET value=excluded.value",
                        kind, key, json.dumps(value))

        await self._tx(_s, "set_states")

    # --- maintenance silences and the operators' actions ---------------------------------------
    # Times default to the database's clock, like leases: every monitor sees the same silences.

    async def add_silence(self, kind: str, target: str, author: str, comment: str, starts: float,
                          ends: float, created: float | None = None) -> SilenceRow:
        async def _add(c: Conn) -> SilenceRow:
            r = await c.fetchrow(
                "INSERT INTO silences(kind, target, author, comment, starts, ends, created)"
                f" VALUES ($1, $2, $3, $4, $5, $6, coalesce($7::float8, {_CLOCK})) RETURNING {SILENCE_COLS}",
                _text(kind), _text(target), _text(author), _text(comment), starts, ends, created)
            assert r is not None
            return silence_from(r)

        return await self._run(_add, "add_silence")

    async def list_silences(self, *, since: float | None = None) -> list[SilenceRow]:
        async def _q(c: Conn) -> list[SilenceRow]:
            if since is None:
                rows = await c.fetch(f"SELECT {SILENCE_COLS} FROM silences ORDER BY id")
            else:
                rows = await c.fetch(f"SELECT {SILENCE_COLS} FROM silences WHERE ends>$1 ORDER BY id", since)
            return [silence_from(r) for r in rows]

        return await self._run(_q)

    async def expire_silence(self, silence_id: int, by: str, now: float | None = None) -> SilenceRow | None:
        async def _e(c: Conn) -> SilenceRow | None:
            at = now if now is not None else float(await c.fetchval(f"SELECT {_CLOCK}"))
            await c.execute("UPDATE silences SET starts=least(starts, $1), ends=$1,"
                            " expired_by=coalesce(expired_by, $2) WHERE id=$3 AND ends>$1",
                            at, _text(by), silence_id)
            r = await c.fetchrow(f"SELECT {SILENCE_COLS} FROM silences WHERE id=$1", silence_id)
            return silence_from(r) if r else None

        return await self._tx(_e, "expire_silence")

    async def add_audit(self, author: str, action: str, target: str, detail: dict[str, Any],
                        now: float | None = None) -> int:
        async def _a(c: Conn) -> int:
            return int(await c.fetchval(
                "INSERT INTO audit(time, author, action, target, body)"
                f" VALUES (coalesce($1::float8, {_CLOCK}), $2, $3, $4, $5) RETURNING id",
                now, _text(author), _text(action), _text(target), json.dumps(detail)))

        return await self._run(_a, "add_audit")

    async def list_audit(self, *, limit: int = 100) -> list[dict[str, Any]]:
        async def _q(c: Conn) -> list[dict[str, Any]]:
            rows = await c.fetch("SELECT id, time, author, action, target, body FROM audit"
                                 " ORDER BY id DESC LIMIT $1", limit)
            return [audit_from(r) for r in rows]

        return await self._run(_q)
