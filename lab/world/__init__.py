"""The simulated outside world: inventory, power state machine, profiles, faults, SIM host records, oracle.

Everything here is synchronous and single-threaded; timed transitions are scheduled on the running asyncio
loop with `call_later`. The HTTP front ends (lab.bmc, lab.manager) only translate requests into calls here.

`World` is composed of parts, each a module: `state` (the state, lookups, JSON views, the action log,
the oracle and the fencing tokens: `WorldState`, which every part builds on), `power` (the power state
machine), `profiles` (the manager and Systems Insight Manager roles), `faults` (lab control: injected
faults, latency, server control), `eventing` (each BMC's EventService); `catalogue` holds the fixed facts
(products, faults, event types), `errors` the lab's errors, `generate` the seeded generator.
"""

from __future__ import annotations

from lab.world.catalogue import (
    DELIVERY_RETRY_ATTEMPTS,
    DOMAIN_FAULTS,
    EVENT_TYPES,
    FAULTS,
    FOREIGN_DESTINATION,
    FOREIGN_SUBSCRIPTION_SERVERS,
    PRODUCTS,
    REGISTRY_PREFIXES,
    RESET_TYPES,
    SERVER_FAULTS,
    Product,
)
from lab.world.errors import (
    BadRequest,
    Conflict,
    InjectedFailure,
    InvalidPowerState,
    LabError,
    NotFound,
    RedfishBadRequest,
    StaleFence,
    UnknownResetType,
)
from lab.world.generate import generate_world
from lab.world.state import Fault, Profile, Server, Subscription, is_loopback_host
from lab.world.world import World

__all__ = [
    "DELIVERY_RETRY_ATTEMPTS",
    "DOMAIN_FAULTS",
    "EVENT_TYPES",
    "FAULTS",
    "FOREIGN_DESTINATION",
    "FOREIGN_SUBSCRIPTION_SERVERS",
    "PRODUCTS",
    "REGISTRY_PREFIXES",
    "RESET_TYPES",
    "SERVER_FAULTS",
    "BadRequest",
    "Conflict",
    "Fault",
    "InjectedFailure",
    "InvalidPowerState",
    "LabError",
    "NotFound",
    "Product",
    "Profile",
    "RedfishBadRequest",
    "Server",
    "StaleFence",
    "Subscription",
    "UnknownResetType",
    "World",
    "generate_world",
    "is_loopback_host",
]



