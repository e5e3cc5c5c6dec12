"""Configuration of the lab simulator: pydantic models plus a YAML loader with line-numbered errors."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lab.fencing import FenceMode

__all__ = [
    "ConfigError",
    "Credentials",
    "LabConfig",
    "Latency",
    "OaConfig",
    "OmeLab",
    "OneViewDurations",
    "OneViewLab",
    "expand_env",
    "load_config",
    "parse_config",
]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A configuration file could not be read or is invalid; the message is `FILE:LINE: field: message`."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Credentials(_Model):
    """The BMC account accepted by every simulated BMC (Basic auth or Redfish session)."""

    username: str = Field(default="admin", min_length=1)
    password: str = Field(default="lab-password", min_length=1)

    @field_validator("username")
    @classmethod
    def _no_colon(cls, value: str) -> str:
        if ":" in value:
            raise ValueError("a Basic-auth username cannot contain ':'")
        return value


class Latency(_Model):
    """Every timed behaviour of the outside world, in milliseconds or seconds."""

    bmc_ms: float = Field(default=0.0, ge=0)
    manager_ms: float = Field(default=0.0, ge=0)
    power_off_s: float = Field(default=1.0, ge=0)
    power_on_s: float = Field(default=1.0, ge=0)
    boot_s: float = Field(default=3.0, ge=0)


class OneViewDurations(_Model):
    """How long the OneView face's tasks take (lab/API.md, "OneView"). Real appliances take tens of
    seconds for a profile move; tests make them short."""

    task_start_s: float = Field(default=0.5, ge=0)
    """A task's New -> Running."""
    profile_move_s: float = Field(default=30.0, ge=0)
    """A profile update that moves the profile: Running -> Completed (or Error)."""
    power_s: float = Field(default=5.0, ge=0)
    """The least a power task takes; it completes once the server reads the power state asked for."""
    power_timeout_s: float = Field(default=120.0, gt=0)
    """A power task whose state is not reached by then ends in Error."""
    put_answer_delay_s: float = Field(default=0.0, ge=0, le=600)
    """Seconds the answer to an accepted profile PUT is held back (its task already exists): a client
    may die between sending the move and reading its task."""


class OneViewLab(_Model):
    """The HPE OneView face of the world (lab.oneview): HTTPS, its own listener."""

    enabled: bool = False
    listen: str = "127.0.0.1:0"
    username: str = Field(default="administrator", min_length=1)
    password: str = Field(default="lab-oneview", min_length=1)
    current_version: int = Field(default=5200, ge=1)
    minimum_version: int = Field(default=120, ge=1)
    session_idle_s: float = Field(default=86400.0, gt=0)
    """A session not used for this long expires (the appliance's 24 h)."""
    spare_label: str = Field(default="spare", min_length=1)
    """The label the world's spare designation is shown as on server-hardware."""
    page_size: int = Field(default=64, ge=1)
    """Members per collection page when the request gives no `count`."""
    durations: OneViewDurations = Field(default_factory=OneViewDurations)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        split_host_port(value)
        return value

    @model_validator(mode="after")
    def _versions(self) -> OneViewLab:
        if self.minimum_version > self.current_version:
            raise ValueError("minimum_version must be at most current_version")
        return self


class OmeLab(_Model):
    """The emulated Dell OpenManage Enterprise / OME-Modular API (lab/ome.py), a face of the same world.
    Durations are seconds on the lab's clock (the event loop's)."""

    enabled: bool = False
    listen: str = "127.0.0.1:0"
    tls: bool = True
    """HTTPS with the lab's self-signed certificate (as OME); false: plain HTTP."""
    credentials: Credentials = Field(default_factory=Credentials)
    session_idle_s: float = Field(default=1800.0, gt=0)
    """A session not used for this long expires (OME's default idle timeout is 30 minutes)."""
    job_start_s: float = Field(default=2.0, ge=0)
    """A new job (2080 New) starts Running (2050) after this."""
    job_id_delay_s: float = Field(default=3.0, ge=0)
    """After MigrateProfile, the profile's DeploymentTaskId names the new job only after this (the
    Ansible modules sleep 3-5 s before reading it)."""
    migrate_s: float = Field(default=60.0, ge=0)
    """A running MigrateProfile job takes this long before the profile is on the target."""
    power_s: float = Field(default=8.0, ge=0)
    """A running POWER_CONTROL job takes this long before the command reaches the sled (whose power
    then follows the world's latencies)."""
    spare_group: str = Field(default="failover-spares", min_length=1)
    """The static group whose members are the world's designated spares."""
    page_size: int = Field(default=50, ge=1, le=1000)
    """Members per page of a collection when the request gives no $top."""
    request_ms: float = Field(default=0.0, ge=0)
    """Added to every /api/ request."""

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        split_host_port(value)
        return value


class OaConfig(_Model):
    """The enclosures' Onboard Administrators (lab.oa_ssh): an SSH server per enclosure speaking the OA
    CLI, bound to 127.0.0.1 on a free port."""

    enclosures: list[str] = Field(default_factory=list)
    """Enclosure ids (`enc1`, …) that get an OA; empty: every enclosure."""
    username: str = Field(default="Administrator", min_length=1)
    password: str = Field(default="oa-password", min_length=1)


class SnmpTraps(_Model):
    """Where the blades' iLOs send their SNMPv2c traps when a hardware fault is raised
    (`POST /lab/v1/servers/{id}/hardware-fault`)."""

    targets: list[str] = Field(default_factory=lambda: ["127.0.0.1:1162"])
    community: str = Field(default="public", min_length=1)

    @field_validator("targets")
    @classmethod
    def _check_targets(cls, value: list[str]) -> list[str]:
        for target in value:
            split_host_port(target)
        return value


class LabConfig(_Model):
    """The whole lab configuration; every key is optional."""

    listen: str = "127.0.0.1:8163"
    bmc_network: str = "127.77.0.0/16"
    bmc_port: int = Field(default=0, ge=0, le=65535)
    credentials: Credentials = Field(default_factory=Credentials)
    api_token: str | None = None
    enclosures: int = Field(default=4, ge=1, le=1000)
    domains_per_group: int = Field(default=2, ge=1, le=64)
    seed: int = 7
    latency: Latency = Field(default_factory=Latency)
    ready_file: str | None = None
    fencing: FenceMode = "enforce"
    """`enforce`: a request with a fencing token older than the newest seen for its job is refused (409);
    `record`: it is let through and recorded as a violation (to show the oracle catches it)."""
    ome: OmeLab = Field(default_factory=OmeLab)
    """The emulated OME-Modular API (off unless `ome.enabled`)."""
    oneview: OneViewLab = Field(default_factory=OneViewLab)
    oa: OaConfig | None = None
    """When set, each enclosure's Onboard Administrator is served over SSH (lab.oa_ssh)."""
    snmp_traps: SnmpTraps = Field(default_factory=SnmpTraps)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        split_host_port(value)
        return value

    @field_validator("bmc_network")
    @classmethod
    def _check_network(cls, value: str) -> str:
        try:
            net = ipaddress.IPv4Network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"not an IPv4 network: {exc}") from exc
        if not net.is_loopback:
            raise ValueError("must be inside 127.0.0.0/8 (the BMCs bind loopback addresses)")
        return str(net)

    @field_validator("api_token")
    @classmethod
    def _check_token(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty (use null to disable)")
        return value

    @model_validator(mode="after")
    def _check_fits(self) -> LabConfig:
        net = ipaddress.IPv4Network(self.bmc_network)
        needed = self.enclosures * 256 + 16
        if net.num_addresses <= needed:
            raise ValueError(
                f"bmc_network {self.bmc_network} is too small for {self.enclosures} enclosures "
                f"(needs more than {needed} addresses)"
            )
        return self

    @property
    def listen_host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return split_host_port(self.listen)[1]

    def bmc_ip(self, enclosure: int, bay: int) -> str:
        """The loopback address of the BMC of bay `bay` in enclosure `enclosure` (both from 1)."""
        net = ipaddress.IPv4Network(self.bmc_network)
        return str(net.network_address + enclosure * 256 + bay)


def split_host_port(value: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 hosts in brackets); raise ValueError when malformed."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError as exc:
        raise ValueError(f"port {port_text!r} is not a number") from exc
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range 0..65535")
    return host, port


def expand_env(value: str, environ: Mapping[str, str] | None = None) -> str:
    """Expand `${NAME}` and `${NAME:-default}`; raise KeyError(NAME) for an unset variable without default."""
    env = os.environ if environ is None else environ

    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise KeyError(name)

    return _ENV_REF.sub(repl, value)


# --- YAML with line numbers -------------------------------------------------------------------------

_Path = tuple[str | int, ...]


def _node_lines(node: yaml.Node, path: _Path, out: dict[_Path, int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            # the key's own line is the most useful place to point at
            _node_lines(value_node, (*path, key), out)
            out[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _node_lines(item, (*path, index), out)


def _line_for(lines: Mapping[_Path, int], loc: _Path) -> int:
    probe = tuple(loc)
    while probe:
        if probe in lines:
            return lines[probe]
        probe = probe[:-1]
    return lines.get((), 1)


def _expand_tree(value: Any, path: _Path, environ: Mapping[str, str], errors: list[tuple[_Path, str]]) -> Any:
    if isinstance(value, str):
        try:
            return expand_env(value, environ)
        except KeyError as exc:
            errors.append((path, f"environment variable {exc.args[0]} is not set"))
            return value
    if isinstance(value, dict):
        return {k: _expand_tree(v, (*path, str(k)), environ, errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_tree(v, (*path, i), environ, errors) for i, v in enumerate(value)]
    return value


def _field_name(loc: _Path) -> str:
    return ".".join(str(part) for part in loc) if loc else "(config)"


def parse_config(
    text: str, filename: str = "<config>", environ: Mapping[str, str] | None = None
) -> LabConfig:
    """Parse YAML text into a LabConfig; errors are ConfigError(`FILE:LINE: field: message`, one per line)."""
    env = os.environ if environ is None else environ
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{filename}:{line}: (yaml): {problem}") from exc
    lines: dict[_Path, int] = {}
    if root is not None:
        _node_lines(root, (), lines)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{filename}:{_line_for(lines, ())}: (config): expected a mapping at the top level")
    env_errors: list[tuple[_Path, str]] = []
    data = _expand_tree(data, (), env, env_errors)
    if env_errors:
        raise ConfigError(
            "\n".join(f"{filename}:{_line_for(lines, p)}: {_field_name(p)}: {m}" for p, m in env_errors)
        )
    try:
        return LabConfig.model_validate(data)
    except ValidationError as exc:
        messages = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            msg = str(err["msg"])
            messages.append(f"{filename}:{_line_for(lines, loc)}: {_field_name(loc)}: {msg}")
        raise ConfigError("\n".join(messages)) from exc


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> LabConfig:
    """Read and validate a lab config file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}:0: (file): cannot read: {exc.strerror or exc}") from exc
    return parse_config(text, str(file), environ)
