"""Choosing the store: `store: postgresql://…` (or postgres://) is the shared PostgreSQL store, anything
else a SQLite file. `Store` is what both offer, for annotations."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from monitor.store import SCHEMA_VERSION, SqliteStore, Timer
from monitor.store_pg import PostgresStore

if TYPE_CHECKING:
    from monitor.config import MonitorConfig
    from monitor.model import Job

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(store: str) -> bool:
    return store.startswith(POSTGRES_SCHEMES)


class Store(Protocol):
    """The durable store, as SqliteStore and PostgresStore both implement it (see SqliteStore for the
    meaning of each method)."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    async def create_job(self, server: str, group: str, trigger: dict[str, Any], now: datetime,
                         owner: str | None = None) -> Job: ...
    async def save_job(self, job: Job) -> None: ...
    async def get_job(self, job_id: int) -> Job | None: ...
    async def list_jobs(
        self, *, state: str | None = None, server: str | None = None, limit: int = 100
    ) -> list[Job]: ...
    async def active_jobs(self) -> list[Job]: ...
    async def active_by_server(self) -> dict[str, int]: ...
    async def job_counts(self) -> dict[str, int]: ...

    async def lock_group(self, group: str, job: int, now: float) -> int | None: ...
    async def unlock_group(self, group: str, job: int) -> bool: ...
    async def group_locks(self) -> dict[str, int]: ...

    async def add_timer(self, kind: str, job: int, server: str, due: float) -> Timer: ...
    async def claim_due_timers(self, instance: str, now: float, hold: float) -> list[Timer]: ...
    async def scheduled_timers(self) -> list[Timer]: ...
    async def update_timer(
        self, timer_id: int, *, state: str, due: float | None = None, attempts: int | None = None,
        detail: str = "", claimed_by: str | None = None,
    ) -> bool: ...

    async def heartbeat(self, instance: str, address: str, now: float, lease: float) -> None: ...
    async def leave(self, instance: str) -> None: ...
    async def members(self) -> list[dict[str, Any]]: ...
    async def adopt_jobs(self, instance: str, now: float) -> list[Job]: ...
    async def dedupe(self, key: str, instance: str, now: float, ttl: float) -> str | None: ...

    async def add_decisions(self, rows: list[tuple[float, str | None, str, str | None, dict[str, Any]]],
                            keep: int = 100_000) -> list[int]: ...
    async def list_decisions(self, *, server: str | None = None, action: str | None = None,
                             limit: int = 100) -> list[dict[str, Any]]: ...

    async def get_value(self, key: str) -> Any: ...
    async def set_value(self, key: str, value: Any) -> None: ...

    async def get_state(self, kind: str) -> dict[str, Any]: ...
    async def set_state(self, kind: str, key: str, value: Any) -> None: ...
    async def set_states(self, changes: list[tuple[str, str, Any]]) -> None: ...


def _conforms(sqlite: SqliteStore, postgres: PostgresStore) -> tuple[Store, Store]:
    """Never called: mypy checks here that both stores implement `Store`."""
    return sqlite, postgres


def open_store(config: MonitorConfig, sqlite_path: str) -> SqliteStore | PostgresStore:
    """The configured store, not yet opened. `sqlite_path`: the SQLite file, already resolved against the
    config file's folder (unused for PostgreSQL)."""
    if is_postgres(config.store):
        pg = config.postgres
        return PostgresStore(config.store, min_size=pg.min_size, max_size=pg.max_size, timeout=pg.timeout)
    return SqliteStore(sqlite_path, synchronous=config.sqlite.synchronous)


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
