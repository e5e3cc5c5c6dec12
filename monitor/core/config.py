"""The daemon's configuration: pydantic models validated at load, `${ENV}` expanded, secrets never shown."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from monitor.core.errors import ConfigError, ConfigIssue
from monitor.core.fence_config import FencingConfig
from monitor.core.model import STEP_SPECS, STEPS
from monitor.core.yamlfile import load_model

DEFAULT_CONFIG = Path("config/monitor.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpConfig(_Strict):
    listen: str = "127.0.0.1:8162"
    token: SecretStr | None = None
    """Bearer token for mutating calls; required when `listen` is not a loopback address."""
    max_body: Annotated[int, Field(gt=0)] = 1 << 20
    tls_cert: str | None = None
    """PEM certificate (chain) file, relative to the config file: with `tls_key`, the API is HTTPS."""
    tls_key: str | None = None
    """PEM private key of `tls_cert` (unencrypted; keep it readable by the daemon's user only)."""
    rate_limit: Annotated[float, Field(gt=0)] | None = None
    """Requests per second per client address, on average (a token bucket); over it: 429 with
    Retry-After. /healthz and /metrics are exempt. None: no limit."""
    rate_limit_burst: Annotated[int, Field(ge=1)] = 20
    """Requests a client may make at once before `rate_limit` applies (the bucket's size)."""

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v

    @field_validator("token", "tls_cert", "tls_key", mode="before")
    @classmethod
    def _empty_token(cls, v: object) -> object:
        return None if v in ("", None) else v

    @model_validator(mode="after")
    def _token_outside_loopback(self) -> HttpConfig:
        host, _ = parse_listen(self.listen)
        if self.token is None and not is_loopback(host):
            raise ValueError("a token is required when http.listen is not a loopback address")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("http.tls_cert and http.tls_key go together (both PEM file paths)")
        return self


class LabSource(_Strict):
    url: str = "http://127.0.0.1:8163"
    token: SecretStr | None = None
    timeout: Annotated[float, Field(gt=0)] = 10.0


class InventoryConfig(_Strict):
    source: Literal["lab", "static"] = "lab"
    """Where domains, bays and profiles come from: the lab simulator's manager API, or a static file."""
    lab: LabSource = LabSource()
    file: str | None = None
    """The static inventory file (source: static), relative to the config file."""
    refresh_interval: Annotated[float, Field(gt=0)] = 30.0

    @model_validator(mode="after")
    def _file_for_static(self) -> InventoryConfig:
        if self.source == "static" and not self.file:
            raise ValueError("inventory.file is required when inventory.source is static")
        return self


class OmeBmcConfig(_Strict):
    """The iDRAC account the monitor's Redfish power path uses for sleds found through OME (OME gives
    each sled's iDRAC address, `ManagementURL`, never its credentials)."""

    username: str = Field(min_length=1)
    password: SecretStr
    verify_tls: bool = True
    ca_file: str | None = None


class OmeDomainGroups(_Strict):
    source: Literal["chassis_groups", "device_groups"] = "chassis_groups"
    """`chassis_groups`: a domain group is an OME static group of chassis; each sled belongs to its
    chassis' group. `device_groups`: a domain group is an OME static group of sleds (list them)."""
    names: list[Annotated[str, Field(min_length=1)]] = []
    """The OME groups that are domain groups. Empty with `chassis_groups`: every static group with a
    chassis among its members (but the spare group)."""

    @model_validator(mode="after")
    def _names_for_devices(self) -> OmeDomainGroups:
        if self.source == "device_groups" and not self.names:
            raise ValueError("manager.ome.domain_groups.names is required with source: device_groups")
        return self


class OmeConfig(_Strict):
    """Dell OpenManage Enterprise or OME-Modular (MX7000) as the profile manager (README "Profile
    managers")."""

    url: Annotated[str, Field(pattern=r"^https?://[^/\s]+/?$")]
    """The appliance, `https://ome.example.com` (the API is under /api)."""
    username: str = Field(min_length=1)
    password: SecretStr
    verify_tls: bool = True
    ca_file: str | None = None
    """PEM file of the CA that signed the appliance's certificate (relative to the config file)."""
    timeout: Annotated[float, Field(gt=0)] = 30.0
    """Seconds for each request."""
    session_idle: Annotated[float, Field(gt=0)] = 1500.0
    """Seconds after which an unused session is replaced before the next request (OME's idle timeout
    is 30 minutes by default); a 401 renews it at any time."""
    job_id_wait: Annotated[float, Field(gt=0)] = 20.0
    """Seconds MigrateProfile may take to name its job in the profile's DeploymentTaskId."""
    poll_interval: Annotated[float, Field(gt=0)] = 1.0
    """Seconds between reads while waiting for that job id."""
    domain_groups: OmeDomainGroups = OmeDomainGroups()
    spare_group: str = Field(default="failover-spares", min_length=1)
    """The static group of designated spares; removing the designation removes the sled from it."""
    server_id: Literal["device_name", "service_tag"] = "device_name"
    """What names a server in the monitor: the sled's DeviceName or its service tag."""
    force_migrate: bool = True
    """MigrateProfile's ForceMigrate: migrate even when OME cannot contact the source (the failed blade).
    The monitor moves a profile only once the source reads Off, whatever this says."""
    clock_skew: Annotated[float, Field(ge=0)] = 300.0
    """Seconds OME's clock may be behind ours: after a crash, a migrate job that started up to this much
    before the move was written ahead still counts as that move."""
    bmc: OmeBmcConfig | None = None
    """Credentials of the sleds' iDRACs for Redfish power and health; none: servers carry no BMC."""

    @property
    def action_timeout(self) -> float:
        """The longest one manager action takes: a request, then the wait for its job id."""
        return 2 * self.timeout + self.job_id_wait


class RedfishConfig(_Strict):
    timeout: Annotated[float, Field(gt=0)] = 10.0
    """Seconds for each Redfish request."""
    max_connections: Annotated[int, Field(ge=1, le=4096)] = 128
    """Open HTTPS connections to BMCs at most, over all BMCs (one shared connection pool; 4 per BMC at
    most, kept alive about 15 s between requests)."""


class RediscoveryConfig(_Strict):
    delay: Annotated[float, Field(ge=0)] = 600.0
    """Seconds after the spare is powered on before discovery runs (the seed's ten minutes)."""
    retries: Annotated[int, Field(ge=0)] = 3
    """Further attempts when discovery does not find the host yet (a slow boot)."""
    retry_interval: Annotated[float, Field(gt=0)] = 300.0
    """Seconds before the first retry; each further retry waits twice as long as the one before."""


class FailoverConfig(_Strict):
    power_off_timeout: Annotated[float, Field(gt=0)] = 120.0
    """Seconds to wait for the source to read Off after press-and-hold."""
    power_on_timeout: Annotated[float, Field(gt=0)] = 300.0
    poll_interval: Annotated[float, Field(gt=0)] = 1.0
    power_off_attempts: Annotated[int, Field(ge=1)] = 3
    """ForceOff requests sent before giving up (each followed by polling), as fence agents retry."""
    move_task_timeout: Annotated[float, Field(gt=0)] = 1800.0
    """Seconds a profile manager's move task (OneView, OME) is followed before move_profile gives up (the
    task itself goes on: it is not cancelled); the step's default limit is this plus two minutes."""
    step_timeouts: dict[str, Annotated[float, Field(gt=0)]] = {}
    """Per-step limits in seconds, overriding the defaults (power steps: their timeout plus a minute)."""
    rediscovery: RediscoveryConfig = RediscoveryConfig()
    recovery: Literal["resume", "fail_safe"] = "resume"
    """After a crash, a job that was mid-flight resumes from its last safe point or fails safe."""
    shutdown_grace: Annotated[float, Field(ge=0)] = 30.0
    """On SIGTERM, seconds a running step may take to reach a safe point before it is parked."""
    confirm: Literal["always", "rule", "never"] = "always"
    """Before a rule-triggered job is created, the source's BMC is read again and must confirm the
    fault (monitor/pipeline/confirmation.py): `always` for every failover rule, `rule` only for rules marked
    `confirm: true`, `never` not at all (except rules whose condition is the power reading,
    `confirm_by: powered_off`). A confirmation that declines is recorded as `declined`."""
    confirm_window: Annotated[float, Field(gt=0)] = 300.0
    """Seconds a declined failover stays open: a second failover signal for the server, or a health poll
    reading it unhealthy, within it fails the server over."""
    confirm_timeout: Annotated[float, Field(gt=0)] = 10.0
    """Seconds the confirmation waits for the BMC's answer (an unanswered read is "unreachable")."""
    fencing: FencingConfig = FencingConfig()
    """The fence levels tried in order to power the source off (monitor/fence_config.py); by default
    the BMC over Redfish alone."""

    @field_validator("step_timeouts")
    @classmethod
    def _known_steps(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(STEPS))
        if unknown:
            raise ValueError(f"unknown step(s) {', '.join(unknown)}; steps are {', '.join(STEPS)}")
        return v

    def step_timeout(self, step: str) -> float:
        if step in self.step_timeouts:
            return self.step_timeouts[step]
        if step == "power_off_source":  # every level of the longest order, each with its own timing
            return self.fencing.longest(self.power_off_attempts, self.power_off_timeout) + 60.0
        return STEP_SPECS[step].timeout(self)


class SnmpUser(_Strict):
    """An SNMPv3 USM user. TRAPs are accepted from the listed sender engine ids; INFORMs need none (the
    monitor is the authoritative engine for them)."""

    name: str
    auth_protocol: Literal["none", "MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512"] = "SHA"
    auth_key: SecretStr | None = None
    priv_protocol: Literal["none", "DES", "3DES", "AES", "AES192", "AES256"] = "AES"
    priv_key: SecretStr | None = None
    engine_ids: list[Annotated[str, Field(pattern=r"^(0x)?[0-9A-Fa-f]{10,64}$")]] = []

    @model_validator(mode="after")
    def _keys(self) -> SnmpUser:
        if self.auth_protocol != "none" and (self.auth_key is None or len(self.auth_key) < 8):
            raise ValueError(f"user {self.name}: auth_key of at least 8 characters required")
        if self.priv_protocol != "none":
            if self.auth_protocol == "none":
                raise ValueError(f"user {self.name}: privacy needs authentication")
            if self.priv_key is None or len(self.priv_key) < 8:
                raise ValueError(f"user {self.name}: priv_key of at least 8 characters required")
        return self


class SnmpConfig(_Strict):
    listen: str | None = None
    """HOST:PORT for traps and informs (e.g. 0.0.0.0:162); absent: no SNMP receiver."""
    v1_v2c: bool = True
    """Accept SNMPv1/v2c with the communities below; false: SNMPv3 only."""
    communities: list[SecretStr] = []
    users: list[SnmpUser] = []
    receive_buffer: Annotated[int, Field(ge=65536)] = 32 << 20
    """SO_RCVBUF bytes, so bursts wait in the kernel rather than being dropped (capped by rmem_max)."""
    queue_size: Annotated[int, Field(ge=1)] = 20000
    """Decoded traps waiting for the rules; beyond it they are dropped and counted."""
    allowed_senders: list[str] = []
    """Networks (CIDR) traps and informs may come from; empty: any. A datagram from elsewhere is dropped
    before any decoding and counted as `snmp_dropped_total{reason="sender_not_allowed"}`."""

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None:
            parse_listen(v)
        return v

    @field_validator("allowed_senders")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for spec in v:
            try:
                ipaddress.ip_network(spec.strip(), strict=False)
            except ValueError as exc:
                raise ValueError(f"{spec!r} is not a network (CIDR): {exc}") from None
        return v


class MqttConfig(_Strict):
    url: Annotated[str, Field(pattern=r"^mqtts?://")]
    """mqtt://[user:password@]host[:port] or mqtts:// (TLS)."""
    topic_prefix: str = "failover"
    client_id: str | None = None
    ca_file: str | None = None
    tls_insecure: bool = False
    buffer: Annotated[int, Field(ge=1)] = 10000
    """Messages kept, in order, while the broker is unreachable; beyond it the oldest are counted and
    dropped."""
    timeout: Annotated[float, Field(gt=0)] = 10.0
    keepalive: Annotated[int, Field(ge=5)] = 30


class RedfishEventsConfig(_Strict):
    """Redfish events in: push subscriptions to our listener, SSE streams, and health polling."""

    destination: str | None = None
    """The URL BMCs push to: our `POST /api/v1/events/redfish` as the BMCs reach it. Absent: no push
    subscriptions are managed (events may still be posted by hand-made subscriptions)."""
    secret: SecretStr | None = None
    """Master secret; each BMC's subscription carries its own token derived from it (HMAC), sent in an
    Authorization header where the BMC supports HttpHeaders, else in Context or the Destination path."""
    subscribe: bool = True
    """Make sure each BMC has exactly one subscription pointing at us (create, repair, remove our stale
    ones; never touch another consumer's)."""
    check_interval: Annotated[float, Field(gt=0)] = 300.0
    reconcile_rate: Annotated[float, Field(ge=0)] = 40.0
    """BMCs per second, on average, whose subscription is reconciled (each costs 2-5 requests): one
    reconcile over N BMCs is spread over min(N / reconcile_rate, poll_spread x check_interval) seconds,
    each BMC at a stable offset (a hash of its URL), so a start with 10,000 BMCs is no thundering herd
    (spread over 240 s by default) and 16 are done in 0.4 s. 0: all at once (bounded by
    `max_concurrency`)."""
    full_check_interval: Annotated[float, Field(ge=0)] = 3600.0
    """Seconds between two full checks of one BMC's subscriptions (its EventService and every
    subscription it lists: our stale and duplicate ones deleted, a wrong one replaced). In the periodic
    reconciles between them, a BMC whose subscription of ours was found correct only reads that one
    subscription back (1 request instead of 3 or more: at 10,000 BMCs ~80 requests a second fewer);
    one gone, changed or unreadable gets the full check at once. What only a full check sees (a
    duplicate of ours added meanwhile, the EventService switched off) waits for it. 0: every reconcile
    is full."""
    sse: bool = False
    """Also follow each BMC's ServerSentEventUri where it has one."""
    poll_interval: Annotated[float, Field(ge=0)] = 60.0
    """Seconds between health polls of every BMC (0: off): a change of Status.Health becomes an event."""
    poll_spread: Annotated[float, Field(ge=0, le=1)] = 0.8
    """The part of `poll_interval` over which one poll cycle's reads are spread: each BMC has a stable
    offset (a hash of its server id) in [0, poll_spread x poll_interval), so 10,000 BMCs are not all
    read at once (no thundering herd at start) and each is read about once per interval. 0: all at once
    (bounded by `max_concurrency`)."""
    max_concurrency: Annotated[int, Field(ge=1, le=4096)] = 64
    """Health reads, and subscription reconciles, running at once at most."""
    allowed_senders: list[str] = []
    """Networks (CIDR) events may come from; empty: any."""
    max_body: Annotated[int, Field(gt=0)] = 256 * 1024

    @model_validator(mode="after")
    def _secret_for_push(self) -> RedfishEventsConfig:
        if self.destination and self.secret is None:
            raise ValueError("redfish_events.secret is required when a destination is set")
        return self


class RulesConfig(_Strict):
    builtin: bool = True
    """Load the built-in rule packs (rules/packs/*.yaml)."""
    packs: list[str] | None = None
    """Only these built-in packs (by file name without .yaml); None: all."""
    files: list[str] = []
    """Site rule files (relative to the config file), loaded after the packs: a rule with a built-in id
    replaces it; `disable: [ids]` switches built-in rules off; guards and silences live here too."""
    watch_interval: Annotated[float, Field(gt=0)] = 2.0
    """Seconds between checks of the rule files for changes (hot reload; SIGHUP reloads at once)."""


class WebhookDiscovery(_Strict):
    """The discovery service behind an HTTP webhook: `POST url` with a JSON body
    `{"action": "remove_host"|"restore_host"|"discover", "server", "host": {"name","ip"}|null,
    "profile"}`; see the README for the answers it gives."""

    url: Annotated[str, Field(pattern=r"^https?://")]
    token: SecretStr | None = None
    """Sent as `Authorization: Bearer TOKEN`."""
    timeout: Annotated[float, Field(gt=0)] = 30.0
    ca_file: str | None = None


class CommandDiscovery(_Strict):
    """The discovery service behind a command (argv; `{server}`, `{action}`, `{host}`, `{ip}`,
    `{profile}` are substituted); see the README for exit codes and output."""

    argv: Annotated[list[str], Field(min_length=1)]
    timeout: Annotated[float, Field(gt=0)] = 120.0


class DiscoveryConfig(_Strict):
    kind: Literal["inventory", "webhook", "command"] = "inventory"
    """inventory: the inventory source's own (the lab's SIM role, or host records kept in the store
    for a static inventory); webhook or command: an outside Systems Insight Manager integration."""
    webhook: WebhookDiscovery | None = None
    command: CommandDiscovery | None = None

    @model_validator(mode="after")
    def _settings(self) -> DiscoveryConfig:
        if self.kind == "webhook" and self.webhook is None:
            raise ValueError("discovery.webhook is required when discovery.kind is webhook")
        if self.kind == "command" and self.command is None:
            raise ValueError("discovery.command is required when discovery.kind is command")
        return self


class OneViewBmcAccess(_Strict):
    """The blades' BMCs (iLO) as the monitor reaches them for power: OneView gives each one's address
    (`mpIpAddress`); the account and port are the site's."""

    username: str
    password: SecretStr
    port: Annotated[int, Field(ge=1, le=65535)] = 443
    verify_tls: bool = True
    ca_file: str | None = None
    """PEM CA file (relative to the config file) the iLO certificates are checked against."""


class OneViewManagerConfig(_Strict):
    """HPE OneView as the profile manager (adapters/oneview). Credentials as `${ENV}` references."""

    address: Annotated[str, Field(pattern=r"^https://[^/\s]+/?$")]
    """https://HOST[:PORT] of the appliance."""
    username: str
    password: SecretStr
    login_domain: str = "Local"
    """`authLoginDomain` of the login (a directory name, or Local)."""
    api_version: Annotated[int, Field(ge=1)] | None = None
    """X-API-Version sent with every call; None: the appliance's currentVersion (GET /rest/version)."""
    spare_label: Annotated[str, Field(min_length=1, pattern=r"^[^']+$")] = "spare"
    """The label that designates a server-hardware as a spare."""
    group_by: Literal["enclosure_group", "scope"] = "enclosure_group"
    """What a domain group is: a server's enclosure group, or its scope."""
    verify_tls: bool = True
    ca_file: str | None = None
    """PEM CA file (relative to the config file) the appliance's certificate is checked against."""
    timeout: Annotated[float, Field(gt=0)] = 10.0
    """Seconds for each request to the appliance."""
    bmc: OneViewBmcAccess
    """How the blades' BMCs are reached (the flow powers servers off and on through them)."""


class _HookCommon(_Strict):
    timeout: Annotated[float, Field(gt=0)] = 30.0
    """Seconds for each call of the hook (a request, or a run of the command)."""
    retries: Annotated[int, Field(ge=0)] = 2
    """Times a read (`task`, `find_move`) or a spare designation is tried again after a timeout, an
    unreachable hook or a 5xx (exit 75); the move itself is sent once."""
    retry_interval: Annotated[float, Field(gt=0)] = 1.0
    """Seconds before the first retry, then twice as long each time."""
    spare: Literal["inventory", "hook"] = "inventory"
    """Who keeps spare designations: the inventory source (the static file's state in the store, or the
    lab), or the hook too (action `spare`, then the inventory source's record)."""

    @property
    def call_timeout(self) -> float:
        """The longest one call may take with its retries."""
        backoff: float = self.retry_interval * (2 ** self.retries - 1)
        return self.timeout * (self.retries + 1) + backoff


class WebhookHookConfig(_HookCommon):
    """The profile move through the site's webhook (adapters/hooks): `POST url` with a JSON body."""

    url: Annotated[str, Field(pattern=r"^https?://[^/\s]+")]
    token: SecretStr | None = None
    """Sent as `Authorization: Bearer TOKEN`."""
    verify_tls: bool = True
    ca_file: str | None = None
    """PEM CA file (relative to the config file) the hook's certificate is checked against."""


class CommandHookConfig(_HookCommon):
    """The profile move through a command (adapters/hooks): argv run with the JSON request on stdin."""

    argv: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    env: dict[str, str] = {}
    """More environment variables for the command."""
    timeout: Annotated[float, Field(gt=0)] = 120.0


class ManagerConfig(_Strict):
    kind: Literal["inventory", "oneview", "ome", "webhook", "command"] = "inventory"
    """inventory: the inventory source's own (the lab's manager API, or the static file); oneview: HPE
    OneView; ome: Dell OpenManage Enterprise / OME-Modular (with either, the inventory source only keeps
    the discovery service's role); webhook or command: the inventory source's, with the move sent to the
    site's own automation (adapters/hooks)."""
    oneview: OneViewManagerConfig | None = None
    ome: OmeConfig | None = None
    webhook: WebhookHookConfig | None = None
    command: CommandHookConfig | None = None

    @model_validator(mode="after")
    def _settings(self) -> ManagerConfig:
        if self.kind == "oneview" and self.oneview is None:
            raise ValueError("manager.oneview is required when manager.kind is oneview")
        if self.kind == "ome" and self.ome is None:
            raise ValueError("manager.ome is required when manager.kind is ome")
        if self.kind == "webhook" and self.webhook is None:
            raise ValueError("manager.webhook is required when manager.kind is webhook")
        if self.kind == "command" and self.command is None:
            raise ValueError("manager.command is required when manager.kind is command")
        return self


class ClusterConfig(_Strict):
    """Several monitors sharing one store: each renews a lease on its membership; when a monitor's
    lease runs out, another adopts its jobs (resuming or failing them safe, per failover.recovery)."""

    lease: Annotated[float, Field(gt=0)] = 15.0
    """Seconds a monitor's jobs stay its own without a heartbeat."""
    heartbeat: Annotated[float, Field(gt=0)] = 5.0
    """Seconds between heartbeats (and looks for jobs to adopt); keep it well under `lease`."""
    dedupe_window: Annotated[float, Field(gt=0)] = 120.0
    """Seconds during which a rule-triggered failover of a server is started by one monitor only (the
    same trap reaches every monitor)."""
    address: str = ""
    """How the others can reach this monitor (shown in /api/v1/cluster)."""
    fence_grace: Annotated[float, Field(ge=0)] | None = None
    """Seconds another monitor waits after this one's lease ran out before it takes its jobs over: room
    for a request still in flight, or executed late by a BMC or manager. None: the longest action
    deadline (the Redfish, manager, discovery and fence-level request time limits, plus a second)."""

    @model_validator(mode="after")
    def _heartbeat_under_lease(self) -> ClusterConfig:
        if self.heartbeat * 2 > self.lease:
            raise ValueError("cluster.heartbeat must be at most half of cluster.lease")
        return self


class StoreSqlite(_Strict):
    synchronous: Literal["full", "normal"] = "full"
    """`full`: every job record survives power loss of the monitor's host; `normal`: a process crash."""


class StorePostgres(_Strict):
    """The connection pool of a PostgreSQL store (`store: postgresql://…`)."""

    min_size: Annotated[int, Field(ge=0)] = 1
    """Connections kept open."""
    max_size: Annotated[int, Field(ge=1)] = 10
    """Connections at most (jobs, the API and the timers share them)."""
    timeout: Annotated[float, Field(gt=0)] = 10.0
    """Seconds for each store call (connecting included); past it the call fails as "unavailable" and
    a job's save is retried while its lease holds."""

    @model_validator(mode="after")
    def _sizes(self) -> StorePostgres:
        if self.min_size > self.max_size:
            raise ValueError("postgres.min_size must be at most postgres.max_size")
        return self


class SparesConfig(_Strict):
    """The spare pool health check (monitor/pipeline/spare_pool.py): every designated spare's BMC read
    every `check_interval` seconds (plus up to `jitter` of it, at random), and the N+k capacity wanted."""

    check_interval: float = Field(default=300.0, gt=0)
    """Seconds between two checks of the whole pool; 0 is not allowed (the check always runs)."""
    jitter: float = Field(default=0.1, ge=0, le=1)
    """A random part of the interval added to each wait, so several monitors do not read at once."""
    initial_delay: float = Field(default=30.0, ge=0)
    """Seconds after start before the first check (plus the same jitter): a restart, or many monitors
    starting together, does not read every spare's BMC at once while the daemon is still coming up."""
    timeout: float = Field(default=10.0, gt=0)
    """Seconds one spare's BMC read may take."""
    max_concurrency: int = Field(default=32, ge=1, le=4096)
    """Spare BMC reads running at once at most during a check."""
    read_rate: float = Field(default=50.0, ge=0)
    """Spares per second, on average, whose BMC the periodic check reads: a pool of N spares is read
    over min(N / read_rate, check_interval / 2) seconds, evenly, in spare-selection order (4,647 spares
    at 10,000 BMCs: over 93 s, not in one burst beside the health polls). A pool of at most `read_rate`
    spares, and a check asked for on demand (`failover-monitor spares --fresh`), is read at once.
    0: always at once (bounded by `max_concurrency`)."""
    max_reading_age: float = Field(default=60.0, ge=0)
    """Seconds: the periodic check uses the health poll's reading of a spare (power and health, from
    `redfish_events.poll_interval`) when it is at most this old, instead of reading that BMC again;
    older, failed or no reading: the BMC is read. 0: always read the BMC. An on-demand check
    (`spares --fresh`, `GET /api/v1/spares?fresh=1`) always reads every BMC."""
    min_per_model: int = Field(default=1, ge=0)
    """k of N+k: the healthy spares wanted per (domain group, model) that the group has servers of."""
    groups: dict[str, int] = Field(default_factory=dict)
    """A domain group's own k (wins over `min_per_model`)."""


class MonitorConfig(_Strict):
    instance: str | None = None
    """This monitor's name in the cluster (unique among the monitors sharing a store; two live monitors
    with one name refuse to start). None: the host name, plus the config file's folder when a config
    file is given (`web1-config`), so that two monitors on one host differ."""
    http: HttpConfig = HttpConfig()
    store: str = "failover-monitor.db"
    """A SQLite file path (relative to the config file), `:memory:`, or a PostgreSQL URL
    (`postgresql://user:${PGPASSWORD}@host:5432/dbname`, or postgres://) shared by several monitors."""
    sqlite: StoreSqlite = StoreSqlite()
    postgres: StorePostgres = StorePostgres()
    inventory: InventoryConfig = InventoryConfig()
    redfish: RedfishConfig = RedfishConfig()
    failover: FailoverConfig = FailoverConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    manager: ManagerConfig = ManagerConfig()
    cluster: ClusterConfig = ClusterConfig()
    rules: RulesConfig = RulesConfig()
    snmp: SnmpConfig = SnmpConfig()
    redfish_events: RedfishEventsConfig = RedfishEventsConfig()
    mqtt: MqttConfig | None = None
    spares: SparesConfig = SparesConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    """`json`: one JSON object per line (time, level, logger, message); `--log-format` overrides it."""

    @model_validator(mode="after")
    def _manager_level_needs_manager_power(self) -> MonitorConfig:
        if "manager" in self.failover.fencing.used() and self.inventory.source == "static":
            raise ValueError("failover.fencing: fence level manager needs a profile manager with power "
                             "control; inventory.source static has none")
        return self

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        if v.startswith(("postgresql://", "postgres://")):
            return v  # the shared PostgreSQL store (monitor.store.postgres)
        if "://" in v:
            raise ValueError("store: a SQLite file path, :memory:, or a postgresql:// URL")
        return v


def default_instance(path: Path | None) -> str:
    """The host name, plus the config file's folder name when there is a config file."""
    host = socket.gethostname().split(".")[0] or "monitor"
    if path is None:
        return host
    folder = path.resolve().parent.name
    return f"{host}-{folder}" if folder else host


class LoadedConfig:
    """A validated config and the folder its relative paths are resolved against."""

    def __init__(self, config: MonitorConfig, path: Path | None) -> None:
        if config.instance is None:
            config = config.model_copy(update={"instance": default_instance(path)})
        self.config = config
        self.path = path
        self.base = path.parent if path else Path.cwd()

    @property
    def instance(self) -> str:
        assert self.config.instance is not None
        return self.config.instance

    def resolve(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.base / p

    @property
    def store_path(self) -> str:
        if self.config.store == ":memory:":
            return ":memory:"
        return str(self.resolve(self.config.store))

    @property
    def manager_timeout(self) -> float:
        """The longest one call of the profile manager may take (its adapter's own time limits)."""
        m = self.config.manager
        if m.kind == "ome" and m.ome is not None:
            return m.ome.action_timeout
        if m.kind == "oneview" and m.oneview is not None:
            return 2 * m.oneview.timeout  # the move: GET (eTag), then PUT
        hook = m.webhook if m.kind == "webhook" else m.command if m.kind == "command" else None
        if hook is not None:  # the hook's call, then the inventory source's own record of it
            return hook.call_timeout + self.config.inventory.lab.timeout
        return self.config.inventory.lab.timeout

    @property
    def inventory_file(self) -> Path | None:
        f = self.config.inventory.file
        return self.resolve(f) if f else None


def load_config(path: Path | None) -> LoadedConfig:
    """Load and validate a config file (None: the built-in defaults)."""
    if path is None:
        return LoadedConfig(MonitorConfig(), None)
    if not path.exists():
        raise ConfigError([ConfigIssue(str(path), 1, "(file)", "no such file")])
    return LoadedConfig(load_model(MonitorConfig, path), path)
