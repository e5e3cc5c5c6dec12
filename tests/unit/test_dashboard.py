"""The dashboard's pieces on their own: HTML escaping, the job picture, the servers' filter and pages,
the live stream's fan-out."""

from __future__ import annotations

import re
from typing import Any

import pytest

from monitor.core.metrics import Metrics
from monitor.dashboard import render
from monitor.dashboard.hub import Hub
from monitor.dashboard.web import PAGE_SIZE, SERVER_STATES, ServerQuery

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
            "jobs": [_job({})], "decisions": [{"server": EVIL, "rule": EVIL, "guard": EVIL, "job": 7}],
            "server_counts": {"production": 1}, "servers_matched": 1, "page_size": PAGE_SIZE,
            "query": ServerQuery(text=EVIL, group=EVIL)}
    html = render.overview(view, token_required=False)
    assert "<script>alert" not in html and html.count("&lt;script&gt;") >= 12


def _servers_view(query: ServerQuery, matched: int) -> dict[str, Any]:
    """An overview of `matched` servers (as Dashboard.overview_view leaves them: the query's page)."""
    first = (query.page - 1) * PAGE_SIZE
    rows = [{"id": f"enc{i // 16}-bay{i % 16 + 1}", "domain_group": "dg1", "model": "ProLiant BL460c",
             "power": "On", "health": "OK", "profile": f"p{i}", "state": "production"}
            for i in range(first, min(matched, first + PAGE_SIZE))]
    return {"status": {"instance": "m", "paused": None, "groups": []}, "servers": rows, "spares": [],
            "jobs": [], "decisions": [], "server_counts": {"production": matched, "spare": 3},
            "servers_matched": matched, "page_size": PAGE_SIZE, "query": query}


def _links(html: str) -> dict[str, str]:
    return dict(re.findall(r'<a rel="(prev|next)" href="([^"]*)"', html))


def test_the_servers_are_listed_a_page_at_a_time_with_their_counts() -> None:
    matched = 2 * PAGE_SIZE + 50
    first = render.overview(_servers_view(ServerQuery(state="production"), matched), token_required=True)
    assert first.count('<tr data-server="') == PAGE_SIZE
    assert f"servers 1-{PAGE_SIZE} of {matched:,}" in first
    assert _links(first) == {"next": "/?state=production&amp;page=2"}, "the filter is kept, no previous"
    assert f'{matched + 3:,} servers:' in first and 'href="/?state=spare"' in first
    assert '<option value="production" selected>' in first

    last = render.overview(_servers_view(ServerQuery(state="production", page=3), matched),
                           token_required=True)
    assert last.count('<tr data-server="') == 50 and f"servers {2 * PAGE_SIZE + 1:,}-{matched:,} of" in last
    assert _links(last) == {"prev": "/?state=production&amp;page=2"}

    beyond = render.overview(_servers_view(ServerQuery(page=9), matched), token_required=True)
    assert beyond.count('<tr data-server="') == 0 and "none of" in beyond
    assert _links(beyond) == {"prev": "/?page=3"}, "back to the last page there is"

    none = render.overview(_servers_view(ServerQuery(text="nothing"), 0), token_required=True)
    assert "no server matches" in none and _links(none) == {}


def test_the_server_query_is_checked_and_matched() -> None:
    assert ServerQuery.parse({}) == ServerQuery()
    q = ServerQuery.parse({"q": "  BAY1 ", "state": "spare", "group": "dg1", "page": "2"})
    assert q == ServerQuery(text="BAY1", state="spare", group="dg1", page=2)
    for bad in ({"page": "0"}, {"page": "x"}, {"page": "-1"}, {"page": "²"}, {"page": "9" * 5000},
                {"page": "12345678"}, {"state": "lost"}):
        with pytest.raises(ValueError, match=r"^(page|state): "):
            ServerQuery.parse(bad)
    assert len(ServerQuery.parse({"q": "x" * 5000}).text) == 200
    row = {"id": "enc1-bay10", "domain_group": "dg1", "model": "ProLiant BL460c", "profile": None,
           "state": "spare"}
    assert q.matches(row) and ServerQuery(text="bl460").matches(row) and ServerQuery().matches(row)
    assert not ServerQuery(state="production").matches(row) and not ServerQuery(group="dg2").matches(row)
    assert not ServerQuery(text="web").matches(row)
    assert set(SERVER_STATES) >= {"production", "spare", "fenced", "maintenance"}


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
