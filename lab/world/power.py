"""The power state machine: resets, timed transitions on the running loop, and the oracle's checks
at each power-on."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from lab.fencing import FenceToken
from lab.world.catalogue import RESET_TYPES
from lab.world.errors import Conflict, InvalidPowerState, LabError, UnknownResetType
from lab.world.state import Server, WorldState, wall_time


class PowerPart(WorldState):
    def _cancel_timer(self, server: Server) -> None:
        if server.timer is not None:
            server.timer.cancel()
            server.timer = None

    def _schedule(self, server: Server, delay: float, step: Any) -> None:
        self._cancel_timer(server)
        if self._closed:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            server.timer = None
            if not self._closed:
                step()

        server.timer = loop.call_later(max(0.0, delay), fire)

    def _reach_on(self, server: Server) -> None:
        self._cancel_timer(server)
        server.power = "On"
        server.on_since = wall_time()
        server.booted_identity = server.profile
        self._check_identity(server)

    def _reach_off(self, server: Server) -> None:
        self._cancel_timer(server)
        server.power = "Off"
        server.on_since = None
        server.booted_identity = None

    def _start_power_off(self, server: Server, then_on: bool = False) -> None:
        if self.has_fault(server, "power_off_hangs"):
            return  # accepted; the power never goes Off
        server.power = "PoweringOff"

        def done() -> None:
            self._reach_off(server)
            if then_on:
                self._start_power_on(server)

        self._schedule(server, self.latency.power_off_s, done)

    def _start_power_on(self, server: Server) -> None:
        if self.has_fault(server, "power_on_fails"):
            return  # accepted; the power never goes On
        server.power = "PoweringOn"
        self._schedule(server, self.latency.power_on_s, lambda: self._reach_on(server))

    def reset(self, server_id: str, reset_type: str, token: FenceToken | None = None, *,
              admitted: bool = False) -> None:
        """A Redfish ComputerSystem.Reset on the server's BMC; raises on a stale token and the iLO quirks.

        `admitted`: the token passed the fence when a manager accepted the request (see `admit`)."""
        server = self.server(server_id)
        if not admitted:
            self._admit(token, "reset", server.id, reset_type)
        powers_on = reset_type in ("On", "ForceOn", "ForceRestart") or (
            reset_type == "PushPowerButton" and server.power == "Off"
        )
        try:
            self._reset(server, reset_type)
        except LabError as exc:
            self.record("reset", server.id, f"{reset_type}: rejected ({exc.message})", token, accepted=False)
            raise
        if powers_on:
            server.powered_on_by = token
            self._check_previous_holder(server, token, reset_type)
        self.record("reset", server.id, f"{reset_type}: accepted ({server.power})", token,
                    checked=not admitted)

    def _reset(self, server: Server, reset_type: str) -> None:
        power = server.power
        invalid = InvalidPowerState(f"{reset_type} is not allowed while the server is {power}")
        if reset_type not in RESET_TYPES:
            raise UnknownResetType(f"unknown ResetType {reset_type!r}")
        if reset_type == "PushPowerButton":
            reset_type = "GracefulShutdown" if power == "On" else "On" if power == "Off" else reset_type
        if reset_type in ("On", "ForceOn"):
            if power == "Off":
                self._start_power_on(server)
            elif power != "PoweringOn":
                raise invalid
        elif reset_type in ("ForceOff", "GracefulShutdown"):
            if power in ("On", "PoweringOn"):
                self._start_power_off(server)  # replaces a pending power-on
            elif power != "PoweringOff":
                raise invalid
        elif reset_type == "ForceRestart":
            if power != "On":
                raise invalid
            self._start_power_off(server, then_on=True)
        else:  # PushPowerButton during a transition
            raise invalid

    def enclosure_power(self, server_id: str, action: Literal["ForceOff", "On"], via: str,
                        token: FenceToken | None = None) -> Server:
        """Power control from outside the blade's BMC: the manager's power API or the enclosure's
        Onboard Administrator (`via`: "manager" or "oa"). It reaches the blade through the enclosure,
        so it works while the BMC is down (`bmc_down`, `bmc_timeout`, `bmc_error`); the blade's own
        faults (`power_off_hangs`, `power_on_fails`) still apply. Already in the asked state is not an
        error. Logged as kind `power`."""
        server = self.server(server_id)
        self._admit(token, "power", server.id, f"{via} {action}")
        if not server.installed or server.product is None:
            self.record("power", server.id, f"{via} {action}: refused (no blade in the bay)", token,
                        accepted=False)
            raise Conflict(f"there is no blade in {server.id}")
        if action == "ForceOff":
            if server.power in ("On", "PoweringOn"):
                self._start_power_off(server)
        elif server.power == "Off":
            self._start_power_on(server)
            server.powered_on_by = token
            self._check_previous_holder(server, token, f"{via} On")
        elif server.power == "PoweringOff":
            self.record("power", server.id, f"{via} On: refused (powering off)", token, accepted=False)
            raise Conflict(f"{server.id} is powering off")
        self.record("power", server.id, f"{via} {action}: accepted ({server.power})", token)
        return server
