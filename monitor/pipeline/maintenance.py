"""Operator maintenance: silences stored in the store (shared by every monitor on it) and the rule
guards' live state (cooldowns, rate-limit windows, open declines), shown and reset with an author.

A maintenance silence names one server, a domain group or an enclosure, with an author, a comment, a
start and an expiry (like `amtool silence add`). While one covers a server, a failover decision for it
becomes an `alert` decision naming the silence (the guards it used are given back): the operator hears
of the fault, nothing is acted on. Silences live in the store, so every monitor sharing it honours the
same ones; they are read when a failover is decided (a rare event), so a new one counts at once.

Rule-file silences (rules/) stay what they were: part of the policy, `none` decisions.

The guards' state (rules/engine.py RuleState) is each monitor's own (the one deciding the event): a
reset applies to the monitor asked, is snapshotted to the store at once and recorded in the audit log.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from monitor.core.errors import OperatorRefused, StoreError
from monitor.core.model import Inventory, Server, iso
from monitor.store import Store
from monitor.store.rows import SILENCE_KINDS, SilenceRow
from rules.engine import Decider, Decision

log = logging.getLogger(__name__)


def covers(silence: SilenceRow, server: Server) -> bool:
    """Whether the silence names this server, its domain group or its enclosure."""
    if silence.kind == "server":
        return silence.target == server.id
    if silence.kind == "group":
        return silence.target == server.domain_group
    return silence.target == server.enclosure


def _when(t: float) -> str:
    return str(iso(datetime.fromtimestamp(t, UTC)))


def describe(silence: SilenceRow) -> str:
    """The silence as a decision's guard names it."""
    comment = f": {silence.comment}" if silence.comment else ""
    return (f"maintenance silence {silence.id} ({silence.kind} {silence.target}, by {silence.author}"
            f"{comment}; until {_when(silence.ends)})")


async def covering(store: Store, server: Server, at: float) -> SilenceRow | None:
    """The first stored silence active at `at` that covers `server`, if any."""
    for s in await store.list_silences(since=at):
        if s.active(at) and covers(s, server):
            return s
    return None


async def honour_silences(store: Store, decider: Decider, decision: Decision, server: Server) -> None:
    """Turn a failover decision for a silenced server into an alert naming the silence (giving back the
    cooldown and rate-limit slot it took). When the silences cannot be read, nothing is failed over
    either: the decision alerts and says why (a silence may be in force)."""
    if decision.action != "failover":
        return
    try:
        silence = await covering(store, server, decision.time.timestamp())
    except StoreError as exc:
        decider.release(decision)
        decision.action, decision.guard = "alert", f"maintenance silences cannot be read: {exc}"
        return
    if silence is not None:
        decider.release(decision)
        decision.action, decision.guard = "alert", f"silenced by {describe(silence)}"


def _check_target(inventory: Inventory | None, kind: str, target: str) -> None:
    if kind not in SILENCE_KINDS:
        raise OperatorRefused(f"a silence names a server, group or enclosure, not {kind!r}", 400)
    if inventory is None:
        raise OperatorRefused("inventory not loaded yet", 503)
    known = (set(inventory.servers) if kind == "server" else set(inventory.groups) if kind == "group"
             else set(inventory.enclosures))
    if target not in known:
        raise OperatorRefused(f"unknown {kind} {target}", 404)


async def add_silence(store: Store, inventory: Inventory | None, *, kind: str, target: str, author: str,
                      comment: str, starts: float, ends: float, now: float) -> SilenceRow:
    """Store a new silence, after checking that its target exists and its expiry is in the future."""
    _check_target(inventory, kind, target)
    if ends <= starts:
        raise OperatorRefused("the silence ends before it starts", 400)
    if ends <= now:
        raise OperatorRefused("the silence would already have expired", 400)
    silence = await store.add_silence(kind, target, author, comment, starts, ends, now)
    log.warning("maintenance silence %s added: %s %s by %s until %s (%s)", silence.id, kind, target, author,
                _when(ends), comment or "no comment")
    return silence


async def expire_silence(store: Store, silence_id: int, by: str, now: float) -> SilenceRow:
    silence = await store.expire_silence(silence_id, by, now)
    if silence is None:
        raise OperatorRefused(f"unknown silence {silence_id}", 404)
    log.warning("maintenance silence %s expired by %s", silence_id, by)
    return silence


# --- guards --------------------------------------------------------------------------------------


def guards_view(decider: Decider, now: float) -> dict[str, Any]:
    """The live guard state: per-server cooldowns still running, per-group rate-limit windows, open
    declined failovers, and the pause switch."""
    st, g = decider.state, decider.guards
    cooldowns = []
    for sid, last in st.last_failover.items():
        left = float(last) + g.cooldown - now
        if left > 0:
            cooldowns.append({"server": sid, "last_failover": _when(float(last)), "cooldown": g.cooldown,
                              "remaining": round(left, 1)})
    rate_limits = []
    if g.rate_limit is not None:
        window, cap = g.rate_limit.window, g.rate_limit.max_failovers
        for group, times in st.failovers.items():
            recent = sorted(t for t in times if t > now - window)
            if recent:
                rate_limits.append({
                    "group": group, "failovers": len(recent), "max": cap, "window": window,
                    "limited": len(recent) >= cap, "oldest": _when(recent[0]),
                    "next_slot_in": round(max(0.0, recent[0] + window - now), 1)
                    if len(recent) >= cap else 0.0,
                })
    declined = []
    for sid in list(st.declined):
        info = st.open_decline(sid, now)
        if info is not None:
            declined.append({"server": sid, "rule": info.get("rule"), "reason": info.get("reason"),
                             "until": _when(float(info["until"]))})
    return {"paused": decider.paused, "cooldowns": sorted(cooldowns, key=lambda c: c["server"]),
            "rate_limits": sorted(rate_limits, key=lambda r: r["group"]),
            "declined": sorted(declined, key=lambda d: d["server"])}


def reset_guards(decider: Decider, inventory: Inventory | None, *, server: str | None,
                 group: str | None) -> dict[str, Any]:
    """Forget the cooldown and open decline of `server`, or the rate-limit and storm windows of
    `group`; returns what was cleared. The caller records it (audit) and snapshots the state."""
    if (server is None) == (group is None):
        raise OperatorRefused("reset the guards of one server or one group", 400)
    st = decider.state
    if server is not None:
        _check_target(inventory, "server", server)
        cleared: dict[str, Any] = {"server": server,
                                   "cooldown": st.last_failover.pop(server, None) is not None,
                                   "declined": st.declined.pop(server, None) is not None}
        return cleared
    assert group is not None
    _check_target(inventory, "group", group)
    times = st.failovers.pop(group, None)
    storm = st.bad.pop(("domain_group", group), None)
    st.storm_alerted.pop(("domain_group", group), None)
    return {"group": group, "rate_limit": len(times or ()), "storm": len(storm or {})}
