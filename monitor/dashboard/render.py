"""Server-side HTML for the dashboard. Every value from the outside (server names, rules, guards, details)
goes through `esc`; the page's script only ever sets textContent and class names."""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import urlencode

PHASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("detect", ("check_domain", "lock_group", "check_product")),
    ("fence", ("power_off_source",)),
    ("move", ("select_spare", "move_profile")),
    ("boot", ("power_on_spare", "schedule_rediscovery", "unlock_group")),
)
"""The job page's picture: each phase and the flow's steps it is made of."""


def esc(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def phase_state(job: dict[str, Any], steps: tuple[str, ...]) -> str:
    """pending, running, done or failed for one phase of a job (the trigger is always detected)."""
    states = [s["state"] for s in job.get("steps", []) if s["step"] in steps]
    if any(s == "failed" for s in states):
        return "failed"
    if states and all(s in ("done", "skipped") for s in states):
        return "done"
    if any(s in ("running", "done") for s in states):
        return "running"
    return "pending"


def current_step(job: dict[str, Any]) -> str | None:
    steps = job.get("steps", [])
    for want in ("running", "pending"):
        for s in steps:
            if s["state"] == want:
                return str(s["step"])
    return None


def _page(title: str, body: str, *, token_required: bool) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<link rel="stylesheet" href="/dashboard/static/dashboard.css">
</head><body data-token-required="{'1' if token_required else '0'}">
<header><a href="/" class="brand">failover-monitor</a> <span id="live" class="live off">connecting</span>
<form id="token-form" autocomplete="off"><label>API token <input id="token" type="password"
 name="token" placeholder="needed for actions"></label></form></header>
<main>{body}</main>
<dialog id="confirm"><form method="dialog"><p id="confirm-text"></p>
<button value="cancel" id="confirm-cancel">Cancel</button> <button value="ok" id="confirm-ok">Confirm</button>
</form></dialog>
<div id="action-result" role="status"></div>
<script src="/dashboard/static/dashboard.js"></script>
</body></html>
"""


def _job_row(job: dict[str, Any]) -> str:
    jid = esc(job["job"])
    return (f'<tr id="job-{jid}" data-job="{jid}"><td><a href="/jobs/{jid}">#{jid}</a></td>'
            f'<td>{esc(job["server"])}</td><td class="job-state">{esc(job["state"])}</td>'
            f'<td class="job-step">{esc(current_step(job) or "-")}</td>'
            f'<td class="job-spare">{esc(job.get("spare") or "")}</td></tr>')


def overview(view: dict[str, Any], *, token_required: bool) -> str:
    """view: Dashboard.overview_view() (the status view, servers, spares, jobs and decisions)."""
    status = view["status"]
    paused = status.get("paused")
    groups = []
    for g in status["groups"]:
        name = g["group"]
        pool = [c for c in view["spares"] if c["domain_group"] == name]
        cells = "".join(
            f'<li>{esc(c["model"])}: <span class="spare-count" data-group="{esc(name)}" '
            f'data-model="{esc(c["model"])}">{esc(c["available"])}</span> / N+{esc(c["min"])}</li>'
            for c in pool) or "<li>no spares</li>"
        groups.append(f'<tr data-group="{esc(name)}"><td>{esc(name)}</td>'
                      f'<td>{esc(g["locked_by"] or "-")}</td><td>{esc(_queue(g["waiting"]))}</td>'
                      f'<td><ul class="pool">{cells}</ul></td></tr>')
    servers = "".join(
        f'<tr data-server="{esc(s["id"])}"><td>{esc(s["id"])}</td><td>{esc(s["domain_group"])}</td>'
        f'<td>{esc(s["model"])}</td><td>{esc(s["power"])}</td><td>{esc(s["health"])}</td>'
        f'<td>{esc(s["profile"] or "")}</td>'
        f'<td class="server-state state-{esc(s["state"])}">{esc(s["state"])}</td>'
        f'<td><button data-action="failover" data-server="{esc(s["id"])}">failover</button>'
        f'<button data-action="silence" data-server="{esc(s["id"])}">silence 1h</button>'
        f'<button data-action="spare" data-server="{esc(s["id"])}">spare</button></td></tr>'
        for s in view["servers"])
    jobs = "".join(_job_row(j) for j in view["jobs"])
    decisions = "".join(_decision_row(d) for d in view["decisions"])
    body = f"""
<section><h2>Automatic failover: <span id="paused">{esc("paused: " + paused if paused else "on")}</span></h2>
<button data-action="pause">pause</button> <button data-action="resume">resume</button></section>
<section><h2>Domain groups</h2><table id="groups"><thead><tr><th>group</th><th>lock holder</th>
<th>queue</th><th>spare pool (available / N+k)</th></tr></thead>
<tbody>{''.join(groups)}</tbody></table></section>
<section><h2>Jobs</h2><table id="jobs"><thead><tr><th>job</th><th>server</th><th>state</th><th>step</th>
<th>spare</th></tr></thead><tbody>{jobs}</tbody></table></section>
<section><h2>Recent decisions</h2><table id="decisions"><thead><tr><th>time</th><th>server</th><th>action</th>
<th>rule</th><th>guard</th><th>job</th></tr></thead><tbody>{decisions}</tbody></table></section>
<section><h2>Servers</h2>{_server_filter(view)}<table id="servers"><thead><tr><th>server</th><th>group</th>
<th>model</th><th>power</th><th>health</th><th>profile</th><th>state</th><th>actions</th></tr></thead>
<tbody>{servers}</tbody></table>{_pager(view)}</section>"""
    return _page(f"failover-monitor {status['instance']}", body, token_required=token_required)


def _link(query: Any, **change: str | int) -> str:
    """`?...`: the overview with `query`'s filters (web.ServerQuery), `change` applied (page 1 unless
    given)."""
    params = {"q": query.text, "state": query.state, "group": query.group, "page": 1}
    params.update(change)
    kept = {k: v for k, v in params.items() if v and not (k == "page" and v == 1)}
    return "/?" + urlencode(kept) if kept else "/"


def _server_filter(view: dict[str, Any]) -> str:
    """The servers counted by state (each a link to that state), and the filter form."""
    query, counts = view["query"], view["server_counts"]
    total = sum(counts.values())
    by_state = " · ".join(
        f'<a class="state-{esc(state)}" href="{esc(_link(query, state=state))}">{esc(state)} '
        f'<span class="server-count" data-state="{esc(state)}">{n:,}</span></a>'
        for state, n in counts.items() if n)
    options = "".join(f'<option value="{esc(state)}"{" selected" if state == query.state else ""}>'
                      f"{esc(state)}</option>" for state in counts)
    return (f'<p id="server-counts">{total:,} servers: {by_state or "none"}</p>'
            f'<form id="server-filter" method="get" action="/"><label>server, profile, group or model '
            f'<input name="q" value="{esc(query.text)}"></label> <label>group <input name="group" '
            f'value="{esc(query.group)}" size="10"></label> <label>state <select name="state">'
            f'<option value="">any</option>{options}</select></label> <button type="submit">show</button> '
            f'<a href="/">all</a></form>')


def _pager(view: dict[str, Any]) -> str:
    query, matched, size = view["query"], view["servers_matched"], view["page_size"]
    if matched == 0:
        return '<p id="server-pages">no server matches</p>'
    first = (query.page - 1) * size
    shown = len(view["servers"])
    where = f"{first + 1:,}-{first + shown:,} of {matched:,}" if shown else \
        f"none of {matched:,} on this page"
    links = []
    if query.page > 1:
        previous = min(query.page - 1, pages(matched, size))
        links.append(f'<a rel="prev" href="{esc(_link(query, page=previous))}">previous</a>')
    if first + size < matched:
        links.append(f'<a rel="next" href="{esc(_link(query, page=query.page + 1))}">next</a>')
    return f'<p id="server-pages">servers {where} {" · ".join(links)}</p>'


def pages(matched: int, size: int) -> int:
    """Pages of `size` that `matched` servers fill (at least one)."""
    return max(1, -(-matched // size))


def _queue(waiting: object) -> str:
    if isinstance(waiting, list | tuple):
        return ", ".join(str(w) for w in waiting) or "-"
    return str(waiting)


def _decision_row(d: dict[str, Any]) -> str:
    job = d.get("job")
    link = f'<a href="/jobs/{esc(job)}">#{esc(job)}</a>' if job else ""
    return (f'<tr><td>{esc(d.get("time"))}</td><td>{esc(d.get("server"))}</td><td>{esc(d.get("action"))}</td>'
            f'<td>{esc(d.get("rule") or "")}</td><td>{esc(d.get("guard") or "")}</td><td>{link}</td></tr>')


def timeline_svg(job: dict[str, Any]) -> str:
    """detect -> fence -> move -> boot: a circle per phase, joined, coloured by its state."""
    parts = []
    for i, (name, steps) in enumerate(PHASES):
        x = 60 + i * 160
        if i:
            parts.append(f'<line x1="{x - 130}" y1="40" x2="{x - 30}" y2="40" class="link"/>')
        parts.append(f'<g id="phase-{name}" class="phase {phase_state(job, steps)}" '
                     f'data-steps="{esc(" ".join(steps))}"><circle cx="{x}" cy="40" r="26"/>'
                     f'<text x="{x}" y="90" text-anchor="middle">{name}</text></g>')
    return (f'<svg id="timeline" viewBox="0 0 600 110" width="600" height="110" role="img" '
            f'aria-label="job timeline">{"".join(parts)}</svg>')


def job_page(job: dict[str, Any], *, token_required: bool) -> str:
    jid = esc(job["job"])
    steps = "".join(
        f'<li id="step-{esc(s["step"])}" class="step {esc(s["state"])}"><span class="name">{esc(s["step"])}'
        f'</span> <span class="state">{esc(s["state"])}</span> <span class="detail">{esc(s["detail"] or "")}'
        f'</span></li>' for s in job["steps"])
    trigger = job.get("trigger") or {}
    body = f"""
<section id="job" data-job="{jid}"><h2>Job #{jid}: {esc(job["server"])} &rarr;
<span class="job-spare">{esc(job.get("spare") or "?")}</span>
(<span class="job-state">{esc(job["state"])}</span>)</h2>
<p>rule <code>{esc(trigger.get("rule") or trigger.get("kind") or "")}</code>,
created {esc(job.get("created"))},
current step <b class="job-step">{esc(current_step(job) or "-")}</b></p>
{timeline_svg(job)}
<ol id="steps">{steps}</ol>
<p class="error">{esc(job.get("error") or "")}</p></section>"""
    return _page(f"job {job['job']}", body, token_required=token_required)
