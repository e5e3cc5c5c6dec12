"""Spare selection: a pure function of the inventory and the power states read from the spares' BMCs.

The order is stable and documented: candidates are examined by enclosure (natural order, so enc2 before
enc10), then by bay. The first candidate that meets every criterion is the spare; the others are listed
with the first criterion each failed, in this order:

1. designated spare;
2. no profile assigned;
3. physically present;
4. same product family and model as the source, the generation ignored
   ("ProLiant BL465c G1" = "ProLiant BL465c G5", "BL460c Gen8" = "BL460c Gen10");
5. spans the same number of bays (Integrity BL870c spans 2, BL890c 4);
6. not in an enclosure that reports an enclosure-wide fault (power, cooling, interconnect);
7. powered off, as read from its BMC (not assumed: no reading or an unknown state rejects it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass

from monitor.core.model import PowerState, ProductInfo, Server, identify_product


@dataclass(frozen=True, slots=True)
class Rejection:
    server: str
    reason: str


@dataclass(frozen=True, slots=True)
class SpareChoice:
    spare: Server | None
    rejected: tuple[Rejection, ...]

    def explain(self) -> str:
        """Why each designated spare was passed over; other servers only counted."""
        listed = [f"{r.server}: {r.reason}" for r in self.rejected if r.reason != NOT_SPARE]
        others = len(self.rejected) - len(listed)
        if others:
            listed.append(f"{others} other server(s) {NOT_SPARE}")
        return "; ".join(listed) or "no candidates"


NOT_SPARE = "not a designated spare"


def _natural(text: str) -> tuple[object, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


def candidate_order(server: Server) -> tuple[object, ...]:
    return (_natural(server.enclosure), server.bay, _natural(server.id))


def needs_power_reading(source: Server, candidate: Server) -> bool:
    """Whether a candidate passes every criterion before power (so its BMC is worth asking)."""
    return _static_reason(source, identify_product(source.product), source.span, candidate) is None


def _static_reason(
    source: Server, info: ProductInfo | None, span: int, candidate: Server
) -> str | None:
    if candidate.id == source.id:
        return "is the source"
    if candidate.domain_group != source.domain_group:
        return f"in domain group {candidate.domain_group}, not {source.domain_group}"
    if not candidate.spare:
        return NOT_SPARE
    if candidate.profile:
        return f"has profile {candidate.profile} assigned"
    if not candidate.present:
        return "not physically present"
    cand = identify_product(candidate.product)
    if info is None or cand is None:
        return f"product {candidate.product!r} not identified"
    if (cand.family, cand.model) != (info.family, info.model):
        return f"model {cand.model} differs from the source's {info.model}"
    if source.hardware_type and candidate.hardware_type and candidate.hardware_type != source.hardware_type:
        return (f"hardware type {candidate.hardware_type} differs from the source's {source.hardware_type}"
                f" ({candidate.product} vs {source.product}): the manager keeps a profile on its type")
    cand_span = cand.span or candidate.span
    if cand_span != span:
        return f"spans {cand_span} bay(s), the source {span}"
    return None


def select_spare(
    source: Server,
    source_info: ProductInfo,
    span: int,
    candidates: Iterable[Server],
    power: Mapping[str, PowerState | str],
    *,
    faulted_enclosures: Set[str] = frozenset(),
) -> SpareChoice:
    """The first qualified spare for `source` among `candidates`, and why each other one was passed over.

    `power` maps server ids to the power state read from their BMC, or to an error text when the read
    failed. A candidate with no entry is rejected: its power state was not read.
    """
    rejected: list[Rejection] = []
    for cand in sorted(candidates, key=candidate_order):
        if cand.id == source.id:
            continue
        reason = _static_reason(source, source_info, span, cand)
        if reason is None and cand.enclosure in faulted_enclosures:
            reason = f"enclosure {cand.enclosure} reports an enclosure-wide fault"
        if reason is None:
            reading = power.get(cand.id)
            if reading is None:
                reason = "power state not read from its BMC"
            elif not isinstance(reading, PowerState):
                reason = f"power state unknown ({reading})"
            elif reading is not PowerState.OFF:
                reason = f"powered {reading.value}, not off"
        if reason is None:
            return SpareChoice(cand, tuple(rejected))
        rejected.append(Rejection(cand.id, reason))
    return SpareChoice(None, tuple(rejected))
