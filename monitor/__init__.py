"""failover-monitor: automatic server-profile failover for blade servers."""

__version__ = "0.1.0"
