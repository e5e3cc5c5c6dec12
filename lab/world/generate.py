"""`generate_world`: the seeded generator of enclosures, blades, profiles, spares and host records."""

from __future__ import annotations

import math
import random
import uuid
from typing import Final, Literal

from lab.config import LabConfig
from lab.world.catalogue import FOREIGN_SUBSCRIPTION_SERVERS, PRODUCTS
from lab.world.state import HostRecord, Profile, Server
from lab.world.world import World

G7: Final = "ProLiant BL460c G7"


GEN8: Final = "ProLiant BL460c Gen8"


GEN9: Final = "ProLiant BL460c Gen9"


B465G5: Final = "ProLiant BL465c G5"


B465G7: Final = "ProLiant BL465c G7"


I860: Final = "Integrity BL860c i2"


I870: Final = "Integrity BL870c i2"


# A slot of the layout: (product or None for an empty bay, role). Roles: "on" / "off" production blades
# with a profile, "spare" designated spare (no profile, powered off), "empty".
_Slot = tuple[str | None, Literal["on", "off", "spare", "empty"]]


# Bays 1-8: production and empty bays (permuted by the seed from enclosure 3 on); bays 9-14: spares.
_ODD_FRONT: Final[list[_Slot]] = [
    (GEN8, "on"),
    (GEN9, "on"),
    (G7, "on"),
    (B465G7, "on"),
    (B465G5, "on"),
    (I860, "on"),
    (GEN8, "off"),
    (None, "empty"),
]


_EVEN_FRONT: Final[list[_Slot]] = [
    (GEN9, "on"),
    (GEN8, "on"),
    (G7, "off"),
    (B465G5, "on"),
    (B465G7, "on"),
    (I860, "on"),
    (None, "empty"),
    (GEN8, "on"),
]


_SPARES: Final[list[_Slot]] = [
    (GEN8, "spare"),
    (GEN9, "spare"),
    (G7, "spare"),
    (B465G7, "spare"),
    (B465G5, "spare"),
    (I860, "spare"),
]


def _layout(enclosure: int, group_members: list[int], rng: random.Random) -> list[_Slot | None]:
    """The 16 bays of one enclosure; None marks a bay covered by the blade in the bay before it."""
    front = list(_ODD_FRONT if enclosure % 2 else _EVEN_FRONT)
    if enclosure > 2:
        rng.shuffle(front)
    bays: list[_Slot | None] = [*front, *_SPARES]
    has_odd = any(e % 2 for e in group_members)
    has_even = any(e % 2 == 0 for e in group_members)
    first_odd = next((e for e in group_members if e % 2), None)
    if enclosure % 2 == 0 and has_odd:
        bays += [(I870, "on"), None]
    elif enclosure == first_odd and has_even:
        bays += [(I870, "spare"), None]
    else:
        bays += [(None, "empty"), (None, "empty")]
    return bays


def _serial(rng: random.Random, used: set[str]) -> str:
    alphabet = "0123456789ABCDEFGHJKLMNPRSTUVWXYZ"
    while True:
        s = (
            "CZ"
            + "".join(rng.choice("0123456789") for _ in range(4))
            + "".join(rng.choice(alphabet) for _ in range(4))
        )
        if s not in used:
            used.add(s)
            return s


def generate_world(config: LabConfig) -> World:
    """Build the deterministic world for `config.seed` (layout in lab/API.md)."""
    rng = random.Random(config.seed)
    world = World(config)
    used_serials: set[str] = set()
    n = config.enclosures
    per = config.domains_per_group
    groups = [list(range(start, min(start + per, n + 1))) for start in range(1, n + 1, per)]
    for gi, members in enumerate(groups, start=1):
        group = f"dg{gi}"
        world.domain_groups.append(group)
        for e in members:
            enc, domain = f"enc{e}", f"vcd-enc{e}"
            world.domains[domain] = group
            world.enclosures[enc] = domain
            for bay, slot in enumerate(_layout(e, members, rng), start=1):
                if slot is None:
                    continue
                product, role = slot
                sid = f"{enc}-bay{bay}"
                server = Server(
                    id=sid,
                    enclosure=enc,
                    enclosure_no=e,
                    bay=bay,
                    span=PRODUCTS[product].span if product else 1,
                    domain=domain,
                    domain_group=group,
                    product=product,
                    installed=product is not None,
                    spare=role == "spare",
                    power="On" if role == "on" else "Off",
                    health="OK",
                    serial=_serial(rng, used_serials) if product else "",
                    uuid=str(uuid.UUID(int=rng.getrandbits(128), version=4)) if product else "",
                    bmc_ip=config.bmc_ip(e, bay),
                )
                if role in ("on", "off"):
                    pid = f"prof-{sid}"
                    host = f"host{e}{bay}.lab.example"
                    macs = [f"00:17:A4:77:{e:02X}:{(bay - 1) * 4 + k:02X}" for k in range(2)]
                    wwns = [f"50:06:0B:00:00:C2:{e:02X}:{(bay - 1) * 4 + k:02X}" for k in range(2)]
                    world.profiles[pid] = Profile(pid, sid, host, f"10.{e}.0.{bay}", macs, wwns)
                    server.profile = pid
                    world.hosts[sid] = HostRecord(host, f"10.{e}.0.{bay}")
                    if role == "on":
                        server.booted_identity = pid
                        server.on_since = -math.inf  # booted long ago
                world.servers[sid] = server
    for sid in FOREIGN_SUBSCRIPTION_SERVERS:
        if sid in world.servers and world.servers[sid].product is not None:
            world.seed_foreign_subscription(sid)
    return world
