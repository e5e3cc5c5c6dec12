"""Where alert decisions go besides MQTT: the log, with repeats held back."""

from __future__ import annotations

import logging

from monitor.core.clock import Clock

log = logging.getLogger(__name__)


class LogAlertSink:
    """Alerts to the log (always on). The same alert (server, rule, action) is logged once per
    `quiet` seconds, with the count of repeats it held back, so an alert storm cannot flood the log."""

    def __init__(self, clock: Clock, quiet: float = 60.0) -> None:
        self._clock = clock
        self._quiet = quiet
        self._last: dict[tuple[object, ...], tuple[float, int]] = {}

    def alert(self, server: str | None, payload: dict[str, object]) -> None:
        key = (server, payload.get("rule"), payload.get("action"), payload.get("guard"))
        now = self._clock.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self._quiet:
            self._last[key] = (last[0], last[1] + 1)
            return
        held = f" ({last[1]} repeats held back)" if last and last[1] else ""
        if len(self._last) > 10_000:
            self._last.clear()
        self._last[key] = (now, 0)
        log.warning("ALERT %s %s: %s (%s)%s", payload.get("severity"), server or "unknown server",
                    payload.get("rule"), payload.get("guard") or payload.get("action"), held)
