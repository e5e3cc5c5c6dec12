"""Every counter the code increments is declared (with its HELP and labels) in monitor.core.metrics."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from monitor.core.metrics import COUNTERS, HISTOGRAMS, Metrics

ROOT = Path(__file__).resolve().parents[2]
CALL = re.compile(r"""metrics\.inc\(\s*["']([a-z0-9_]+)["']((?:[^()]|\([^()]*\))*)\)""", re.S)
LABEL = re.compile(r"\b([a-z_]+)=")


def call_sites() -> list[tuple[str, str, frozenset[str]]]:
    found = []
    for tree in ("monitor", "adapters", "rules"):
        for path in (ROOT / tree).rglob("*.py"):
            for m in CALL.finditer(path.read_text()):
                found.append((f"{path.relative_to(ROOT)}", m.group(1), frozenset(LABEL.findall(m.group(2)))))
    return found


def test_every_incremented_counter_is_declared_with_its_labels() -> None:
    sites = call_sites()
    assert len(sites) > 40
    for where, name, labels in sites:
        assert name in COUNTERS, f"{where}: {name} is not declared in COUNTERS"
        assert labels == set(COUNTERS[name].labels), f"{where}: {name} labels {sorted(labels)}"
    assert not [n for n in COUNTERS if not n.endswith("_total")]


def test_counters_start_at_zero_and_count() -> None:
    m = Metrics()
    text = m.render()
    for name in COUNTERS:
        assert f"# HELP failover_monitor_{name} " in text
    assert 'failover_monitor_snmp_dropped_total{reason="bad_community"} 0.0' in text
    m.inc("snmp_dropped_total", 2, reason="bad_community")
    assert m.get("snmp_dropped_total", reason="bad_community") == 2
    assert m.get("failover_jobs_finished_total", state="completed") == 0
    with pytest.raises(KeyError):
        m.inc("no_such_total")
    for name in HISTOGRAMS:
        assert f"# TYPE failover_monitor_{name} histogram" in text


def test_registries_are_per_instance() -> None:
    a, b = Metrics(), Metrics()
    a.inc("mqtt_published_total")
    assert a.get("mqtt_published_total") == 1 and b.get("mqtt_published_total") == 0


def test_a_broken_gauge_does_not_break_the_scrape() -> None:
    m = Metrics()

    def broken() -> dict[str, float]:
        raise RuntimeError("boom")

    m.gauge("broken", broken, "a gauge whose reader fails")
    assert "# TYPE failover_monitor_broken gauge" in m.render()
