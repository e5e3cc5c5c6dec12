"""The rule file schema (pydantic): rules, disabled ids, guards and silences.

```yaml
rules:
  - id: hpe-cpu-uncorrectable
    description: CPU uncorrectable error
    cites: CPQSTDEQ-MIB cpqSeCpuUncorrectableError (trap 1026)
    source: snmp                       # snmp, redfish (push, SSE and health poll) or any
    match:                             # event fields (see README: the normalized event)
      trap_oid: 1.3.6.1.4.1.232.0.1026
    server: {spare: false}             # the resolved server's attributes
    threshold: {count: 3, window: 1h}  # N matching events within a window, per server
    requires: {rules: [hpe-psu-redundancy-lost], within: 10m}   # correlation
    clears: [other-rule-id]            # a match resets those rules' pending windows for the server
    action: failover                   # failover, alert or ignore
    severity: critical
    labels: {team: compute}
    cooldown: 1h                       # failover rules: one decision per server per window
    confirm: true                      # with failover.confirm: rule, this rule reads the BMC first
    confirm_by: unhealthy              # what the BMC must read: unhealthy, or powered_off
    confirm_unreachable: false         # an unreachable BMC confirms: the fault takes the BMC's view
disable: [dell-idrac-fan-failure]      # built-in rules switched off by id
guards: {...}                          # see GuardsSpec
silences: [...]                        # see SilenceSpec
```
"""

from __future__ import annotations

import re
from datetime import datetime, time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from rules.matchers import field_matcher

Action = Literal["failover", "alert", "ignore"]
ACTION_RANK = {"ignore": 0, "alert": 1, "failover": 2}
SEVERITY_RANK = {"info": 0, "warning": 1, "major": 2, "critical": 3}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """"90s", "10m", "1h", "2d", or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or like 90s, 10m, 1h, 2d")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration (like 90s, 10m, 1h, 2d)")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
MatcherSpec = str | int | float | bool | list[Any] | dict[str, Any]

SERVER_FIELDS = {"id", "domain_group", "domain", "enclosure", "bay", "product", "product_family", "model",
                 "spare", "profile", "health", "power"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ThresholdSpec(_Strict):
    count: Annotated[int, Field(ge=1)]
    window: Duration


class RequiresSpec(_Strict):
    rules: Annotated[list[str], Field(min_length=1)]
    """Any one of these rules must have matched the same server within `within`."""
    within: Duration


def _check_matchers(value: dict[str, Any], where: str) -> dict[str, Any]:
    for name, spec in value.items():
        field_matcher(name, spec, f"{where}.{name}")
    return value


class RuleSpec(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=100)]
    description: str = ""
    cites: str = ""
    """Where the rule comes from (MIB, registry, vendor document); required for built-in rules."""
    source: Literal["snmp", "redfish", "any"] = "any"
    match: dict[str, MatcherSpec] = {}
    server: dict[str, MatcherSpec] = {}
    threshold: ThresholdSpec | None = None
    requires: RequiresSpec | None = None
    clears: list[str] = []
    action: Action
    severity: Literal["info", "warning", "major", "critical"] = "warning"
    labels: dict[str, str] = {}
    cooldown: Duration | None = None
    confirm: bool = False
    """This rule asks for confirmation: with `failover.confirm: rule` only such rules read the BMC
    before a job is created (with `always`, the default, every failover rule does)."""
    confirm_by: Literal["unhealthy", "powered_off"] = "unhealthy"
    """What the BMC must read to confirm: `unhealthy` (Health Warning or Critical, HealthRollup Critical,
    the server Off or absent), or `powered_off` (the server's own power is lost: PowerState Off). That
    one is the rule's condition, so it is read even with `failover.confirm: never`."""
    second_signal: bool = True
    """False for messages known to come spuriously together (Dell CPU0000 + MEM0001 after an iDRAC warm
    boot): within the window of a declined failover by one such rule, another such rule is not the
    second signal that fails the server over without the BMC's word (any other failover rule is)."""
    confirm_unreachable: bool = False
    """An unreachable BMC confirms: the fault the event names (the board's power, the whole blade)
    takes the BMC's view with it. Otherwise an unreachable BMC declines (it may be the BMC that hung)."""
    enclosure_fault: bool = False
    """The event is an enclosure-wide fault: no failover onto a spare in that enclosure meanwhile."""
    enabled: bool = True

    @field_validator("match")
    @classmethod
    def _match(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_matchers(v, "match")

    @field_validator("server")
    @classmethod
    def _server(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - SERVER_FIELDS)
        if unknown:
            raise ValueError(f"unknown server field(s) {unknown}; known: {sorted(SERVER_FIELDS)}")
        return _check_matchers(v, "server")

    @model_validator(mode="after")
    def _sense(self) -> RuleSpec:
        if not self.match:
            raise ValueError(f"rule {self.id}: match is empty (it would match every event)")
        if self.id in self.clears:
            raise ValueError(f"rule {self.id} clears itself")
        return self


class StormSpec(_Strict):
    max_servers: Annotated[int, Field(ge=1)] | None = 3
    """More than this many servers going bad in one scope within `window` is a storm."""
    max_percent: Annotated[float, Field(gt=0, le=100)] | None = None
    window: Duration = 600.0
    scopes: list[Literal["domain_group", "enclosure"]] = ["enclosure", "domain_group"]


class RateLimitSpec(_Strict):
    max_failovers: Annotated[int, Field(ge=1)] = 2
    window: Duration = 3600.0


class GuardsSpec(_Strict):
    storm: StormSpec | None = StormSpec()
    rate_limit: RateLimitSpec | None = RateLimitSpec()
    cooldown: Duration = 3600.0
    """Default failover cooldown per server (a rule's own `cooldown` wins)."""
    alert_only_groups: list[str] = []
    """Domain groups where rules decide and alert but never fail over."""
    enclosure_fault_window: Duration = 3600.0


Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class RecurringSpec(_Strict):
    days: list[Day] = list(DAYS)
    start: time
    end: time
    """Local time of day in `timezone`; an end before the start runs past midnight."""
    timezone: str = "UTC"


class SilenceSpec(_Strict):
    id: Annotated[str, Field(min_length=1)]
    servers: str | None = None
    """A glob on server ids (enc3-*)."""
    groups: list[str] = []
    enclosures: list[str] = []
    rules: list[str] = []
    """Only these rules (empty: all)."""
    start: datetime | None = None
    end: datetime | None = None
    recurring: RecurringSpec | None = None
    comment: str = ""

    @model_validator(mode="after")
    def _when(self) -> SilenceSpec:
        if self.start and self.end and self.end <= self.start:
            raise ValueError(f"silence {self.id}: end is not after start")
        if not (self.servers or self.groups or self.enclosures):
            raise ValueError(f"silence {self.id}: name servers, groups or enclosures")
        for t in (self.start, self.end):
            if t is not None and t.tzinfo is None:
                raise ValueError(f"silence {self.id}: give times with a zone (…Z or +01:00)")
        return self


class PolicyFile(_Strict):
    rules: list[RuleSpec] = []
    disable: list[str] = []
    guards: GuardsSpec | None = None
    silences: list[SilenceSpec] = []
