"""Rule evaluation: indexed candidate lookup, matching, thresholds, correlation, clearing, cooldown and
the guards (silences, pause, alert-only groups, storm guard, rate limit), and the memory of declined
failovers (a confirmation that declined stays open for a window: a second signal or a health change
within it fails the server over).

Cost per event does not grow with rules that cannot match: rules are indexed by trap OID (exact and
prefix), by Redfish message name (any registry version), and otherwise by source. State (threshold
windows, correlation memory, cooldowns, storm and rate windows) is bounded and can be snapshotted to the
store and restored, so a restart does not forget an open window.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from monitor.core.events import Event, severity_rank
from monitor.core.model import Server, identify_product, iso
from rules.matchers import Matcher, compile_matcher, field_matcher
from rules.schema import ACTION_RANK, DAYS, SEVERITY_RANK, GuardsSpec, RuleSpec, SilenceSpec

MAX_KEYS = 200_000
"""At most this many (rule, server) windows and per-server entries are kept; the oldest go first."""


@dataclass(frozen=True, slots=True)
class Rule:
    spec: RuleSpec
    origin: str
    """The file and list position where the rule was defined."""
    match: tuple[tuple[str, Matcher], ...]
    server: tuple[tuple[str, Matcher], ...]
    order: int

    @property
    def id(self) -> str:
        return self.spec.id

    def wants_source(self, source: str) -> bool:
        s = self.spec.source
        return s == "any" or (s == "snmp" and source == "snmp") or (
            s == "redfish" and source.startswith("redfish")) or source == "file"


def compile_rule(spec: RuleSpec, origin: str, order: int) -> Rule:
    return Rule(
        spec, origin,
        tuple((k, field_matcher(k, v, f"match.{k}")) for k, v in spec.match.items()),
        tuple((k, compile_matcher(v, f"server.{k}")) for k, v in spec.server.items()),
        order,
    )


def server_attribute(server: Server, name: str) -> Any:
    if name == "product_family":
        info = identify_product(server.product)
        return info.family if info else None
    if name == "model":
        return server.model
    value = getattr(server, name, None)
    return getattr(value, "value", value)


CANDIDATE_CACHE = 10_000
"""Distinct (trap OID, message key, source) kept in a rule set's candidate cache before it starts anew."""


class RuleSet:
    """Compiled rules and their index."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: dict[str, Rule] = {}
        self._by_oid: dict[str, list[Rule]] = {}
        self._by_prefix: dict[str, list[Rule]] = {}
        self._by_msg: dict[str, list[Rule]] = {}
        self._generic: list[Rule] = []
        self._candidates: dict[tuple[str | None, str | None, str], list[Rule]] = {}
        """(trap OID, message key, source) -> the candidate rules: a storm repeats a few keys."""
        for rule in rules:
            if not rule.spec.enabled:
                continue
            self.rules[rule.id] = rule
            self._index(rule)

    def _index(self, rule: Rule) -> None:
        for name, m in rule.match:
            keys = [m.key] if m.key else list(m.keys)
            if name == "trap_oid" and keys and all(k[0] in ("eq", "prefix") for k in keys):
                for kind, value in keys:
                    target = self._by_oid if kind == "eq" else self._by_prefix
                    target.setdefault(value.strip("."), []).append(rule)
                return
            if name in ("message_id", "message_key") and keys and all(k[0] in ("msg", "eq") for k in keys):
                for kind, value in keys:
                    key = value.lower() if kind == "msg" else value.rsplit(".", 1)[-1].lower()
                    self._by_msg.setdefault(key, []).append(rule)
                return
        self._generic.append(rule)

    def candidates(self, event: Event) -> list[Rule]:
        """The rules an event may fire (by trap OID, message key, or generic), for its source."""
        key = event.message_key or (event.message_id.rsplit(".", 1)[-1] if event.message_id else None)
        cache_key = (event.trap_oid, key, event.source)
        found = self._candidates.get(cache_key)
        if found is None:
            if len(self._candidates) >= CANDIDATE_CACHE:
                self._candidates.clear()
            found = self._candidates[cache_key] = self._find(event.trap_oid, key, event.source)
        return found

    def _find(self, trap_oid: str | None, key: str | None, source: str) -> list[Rule]:
        found: list[Rule] = []
        if trap_oid:
            oid = trap_oid.strip(".")
            found.extend(self._by_oid.get(oid, ()))
            if self._by_prefix:
                parts = oid.split(".")
                for n in range(len(parts), 0, -1):
                    found.extend(self._by_prefix.get(".".join(parts[:n]), ()))
        if key:
            found.extend(self._by_msg.get(key.lower(), ()))
        found.extend(self._generic)
        return [r for r in found if r.wants_source(source)]

    def __len__(self) -> int:
        return len(self.rules)


@dataclass(slots=True)
class Decision:
    time: datetime
    event: Event
    server: str | None
    action: str = "none"
    """failover, alert, ignore, or none (no rule fired)."""
    rule: str | None = None
    severity: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    matched: list[tuple[str, str, str]] = field(default_factory=list)
    """(rule, action, note) for every rule whose conditions held."""
    near: list[tuple[str, str]] = field(default_factory=list)
    """(rule, why not) for candidate rules that did not fire."""
    guard: str | None = None
    """The guard that stopped or changed an action, and why."""
    confirm: bool = False
    storm_alert: str | None = None
    """Set on the decision that starts a storm: the one alert raised for it."""
    id: int | None = None
    job: int | None = None
    confirmation: dict[str, Any] | None = None
    """The BMC reading and the verdict of the confirmation before a job (the pipeline sets it):
    {"reading", "verdict": "confirmed" | "declined", "reason"}."""
    reopened: dict[str, Any] | None = None
    """When this failover decision comes within the window of a declined one: that decline and why it
    counts again ({"rule", "time", "reason", "by": "second signal" | "health change"})."""
    notes: list[str] = field(default_factory=list)
    consumed: tuple[str, float | None, str | None] | None = None
    """What the guards used up for this failover (server, its previous cooldown mark, the rate-limited
    group), so a declined confirmation can give it back."""
    _event_json: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def event_json(self) -> dict[str, Any]:
        """The event as JSON, made once: the decision's record and its alert share it. Read only."""
        if self._event_json is None:
            self._event_json = self.event.model_dump(mode="json", exclude_defaults=True)
        return self._event_json

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "time": iso(self.time), "server": self.server, "action": self.action,
            "rule": self.rule, "severity": self.severity, "labels": self.labels,
            "matched": [{"rule": r, "action": a, "note": n} for r, a, n in self.matched],
            "near_misses": [{"rule": r, "why": w} for r, w in self.near],
            "guard": self.guard, "job": self.job,
            "event": self.event_json(),
        }
        if self.confirmation is not None:
            out["confirmation"] = self.confirmation
        if self.reopened is not None:
            out["reopened"] = self.reopened
        if self.notes:
            out["notes"] = list(self.notes)
        return out


class _Lru(OrderedDict[Any, Any]):
    """An OrderedDict that forgets its oldest keys beyond MAX_KEYS."""

    def touch(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > MAX_KEYS:
            self.popitem(last=False)


class RuleState:
    """Everything the rules remember between events; bounded; serializable."""

    def __init__(self) -> None:
        self.windows: _Lru = _Lru()  # (rule, server) -> deque[time]
        self.seen: _Lru = _Lru()  # (server, rule) -> last match time (correlation)
        self.last_failover: _Lru = _Lru()  # server -> time
        self.bad: dict[tuple[str, str], _Lru] = {}  # (scope kind, scope id) -> server -> time
        self.storm_alerted: dict[tuple[str, str], float] = {}
        self.failovers: dict[str, deque[float]] = {}  # group -> times
        self.enclosure_faults: dict[str, float] = {}  # enclosure -> until
        self.declined: _Lru = _Lru()  # server -> the open declined failover (dict, see Decider.decline)

    def snapshot(self) -> dict[str, Any]:
        return {
            "windows": [[r, s, list(d)] for (r, s), d in self.windows.items()],
            "seen": [[s, r, t] for (s, r), t in self.seen.items()],
            "last_failover": list(self.last_failover.items()),
            "bad": [[k, i, list(m.items())] for (k, i), m in self.bad.items()],
            "storm_alerted": [[k, i, t] for (k, i), t in self.storm_alerted.items()],
            "failovers": [[g, list(d)] for g, d in self.failovers.items()],
            "enclosure_faults": list(self.enclosure_faults.items()),
            "declined": list(self.declined.items()),
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> RuleState:
        st = cls()
        for r, s, times in data.get("windows", []):
            st.windows.touch((r, s), deque(times))
        for s, r, t in data.get("seen", []):
            st.seen.touch((s, r), t)
        for s, t in data.get("last_failover", []):
            st.last_failover.touch(s, t)
        for k, i, items in data.get("bad", []):
            lru = st.bad.setdefault((k, i), _Lru())
            for s, t in items:
                lru.touch(s, t)
        for k, i, t in data.get("storm_alerted", []):
            st.storm_alerted[(k, i)] = t
        for g, times in data.get("failovers", []):
            st.failovers[g] = deque(times)
        st.enclosure_faults = dict(data.get("enclosure_faults", []))
        for sid, info in data.get("declined", []):
            if isinstance(info, dict):
                st.declined.touch(sid, info)
        return st

    def faulted_enclosures(self, now: float) -> set[str]:
        return {e for e, until in self.enclosure_faults.items() if until > now}

    def open_decline(self, server: str, now: float) -> dict[str, Any] | None:
        """The declined failover of `server` whose window is still open at `now`, if any."""
        info = self.declined.get(server)
        if info is None:
            return None
        if float(info.get("until", 0)) <= now:
            del self.declined[server]
            return None
        return dict(info)


def signature(rule: str, event: Event) -> str:
    """What makes two failover signals the same delivery (a BMC resending an event): the rule and the
    event's identity and content, not its reception time or id."""
    text = "|".join([rule, event.trap_oid or "", event.message_id or event.message_key or "",
                     event.event_id or "", repr(sorted(event.varbinds.items())), repr(event.message_args)])
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class Silence:
    def __init__(self, spec: SilenceSpec) -> None:
        self.spec = spec
        self._servers = re.compile(fnmatch.translate(spec.servers)) if spec.servers else None
        self._tz = ZoneInfo(spec.recurring.timezone) if spec.recurring else None

    def covers(self, server: Server, rule: str, now: datetime) -> bool:
        s = self.spec
        if s.rules and rule not in s.rules:
            return False
        if not ((self._servers and self._servers.match(server.id)) or server.domain_group in s.groups
                or server.enclosure in s.enclosures):
            return False
        if s.start and now < s.start:
            return False
        if s.end and now >= s.end:
            return False
        if s.recurring and self._tz:
            local = now.astimezone(self._tz)
            day, t = DAYS[local.weekday()], local.time()
            r = s.recurring
            if r.start <= r.end:
                return day in r.days and r.start <= t < r.end
            # past midnight: the window belongs to the day it started
            if t >= r.start:
                return day in r.days
            yesterday = DAYS[(local.weekday() - 1) % 7]
            return t < r.end and yesterday in r.days
        return True


class Decider:
    """Decides one event at a time. Not thread-safe; the pipeline calls it from one task."""

    def __init__(self, ruleset: RuleSet, guards: GuardsSpec, silences: Iterable[SilenceSpec],
                 state: RuleState | None = None) -> None:
        self.ruleset = ruleset
        self.guards = guards
        self.silences = [Silence(s) for s in silences]
        self.state = state or RuleState()
        self.paused: str | None = None
        """When set (the reason), automatic failover is paused everywhere: decisions alert instead."""

    # --- matching ----------------------------------------------------------------------------

    @staticmethod
    def _conditions(rule: Rule, event: Event, server: Server | None) -> str | None:
        for name, m in rule.match:
            if name.endswith(".*") and name.startswith("varbinds."):
                # A columnar varbind: any instance under the OID (e.g. cpqSeCpuStatus.<cpu>) may match.
                prefix = name[len("varbinds."):-1]
                values: list[Any] = [v for oid, v in event.varbinds.items() if oid.startswith(prefix)]
                # No instance at all is tested as an absent value (as an absent scalar varbind is):
                # `{not: …}` then holds, a value that must be there does not.
                if not any(m.test(v) for v in (values or [None])):
                    return f"no varbind under {prefix[:-1]} is {m.text} ({values or 'none'})"
                continue
            value = event.field(name)
            if not m.test(value):
                shown = "absent" if value is None else repr(value)
                return f"{name} {shown} is not {m.text}"
        if rule.server:
            if server is None:
                return "the server is unknown (its conditions cannot hold)"
            for name, m in rule.server:
                value = server_attribute(server, name)
                if not m.test(value):
                    return f"server {name} {value!r} is not {m.text}"
        return None

    def decide(self, event: Event, server: Server | None, group_size: int | None = None) -> Decision:
        """The decision for one event (`server` resolved by the caller, None when unknown)."""
        now_dt = event.time
        now = now_dt.timestamp()
        sid = server.id if server else None
        st = self.state
        decision = Decision(time=now_dt, event=event, server=sid)
        fired: list[Rule] = []
        for rule in self.ruleset.candidates(event):
            why = self._conditions(rule, event, server)
            if why is not None:
                decision.near.append((rule.id, why))
                continue
            key = sid or f"sender:{event.sender}"
            st.seen.touch((key, rule.id), now)
            for cleared in rule.spec.clears:
                st.windows.pop((cleared, key), None)
                st.seen.pop((key, cleared), None)
                if sid and (open_ := st.open_decline(sid, now)) and open_.get("rule") == cleared:
                    del st.declined[sid]
                    decision.notes.append(f"{rule.id} clears {cleared}: the declined failover of "
                                          f"{sid} is closed")
            th = rule.spec.threshold
            if th is not None:
                window = st.windows.get((rule.id, key))
                if window is None:
                    window = deque()
                while window and window[0] <= now - th.window:
                    window.popleft()
                window.append(now)
                while len(window) > th.count:
                    window.popleft()
                st.windows.touch((rule.id, key), window)
                if len(window) < th.count:
                    decision.near.append((rule.id, f"threshold: {len(window)} of {th.count} within "
                                                   f"{th.window:g} s"))
                    continue
                st.windows.pop((rule.id, key), None)  # fired: the next firing needs N again
            rq = rule.spec.requires
            if rq is not None:
                partner = next((r for r in rq.rules if r != rule.id and (key, r) in st.seen
                                and st.seen[(key, r)] > now - rq.within), None)
                if partner is None:
                    decision.near.append((rule.id, f"waiting for a correlated signal ({', '.join(rq.rules)}) "
                                                   f"within {rq.within:g} s"))
                    continue
            enclosure = server.enclosure if server is not None else event.enclosure
            if rule.spec.enclosure_fault and enclosure:
                st.enclosure_faults[enclosure] = now + self.guards.enclosure_fault_window
            fired.append(rule)
            decision.matched.append((rule.id, rule.spec.action, rule.spec.description))
        open_ = st.open_decline(sid, now) if sid else None
        if open_ is not None and not any(r.spec.action == "failover" for r in fired):
            health_rule = self._health_change(decision, event, open_)
            if health_rule is not None:
                fired.append(health_rule)
        if not fired:
            return decision
        best = max(fired, key=lambda r: (ACTION_RANK[r.spec.action], SEVERITY_RANK[r.spec.severity],
                                         -r.order))
        decision.rule = best.id
        decision.action = best.spec.action
        decision.severity = best.spec.severity
        decision.labels = dict(best.spec.labels)
        decision.confirm = best.spec.confirm
        if decision.action == "failover":
            if open_ is not None and decision.reopened is None:
                declined = self.ruleset.rules.get(str(open_.get("rule")))
                if open_.get("signature") == signature(best.id, event):
                    decision.notes.append(f"the same event as the declined one at {open_.get('at')} "
                                          "(a resend): not a second signal")
                elif not best.spec.second_signal and declined is not None and \
                        not declined.spec.second_signal:
                    decision.notes.append(f"{best.id} after {open_.get('rule')}: a pair known to come "
                                          "spuriously together, not a second signal")
                else:
                    decision.reopened = {**_public_decline(open_), "by": "second signal"}
            self._guard_failover(decision, best, server, now, group_size)
        return decision

    def _health_change(self, decision: Decision, event: Event, open_: dict[str, Any]) -> Rule | None:
        """A health poll reading the server unhealthy within the window of its declined failover: that
        rule fires again (the BMC now says what the confirmation wanted to hear)."""
        if event.source != "redfish-poll" or severity_rank(event.health) < 1:
            return None
        rule = self.ruleset.rules.get(str(open_.get("rule")))
        if rule is None or rule.spec.action != "failover":
            return None
        decision.matched.append((rule.id, "failover", f"health changed from {event.previous_health} to "
                                                      f"{event.health} within the window of the declined "
                                                      f"failover at {open_.get('at')}"))
        decision.reopened = {**_public_decline(open_), "by": "health change"}
        return rule

    # --- declined confirmations -------------------------------------------------------------------

    def decline(self, decision: Decision, until: float, reason: str, reading: Any) -> None:
        """Record a declined failover: give back what the guards used up (cooldown, rate limit) and
        keep the decision open until `until` for a second signal or a health change."""
        self.release(decision)
        if decision.server is None or decision.rule is None:
            return
        previous = self.state.open_decline(decision.server, decision.time.timestamp())
        first = previous if previous is not None and decision.reopened is None and \
            previous.get("rule") == decision.rule else None
        self.state.declined.touch(decision.server, {
            "rule": decision.rule, "at": iso(decision.time), "time": decision.time.timestamp(),
            "until": float(first["until"]) if first else until,
            "signature": signature(decision.rule, decision.event), "reason": reason, "reading": reading,
        })

    def release(self, decision: Decision) -> None:
        """Give back the cooldown mark and the rate-limit slot a failover decision took."""
        if decision.consumed is None:
            return
        sid, previous, group = decision.consumed
        decision.consumed = None
        if previous is None:
            self.state.last_failover.pop(sid, None)
        else:
            self.state.last_failover.touch(sid, previous)
        if group is not None:
            times = self.state.failovers.get(group)
            now = decision.time.timestamp()
            if times and now in times:
                times.remove(now)

    def close_decline(self, server: str) -> None:
        self.state.declined.pop(server, None)

    # --- guards ----------------------------------------------------------------------------------

    def _demote(self, decision: Decision, why: str, action: str = "alert") -> None:
        decision.action = action
        decision.guard = why

    def guard(self, rule_id: str, server: Server, event: Event, group_size: int | None = None) -> Decision:
        """The decision a failover of `rule_id` for `server` would get from the guards now (it uses up a
        cooldown and a rate-limit slot of this decider's state: what-if callers pass a copy)."""
        rule = self.ruleset.rules[rule_id]
        d = Decision(time=event.time, event=event, server=server.id, action="failover", rule=rule_id,
                     severity=rule.spec.severity)
        self._guard_failover(d, rule, server, event.time.timestamp(), group_size)
        return d

    def _guard_failover(self, d: Decision, rule: Rule, server: Server | None, now: float,
                        group_size: int | None) -> None:
        st, g = self.state, self.guards
        if server is None:
            self._demote(d, f"unknown server (sender {d.event.sender}): never fails over anything")
            return
        for silence in self.silences:
            if silence.covers(server, rule.id, d.time):
                self._demote(d, f"silenced by {silence.spec.id}"
                                + (f" ({silence.spec.comment})" if silence.spec.comment else ""), "none")
                return
        if self.paused is not None:
            self._demote(d, f"automatic failover paused: {self.paused}")
            return
        if server.domain_group in g.alert_only_groups:
            self._demote(d, f"domain group {server.domain_group} is alert-only")
            return
        if g.storm is not None and self._storm(d, server, now, group_size):
            return
        cooldown = rule.spec.cooldown or g.cooldown
        last = st.last_failover.get(server.id)
        if last is not None and now - last < cooldown:
            self._demote(d, f"suppressed: {server.id} had a failover decision {now - last:.0f} s ago "
                            f"(cooldown {cooldown:g} s)", "none")
            return
        if g.rate_limit is not None:
            times = st.failovers.setdefault(server.domain_group, deque())
            while times and times[0] <= now - g.rate_limit.window:
                times.popleft()
            if len(times) >= g.rate_limit.max_failovers:
                self._demote(d, f"rate limit: {len(times)} automatic failovers in {server.domain_group} "
                                f"within {g.rate_limit.window:g} s (max {g.rate_limit.max_failovers})")
                return
            times.append(now)
        d.consumed = (server.id, last, server.domain_group if g.rate_limit is not None else None)
        st.last_failover.touch(server.id, now)

    def _storm(self, d: Decision, server: Server, now: float, group_size: int | None) -> bool:
        spec = self.guards.storm
        assert spec is not None
        st = self.state
        for kind in spec.scopes:
            scope = server.domain_group if kind == "domain_group" else server.enclosure
            bad = st.bad.setdefault((kind, scope), _Lru())
            for sid in [s for s, t in bad.items() if t <= now - spec.window]:
                del bad[sid]
            bad.touch(server.id, now)
            limit = spec.max_servers
            if spec.max_percent is not None and group_size:
                pct_limit = int(group_size * spec.max_percent / 100)
                limit = pct_limit if limit is None else min(limit, pct_limit)
            if limit is not None and len(bad) > limit:
                first = (kind, scope) not in st.storm_alerted or \
                    st.storm_alerted[(kind, scope)] <= now - spec.window
                text = (f"storm guard: {len(bad)} servers of {kind.replace('_', ' ')} {scope} went bad "
                        f"within {spec.window:g} s (limit {limit}): automatic failover stopped there")
                if first:
                    st.storm_alerted[(kind, scope)] = now
                    d.storm_alert = text
                self._demote(d, text)
                return True
        return False


def _public_decline(info: dict[str, Any]) -> dict[str, Any]:
    return {k: info[k] for k in ("rule", "at", "reason", "reading") if k in info}
