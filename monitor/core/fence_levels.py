"""Fence levels: the ways a server can be powered off, tried in order as Pacemaker's fencing topology.

A level reads a server's power and forces it off. `bmc` is the server's own BMC over Redfish (the
`PowerControl` adapter), `manager` the profile manager's power control (`ManagerPower`), `oa` the c-Class
Onboard Administrator over SSH and `ipmi` IPMI over LAN (adapters/fence/). Which levels, in which order,
for which server, is `FenceTopology` (built from `failover.fencing` by adapters/fence/build.py).

The flow (monitor/jobs/flow.py) tries the levels in order until one confirms the source Off; every
level's result is recorded. The re-checks before the move and before the spare's power-on read every
level: Off only when at least one level answers and every level that answers reads Off (an unreadable
level is not Off, and one that reads anything else is a contradiction that stops the job).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from monitor.core.errors import AdapterError
from monitor.core.model import PowerState, Server
from monitor.core.ports import ManagerPower, PowerControl

log = logging.getLogger(__name__)


class FenceLevel(Protocol):
    """One way of powering a server off."""

    @property
    def name(self) -> str: ...

    async def power_state(self, server: Server) -> PowerState:
        """The server's power as this level reads it now; an AdapterError when it cannot be read."""

    async def force_off(self, server: Server) -> None:
        """Start a forced (immediate, not graceful) power-off. Already off is not an error. The caller
        confirms the result by reading `power_state`."""

    async def close(self) -> None: ...


class BmcLevel:
    """`bmc`: the server's BMC over Redfish, through the PowerControl adapter (ComputerSystem.Reset
    ForceOff). The adapter is closed by its owner, not here."""

    name = "bmc"

    def __init__(self, power: PowerControl) -> None:
        self._power = power

    async def power_state(self, server: Server) -> PowerState:
        return await self._power.power_state(server)

    async def force_off(self, server: Server) -> None:
        await self._power.force_off(server)

    async def close(self) -> None:
        """The PowerControl adapter is the daemon's: nothing to close here."""


class ManagerLevel:
    """`manager`: the profile manager's own power control (OneView PressAndHold, OME POWER_CONTROL, the
    lab's manager API), which does not need the server's BMC. A task the manager starts for the
    power-off is not followed here: the flow confirms Off by reading the power state."""

    name = "manager"

    def __init__(self, manager: ManagerPower) -> None:
        self._manager = manager

    async def power_state(self, server: Server) -> PowerState:
        return await self._manager.manager_power_state(server.id)

    async def force_off(self, server: Server) -> None:
        ref = await self._manager.manager_force_off(server.id)
        if ref is not None:
            log.info("manager power-off of %s runs as task %s", server.id, ref)

    async def close(self) -> None:
        """The manager adapter is the daemon's: nothing to close here."""


@dataclass(frozen=True, slots=True)
class Reading:
    """What one level read of a server's power."""

    level: str
    state: PowerState | None
    """None: the level could not read it (`error` says why)."""
    error: str = ""

    def text(self) -> str:
        return f"{self.level} {self.state.value}" if self.state is not None else \
            f"{self.level} unreadable ({self.error})"


@dataclass(frozen=True, slots=True)
class OffCheck:
    """The result of reading every level of a server (the re-checks before the move and the power-on)."""

    off: bool
    readings: tuple[Reading, ...]

    def text(self) -> str:
        return ", ".join(r.text() for r in self.readings) or "no fence level"


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    endpoint = getattr(exc, "endpoint", None)
    return f"{text} ({endpoint})" if endpoint and endpoint not in text else text


async def read_level(level: FenceLevel, server: Server) -> Reading:
    try:
        return Reading(level.name, await level.power_state(server))
    except AdapterError as exc:
        return Reading(level.name, None, describe(exc))


async def reads_off(levels: Sequence[FenceLevel], server: Server) -> OffCheck:
    """Read every level at once: Off when at least one level answers and every level that answers reads
    Off. A level that cannot be read is not Off; a level that reads On (or a transition, or Unknown)
    makes the answer "not Off" whatever the others say."""
    readings = tuple(await asyncio.gather(*(read_level(level, server) for level in levels)))
    answered = [r for r in readings if r.state is not None]
    off = bool(answered) and all(r.state is PowerState.OFF for r in answered)
    return OffCheck(off, readings)


class FenceTopology:
    """The levels there are and the order each server tries them in (by server, then domain group,
    then the default order)."""

    def __init__(self, levels: Mapping[str, FenceLevel], default: Sequence[str],
                 groups: Mapping[str, Sequence[str]] | None = None,
                 servers: Mapping[str, Sequence[str]] | None = None,
                 timing: Mapping[str, tuple[int | None, float | None]] | None = None) -> None:
        orders = [default, *(groups or {}).values(), *(servers or {}).values()]
        missing = sorted({name for order in orders for name in order} - set(levels))
        if missing:
            raise ValueError(f"fence level(s) {', '.join(missing)} named in an order but not built")
        self.levels = dict(levels)
        self.default = list(default)
        self.groups = {k: list(v) for k, v in (groups or {}).items()}
        self.servers = {k: list(v) for k, v in (servers or {}).items()}
        self._timing = dict(timing or {})

    def order(self, server: Server) -> list[FenceLevel]:
        names = self.servers.get(server.id) or self.groups.get(server.domain_group) or self.default
        return [self.levels[n] for n in names]

    def timing(self, level: str, attempts: int, timeout: float) -> tuple[int, float]:
        """(ForceOffs through the level, seconds to wait for Off after each), defaults filled in."""
        n, t = self._timing.get(level, (None, None))
        return n or attempts, t or timeout

    async def close(self) -> None:
        for level in self.levels.values():
            try:
                await level.close()
            except Exception:  # closing is best effort; the next level still closes
                log.exception("closing fence level %s", level.name)


__all__ = ["BmcLevel", "FenceLevel", "FenceTopology", "ManagerLevel", "OffCheck", "Reading", "describe",
           "read_level", "reads_off"]
