"""The dashboard's pieces on their own: HTML escaping, the job picture, the live stream's fan-out."""

from __future__ import annotations

from typing import Any

from monitor.core.metrics import Metrics
from monitor.dashboard import render
from monitor.dashboard.hub import Hub

EVIL = '<script>alert("x")</script>&'


def _job(states: dict[str, str]) -> dict[str, Any]:
    steps = [{"step": name, "state": states.get(name, "pending"), "detail": EVIL}
             for _, names in render.PHASES for name in names]
    return {"job": 7, "server": EVIL, "state": "running", "spare": None, "steps": steps,
            "trigger": {"rule": EVIL}, "created": None, "error": EVIL}


def test_the_job_page_escapes_every_outside_value() -> None:
    html = render.job_page(_job({}), token_required=True)
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in html


def test_the_overview_escapes_servers_rules_and_guards() -> None:
    view = {"status": {"instance": EVIL, "paused": EVIL,
                       "groups": [{"group": EVIL, "locked_by": EVIL, "waiting": 0}]},
            "servers": [{"id": EVIL, "domain_group": EVIL, "model": EVIL, "power": "On", "health": "OK",
                         "profile": EVIL, "state": "production"}],
            "spares": [{"domain_group": EVIL, "model": EVIL, "available": 1, "min": 1}],
            "jobs": [_job({})], "decisions": [{"server": EVIL, "rule": EVIL, "guard": EVIL, "job": 7}]}
    html = render.overview(view, token_required=False)
    assert "<script>alert" not in html and html.count("&lt;script&gt;") >= 10


def test_the_timeline_follows_the_steps() -> None:
    job = _job({"check_domain": "done", "lock_group": "done", "check_product": "done",
                "power_off_source": "running"})
    assert render.phase_state(job, render.PHASES[0][1]) == "done"
    assert render.phase_state(job, render.PHASES[1][1]) == "running"
    assert render.phase_state(job, render.PHASES[2][1]) == "pending"
    assert render.current_step(job) == "power_off_source"
    svg = render.timeline_svg(job)
    assert 'id="phase-fence" class="phase running"' in svg and 'id="phase-detect" class="phase done"' in svg


def test_with_no_client_a_publish_builds_nothing() -> None:
    hub = Hub(Metrics())
    calls: list[int] = []

    def payload() -> dict[str, Any]:
        calls.append(1)
        return {}

    hub.publish("job", payload)
    assert calls == [] and hub.built == 0
    client = hub.subscribe()
    hub.publish("job", payload)
    assert calls == [1] and len(client.frames) == 1 and client.frames[0].startswith("event: job\n")
    hub.unsubscribe(client)
    hub.publish("job", payload)
    assert calls == [1]


def test_a_slow_client_is_dropped_and_counted_not_buffered() -> None:
    metrics = Metrics()
    hub = Hub(metrics, max_queued=3)
    slow, fast = hub.subscribe(), hub.subscribe()
    for i in range(3):
        hub.publish("job", lambda i=i: {"n": i})  # type: ignore[misc]
        fast.frames.clear()
    assert not slow.dropped
    hub.publish("job", lambda: {"n": 3})
    assert slow.dropped and not fast.dropped and len(slow.frames) == 3 and len(hub) == 1
    assert "failover_monitor_dashboard_stream_dropped_total 1.0" in metrics.render()
