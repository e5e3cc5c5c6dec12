"""Power and health of a server through its BMC, over Redfish (DMTF `redfish` async client on aiohttp).

BMC connections (shared aiohttp session, one client per BMC connection, login/logout, TLS, errors) are
`adapters.redfish.client.RedfishConnections`; here redirects are followed (sushy sends /Systems/<name>
to the UUID URL with a 307). The ComputerSystem path is resolved once per endpoint and cached (with no
system named, the service must list exactly one).

Identity: every read of the ComputerSystem (the first contact included) is checked against the
inventory's `serial` and `uuid` (`check_identity`), and every power action (ForceOff, On) reads the
system afresh right before its POST, so a reset goes out only to a system that has just proved to be
the inventory's machine; on a mismatch `IdentityMismatch` is raised and nothing is sent. The Reset
target is taken from that fresh read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from adapters.redfish.client import (
    MAX_CONNECTIONS,
    ConnKey,
    RedfishConnections,
    bmc_message,
    bmc_of,
    check_identity,
    check_reply,
    conn_key,
    health_reading,
    path_of,
    reply_error,
)
from monitor.core.errors import IdentityMismatch
from monitor.core.model import PowerState, Server
from monitor.core.ports import HealthReading

log = logging.getLogger(__name__)

_RESET_ACTION = "#ComputerSystem.Reset"


@dataclass(frozen=True, slots=True)
class _SystemRef:
    path: str
    reset_target: str


class RedfishPower:
    """`monitor.core.ports.PowerControl` over Redfish."""

    def __init__(self, *, timeout: float = 10.0, session: aiohttp.ClientSession | None = None,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self._conns = RedfishConnections(timeout=timeout, session=session, owner="Redfish power adapter",
                                         follow_redirects=True, max_connections=max_connections)
        self._systems: dict[tuple[ConnKey, str | None], _SystemRef] = {}

    # --- PowerControl ---------------------------------------------------------------------------

    async def power_state(self, server: Server) -> PowerState:
        _, system = await self._read(server)
        return PowerState.parse(system.get("PowerState"))

    async def force_off(self, server: Server) -> None:
        """Press and hold (ForceOff). Already off is not an error."""
        await self._reset(server, "ForceOff", PowerState.OFF)

    async def power_on(self, server: Server) -> None:
        """Power on. Already on is not an error."""
        await self._reset(server, "On", PowerState.ON)

    async def health(self, server: Server) -> HealthReading:
        _, system = await self._read(server)
        return health_reading(system)

    def http(self) -> aiohttp.ClientSession:
        """The shared aiohttp session (one connection pool to every BMC), for other Redfish workers."""
        return self._conns.http()

    async def close(self) -> None:
        self._systems.clear()
        await self._conns.close()

    # --- reset ----------------------------------------------------------------------------------

    async def _reset(self, server: Server, reset_type: str, goal: PowerState) -> None:
        bmc = bmc_of(server)
        ref, _ = await self._read(server)  # fresh, right before the POST: identity checked, current target
        reply = await self._conns.request(bmc, "POST", ref.reset_target, {"ResetType": reset_type})
        if reply.ok:
            # 200/202/204. iLO wraps even success in an `error` object (Base.x.Success): ignore the body.
            log.info("Redfish %s accepted by %s (%s): HTTP %d", reset_type, bmc.url, ref.path, reply.status)
            return
        if 400 <= reply.status < 500 and reply.status not in (401, 403, 404):
            # BMC quirk, handled only here: for a reset to the state the server is already in, iLO answers
            # 400 (iLO.x.InvalidOperationForSystemState) and iDRAC 409. Re-read PowerState: if the server
            # already is where we wanted it, the request is fulfilled.
            current = await self.power_state(server)
            if current is goal:
                log.info(
                    "Redfish %s on %s answered HTTP %d (%s) but the server is already %s: treated as done",
                    reset_type,
                    bmc.url,
                    reply.status,
                    bmc_message(reply.body) or "no message",
                    current.value,
                )
                return
        raise reply_error(bmc, reply, f"{reset_type} refused")

    # --- system resolution ----------------------------------------------------------------------

    async def _read(self, server: Server) -> tuple[_SystemRef, dict[str, Any]]:
        """GET the server's ComputerSystem and check its identity (resolving and caching its path on
        first use; a 404 or a mismatch forgets the cached path, so it is resolved again next time)."""
        bmc = bmc_of(server)
        cache_key = (conn_key(bmc), bmc.system)
        cached = self._systems.get(cache_key)
        path = cached.path if cached is not None else await self._conns.system_path(bmc)
        reply = await self._conns.get(bmc, path)
        if not reply.ok:
            if reply.status == 404:
                self._systems.pop(cache_key, None)
            check_reply(bmc, reply, f"GET {path} failed")
        system = reply.object()
        final = reply.path.rstrip("/") or path
        try:
            check_identity(server, system, endpoint=bmc.url, path=final)
        except IdentityMismatch:
            self._systems.pop(cache_key, None)
            log.error("Redfish identity check of %s on %s failed", server.id, bmc.url)
            raise
        ref = _SystemRef(final, _reset_target(system, final))
        self._systems[cache_key] = ref
        return ref, system


def _reset_target(system: Mapping[str, Any], path: str) -> str:
    actions = system.get("Actions")
    action = actions.get(_RESET_ACTION) if isinstance(actions, dict) else None
    target = action.get("target") if isinstance(action, dict) else None
    if isinstance(target, str) and target.strip():
        return path_of(target)
    return f"{path}/Actions/ComputerSystem.Reset"


__all__ = ["RedfishPower"]
