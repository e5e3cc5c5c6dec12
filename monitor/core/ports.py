"""The small async interfaces through which the failover flow talks to the outside world.

Each adapter has one exception root (`AdapterError`) with leaves named for what went wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from monitor.core.model import Domain, Health, HostRecord, Inventory, PowerState, Profile, Server


@dataclass(frozen=True, slots=True)
class HealthReading:
    power: PowerState
    health: Health
    health_rollup: Health
    state: str | None
    """Redfish Status.State (Enabled, Absent, …) when the BMC gave one."""


class PowerControl(Protocol):
    """Power and health of one server, through its BMC."""

    async def power_state(self, server: Server) -> PowerState: ...

    async def force_off(self, server: Server) -> None:
        """Press and hold (Redfish ForceOff). A server that is already off is not an error."""

    async def power_on(self, server: Server) -> None:
        """Power on. A server that is already on is not an error."""

    async def health(self, server: Server) -> HealthReading: ...

    async def close(self) -> None: ...


class ProfileManager(Protocol):
    """The VCEM role: domains, bays, spare designations and profile assignment."""

    async def inventory(self) -> Inventory: ...

    async def domain(self, domain_id: str) -> Domain: ...

    async def server(self, server_id: str) -> Server: ...

    async def group_servers(self, group: str) -> list[Server]:
        """The servers of one domain group, read fresh (spare selection reads only its own group)."""

    async def profile(self, profile_id: str) -> Profile: ...

    async def move_profile(self, profile_id: str, source: str, target: str) -> None:
        """Atomically move a profile from source to target; on error nothing changed."""

    async def set_spare(self, server_id: str, spare: bool) -> None: ...

    async def close(self) -> None: ...


class TaskState(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A manager's asynchronous task (OneView /rest/tasks, OME JobService job), as last read."""

    ref: str
    """The manager's own reference: a task URI (OneView) or a job id (OME)."""
    state: TaskState
    percent: int | None = None
    message: str = ""
    """The manager's own words: its status text, or its error code and message when it failed."""


@runtime_checkable
class TaskedMoves(Protocol):
    """A manager whose profile move is an asynchronous task that goes on when the monitor dies
    (OneView, OME). The flow writes `intent` ahead, starts the move, writes the task's reference, then
    follows the task; a new owner follows a recorded task instead of sending the move again."""

    async def start_move(self, profile_id: str, source: str, target: str, *, intent: str) -> str:
        """Send the move as a conditional update (eTag / If-Match); return the task's reference.
        Nothing is retried here: a conflict (412) or a refusal is an `OperationRejected`."""

    async def find_move(self, profile_id: str, target: str, *, intent: str) -> str | None:
        """After a crash between sending the move and recording its task: the task that request
        started (None: the manager holds none, so the request never took effect)."""

    async def task(self, ref: str) -> TaskStatus:
        """Read the task now."""


@runtime_checkable
class ManagerPower(Protocol):
    """Power control through the profile manager (OneView PressAndHold, OME POWER_CONTROL job): a fence
    level that does not need the server's BMC."""

    async def manager_power_state(self, server_id: str) -> PowerState: ...

    async def manager_force_off(self, server_id: str) -> str | None:
        """Start a forced power-off; the task's reference, or None when the manager acted at once.
        A server that is already off is not an error."""

    async def manager_power_on(self, server_id: str) -> str | None: ...


class AlertSink(Protocol):
    """Where alert decisions go (log, MQTT). `alert` never blocks and never raises."""

    def alert(self, server: str | None, payload: dict[str, object]) -> None: ...


@dataclass(frozen=True, slots=True)
class DiscoveryResult:
    found: bool
    host: HostRecord | None
    detail: str


class DiscoveryService(Protocol):
    """The Systems Insight Manager role: host records and discovery."""

    async def remove_host(self, server_id: str) -> HostRecord | None:
        """Remove the server's host record; return what was removed (None: there was none)."""

    async def restore_host(self, server_id: str, record: HostRecord) -> None: ...

    async def discover(self, server_id: str) -> DiscoveryResult: ...

    async def close(self) -> None: ...
