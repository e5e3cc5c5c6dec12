"""The fencing token a monitor sends with each mutating request it makes for a job (lab/API.md, "Fencing").

`X-Failover-Fence: job=<N>; epoch=<E>; monitor=<name>`. The lab parses it itself (it never imports the
monitor): this module only reads the header; `lab.world.World` keeps the highest epoch seen per job and
decides what a token admits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "FENCE_HEADER", "NO_TOKEN", "FenceMode", "FenceToken", "MalformedFence", "parse_fence", "token_fields",
]

FENCE_HEADER: Final = "X-Failover-Fence"
FenceMode = Literal["enforce", "record"]

_NUMBER: Final = re.compile(r"[0-9]{1,18}")
_NAME: Final = re.compile(r"[^\s;=]{1,200}")
_KEYS: Final = ("job", "epoch", "monitor")


class MalformedFence(ValueError):
    """The header is present but not `job=<N>; epoch=<E>; monitor=<name>` (answered 400)."""


@dataclass(frozen=True, slots=True)
class FenceToken:
    job: int
    epoch: int
    monitor: str

    def fields(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "job": self.job, "epoch": self.epoch}


NO_TOKEN: Final[dict[str, Any]] = {"monitor": None, "job": None, "epoch": None}


def token_fields(token: FenceToken | None) -> dict[str, Any]:
    """`monitor`, `job`, `epoch` of a log entry or a violation (None each without a token)."""
    return token.fields() if token is not None else dict(NO_TOKEN)


def parse_fence(values: Sequence[str]) -> FenceToken | None:
    """The token of a request from all its X-Failover-Fence header values; None without the header.

    Exactly one header with the three keys `job`, `epoch` (decimal, 0 or more) and `monitor` (no blanks,
    `;` or `=`), each once, separated by `;` with optional blanks, in any order; anything else raises
    MalformedFence."""
    if not values:
        return None
    if len(values) > 1:
        raise MalformedFence(f"{FENCE_HEADER} given {len(values)} times (at most once)")
    value = values[0]
    found: dict[str, str] = {}
    for part in value.split(";"):
        key, sep, item = part.partition("=")
        key, item = key.strip(), item.strip()
        if not sep or key not in _KEYS:
            raise MalformedFence(f"{FENCE_HEADER} {value!r}: expected job=<N>; epoch=<E>; monitor=<name>")
        if key in found:
            raise MalformedFence(f"{FENCE_HEADER} {value!r}: {key} given twice")
        found[key] = item
    missing = [k for k in _KEYS if k not in found]
    if missing:
        raise MalformedFence(f"{FENCE_HEADER} {value!r}: missing {', '.join(missing)}")
    for key in ("job", "epoch"):
        if not _NUMBER.fullmatch(found[key]):
            raise MalformedFence(f"{FENCE_HEADER} {value!r}: {key} must be a non-negative integer")
    if not _NAME.fullmatch(found["monitor"]):
        raise MalformedFence(f"{FENCE_HEADER} {value!r}: monitor must be a name without blanks, ';' or '='")
    return FenceToken(int(found["job"]), int(found["epoch"]), found["monitor"])


def read_token(method: str, values: Sequence[str]) -> FenceToken | None:
    """The fencing token a read (GET) carries, for `World.observe`; None for other methods, without the
    header, or with a malformed one (a read is never refused for its header)."""
    if method != "GET" or not values:
        return None
    try:
        return parse_fence(values)
    except MalformedFence:
        return None
