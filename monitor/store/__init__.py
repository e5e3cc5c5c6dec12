"""The durable store. `Store` is the protocol both stores implement, each method's meaning in its
docstring; `open_store` chooses: `store: postgresql://…` (or postgres://) is the shared PostgreSQL store
(monitor/store/postgres.py), anything else a SQLite file (monitor/store/sqlite.py). What they share —
row types, timestamps, rows → Job, query filters — is in monitor/store/rows.py."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from monitor.store.postgres import PostgresStore
from monitor.store.rows import SCHEMA_VERSION, JobWrites, JoinResult, Saved, SilenceRow, Timer, TimerWrite
from monitor.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from monitor.core.config import MonitorConfig
    from monitor.core.model import Job

__all__ = ["JobWrites", "PostgresStore", "Saved", "SqliteStore", "Store", "TimerWrite", "is_postgres",
           "open_store", "upgrade_store"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(store: str) -> bool:
    return store.startswith(POSTGRES_SCHEMES)


class Store(Protocol):
    """The durable store, as SqliteStore and PostgresStore both implement it.

    Times that decide between monitors (leases, claims, de-duplication) are on the store's clock: a
    `now` argument of None means "the store's clock" (PostgreSQL's `clock_timestamp()`; for SQLite,
    one host, the clock the store was built with); tests may pass their own.

    `commits` counts the committed write transactions per method name (a job's own writes: the names in
    rows.JOB_WRITES), so that tests and benches count a job's commits exactly."""

    commits: Counter[str]

    async def open(self) -> None:
        """Connect and migrate to SCHEMA_VERSION; StoreError when the store is newer than this program
        or cannot be reached."""
    async def close(self) -> None:
        """Release the connections (what was written is durable already)."""
    async def ping(self) -> None:
        """A round trip to the store; StoreError when it does not answer (health check)."""
    async def clock(self) -> float:
        """The store's clock, seconds since the epoch."""

    async def create_job(self, server: str, group: str, trigger: dict[str, Any], now: datetime,
                         owner: str | None = None, token: str | None = None) -> Job:
        """A new queued job at epoch 1 of `owner`/`token`; ActiveJobExists when the server has one."""
    async def save_job(self, job: Job, also: JobWrites | None = None) -> Saved:
        """Write the job and its steps atomically while `job.epoch` is current; LostOwnership else
        (and nothing is written). `also`: the job's group lock, unlock and timer, written in the same
        transaction (one commit; see JobWrites and Saved)."""
    async def get_job(self, job_id: int) -> Job | None:
        """The job with its steps and ownership history; None when there is no such job."""
    async def list_jobs(
        self, *, state: str | None = None, server: str | None = None, limit: int = 100
    ) -> list[Job]:
        """Newest first."""
    async def active_jobs(self) -> list[Job]:
        """Every queued or running job, in job order."""
    async def active_by_server(self) -> dict[str, int]:
        """server -> its active job (at most one per server, enforced by the schema)."""
    async def job_counts(self) -> dict[str, int]:
        """state -> number of jobs in it."""

    async def lock_group(self, group: str, job: int, now: float | None = None) -> int | None:
        """Take the group for the job: None when it holds it, else the job that holds it or goes first."""
    async def unlock_group(self, group: str, job: int) -> bool:
        """Release the group if the job holds it; whether it did."""
    async def group_locks(self) -> dict[str, int]:
        """group -> the job holding it."""
    async def release_stale_locks(self) -> dict[str, int]:
        """Release, atomically, the locks of jobs that are no longer active; returns them."""

    async def add_timer(self, kind: str, job: int, server: str, due: float) -> Timer:
        """Schedule a timer once per (kind, job), due at `due` on the store's clock."""
    async def claim_due_timers(self, instance: str, now: float | None, hold: float) -> list[Timer]:
        """Claim, for `hold` seconds, the due timers nobody holds: each fires on one monitor."""
    async def scheduled_timers(self) -> list[Timer]:
        """The timers still scheduled, soonest first."""
    async def update_timer(
        self, timer_id: int, *, state: str, due: float | None = None, attempts: int | None = None,
        detail: str = "", claimed_by: str | None = None,
    ) -> bool:
        """Record a timer's outcome (only while `claimed_by` holds it); whether it was recorded."""

    async def join(self, instance: str, token: str, address: str, lease: float, grace: float,
                   now: float | None = None) -> JoinResult:
        """Take the name for the process `token`, unless a live process holds it (see JoinResult)."""
    async def heartbeat(self, instance: str, token: str, address: str, lease: float,
                        now: float | None = None) -> bool:
        """Renew the process's lease; whether it had already ended on the store's clock (its jobs may
        have been taken over since); MembershipLost when another process holds the name."""
    async def leave(self, instance: str, token: str, grace: float = 0.0, now: float | None = None) -> None:
        """End the lease now (dated back `grace` seconds after a clean stop)."""
    async def members(self, now: float | None = None) -> list[dict[str, Any]]:
        """instance, address, incarnation, started, lease_until, lease_left (None once over)."""
    async def adopt_jobs(self, instance: str, token: str, grace: float,
                         now: float | None = None) -> list[Job]:
        """Take over the active jobs whose owner's lease ended over `grace` seconds ago; epoch + 1."""
    async def dedupe(self, key: str, instance: str, now: float | None, ttl: float) -> str | None:
        """Claim `key` for `ttl` seconds: None when this monitor has it, else who had it first."""

    async def add_decisions(self, rows: list[tuple[float, str | None, str, str | None, dict[str, Any]]],
                            keep: int = 100_000) -> list[int]:
        """Store decisions (at, server, action, rule, body) in one transaction, keeping the newest
        `keep`; their ids, in order."""
    async def list_decisions(self, *, server: str | None = None, action: str | None = None,
                             limit: int = 100) -> list[dict[str, Any]]:
        """Decision bodies (with their `id`), newest first, filtered by server and action."""

    async def get_value(self, key: str) -> Any:
        """A small JSON value (rule state snapshot, pause switch); None when unset."""
    async def set_value(self, key: str, value: Any) -> None:
        """Set (None: delete) a small JSON value, durably."""

    async def get_state(self, kind: str) -> dict[str, Any]:
        """Every key -> JSON value of one kind of inventory state (static source: moves, spares, hosts)."""
    async def set_state(self, kind: str, key: str, value: Any) -> None:
        """Set (None: delete) one inventory-state value, durably."""
    async def set_states(self, changes: list[tuple[str, str, Any]]) -> None:
        """Apply several (kind, key, value) changes in one transaction."""

    async def add_silence(self, kind: str, target: str, author: str, comment: str, starts: float,
                          ends: float, created: float | None = None) -> SilenceRow:
        """A maintenance silence of one server, domain group or enclosure (`kind`), from `starts` until
        `ends`; `created` None: the store's clock."""
    async def list_silences(self, *, since: float | None = None) -> list[SilenceRow]:
        """Every silence in creation order; with `since`, only those that end after it."""
    async def expire_silence(self, silence_id: int, by: str, now: float | None = None) -> SilenceRow | None:
        """End the silence at `now` (the store's clock when None; a pending one starts and ends then),
        recording who; an already ended one is left as it is. None when there is no such silence."""
    async def add_audit(self, author: str, action: str, target: str, detail: dict[str, Any],
                        now: float | None = None) -> int:
        """Record an operator's action (guards reset, return to service, failback); its id."""
    async def list_audit(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """The operators' actions, newest first."""


def _conforms(sqlite: SqliteStore, postgres: PostgresStore) -> tuple[Store, Store]:
    """Never called: mypy checks here that both stores implement `Store`."""
    return sqlite, postgres


def open_store(config: MonitorConfig, sqlite_path: str,
               clock: Callable[[], float] | None = None) -> SqliteStore | PostgresStore:
    """The configured store, not yet opened. `sqlite_path`: the SQLite file, already resolved against the
    config file's folder (unused for PostgreSQL). `clock`: SQLite's clock (the monitor's: one host)."""
    if is_postgres(config.store):
        pg = config.postgres
        return PostgresStore(config.store, min_size=pg.min_size, max_size=pg.max_size, timeout=pg.timeout)
    if clock is None:
        return SqliteStore(sqlite_path, synchronous=config.sqlite.synchronous)
    return SqliteStore(sqlite_path, synchronous=config.sqlite.synchronous, clock=clock)


def _sqlite_version(path: str) -> int:
    if path == ":memory:" or not Path(path).exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as c:
            row = c.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


async def upgrade_store(config: MonitorConfig, sqlite_path: str) -> tuple[int, int]:
    """Open the configured store, applying its migrations; return the schema version (before, after).
    0: no store yet. StoreError when it cannot be opened or its schema is newer than this program."""
    store = open_store(config, sqlite_path)
    if isinstance(store, PostgresStore):
        await store.open(upgrade=False)
        try:
            return await store.schema_version(), await store.upgrade()
        finally:
            await store.close()
    before = await asyncio.to_thread(_sqlite_version, sqlite_path)
    await store.open()
    await store.close()
    return before, SCHEMA_VERSION
