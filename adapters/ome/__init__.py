"""Dell OpenManage Enterprise / OME-Modular (MX7000) as the profile manager (README "Profile managers")."""

from __future__ import annotations

from collections.abc import Callable

from adapters.ome.client import OmeAccount, OmeClient, OmeFenceRefused
from adapters.ome.manager import OmeManager, OmeSettings
from monitor.core.clock import Clock
from monitor.core.config import OmeConfig

__all__ = ["OmeAccount", "OmeClient", "OmeFenceRefused", "OmeManager", "OmeSettings", "build_ome_manager"]


def build_ome_manager(cfg: OmeConfig, *, resolve: Callable[[str], str] = str,
                      clock: Clock | None = None) -> OmeManager:
    """The manager of `manager.ome`; `resolve` turns the config's relative file names into paths."""
    client = OmeClient(
        OmeAccount(cfg.url, cfg.username, cfg.password.get_secret_value()), timeout=cfg.timeout,
        session_idle=cfg.session_idle, verify_tls=cfg.verify_tls,
        ca_file=resolve(cfg.ca_file) if cfg.ca_file else None, clock=clock,
    )
    bmc = cfg.bmc
    settings = OmeSettings(
        domain_source=cfg.domain_groups.source, domain_names=tuple(cfg.domain_groups.names),
        spare_group=cfg.spare_group, server_id=cfg.server_id, force_migrate=cfg.force_migrate,
        job_id_wait=cfg.job_id_wait, poll_interval=cfg.poll_interval, clock_skew=cfg.clock_skew,
        bmc_username=bmc.username if bmc else None,
        bmc_password=bmc.password.get_secret_value() if bmc else None,
        bmc_verify_tls=bmc.verify_tls if bmc else True,
        bmc_ca_file=resolve(bmc.ca_file) if bmc and bmc.ca_file else None,
    )
    return OmeManager(client, settings, clock=clock)
