"""Spare pool capacity (a pure function): ready spares per (group, model) against N+k."""

from __future__ import annotations

from monitor.core.config import SparesConfig
from monitor.core.model import Inventory, Server
from monitor.pipeline.spare_pool import SpareHealth, capacity, model_of


def server(sid: str, product: str | None, *, group: str = "dg1", spare: bool = False,
           present: bool = True) -> Server:
    enc, _, bay = sid.partition("-bay")
    return Server(id=sid, domain_group=group, domain="vcd1", enclosure=enc, bay=int(bay),
                  product=product or "", present=present, spare=spare)


def health(s: Server, ready: bool) -> SpareHealth:
    return SpareHealth(s.id, s.domain_group, s.enclosure, model_of(s), s.present, s.profile, ready,
                       "Off", "OK", ready, () if ready else ("BMC unreachable",))


def test_capacity_per_group_and_model_against_k() -> None:
    prod = server("enc1-bay1", "ProLiant BL460c Gen8")
    other = server("enc1-bay2", "ProLiant BL465c G7")
    empty = server("enc1-bay3", None, present=False)
    s1 = server("enc1-bay9", "ProLiant BL460c Gen10", spare=True)  # the generation is ignored
    s2 = server("enc2-bay9", "ProLiant BL460c G7", spare=True)
    dg2 = server("enc3-bay1", "ProLiant BL460c Gen8", group="dg2")
    inv = Inventory({}, {}, {}, {s.id: s for s in (prod, other, empty, s1, s2, dg2)}, {})
    rows = capacity(inv, [health(s1, True), health(s2, False)],
                    SparesConfig(min_per_model=1, groups={"dg2": 2}))
    by = {(r["domain_group"], r["model"]): r for r in rows}
    assert set(by) == {("dg1", "ProLiant BL460c"), ("dg1", "ProLiant BL465c"), ("dg2", "ProLiant BL460c")}
    assert by[("dg1", "ProLiant BL460c")] == {"domain_group": "dg1", "model": "ProLiant BL460c",
                                              "ready": 1, "spares": 2, "min": 1, "short": 0, "ok": True}
    assert by[("dg1", "ProLiant BL465c")]["short"] == 1  # production blades of a model with no spare
    assert by[("dg2", "ProLiant BL460c")] == {"domain_group": "dg2", "model": "ProLiant BL460c",
                                              "ready": 0, "spares": 0, "min": 2, "short": 2, "ok": False}
