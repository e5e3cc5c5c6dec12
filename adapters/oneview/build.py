"""`manager.kind: oneview` from the daemon's config (monitor.core.config.OneViewManagerConfig)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from adapters.oneview.client import OneViewClient
from adapters.oneview.manager import BmcAccess, OneViewManager
from monitor.core.clock import Clock, SystemClock
from monitor.core.config import FailoverConfig, OneViewManagerConfig
from monitor.core.errors import ConfigError, ConfigIssue


def _tls(verify: bool, ca_file: Path | None, what: str) -> ssl.SSLContext | bool:
    if not verify:
        return False
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([ConfigIssue(str(ca_file), 1, what, f"cannot load the CA file: {exc}")]) from None


def oneview_manager(cfg: OneViewManagerConfig, failover: FailoverConfig,
                    resolve: Callable[[str], Path], clock: Clock | None = None) -> OneViewManager:
    """The OneView manager; a CA file that cannot be read is a ConfigError (a start-up error)."""
    tls = _tls(cfg.verify_tls, resolve(cfg.ca_file) if cfg.ca_file else None, "manager.oneview.ca_file")
    client = OneViewClient(cfg.address, cfg.username, cfg.password.get_secret_value(),
                           login_domain=cfg.login_domain, api_version=cfg.api_version, tls=tls,
                           timeout=cfg.timeout)
    b = cfg.bmc
    bmc = BmcAccess(b.username, b.password.get_secret_value(), port=b.port, verify_tls=b.verify_tls,
                    ca_file=str(resolve(b.ca_file)) if b.ca_file else None)
    return OneViewManager(client, clock or SystemClock(), spare_label=cfg.spare_label, group_by=cfg.group_by,
                          bmc=bmc, poll_interval=failover.poll_interval,
                          move_timeout=failover.move_task_timeout)
