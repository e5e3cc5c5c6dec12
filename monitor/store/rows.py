"""What the two stores share: the schema version, the row types they answer with, timestamps, rows →
`Job`, and the filters of the list queries (each store only supplies its placeholder style)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from monitor.core.model import FlowContext, Job, JobState, Step, StepState, iso

SCHEMA_VERSION = 4
"""The schema both stores migrate to (SQLite's `meta.schema`, PostgreSQL's `schema_migrations`)."""

ACTIVE_STATES = ("queued", "running")
ACTIVE_SQL = "('queued', 'running')"
"""`state IN …` of an active job, as SQL."""


class Row(Protocol):
    """A result row of either driver (sqlite3.Row, asyncpg.Record): columns by name."""

    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class JoinResult:
    """The answer to `join`: joined, or the live holder of the name and when its lease (plus the fence
    grace) runs out, in seconds of the store's clock from now."""

    joined: bool
    holder: str = ""
    """The incarnation holding the name (when not joined)."""
    lease_until: float = 0.0
    wait: float = 0.0


@dataclass(frozen=True, slots=True)
class TimerWrite:
    """A durable timer to schedule once per (kind, job), due at `due` on the store's clock."""

    kind: str
    server: str
    due: float


@dataclass(frozen=True, slots=True)
class JobWrites:
    """What `save_job` writes in the job row's own transaction (one commit), after the row:
    `lock`: take this domain group for the job (`lock_group`'s fair decision; the row is committed
    whether or not the group is granted, so a waiting job is in the queue); `unlock`: release this group
    if the job holds it; `timer`: schedule this timer of the job."""

    lock: str | None = None
    unlock: str | None = None
    timer: TimerWrite | None = None


@dataclass(frozen=True, slots=True)
class Saved:
    """What `save_job` did besides the job row."""

    holder: int | None = None
    """With `JobWrites.lock`: None when the job holds the group now, else the job holding it or going
    first."""
    unlocked: bool = False
    """With `JobWrites.unlock`: whether the job held the group (and released it)."""
    timer: Timer | None = None
    """With `JobWrites.timer`: the timer as stored (the existing one when it was scheduled before)."""


JOB_WRITES = ("create_job", "save_job", "lock_group", "unlock_group", "add_timer")
"""The store methods (`commits` keys) that commit a job's own writes; adopt_jobs is counted apart."""


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


def ts(t: datetime | None) -> float | None:
    """A datetime as stored: seconds since the epoch (None stays None)."""
    return t.timestamp() if t else None


def dt(v: float | None) -> datetime | None:
    """Seconds since the epoch as read back: an aware UTC datetime (None stays None)."""
    return datetime.fromtimestamp(v, UTC) if v is not None else None


def owner_entry(epoch: int, owner: str | None, since: float) -> dict[str, Any]:
    """One entry of a job's ownership history, as the job JSON shows it."""
    return {"epoch": int(epoch), "owner": owner, "since": iso(datetime.fromtimestamp(float(since), UTC))}


def member_row(row: dict[str, Any], now: float) -> dict[str, Any]:
    """A members row as `members()` answers it: `lease_left` in seconds, None once the lease is over."""
    delta = float(row["lease_until"]) - now
    return {**row, "lease_left": round(delta, 3) if delta > 0 else None, "lease_delta": delta}


def step_from(s: Row) -> Step:
    """A `steps` row as a Step."""
    return Step(s["step"], StepState(s["state"]), dt(s["started"]), dt(s["finished"]), s["detail"])


def job_from(r: Row, steps: list[Step], owners: list[dict[str, Any]]) -> Job:
    """A `jobs` row, with its steps and ownership history, as a Job."""
    return Job(
        id=int(r["id"]), server=r["server"], group=r["grp"], state=JobState(r["state"]),
        trigger=json.loads(r["trigger"]), created=dt(r["created"]) or datetime.now(UTC),
        steps=steps, profile=r["profile"], spare=r["spare"], error=r["error"],
        finished=dt(r["finished"]), context=FlowContext.model_validate_json(r["context"]),
        notes=json.loads(r["notes"]),
        rediscovery=json.loads(r["rediscovery"]) if r["rediscovery"] else None, owner=r["owner"],
        epoch=int(r["epoch"]), owner_token=r["owner_token"], owners=owners,
    )


def where(filters: Mapping[str, Any], placeholder: Callable[[int], str]) -> tuple[str, list[Any]]:
    """`" WHERE col=<p1> AND …"` over the filters that are set (None and "" are not), and their values.
    `placeholder(n)` is the store's n-th parameter (SQLite `?`, PostgreSQL `$n`)."""
    clauses: list[str] = []
    args: list[Any] = []
    for column, value in filters.items():
        if value is None or value == "":
            continue
        args.append(value)
        clauses.append(f"{column}={placeholder(len(args))}")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def sqlite_param(_n: int) -> str:
    return "?"


def postgres_param(n: int) -> str:
    return f"${n}"


SILENCE_KINDS = ("server", "group", "enclosure")
"""What a maintenance silence names: one server, a domain group, or an enclosure."""

SILENCE_COLS = "id, kind, target, author, comment, starts, ends, created, expired_by"


@dataclass(frozen=True, slots=True)
class SilenceRow:
    """A maintenance silence as stored (times in seconds since the epoch): it covers the servers it
    names from `starts` until `ends` (an expired silence has `ends` moved to when it was expired)."""

    id: int
    kind: str
    target: str
    author: str
    comment: str
    starts: float
    ends: float
    created: float
    expired_by: str | None = None

    def active(self, now: float) -> bool:
        return self.starts <= now < self.ends

    def public(self, now: float) -> dict[str, Any]:
        state = "active" if self.active(now) else ("pending" if now < self.starts else "expired")
        return {"id": self.id, "kind": self.kind, "target": self.target, "author": self.author,
                "comment": self.comment, "starts": iso(datetime.fromtimestamp(self.starts, UTC)),
                "ends": iso(datetime.fromtimestamp(self.ends, UTC)),
                "created": iso(datetime.fromtimestamp(self.created, UTC)),
                "expired_by": self.expired_by, "state": state}


def silence_from(r: Row) -> SilenceRow:
    return SilenceRow(int(r["id"]), r["kind"], r["target"], r["author"], r["comment"], float(r["starts"]),
                      float(r["ends"]), float(r["created"]), r["expired_by"])


def audit_from(r: Row) -> dict[str, Any]:
    """An operator-action record as `list_audit` answers it."""
    return {"id": int(r["id"]), "time": iso(datetime.fromtimestamp(float(r["time"]), UTC)),
            "author": r["author"], "action": r["action"], "target": r["target"],
            "detail": json.loads(r["body"])}
