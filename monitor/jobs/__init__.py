"""Failover jobs: the flow's steps (flow), the runner that owns and runs them (runner), this monitor's
cluster membership and lease (membership), the gate every outside action passes (gate), the domain-group
locks (locks) and the durable rediscovery timers (timers). See README "Safety model"."""

from monitor.core.errors import DuplicateInstance, LeaseLost, ShuttingDown, UnknownServer
from monitor.jobs.flow import Actor, FailoverFlow, FlowDeps, StepFailed
from monitor.jobs.gate import Gate
from monitor.jobs.locks import GroupLocks
from monitor.jobs.membership import Membership
from monitor.jobs.runner import JobRunner

__all__ = [
    "Actor",
    "DuplicateInstance",
    "FailoverFlow",
    "FlowDeps",
    "Gate",
    "GroupLocks",
    "JobRunner",
    "LeaseLost",
    "Membership",
    "ShuttingDown",
    "StepFailed",
    "UnknownServer",
]
