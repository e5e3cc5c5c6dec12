"""Rule evaluation throughput and state memory.

a) Decisions per second on one core with the built-in packs, and with the packs plus 10,000 generated site
   rules (baseline: the packs alone, same events, same run; the ratio shows the index at work).
b) Memory held by threshold state for 10,000 servers with open windows (tracemalloc), and the size of
   its snapshot in the store.

    .venv/bin/python bench/bench_rules.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from monitor.core.events import Event
from monitor.core.model import Server
from rules.engine import Decider
from rules.loader import load_policy
from rules.schema import GuardsSpec

TARGET_RATE = 50_000
TARGET_RATIO = 0.8


def servers(n: int) -> list[Server]:
    return [Server(id=f"enc{i // 16 + 1}-bay{i % 16 + 1}", domain_group=f"dg{i // 32 + 1}",
                   domain=f"vcd-enc{i // 16 + 1}", enclosure=f"enc{i // 16 + 1}", bay=i % 16 + 1,
                   product="ProLiant BL460c Gen9", profile=f"p{i}") for i in range(n)]


def events(n: int, now: datetime) -> list[Event]:
    """A realistic mix: HPE and Dell traps (failures, degradations, noise) and Redfish messages."""
    mix: list[dict[str, Any]] = [
        {"source": "snmp", "trap_oid": "1.3.6.1.4.1.232.0.6015", "varbinds": {"1.3.6.1.2.1.1.5.0": "h"}},
        {"source": "snmp", "trap_oid": "1.3.6.1.4.1.232.0.6048"},
        {"source": "snmp", "trap_oid": "1.3.6.1.4.1.232.0.1026",
         "varbinds": {"1.3.6.1.4.1.232.11.2.11.1.0": "16"}},
        {"source": "snmp", "trap_oid": "1.3.6.1.4.1.232.0.22053"},
        {"source": "snmp", "trap_oid": "1.3.6.1.4.1.674.10892.5.3.2.1.0.2154",
         "varbinds": {"1.3.6.1.4.1.674.10892.5.3.1.3.0": "4"}},
        {"source": "snmp", "trap_oid": "1.3.6.1.6.3.1.1.5.3"},  # linkDown: no rule
        {"source": "redfish", "message_id": "iLOEvents.2.3.FanRedundancyLost", "severity": "Warning"},
        {"source": "redfish", "message_id": "IDRAC.2.8.TMP0120", "severity": "Warning"},
        {"source": "redfish", "message_id": "ResourceEvent.1.4.3.ResourceErrorsDetected",
         "severity": "Warning"},
        {"source": "redfish", "message_id": "Base.1.0.Success", "severity": "OK"},
    ]
    out = []
    for i in range(n):
        spec = mix[i % len(mix)]
        out.append(Event(time=now, sender=f"10.0.{i % 250}.{i % 200}", **spec).with_message_id())
    return out


def site_rules(n: int) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for i in range(n):
        if i % 2:
            rules.append({"id": f"site-trap-{i}", "action": "alert", "source": "snmp",
                          "match": {"trap_oid": f"1.3.6.1.4.1.99999.0.{i}"}})
        else:
            rules.append({"id": f"site-msg-{i}", "action": "alert", "source": "redfish",
                          "match": {"message_id": f"SiteEvents.*.Condition{i}",
                                    "severity": {"at_least": "OK"}}})
    return rules


def rate(decider: Decider, evs: list[Event], srv: list[Server], seconds: float) -> float:
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        for i, ev in enumerate(evs):
            decider.decide(ev, srv[i % len(srv)])
        n += len(evs)
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    seconds = 1.0 if args.quick else 4.0
    extra = 1000 if args.quick else 10_000
    guards = GuardsSpec(storm=None, rate_limit=None)
    now = datetime.now(UTC)
    srv = servers(10_000)
    evs = events(5_000, now)

    packs = load_policy([], builtin=True)
    with tempfile.TemporaryDirectory() as d:
        site = Path(d) / "site.yaml"
        site.write_text(yaml.safe_dump({"rules": site_rules(extra)}))
        t0 = time.perf_counter()
        big = load_policy([site], builtin=True)
        load_s = time.perf_counter() - t0
    results: dict[str, Any] = {"packs_rules": len(packs.ruleset), "extra_rules": extra,
                               "load_with_extra_s": round(load_s, 3)}
    # Interleaved rounds, medians: a busy neighbour slows both sides alike.
    small_d, big_d = Decider(packs.ruleset, guards, []), Decider(big.ruleset, guards, [])
    bases, extras = [], []
    for _ in range(5):
        bases.append(rate(small_d, evs, srv, seconds / 2))
        extras.append(rate(big_d, evs, srv, seconds / 2))
    base, with_extra = statistics.median(bases), statistics.median(extras)
    base2 = max(bases)
    results.update(decisions_per_s_packs=round(base), decisions_per_s_packs_plus_extra=round(with_extra),
                   decisions_per_s_packs_best=round(base2), ratio=round(with_extra / base, 3))

    # b) threshold state for 10,000 servers with an open window each
    th = load_policy([], builtin=False)
    with tempfile.TemporaryDirectory() as d:
        site = Path(d) / "t.yaml"
        site.write_text(yaml.safe_dump({"rules": [{"id": "corr-mem", "action": "alert", "match": {
            "trap_oid": "1.3.6.1.4.1.232.0.6015"}, "threshold": {"count": 5, "window": "1h"}}]}))
        th = load_policy([site], builtin=False)
    decider = Decider(th.ruleset, guards, [])
    ev = events(1, now)[0]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for s in srv:
        for _ in range(3):
            decider.decide(ev, s)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    snapshot = json.dumps(decider.state.snapshot())
    results.update(state_servers=len(srv), state_bytes=held, state_mb=round(held / 1e6, 2),
                   snapshot_bytes=len(snapshot))

    print("bench_rules (one core, decide() only; storing decisions is batched elsewhere)")
    print(f"  built-in packs: {results['packs_rules']} rules; + {extra:,} site rules "
          f"(policy load {load_s:.2f} s)")
    print(f"  a) decisions/s, packs only (baseline)   {base:>10,.0f}   (median of 5; best {base2:,.0f})")
    print(f"  a) decisions/s, packs + {extra:,} rules  {with_extra:>10,.0f}   ratio x{results['ratio']:.2f}"
          f"   target >= {TARGET_RATE:,}/s and ratio >= {TARGET_RATIO}")
    print(f"  b) threshold state, {len(srv):,} servers with open windows: {held / 1e6:.1f} MB held, "
          f"snapshot {len(snapshot) / 1e6:.1f} MB JSON")
    print(json.dumps(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
