"""Product identification and spare selection: pure functions, tested exhaustively."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from monitor.core.model import PowerState, Server, identify_product, product_rule_of_thumb
from monitor.jobs.spares import candidate_order, select_spare


@pytest.mark.parametrize(
    ("product", "family", "model", "span"),
    [
        ("ProLiant BL460c Gen8", "proliant", "ProLiant BL460c", None),
        ("ProLiant BL460c Gen10", "proliant", "ProLiant BL460c", None),
        ("BL460c Gen8", "proliant", "ProLiant BL460c", None),
        ("HP ProLiant BL465c G1", "proliant", "ProLiant BL465c", None),
        ("ProLiant BL465c G5", "proliant", "ProLiant BL465c", None),
        ("HPE ProLiant BL460c G7", "proliant", "ProLiant BL460c", None),
        ("ProLiant  BL460c   Gen 9", "proliant", "ProLiant BL460c", None),
        ("ProLiant WS460c Gen9", "proliant", "ProLiant WS460c", None),
        ("Integrity BL860c i2", "integrity", "Integrity BL860c", 1),
        ("HP Integrity BL870c i4", "integrity", "Integrity BL870c", 2),
        ("Integrity BL890c i2", "integrity", "Integrity BL890c", 4),
        ("BL890c i4", "integrity", "Integrity BL890c", 4),
        ("Integrity BL860c", "integrity", "Integrity BL860c", 1),
        ("PowerEdge M640", "poweredge", "PowerEdge M640", None),
        ("Dell PowerEdge M630", "poweredge", "PowerEdge M630", None),
        ("PowerEdge M620", "poweredge", "PowerEdge M620", None),
        ("PowerEdge MX740c", "poweredge", "PowerEdge MX740c", None),
        ("poweredge  mx750c", "poweredge", "PowerEdge MX750c", None),
        ("Dell EMC PowerEdge MX750C", "poweredge", "PowerEdge MX750c", None),
        ("MX740c", "poweredge", "PowerEdge MX740c", None),
        ("PowerEdge MX840c", "poweredge", "PowerEdge MX840c", 2),
        ("Dell M620", "poweredge", "PowerEdge M620", None),
    ],
)
def test_identify_product(product: str, family: str, model: str, span: int | None) -> None:
    info = identify_product(product)
    assert info is not None
    assert (info.family, info.model, info.span) == (family, model, span)


@pytest.mark.parametrize(
    "product", ["", "   ", "Synergy 480 Gen10", "Unknown blade", "Superdome 2", "Integrity rx2800 i4",
                "ProLiant DL380 Gen10", "PowerEdge R640", "PowerEdge FC630", "PowerEdge M1000e", "M640"],
)
def test_unidentified_products(product: str) -> None:
    assert identify_product(product) is None


@pytest.mark.parametrize(
    ("product", "says"),
    [("ProLiant DL380 Gen10", "DL, ML, SL and XL are rack or tower servers"),
     ("PowerEdge R640", "a PowerEdge is a blade only as M<3 digits> or MX<3 digits>c"),
     ("M640", "needs its maker in the name"),
     ("Integrity rx2800 i4", "an Integrity blade is a BL860c, BL870c or BL890c"),
     ("Synergy 480 Gen10", "no known blade model in the name")],
)
def test_unknown_products_get_a_rule_of_thumb(product: str, says: str) -> None:
    text = product_rule_of_thumb(product)
    assert says in text and "PowerEdge Mnnn/MXnnnc" in text


def test_dell_blades_are_chosen_like_proliant() -> None:
    """PowerEdge blades: same model (MX740c = MX740c, never an MX750c), spans from the model (MX840c 2)."""
    source = srv("enc1-bay1", product="PowerEdge MX740c", spare=False, profile="p1")
    other_model = srv("enc1-bay2", bay=2, product="PowerEdge MX750c")
    good = srv("enc1-bay3", bay=3, product="Dell EMC PowerEdge MX740c")
    info = identify_product(source.product)
    assert info is not None
    power = {s.id: PowerState.OFF for s in (other_model, good)}
    choice = select_spare(source, info, 1, [source, other_model, good], power)
    assert choice.spare == good
    assert choice.rejected[0].reason == "model PowerEdge MX750c differs from the source's PowerEdge MX740c"
    wide = srv("enc2-bay1", enclosure="enc2", product="PowerEdge MX840c", spare=False, profile="p2")
    wide_info = identify_product(wide.product)
    assert wide_info is not None and wide_info.span == 2
    narrow = srv("enc2-bay3", enclosure="enc2", bay=3, product="PowerEdge MX840c")
    assert select_spare(wide, wide_info, 2, [narrow], {narrow.id: PowerState.OFF}).spare == narrow
    m = srv("enc3-bay1", enclosure="enc3", product="PowerEdge M640", spare=False, profile="p3")
    m_info = identify_product(m.product)
    assert m_info is not None
    m_spare = srv("enc3-bay2", enclosure="enc3", bay=2, product="Dell PowerEdge M640")
    assert select_spare(m, m_info, 1, [m_spare], {m_spare.id: PowerState.OFF}).spare == m_spare
    assert select_spare(m, m_info, 1, [m_spare], {m_spare.id: PowerState.ON}).spare is None


def test_generation_is_not_a_differentiator() -> None:
    a, b = identify_product("ProLiant BL465c G1"), identify_product("ProLiant BL465c G5")
    assert a is not None and b is not None and a.model == b.model
    c, d = identify_product("BL460c Gen8"), identify_product("ProLiant BL460c Gen10")
    assert c is not None and d is not None and c.model == d.model
    e, f = identify_product("ProLiant BL460c Gen8"), identify_product("ProLiant BL465c Gen8")
    assert e is not None and f is not None and e.model != f.model


def srv(id: str, *, enclosure: str = "enc1", bay: int = 1, product: str = "ProLiant BL460c Gen8",
        group: str = "dg1", spare: bool = True, profile: str | None = None, present: bool = True,
        span: int = 1) -> Server:
    return Server(id=id, domain_group=group, domain=f"vcd-{enclosure}", enclosure=enclosure, bay=bay,
                  product=product, span=span, present=present, profile=profile, spare=spare)


SOURCE = srv("enc1-bay1", bay=1, spare=False, profile="web01")
SOURCE_INFO = identify_product(SOURCE.product)
assert SOURCE_INFO is not None


def choose(
    cands: list[Server], power: dict[str, PowerState | str] | None = None
) -> tuple[str | None, dict[str, str]]:
    if power is None:
        power = {c.id: PowerState.OFF for c in cands}
    assert SOURCE_INFO is not None
    choice = select_spare(SOURCE, SOURCE_INFO, 1, cands, power)
    return (choice.spare.id if choice.spare else None), {r.server: r.reason for r in choice.rejected}


def test_the_first_qualified_spare_wins() -> None:
    good = srv("enc1-bay9", bay=9)
    also = srv("enc1-bay10", bay=10)
    assert choose([also, good])[0] == "enc1-bay9"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"spare": False}, "not a designated spare"),
        ({"profile": "other"}, "has profile other assigned"),
        ({"present": False}, "not physically present"),
        ({"product": "ProLiant BL465c Gen8"}, "model ProLiant BL465c differs"),
        ({"product": "Integrity BL860c i2"}, "model Integrity BL860c differs"),
        ({"product": "Mystery 9000"}, "not identified"),
        ({"span": 2}, "spans 2 bay(s)"),
        ({"domain_group": "dg2"}, "in domain group dg2"),
    ],
)
def test_each_criterion_rejects_and_says_why(change: dict[str, object], reason: str) -> None:
    bad = replace(srv("enc1-bay9", bay=9), **change)  # type: ignore[arg-type]
    good = srv("enc1-bay12", bay=12)
    chosen, why = choose([bad, good])
    assert chosen == "enc1-bay12"
    assert reason in why["enc1-bay9"]


@pytest.mark.parametrize(
    ("reading", "reason"),
    [
        (PowerState.ON, "powered On"),
        (PowerState.POWERING_ON, "powered PoweringOn"),
        (PowerState.POWERING_OFF, "powered PoweringOff"),
        (PowerState.UNKNOWN, "powered Unknown"),
        ("BMC timed out", "power state unknown (BMC timed out)"),
    ],
)
def test_power_must_read_off_from_the_bmc(reading: PowerState | str, reason: str) -> None:
    a, b = srv("enc1-bay9", bay=9), srv("enc1-bay12", bay=12)
    chosen, why = choose([a, b], {"enc1-bay9": reading, "enc1-bay12": PowerState.OFF})
    assert chosen == "enc1-bay12"
    assert reason in why["enc1-bay9"]


def test_an_unread_power_state_is_not_assumed_off() -> None:
    chosen, why = choose([srv("enc1-bay9", bay=9)], {})
    assert chosen is None
    assert "not read" in why["enc1-bay9"]


def test_generation_ignored_in_selection() -> None:
    gen10 = srv("enc1-bay9", bay=9, product="ProLiant BL460c Gen10")
    g7 = srv("enc2-bay3", enclosure="enc2", bay=3, product="HP ProLiant BL460c G7")
    assert choose([gen10])[0] == "enc1-bay9"
    assert choose([g7])[0] == "enc2-bay3"


def test_a_manager_hardware_type_must_match_when_both_have_one() -> None:
    """OneView binds a profile to a server-hardware type (one per generation): a Gen10 spare is passed
    over for a Gen8 source there, while the generation alone still does not count."""
    gen8, gen10 = "/rest/server-hardware-types/gen8", "/rest/server-hardware-types/gen10"
    source = replace(SOURCE, hardware_type=gen8)
    assert SOURCE_INFO is not None
    other = srv("enc1-bay9", bay=9, product="ProLiant BL460c Gen10")
    same = replace(srv("enc1-bay12", bay=12), hardware_type=gen8)
    choice = select_spare(source, SOURCE_INFO, 1, [replace(other, hardware_type=gen10), same],
                          {"enc1-bay9": PowerState.OFF, "enc1-bay12": PowerState.OFF})
    assert choice.spare is not None and choice.spare.id == "enc1-bay12"
    assert [r.reason for r in choice.rejected] == [
        f"hardware type {gen10} differs from the source's {gen8} (ProLiant BL460c Gen10 vs ProLiant BL460c"
        " Gen8): the manager keeps a profile on its type"]
    # Unknown on either side: the generation is ignored as before.
    assert select_spare(source, SOURCE_INFO, 1, [other], {"enc1-bay9": PowerState.OFF}).spare == other


def test_integrity_spans_must_match() -> None:
    src = srv("enc2-bay15", enclosure="enc2", bay=15, product="Integrity BL870c i2", span=2, spare=False,
              profile="hpux")
    info = identify_product(src.product)
    assert info is not None and info.span == 2
    two = srv("enc3-bay15", enclosure="enc3", bay=15, product="Integrity BL870c i4", span=2)
    one = srv("enc3-bay7", enclosure="enc3", bay=7, product="Integrity BL860c i2")
    four = srv("enc3-bay1", enclosure="enc3", bay=1, product="Integrity BL890c i2", span=4)
    choice = select_spare(src, info, 2, [four, one, two], {s.id: PowerState.OFF for s in (two, one, four)})
    assert choice.spare is not None and choice.spare.id == "enc3-bay15"
    reasons = {r.server: r.reason for r in choice.rejected}
    assert "differs" in reasons["enc3-bay7"] and "differs" in reasons["enc3-bay1"]
    # An inventory that records the wrong span for an Integrity model: the model's span decides.
    wrong = replace(two, span=1)
    assert select_spare(src, info, 2, [wrong], {wrong.id: PowerState.OFF}).spare == wrong


def test_order_is_natural_by_enclosure_then_bay() -> None:
    servers = [srv(f"enc{e}-bay{b}", enclosure=f"enc{e}", bay=b) for e in (10, 2, 1) for b in (16, 3, 11)]
    ordered = [s.id for s in sorted(servers, key=candidate_order)]
    assert ordered[:4] == ["enc1-bay3", "enc1-bay11", "enc1-bay16", "enc2-bay3"]
    assert ordered[-1] == "enc10-bay16"
    for perm in itertools.islice(itertools.permutations(servers), 50):
        assert choose(list(perm))[0] == "enc1-bay3"


def test_the_source_is_never_its_own_spare() -> None:
    itself = replace(SOURCE, spare=True, profile=None)
    assert choose([itself])[0] is None


def test_no_candidates_explains() -> None:
    assert SOURCE_INFO is not None
    choice = select_spare(SOURCE, SOURCE_INFO, 1, [], {})
    assert choice.spare is None and choice.explain() == "no candidates"


def test_every_combination_of_criteria() -> None:
    """All 2^6 combinations of the six criteria: qualified only when every one holds."""
    for bits in itertools.product([True, False], repeat=6):
        spare, no_profile, present, same_model, same_span, off = bits
        cand = srv("enc1-bay9", bay=9, spare=spare, profile=None if no_profile else "p",
                   present=present, product="ProLiant BL460c Gen9" if same_model else "ProLiant BL685c G7",
                   span=1 if same_span else 2)
        chosen, _ = choose([cand], {cand.id: PowerState.OFF if off else PowerState.ON})
        assert (chosen == "enc1-bay9") == all(bits), bits
