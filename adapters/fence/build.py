"""Build the fencing topology (`monitor.core.fence_levels.FenceTopology`) from `failover.fencing`."""

from __future__ import annotations

from monitor.core.config import LoadedConfig
from monitor.core.errors import ConfigError, ConfigIssue
from monitor.core.fence_levels import BmcLevel, FenceLevel, FenceTopology, ManagerLevel
from monitor.core.ports import ManagerPower, PowerControl, ProfileManager


def build_topology(loaded: LoadedConfig, power: PowerControl, manager: ProfileManager) -> FenceTopology:
    """The levels the config's orders name, each built once. A `manager` level with a profile manager
    that has no power control is a ConfigError (a start-up error)."""
    fencing = loaded.config.failover.fencing
    where = str(loaded.path) if loaded.path else "(config)"
    used = fencing.used()
    levels: dict[str, FenceLevel] = {}
    if "bmc" in used:
        levels["bmc"] = BmcLevel(power)
    if "manager" in used:
        if not isinstance(manager, ManagerPower):
            raise ConfigError([ConfigIssue(
                where, 1, "failover.fencing",
                f"fence level manager needs a profile manager with power control; "
                f"inventory.source {loaded.config.inventory.source} has none")])
        levels["manager"] = ManagerLevel(manager)
    if "oa" in used:
        from adapters.fence.oa_ssh import OaSsh

        oa = fencing.oa
        assert oa is not None  # validated: an order naming oa needs its settings
        known_hosts = loaded.resolve(oa.known_hosts) if oa.known_hosts else None
        if known_hosts is not None and not known_hosts.is_file():
            raise ConfigError([ConfigIssue(where, 1, "failover.fencing.oa.known_hosts",
                                           f"{known_hosts}: no such file")])
        levels["oa"] = OaSsh(oa, known_hosts=known_hosts)
    if "ipmi" in used:
        from adapters.fence.ipmi import IpmiFence

        assert fencing.ipmi is not None
        levels["ipmi"] = IpmiFence(fencing.ipmi)
    timing = {name: (spec.attempts, spec.timeout) for name in used
              if (spec := getattr(fencing, name, None)) is not None}
    return FenceTopology(levels, fencing.levels, fencing.groups, fencing.servers, timing)


__all__ = ["build_topology"]
