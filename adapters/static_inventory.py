"""The profile manager and discovery service for a static inventory file.

The file describes the datacenter as it was configured; what the monitor changes (profile assignments,
spare designations, host records) is kept in the store, so it survives restarts and the file is never
rewritten. Power and health come from the BMCs, through the PowerControl adapter.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from monitor.core.errors import NotFound, OperationRejected
from monitor.core.inventory_file import load_inventory_file
from monitor.core.model import Domain, HostRecord, Inventory, PowerState, Profile, Server
from monitor.core.ports import DiscoveryResult, PowerControl
from monitor.store import Store

_PROFILE = "profile"  # key: profile id, value: server id or "" (unassigned)
_SPARE = "spare"  # key: server id, value: bool
_HOST = "host"  # key: server id, value: {"name", "ip"} or {} (removed)


class StaticInventory:
    """The inventory file plus the changes recorded in the store. `reload()` rereads the file."""

    def __init__(self, path: Path, store: Store) -> None:
        self.path = path
        self._store = store
        self._base = load_inventory_file(path)
        self._lock = asyncio.Lock()

    def reload(self) -> None:
        """Reread the file (ConfigError when it is invalid: the running inventory stays)."""
        self._base = load_inventory_file(self.path)

    async def current(self) -> Inventory:
        profiles_state = await self._store.get_state(_PROFILE)
        spares = await self._store.get_state(_SPARE)
        hosts = await self._store.get_state(_HOST)
        base = self._base
        assigned: dict[str, str | None] = {p.id: p.server for p in base.profiles.values()}
        for pid, sid in profiles_state.items():
            assigned[pid] = sid or None
        by_server = {sid: pid for pid, sid in assigned.items() if sid}
        servers: dict[str, Server] = {}
        for s in base.servers.values():
            host = s.host
            if s.id in hosts:
                h = hosts[s.id]
                host = HostRecord(h["name"], h["ip"]) if h else None
            servers[s.id] = replace(
                s, profile=by_server.get(s.id), spare=bool(spares.get(s.id, s.spare)), host=host
            )
        profiles = {
            pid: Profile(pid, assigned.get(pid), p.host) for pid, p in base.profiles.items()
        }
        return Inventory(base.groups, base.domains, base.enclosures, servers, profiles)

    @property
    def store(self) -> Store:
        return self._store

    @property
    def lock(self) -> asyncio.Lock:
        return self._lock


class StaticManager:
    """ProfileManager for a static inventory."""

    def __init__(self, inventory: StaticInventory) -> None:
        self._inv = inventory

    async def inventory(self) -> Inventory:
        return await self._inv.current()

    async def domain(self, domain_id: str) -> Domain:
        inv = await self._inv.current()
        if domain_id not in inv.domains:
            raise NotFound(f"unknown domain {domain_id}")
        return inv.domains[domain_id]

    async def server(self, server_id: str) -> Server:
        inv = await self._inv.current()
        if server_id not in inv.servers:
            raise NotFound(f"unknown server {server_id}")
        return inv.servers[server_id]

    async def group_servers(self, group: str) -> list[Server]:
        return (await self._inv.current()).in_group(group)

    async def profile(self, profile_id: str) -> Profile:
        inv = await self._inv.current()
        if profile_id not in inv.profiles:
            raise NotFound(f"unknown profile {profile_id}")
        return inv.profiles[profile_id]

    async def move_profile(self, profile_id: str, source: str, target: str) -> None:
        async with self._inv.lock:
            inv = await self._inv.current()
            if profile_id not in inv.profiles:
                raise NotFound(f"unknown profile {profile_id}")
            if target not in inv.servers:
                raise NotFound(f"unknown server {target}")
            where = inv.profiles[profile_id].server
            if where != source:
                raise OperationRejected(f"profile {profile_id} is on {where}, not {source}", status=409)
            if inv.servers[target].profile:
                raise OperationRejected(f"{target} already has profile {inv.servers[target].profile}",
                                        status=409)
            await self._inv.store.set_state(_PROFILE, profile_id, target)  # one atomic write

    async def set_spare(self, server_id: str, spare: bool) -> None:
        await self.server(server_id)
        await self._inv.store.set_state(_SPARE, server_id, spare)

    async def close(self) -> None:
        """Nothing to release: the store belongs to the daemon."""


class StaticDiscovery:
    """DiscoveryService for a static inventory: host records kept in the store; discovery finds a
    server's host once its BMC reads On and it carries a profile whose host the inventory names."""

    def __init__(self, inventory: StaticInventory, power: PowerControl) -> None:
        self._inv = inventory
        self._power = power

    async def remove_host(self, server_id: str) -> HostRecord | None:
        inv = await self._inv.current()
        if server_id not in inv.servers:
            raise NotFound(f"unknown server {server_id}")
        host = inv.servers[server_id].host
        await self._inv.store.set_state(_HOST, server_id, {})
        return host

    async def restore_host(self, server_id: str, record: HostRecord) -> None:
        await self._inv.store.set_state(_HOST, server_id, record.as_dict())

    async def discover(self, server_id: str) -> DiscoveryResult:
        inv = await self._inv.current()
        server = inv.servers.get(server_id)
        if server is None:
            raise NotFound(f"unknown server {server_id}")
        power = await self._power.power_state(server)
        if power is not PowerState.ON:
            return DiscoveryResult(False, None, f"{server_id} reads {power.value}: not up")
        profile = inv.profiles.get(server.profile or "")
        if profile is None or profile.host is None:
            return DiscoveryResult(False, None, f"{server_id} carries no profile with a known host")
        await self._inv.store.set_state(_HOST, server_id, profile.host.as_dict())
        return DiscoveryResult(True, profile.host, f"{server_id} is {profile.host.name}")

    async def close(self) -> None:
        """Nothing to release."""
