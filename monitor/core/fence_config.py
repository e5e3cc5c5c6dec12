"""The fencing topology's configuration (`failover.fencing`): which fence levels are tried, in which
order, for which servers, and what each level needs to connect.

As Pacemaker's fencing topology: an ordered list of levels per server, per domain group, or by default;
the levels are tried in order until one confirms the source is Off. The default is today's behaviour:
the BMC over Redfish alone.

```yaml
failover:
  fencing:
    levels: [bmc, manager]          # the default order
    groups: {dg1: [bmc, oa, ipmi]}  # a domain group's own order
    servers: {enc1-bay3: [oa]}      # one server's own order (wins over its group's)
    oa:
      username: Administrator
      password: ${OA_PASSWORD}
      known_hosts: oa_known_hosts   # the OAs' SSH host keys (OpenSSH known_hosts format)
      enclosures: {enc1: 10.0.0.10, enc2: "10.0.0.20:2222"}
    ipmi:
      username: fence               # absent: the BMC account of the inventory
      password: ${IPMI_PASSWORD}
      servers: {enc1-bay3: {address: 10.1.0.33}}   # absent: the host of the server's BMC URL
```
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

LEVELS: Final = ("bmc", "manager", "oa", "ipmi")
"""The fence levels there are: the BMC over Redfish, the profile manager's power control, the c-Class
Onboard Administrator's CLI over SSH, and IPMI over LAN (RMCP+)."""

LevelName = Literal["bmc", "manager", "oa", "ipmi"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LevelTiming(_Strict):
    """How long one level is given, as Pacemaker's pcmk_off_retries / pcmk_off_timeout per device."""

    attempts: Annotated[int, Field(ge=1)] | None = None
    """Forced power-offs sent through this level before the next level is tried (None:
    failover.power_off_attempts)."""
    timeout: Annotated[float, Field(gt=0)] | None = None
    """Seconds to wait for Off after each of them (None: failover.power_off_timeout)."""


class BmcSettings(LevelTiming):
    """The server's BMC over Redfish (ComputerSystem.Reset ForceOff); its connection is the inventory's
    `bmc` and `redfish.timeout`."""


class ManagerSettings(LevelTiming):
    """The profile manager's own power control (OneView PressAndHold, OME POWER_CONTROL, the lab's
    manager API); its connection is the inventory source's."""


def _host_port(value: str, default_port: int) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if sep and host and port.isdigit() and not host.endswith(":"):
        number = int(port)
        if not 0 < number <= 65535:
            raise ValueError(f"port {number} out of range in {value!r}")
        return host.strip("[]"), number
    if not value.strip():
        raise ValueError("empty address")
    return value.strip("[]"), default_port


class OaEnclosure(_Strict):
    """One enclosure's Onboard Administrator."""

    address: str
    """HOST or HOST:PORT of the active OA."""
    username: str | None = None
    """Overrides failover.fencing.oa.username for this enclosure."""
    password: SecretStr | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        _host_port(v, 22)
        return v


class OaSettings(LevelTiming):
    """The c-Class Onboard Administrator's CLI over SSH, as fence-agents' fence_hpblade drives it:
    `show server status BAY` (its `Power:` line) and `poweroff server BAY force`."""

    username: str
    password: SecretStr
    port: Annotated[int, Field(gt=0, le=65535)] = 22
    """The SSH port when an enclosure's address names none."""
    enclosures: dict[str, str | OaEnclosure]
    """Enclosure id (as the inventory names it) -> its OA: an address, or {address, username, password}.
    A server whose enclosure is not listed cannot be fenced by this level (the level fails for it)."""
    known_hosts: str | None = None
    """A known_hosts file (OpenSSH format, relative to the config file) holding the OAs' host keys."""
    accept_any_host_key: bool = False
    """Connect without checking the OA's host key. A forged OA could then confirm Off for a server that
    runs: only for a lab."""
    request_timeout: Annotated[float, Field(gt=0)] = 15.0
    """Seconds for each exchange with an OA (connecting and logging in, or one command)."""
    prompt: str = r"oa>\s*$"
    """A regular expression matching the end of the OA's prompt (fence_hpblade's default is
    `c7000oa>`; an OA's prompt is its enclosure name followed by `oa>`)."""

    @field_validator("enclosures")
    @classmethod
    def _addresses(cls, v: dict[str, str | OaEnclosure]) -> dict[str, str | OaEnclosure]:
        for enclosure, spec in v.items():
            if isinstance(spec, str):
                try:
                    _host_port(spec, 22)
                except ValueError as exc:
                    raise ValueError(f"enclosure {enclosure}: {exc}") from None
        return v

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        import re

        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _host_keys(self) -> OaSettings:
        if self.known_hosts is None and not self.accept_any_host_key:
            raise ValueError("failover.fencing.oa needs known_hosts (the OAs' SSH host keys), or "
                             "accept_any_host_key: true (a lab only)")
        return self

    def enclosure(self, enclosure: str) -> tuple[str, int, str, SecretStr] | None:
        """(host, port, username, password) of an enclosure's OA, or None when it is not configured."""
        spec = self.enclosures.get(enclosure)
        if spec is None:
            return None
        if isinstance(spec, str):
            host, port = _host_port(spec, self.port)
            return host, port, self.username, self.password
        host, port = _host_port(spec.address, self.port)
        return host, port, spec.username or self.username, spec.password or self.password


class IpmiServer(_Strict):
    """One server's IPMI endpoint, where it is not the inventory's BMC host on the standard port."""

    address: str | None = None
    port: Annotated[int, Field(gt=0, le=65535)] | None = None
    username: str | None = None
    password: SecretStr | None = None


class IpmiSettings(LevelTiming):
    """IPMI over LAN (RMCP+, pyghmi): Chassis Control power down and Get Chassis Status, as fence-agents'
    fence_ipmilan (`chassis power off`, `chassis power status`)."""

    port: Annotated[int, Field(gt=0, le=65535)] = 623
    username: str | None = None
    """None: the username of the server's BMC account in the inventory."""
    password: SecretStr | None = None
    """None: the password of the server's BMC account in the inventory."""
    request_timeout: Annotated[float, Field(gt=0)] = 10.0
    """Seconds for each IPMI exchange (session set-up included)."""
    servers: dict[str, IpmiServer] = {}
    """Per server: its IPMI address, port and account, overriding the above and the inventory."""


class FencingConfig(_Strict):
    levels: list[str] = ["bmc"]
    """The fence levels tried, in order, for every server without an order of its own or its group's."""
    groups: dict[str, list[str]] = {}
    """Domain group -> its order of levels."""
    servers: dict[str, list[str]] = {}
    """Server id -> its order of levels (wins over its group's)."""
    bmc: BmcSettings = BmcSettings()
    manager: ManagerSettings = ManagerSettings()
    oa: OaSettings | None = None
    """Required when any order names `oa`."""
    ipmi: IpmiSettings | None = None
    """Required when any order names `ipmi` (`ipmi: {}` takes everything from the inventory)."""

    @field_validator("levels")
    @classmethod
    def _default_order(cls, v: list[str]) -> list[str]:
        return _order(v)

    @field_validator("groups", "servers")
    @classmethod
    def _orders(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for key, order in v.items():
            try:
                _order(order)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _settings_for_used_levels(self) -> FencingConfig:
        used = self.used()
        if "oa" in used and self.oa is None:
            raise ValueError("fence level oa is used but failover.fencing.oa is not configured "
                             "(username, password, enclosures, known_hosts)")
        if "ipmi" in used and self.ipmi is None:
            raise ValueError("fence level ipmi is used but failover.fencing.ipmi is not configured "
                             "(`ipmi: {}` takes the address and account from the inventory's BMC)")
        return self

    def used(self) -> set[str]:
        """Every level some order names."""
        names = set(self.levels)
        for order in (*self.groups.values(), *self.servers.values()):
            names.update(order)
        return names

    def order_for(self, server: str, group: str) -> list[str]:
        return self.servers.get(server) or self.groups.get(group) or self.levels

    def timing(self, level: str, attempts: int, timeout: float) -> tuple[int, float]:
        """(attempts, seconds to wait for Off after each) of one level, the failover defaults filled in."""
        spec: LevelTiming | None = getattr(self, level, None)
        if spec is None:
            return attempts, timeout
        return spec.attempts or attempts, spec.timeout or timeout

    def longest(self, attempts: int, timeout: float) -> float:
        """Seconds the longest order may spend waiting for Off (the power_off_source step's budget)."""
        orders = [self.levels, *self.groups.values(), *self.servers.values()]

        def spend(order: list[str]) -> float:
            total = 0.0
            for name in order:
                n, t = self.timing(name, attempts, timeout)
                total += n * t
            return total

        return max(spend(order) for order in orders)

    def request_timeout(self) -> float:
        """The longest single exchange of the OA and IPMI levels in use (0: none in use)."""
        used = self.used()
        limits = [0.0]
        if "oa" in used and self.oa is not None:
            limits.append(self.oa.request_timeout)
        if "ipmi" in used and self.ipmi is not None:
            limits.append(self.ipmi.request_timeout)
        return max(limits)


def _order(order: list[str]) -> list[str]:
    if not order:
        raise ValueError("an order of fence levels needs at least one level")
    unknown = [name for name in order if name not in LEVELS]
    if unknown:
        raise ValueError(f"unknown fence level {unknown[0]!r}; the levels are {', '.join(LEVELS)}")
    seen: set[str] = set()
    for name in order:
        if name in seen:
            raise ValueError(f"fence level {name} is listed twice")
        seen.add(name)
    return order


__all__ = ["LEVELS", "FencingConfig", "IpmiServer", "IpmiSettings", "LevelName", "OaEnclosure", "OaSettings"]
