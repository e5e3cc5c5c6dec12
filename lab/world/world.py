"""`World`: the simulated world, composed of its parts (each acts on `WorldState`)."""

from __future__ import annotations

from lab.world.eventing import EventingPart
from lab.world.faults import FaultsPart
from lab.world.profiles import ProfilesPart


class World(ProfilesPart, FaultsPart, EventingPart):
    """The whole simulated state. Build it with `generate_world(config)`."""
