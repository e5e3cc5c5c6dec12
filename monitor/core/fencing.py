"""The fencing token an outside action carries, and the check made right before it is sent.

A job's owner acts only through `JobRunner`'s gate, which sets the current `Fence` (a context variable,
so it follows the action into the adapters' coroutines and tasks) for the duration of one action:

- `Fence.header()` is sent with every mutating request an adapter makes for the job
  (`X-Failover-Fence: job=12; epoch=3; monitor=m1`). An outside system that can check it (the lab's
  manager API and BMCs) refuses an epoch lower than the highest it has seen for that job; others ignore
  an unknown header.
- `check_fence()` is called by an adapter immediately before it sends a mutating request: it raises
  `FenceLost` when the action's deadline (the monitor's lease, less the action's own time limit and a
  margin) has passed — for example after the process was paused between the gate and the send.

Depends on nothing of ours; adapters import it to read the current fence.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from monitor.core.errors import FenceLost

FENCE_HEADER = "X-Failover-Fence"

_HEADER = re.compile(r"^\s*job=(\d+)\s*;\s*epoch=(\d+)\s*;\s*monitor=([^;\s]+)\s*$")






@dataclass(frozen=True, slots=True)
class Fence:
    job: int
    epoch: int
    monitor: str
    valid: Callable[[], bool]
    """True while the action may still be sent (checked right before each mutating request)."""

    def header(self) -> str:
        return f"job={self.job}; epoch={self.epoch}; monitor={self.monitor}"


_current: ContextVar[Fence | None] = ContextVar("failover_fence", default=None)


def current_fence() -> Fence | None:
    return _current.get()


@contextlib.contextmanager
def acting(fence: Fence) -> Iterator[Fence]:
    """Within the block, adapters send `fence` with their requests and check it before each."""
    token = _current.set(fence)
    try:
        yield fence
    finally:
        _current.reset(token)


def check_fence() -> None:
    """Raise FenceLost when the current action may no longer be sent; no fence: nothing to check."""
    fence = _current.get()
    if fence is not None and not fence.valid():
        raise FenceLost(f"job {fence.job}: epoch {fence.epoch} of {fence.monitor} may no longer act "
                        "(lease or action deadline passed); request not sent")


def fence_headers() -> dict[str, str]:
    """The header to add to a mutating request (empty outside an action)."""
    fence = _current.get()
    return {FENCE_HEADER: fence.header()} if fence is not None else {}


_observing: ContextVar[Fence | None] = ContextVar("failover_observing", default=None)


@contextlib.contextmanager
def observing(fence: Fence) -> Iterator[Fence]:
    """Within the block (a job's whole run on its owner), reads carry the job's fencing token too: a
    system that honours tokens learns the newest epoch as soon as the new owner reads from it, so a
    stale request of a paused former owner that arrives after it is refused. Reads are never refused
    and never checked (`check_fence` checks actions only)."""
    token = _observing.set(fence)
    try:
        yield fence
    finally:
        _observing.reset(token)


def read_headers() -> dict[str, str]:
    """The header to add to a read: the token of the job being run (empty outside a job's run)."""
    fence = _observing.get()
    return {FENCE_HEADER: fence.header()} if fence is not None else {}


def parse_fence(value: str) -> tuple[int, int, str] | None:
    """(job, epoch, monitor) of a header value, or None when it is malformed."""
    m = _HEADER.match(value)
    return (int(m.group(1)), int(m.group(2)), m.group(3)) if m else None
