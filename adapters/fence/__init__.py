"""Fence levels beyond the BMC: the Onboard Administrator over SSH, IPMI over LAN, and the builder of
the fencing topology from `failover.fencing`."""
