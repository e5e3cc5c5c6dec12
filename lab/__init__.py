"""The lab simulator: the outside world of failover-monitor (BMCs, profile manager, discovery service).

It is a peer of the daemon, not a part of it: it never imports `monitor` or `adapters`. See lab/API.md.
"""

from lab.config import ConfigError, LabConfig, load_config
from lab.main import LabSimulator, LabStartError, main

__all__ = ["ConfigError", "LabConfig", "LabSimulator", "LabStartError", "load_config", "main"]
