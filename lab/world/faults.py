"""Lab control: injected faults, latency, and the control of servers (power, health, presence)."""

from __future__ import annotations

from typing import Literal

from lab.config import Latency
from lab.world.catalogue import DEFAULT_SLOW_S, DOMAIN_FAULTS, FAULTS, MANAGER_FAULTS, Health
from lab.world.errors import BadRequest, Conflict, NotFound
from lab.world.power import PowerPart
from lab.world.state import Fault


class FaultsPart(PowerPart):
    def add_fault(self, fault: str, server_id: str | None, domain_id: str | None,
                  delay_s: float | None = None) -> Fault:
        if fault not in FAULTS:
            raise BadRequest(f"unknown fault {fault!r}; known: {', '.join(sorted(FAULTS))}")
        if delay_s is not None and fault != "bmc_slow":
            raise BadRequest("delay_s only applies to the bmc_slow fault")
        if fault in MANAGER_FAULTS and (server_id is not None or domain_id is not None):
            raise BadRequest(f"{fault} is a fault of the manager: no server or domain")
        if fault == "bmc_slow" and delay_s is None:
            delay_s = DEFAULT_SLOW_S
        server = self.server(server_id) if server_id is not None else None
        if domain_id is not None:
            self.domain(domain_id)
        if fault in DOMAIN_FAULTS:
            if domain_id is None:
                if server is None:
                    raise BadRequest(f"{fault} needs a domain (or a server of that domain)")
                domain_id = server.domain
            server_id = None
        self._fault_seq += 1
        f = Fault(f"fault-{self._fault_seq}", fault, server_id, domain_id, delay_s)
        self.faults[f.id] = f
        return f

    def remove_fault(self, fault_id: str) -> Fault:
        try:
            return self.faults.pop(fault_id)
        except KeyError:
            raise NotFound(f"unknown fault {fault_id}") from None

    def clear_faults(self) -> int:
        count = len(self.faults)
        self.faults.clear()
        return count

    def set_latency(self, update: dict[str, float]) -> Latency:
        merged = {**self.latency.model_dump(), **update}
        self.latency = Latency.model_validate(merged)
        return self.latency

    def control_server(
        self,
        server_id: str,
        power: Literal["On", "Off"] | None = None,
        health: Health | None = None,
        present: bool | None = None,
    ) -> bool:
        """Set state directly; returns True when the physical presence changed (the BMC must follow)."""
        server = self.server(server_id)
        if present is True and server.product is None:
            raise Conflict(f"bay {server.id} is empty: there is no blade to insert")
        if power is not None and server.product is None:
            raise Conflict(f"bay {server.id} is empty")
        installed_after = server.installed if present is None else present
        if power == "On" and not installed_after:
            raise Conflict(f"server {server.id} is not inserted")
        presence_changed = present is not None and present != server.installed
        if health is not None:
            server.health = health
        if present is False:
            self._reach_off(server)
            server.installed = False
        elif present is True:
            if not server.installed:
                self._reach_off(server)
            server.installed = True
        if power == "On":
            if server.power != "On":
                server.powered_on_by = None  # by hand
                self._reach_on(server)
        elif power == "Off":
            self._reach_off(server)
        return presence_changed
