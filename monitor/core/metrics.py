"""Counters and gauges, rendered in the Prometheus text format. One instance per daemon."""

from __future__ import annotations

from collections.abc import Callable


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in sorted(labels.items())
    )
    return "{" + inner + "}"


class Metrics:
    def __init__(self, prefix: str = "failover_monitor_") -> None:
        self._prefix = prefix
        self._counters: dict[str, dict[str, float]] = {}
        self._help: dict[str, str] = {}
        self._gauges: dict[str, Callable[[], dict[str, float]]] = {}

    labels = staticmethod(_labels)

    def describe(self, name: str, text: str) -> None:
        self._help[name] = text

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        series = self._counters.setdefault(name, {})
        key = _labels(labels)
        series[key] = series.get(key, 0.0) + value

    def get(self, name: str, **labels: str) -> float:
        return self._counters.get(name, {}).get(_labels(labels), 0.0)

    def gauge(self, name: str, read: Callable[[], dict[str, float]], text: str = "") -> None:
        """A gauge read at scrape time: `read` returns {label-string-or-"": value}."""
        self._gauges[name] = read
        if text:
            self._help[name] = text

    def render(self) -> str:
        lines: list[str] = []
        for name in sorted(self._counters):
            full = self._prefix + name
            if name in self._help:
                lines.append(f"# HELP {full} {self._help[name]}")
            lines.append(f"# TYPE {full} counter")
            for labels, value in sorted(self._counters[name].items()):
                lines.append(f"{full}{labels} {value:g}")
        for name in sorted(self._gauges):
            full = self._prefix + name
            if name in self._help:
                lines.append(f"# HELP {full} {self._help[name]}")
            lines.append(f"# TYPE {full} gauge")
            for labels, value in sorted(self._gauges[name]().items()):
                lines.append(f"{full}{labels} {value:g}")
        return "\n".join(lines) + "\n"
