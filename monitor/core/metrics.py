"""Counters, gauges and histograms on prometheus_client, one CollectorRegistry per daemon (no global
default registry). Every counter is declared here (COUNTERS) with its HELP, its label names and the label
values known in advance, so each is exposed at 0 from the start; a name or label set not declared here
is a programming error (tests/unit/test_metrics.py checks every call site)."""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import product
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitor import __version__

log = logging.getLogger(__name__)

PREFIX = "failover_monitor_"
CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass(frozen=True, slots=True)
class CounterSpec:
    help: str
    labels: tuple[str, ...] = ()
    values: tuple[tuple[str, ...], ...] = ()
    """Each label's values known in advance (one tuple per label): their combinations start at 0."""


_SOURCES = ("api", "snmp", "redfish", "redfish-sse", "redfish-poll")
_SNMP_DROPS = ("bad_community", "bad_version", "version_disabled", "malformed", "invalid_message",
               "unknown_security_model", "unsupported_pdu", "unknown_user", "unknown_engine_id",
               "unsupported_security_level", "security_level_too_low", "wrong_digest", "decryption_error",
               "not_in_time_window", "sender_not_allowed", "queue_full", "internal_error")
_REDFISH_DROPS = ("bad_json", "not_event", "queue_full", "unauthorized", "sender", "too_large", "error",
                  "sse_bad_frame", "sse_too_large")
_API_REJECTS = ("rate_limited", "too_large", "store_unavailable", "internal_error", "unauthorized",
                "bad_json", "bad_request", "unknown_server", "active_job", "manager_unavailable")

COUNTERS: dict[str, CounterSpec] = {
    "api_rejected_total": CounterSpec("API requests refused, by reason", ("reason",), (_API_REJECTS,)),
    "dashboard_stream_dropped_total": CounterSpec(
        "Dashboard live-stream clients dropped for reading too slowly (their queue was full)"),
    "cluster_heartbeat_errors_total": CounterSpec("Lease heartbeats that failed to reach the store"),
    "cluster_lease_lapses_total": CounterSpec("Lease renewals that found the lease already over (a pause or a"
                                              " store outage); the jobs held under it are checked again"),
    "spare_checks_total": CounterSpec("Spare pool checks completed (every designated spare read)"),
    "spare_readings_total": CounterSpec(
        "Spares of the periodic check, by where their reading came from: the health poll's (at most"
        " spares.max_reading_age old) or a read of the BMC", ("source",), (("health_poll", "bmc"),)),
    "spare_check_errors_total": CounterSpec("Spare pool checks that failed (the next one still runs)"),
    "decisions_total": CounterSpec("Rule decisions, by action", ("action",),
                                   (("failover", "alert", "ignore", "declined", "none"),)),
    "decisions_dropped_total": CounterSpec("Decisions not recorded (the decision log's queue was full)"),
    "events_dropped_total": CounterSpec("Events dropped before the rules, by reason", ("reason",),
                                        (("queue_full", "shutdown", "internal_error"),)),
    "events_received_total": CounterSpec("Events queued for the rules through the API", ("source",),
                                         (("api",),)),
    "events_unresolved_total": CounterSpec(
        "Events whose server could not be resolved, by source and reason", ("reason", "source"),
        (("no_match", "ambiguous_sender", "ambiguous_origin"), _SOURCES)),
    "failover_job_errors_total": CounterSpec("Job runs that failed outside their steps (run again later)"),
    "failover_jobs_created_total": CounterSpec("Failover jobs created"),
    "failover_jobs_failed_safe_total": CounterSpec(
        "Jobs taken over mid-flight and ended without acting further"),
    "failover_jobs_finished_total": CounterSpec("Failover jobs ended, by final state", ("state",),
                                                (("completed", "failed"),)),
    "failover_jobs_lost_total": CounterSpec("Jobs this monitor stopped running because its lease was lost"),
    "failover_jobs_resumed_total": CounterSpec("Jobs resumed after a restart"),
    "failover_jobs_taken_over_total": CounterSpec("Jobs adopted from a monitor whose lease ran out"),
    "inventory_refresh_errors_total": CounterSpec("Inventory reads from the profile manager that failed"),
    "collector_refreezes_total": CounterSpec(
        "gc.freeze() of what is alive after a slow full collection (the young generations collected first)"),
    "collector_sweeps_total": CounterSpec(
        "Full collections of the whole heap, frozen objects included, each followed by gc.freeze()"),
    "mqtt_dropped_total": CounterSpec("Messages dropped, oldest first, because the MQTT buffer was full"),
    "mqtt_published_total": CounterSpec("Messages the MQTT broker acknowledged (QoS 1)"),
    "mqtt_reconnects_total": CounterSpec("MQTT connection attempts after the first one"),
    "rediscovery_found_total": CounterSpec("Rediscovery timers that found the host up"),
    "rediscovery_not_found_total": CounterSpec("Rediscovery timers that gave up on the host"),
    "redfish_events_dropped_total": CounterSpec("Redfish event pushes and frames refused, by reason",
                                                ("reason",), (_REDFISH_DROPS,)),
    "redfish_events_received_total": CounterSpec("Redfish events queued for the rules, by source",
                                                 ("source",), (("redfish", "redfish-sse", "redfish-poll"),)),
    "redfish_health_poll_cycles_total": CounterSpec("Health poll cycles completed (every BMC read once)"),
    "redfish_health_poll_overruns_total": CounterSpec(
        "Health poll cycles that took longer than redfish_events.poll_interval"),
    "redfish_health_polls_total": CounterSpec("Health reads of BMCs, by result", ("result",),
                                              (("ok", "error", "unknown"),)),
    "redfish_sse_connections_total": CounterSpec("SSE connection attempts, by result", ("result",),
                                                 (("connected", "no_sse", "error"),)),
    "redfish_subscriptions_total": CounterSpec(
        "Subscription reconcile outcomes per BMC", ("result",),
        (("created", "repaired", "kept", "removed-stale", "skipped", "error"),)),
    "rules_reload_total": CounterSpec("Rule file reloads, by result", ("result",), (("ok", "error"),)),
    "snmp_datagrams_received_total": CounterSpec("UDP datagrams read on the SNMP trap port"),
    "snmp_dropped_total": CounterSpec("SNMP datagrams or notifications dropped, by reason", ("reason",),
                                      (_SNMP_DROPS,)),
    "snmp_engine_discovery_total": CounterSpec("SNMPv3 engine-id discovery probes answered"),
    "snmp_traps_received_total": CounterSpec("SNMP notifications accepted, by version", ("version",),
                                             (("1", "2c", "3"),)),
    "store_errors_total": CounterSpec("Store operations that failed, by part", ("part",),
                                      (("adoption", "timers", "decisions"),)),
    "store_retries_total": CounterSpec("Job saves retried after a store error"),
}

PHASES: tuple[tuple[str, str, str], ...] = (
    ("detect_to_fence", "created", "power_off_source"),
    ("fence_to_move", "power_off_source", "move_profile"),
    ("move_to_boot", "move_profile", "power_on_spare"),
)
"""Failover phases: (phase label, from, to); "created" is the job's creation (the detection), a step
name is that step's finish."""

DURATION_BUCKETS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)

HISTOGRAMS: dict[str, CounterSpec] = {
    "redfish_health_poll_cycle_seconds": CounterSpec(
        "Seconds one health poll cycle took (every BMC read once; spread over poll_spread of the interval)"),
    "failover_phase_duration_seconds": CounterSpec(
        "Seconds of each phase of completed steps: detect_to_fence, fence_to_move, move_to_boot",
        ("phase",), (tuple(p for p, _, _ in PHASES),)),
    "failover_job_duration_seconds": CounterSpec("Seconds from a job's creation to its end, by final state",
                                                 ("state",), (("completed", "failed"),)),
}

GaugeRead = Callable[[], Mapping[Any, float]]


class _ReadGauge(Collector):
    """A gauge read at scrape time: `read` returns {label values tuple (or "" without labels): value}."""

    def __init__(self, name: str, text: str, labels: tuple[str, ...], read: GaugeRead) -> None:
        self._name, self._text, self._labels, self._read = name, text, labels, read

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self._name, self._text, labels=self._labels)]

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self._name, self._text, labels=self._labels)
        try:
            values = dict(self._read())
        except Exception:  # a broken reader must not break the scrape of everything else
            log.exception("gauge %s not read", self._name)
            values = {}
        for key, value in sorted(values.items(), key=lambda kv: str(kv[0])):
            if self._labels:
                family.add_metric([str(v) for v in key], float(value))
            else:
                family.add_metric([], float(value))
        return [family]


class Metrics:
    """The daemon's metrics. `inc`/`get`/`gauge` keep the names without the prefix."""

    def __init__(self, prefix: str = PREFIX) -> None:
        self._prefix = prefix
        self.registry = CollectorRegistry()
        self._counters: dict[str, Counter] = {}
        self._histograms: dict[str, Histogram] = {}
        self._gauges: dict[str, Collector] = {}
        self._children: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
        """(name, labels) -> the labelled counter: prometheus_client's labels() costs ~10 µs a call."""
        for name, spec in COUNTERS.items():
            counter = Counter(prefix + name, spec.help, spec.labels, registry=self.registry)
            self._counters[name] = counter
            if not spec.labels:
                counter.inc(0)
            elif spec.values:
                for values in product(*spec.values):
                    counter.labels(*values)
        for name, spec in HISTOGRAMS.items():
            histogram = Histogram(prefix + name, spec.help, spec.labels, registry=self.registry,
                                  buckets=DURATION_BUCKETS)
            self._histograms[name] = histogram
            if spec.labels and spec.values:
                for values in product(*spec.values):
                    histogram.labels(*values)
        info = Gauge(prefix + "build_info", "The running build: version and Python, value 1",
                     ("version", "python"), registry=self.registry)
        info.labels(__version__, platform.python_version()).set(1)

    def describe(self, name: str, text: str) -> None:
        """Kept for callers: every counter's HELP is declared in COUNTERS; a mismatch is a mistake."""
        if name not in COUNTERS:
            raise KeyError(f"metric {name} is not declared in monitor.core.metrics.COUNTERS")

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        if value < 0:
            raise ValueError(f"counter {name} cannot decrease ({value})")
        if not labels:
            self._counters[name].inc(value)
            return
        key = (name, tuple(labels.items()))
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._counters[name].labels(**labels)
        child.inc(value)

    def get(self, name: str, **labels: str) -> float:
        sample = name if name.endswith("_total") else name + "_total"
        value = self.registry.get_sample_value(self._prefix + sample, labels)
        return value if value is not None else 0.0

    def series(self) -> dict[str, dict[str, float]]:
        """Every counter's values: {name: {'{label="value",...}' (sorted; "" without labels): value}}."""
        out: dict[str, dict[str, float]] = {}
        for family in self.registry.collect():
            if family.type != "counter":
                continue
            name = family.name[len(self._prefix):] + "_total"
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    inner = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                    out.setdefault(name, {})["{" + inner + "}" if inner else ""] = sample.value
        return out

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        histogram = self._histograms[name]
        (histogram.labels(**labels) if labels else histogram).observe(max(0.0, seconds))

    def histogram_count(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(self._prefix + name + "_count", labels)
        return value if value is not None else 0.0

    def gauge(self, name: str, read: GaugeRead, text: str, labels: tuple[str, ...] = ()) -> None:
        """A gauge read at scrape time: `read` returns {label values (a tuple; "" without labels): value}."""
        if name in self._gauges:
            self.registry.unregister(self._gauges[name])
        collector = _ReadGauge(self._prefix + name, text, labels, read)
        self.registry.register(collector)
        self._gauges[name] = collector

    def render(self) -> str:
        """The Prometheus text exposition of every metric (prometheus_client's)."""
        return generate_latest(self.registry).decode("utf-8")
