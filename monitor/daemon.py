"""The composition root: builds the store, adapters, job runner and HTTP API, and runs them under one
TaskGroup until the stop event is set. Dependencies can be passed in (tests pass a fake clock)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from monitor.api import Api, RateLimiter
from monitor.clock import Clock, SystemClock, sleep_unless
from monitor.config import LoadedConfig, parse_listen
from monitor.events import Event
from monitor.fence_levels import FenceTopology
from monitor.jobs import DuplicateInstance, FlowDeps, GroupLocks, JobRunner
from monitor.metrics import Metrics
from monitor.model import Inventory, Server
from monitor.pipeline import LogAlertSink, Pipeline, PolicyHolder
from monitor.ports import AdapterError, AlertSink, DiscoveryService, PowerControl, ProfileManager
from monitor.store import MembershipLost, StoreError
from monitor.stores import Store, open_store
from monitor.yamlfile import ConfigError

log = logging.getLogger(__name__)


REFRESH_GAP = 2.0
"""Seconds: the inventory view is refreshed at most this often."""


class StartupError(Exception):
    """The daemon cannot start; the message says why, for the operator."""


@dataclass
class Adapters:
    power: PowerControl
    manager: ProfileManager
    discovery: DiscoveryService
    reload: Any = None
    """A callable rereading the inventory file (static source), or None."""
    fence: FenceTopology | None = None
    """The fence levels (failover.fencing); None: the BMC through `power` alone."""


def build_adapters(loaded: LoadedConfig, store: Store) -> Adapters:
    from adapters.redfish_power import RedfishPower

    cfg = loaded.config
    power = RedfishPower(timeout=cfg.redfish.timeout)
    if cfg.inventory.source == "lab":
        from adapters.lab_manager import LabClient, LabDiscovery, LabManager

        lab = cfg.inventory.lab
        client = LabClient(lab.url, token=lab.token.get_secret_value() if lab.token else None,
                           timeout=lab.timeout)
        adapters = Adapters(power, LabManager(client), LabDiscovery(client))
    else:
        from adapters.static_inventory import StaticDiscovery, StaticInventory, StaticManager

        path = loaded.inventory_file
        assert path is not None
        inventory = StaticInventory(path, store)
        adapters = Adapters(power, StaticManager(inventory), StaticDiscovery(inventory, power),
                            inventory.reload)
    d = cfg.discovery
    if d.kind != "inventory":
        from adapters.discovery_external import external_discovery

        adapters.discovery = external_discovery(d.kind, d.webhook, d.command, adapters.manager.server)
    from adapters.fence.build import build_topology

    adapters.fence = build_topology(loaded, adapters.power, adapters.manager)
    return adapters


def bind_tcp(listen: str) -> socket.socket:
    """Bind the HTTP socket ourselves, so a port in use is a clear start-up error."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise StartupError(f"cannot listen on http.listen {listen}: {why}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def tls_context(loaded: LoadedConfig) -> ssl.SSLContext | None:
    """The HTTPS server context of `http.tls_cert`/`http.tls_key` (None: plain HTTP). TLS 1.2 at least;
    an unreadable or mismatched pair is a start-up error (the message names the file, never its
    content)."""
    http = loaded.config.http
    if http.tls_cert is None or http.tls_key is None:
        return None
    cert, key = loaded.resolve(http.tls_cert), loaded.resolve(http.tls_key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:  # an OSError too: first
        raise StartupError(f"http.tls_cert {cert} / tls_key {key}: not a matching PEM certificate and "
                           f"key ({exc.reason or 'unreadable'})") from None
    except FileNotFoundError as exc:
        raise StartupError(f"http.tls_cert/tls_key: {exc.filename}: no such file") from None
    except OSError as exc:
        raise StartupError(f"http.tls_cert/tls_key: {exc.filename or cert}: "
                           f"{exc.strerror or 'cannot read'}") from None
    return ctx


class Daemon:
    def __init__(
        self, loaded: LoadedConfig, *, clock: Clock | None = None, adapters: Adapters | None = None,
    ) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.clock = clock if clock is not None else SystemClock()
        self._adapters = adapters
        self.metrics = Metrics()
        self.instance = loaded.instance
        self.store: Store = open_store(self.config, loaded.store_path, self.clock.time)
        self.runner: JobRunner | None = None
        self._inventory: Inventory | None = None
        self._inventory_error: str | None = None
        self._inventory_at: float | None = None
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self.http_address: tuple[str, int] | None = None
        self.snmp_address: tuple[str, int] | None = None
        self.events: asyncio.Queue[Event] = asyncio.Queue(maxsize=self.config.snmp.queue_size)
        rules = self.config.rules
        # Rules load before anything starts: an invalid rule file is a start-up error, not a silent one.
        try:
            self.policy = PolicyHolder([loaded.resolve(f) for f in rules.files], builtin=rules.builtin,
                                       packs=rules.packs, metrics=self.metrics)
        except ConfigError as exc:
            raise StartupError(str(exc)) from exc
        self.pipeline: Pipeline | None = None
        if not len(self.policy.policy.ruleset):
            log.warning("no rules are loaded: events are recorded but nothing is decided")
        self.ready = asyncio.Event()
        self._refresh_now = asyncio.Event()
        self._tls: ssl.SSLContext | None = None
        self._fatal: str | None = None
        """Why the daemon must stop (another live monitor has its name), once known."""

    # --- what the API asks -------------------------------------------------------------------------

    @property
    def adapters(self) -> Adapters:
        """The adapters in use (built at start unless passed in)."""
        assert self._adapters is not None, "the daemon has not started"
        return self._adapters

    def inventory(self) -> Inventory | None:
        return self._inventory

    async def health(self) -> dict[str, Any]:
        parts: dict[str, Any] = {}
        try:
            async with asyncio.timeout(5):
                await self.store.ping()
            parts["store"] = {"ok": True}
        except (StoreError, TimeoutError, OSError) as exc:
            parts["store"] = {"ok": False, "error": str(exc)}
        for name, task in self._tasks.items():
            parts[name] = {"ok": not task.done()}
        if self.runner is not None:
            parts["cluster"] = {"ok": self.runner.ready and self.runner.lease_valid(),
                                "instance": self.instance,
                                "lease_left": round(max(self.runner.membership.left(), 0.0), 1)}
        parts["inventory"] = {
            "ok": self._inventory is not None,
            "servers": len(self._inventory.servers) if self._inventory else 0,
            "error": self._inventory_error,
        }
        ok = all(p["ok"] for p in parts.values())
        return {"ok": ok, "instance": self.instance, **parts}

    # --- inventory refresh ---------------------------------------------------------------------

    async def refresh_inventory(self, manager: ProfileManager) -> None:
        try:
            async with asyncio.timeout(self.config.inventory.lab.timeout + 5):
                self._inventory = await manager.inventory()
            self._inventory_error = None
            self._inventory_at = self.clock.time()
        except (AdapterError, TimeoutError) as exc:
            self._inventory_error = str(exc) or type(exc).__name__
            self.metrics.inc("inventory_refresh_errors_total")
            log.warning("inventory refresh failed: %s", self._inventory_error)

    async def _refresh_loop(self, manager: ProfileManager, stop: asyncio.Event) -> None:
        """Refresh the inventory view every `refresh_interval`, and soon after a job ends; wake-ups within
        REFRESH_GAP of the last refresh are coalesced, so a burst of jobs costs one refresh."""
        interval = self.config.inventory.refresh_interval
        gap = min(REFRESH_GAP, interval)
        while not stop.is_set():
            self._refresh_now.clear()
            await self.refresh_inventory(manager)
            if not await sleep_unless(self.clock, gap, stop):
                await sleep_unless(self.clock, interval - gap, stop, self._refresh_now)

    def reload(self) -> list[str]:
        """SIGHUP: reread the rule files and the inventory file (static source). Returns the problems;
        whatever is invalid is reported and the running version kept."""
        problems = self.policy.reload()
        adapters = self._adapters
        if adapters is not None and adapters.reload is not None:
            try:
                adapters.reload()
            except ConfigError as exc:
                for issue in exc.issues:
                    log.error("reload: %s (the running inventory stays)", issue)
                return problems + [str(i) for i in exc.issues]
            log.info("reload: inventory file reread")
        self._refresh_now.set()
        return problems

    def _servers(self) -> list[Server]:
        inv = self._inventory
        return list(inv.servers.values()) if inv else []

    def _redfish_events(self, adapters: Adapters) -> dict[str, Any]:
        """The Redfish push listener's routes, and the subscription, SSE and health-poll workers."""
        from adapters.redfish_events import (
            BmcTokens,
            HealthPoller,
            RedfishEventListener,
            SseFollower,
            SubscriptionManager,
        )

        cfg = self.config.redfish_events
        secret = cfg.secret.get_secret_value() if cfg.secret else None
        resolve: Any = BmcTokens(secret, self._servers) if secret else (lambda _token: None)
        listener = RedfishEventListener(cfg, self.events, self.metrics, self.clock, resolve)
        workers: dict[str, Any] = {"routes": listener.routes()}
        timeout = self.config.redfish.timeout
        if cfg.destination and cfg.subscribe:
            workers["redfish-subscriptions"] = SubscriptionManager(cfg, self._servers, self.metrics,
                                                                   self.clock, timeout=timeout)
        if cfg.sse:
            workers["redfish-sse"] = SseFollower(cfg, self._servers, self.events, self.metrics, self.clock,
                                                 timeout=timeout)
        if cfg.poll_interval > 0:
            workers["redfish-health-poll"] = HealthPoller(cfg, self._servers, adapters.power, self.events,
                                                          self.metrics, self.clock)
        return workers

    # --- run -----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._tls = tls_context(self.loaded)  # before binding: a bad certificate is a start-up error
        sock = bind_tcp(self.config.http.listen)
        try:
            await self.store.open()
        except StoreError as exc:
            sock.close()
            raise StartupError(str(exc)) from exc
        try:
            await self._run(stop, sock)
        finally:
            sock.close()  # already closed by the HTTP site when it started; not when start-up failed
            await self.store.close()

    async def _run(self, stop: asyncio.Event, sock: socket.socket) -> None:
        try:
            adapters = self._adapters or build_adapters(self.loaded, self.store)
        except ConfigError as exc:
            sock.close()
            raise StartupError(str(exc)) from exc
        self._adapters = adapters
        locks = GroupLocks(self.store, self.clock)
        deps = FlowDeps(self.store, adapters.manager, adapters.power, adapters.discovery, locks,
                        self.clock, self.config.failover, fence=adapters.fence)
        d = self.config.discovery
        discovery_timeout = (d.webhook.timeout if d.kind == "webhook" and d.webhook else
                             d.command.timeout if d.kind == "command" and d.command else
                             max(self.config.inventory.lab.timeout, self.config.redfish.timeout))
        # The longest one outside action of a job may take: the adapters' own time limits (a Redfish
        # request, a manager call, a discovery hook), plus a second.
        action_timeout = max(self.config.redfish.timeout, self.config.inventory.lab.timeout,
                             discovery_timeout, self.config.failover.fencing.request_timeout()) + 1.0
        runner = JobRunner(deps, self.metrics, instance=self.instance, cluster=self.config.cluster,
                           discovery_timeout=discovery_timeout, action_timeout=action_timeout)
        self.runner = runner

        async def after_job(job: Any) -> None:
            if not job.state.active:
                self._refresh_now.set()

        runner.add_listener(after_job)
        self.metrics.gauge("group_locks_held", lambda: {"": float(len(locks.held()))},
                           "domain groups locked by a job")
        self.metrics.gauge("jobs_running", lambda: {"": float(len(runner.running_jobs))},
                           "jobs executing now")
        sinks: list[AlertSink] = [LogAlertSink(self.clock)]
        mqtt = None
        if self.config.mqtt is not None:
            from adapters.mqtt import MqttAdapterError, MqttPublisher

            try:
                mqtt = MqttPublisher(config=self.config.mqtt, instance=self.instance,
                                     metrics=self.metrics, clock=self.clock)
            except MqttAdapterError as exc:
                raise StartupError(f"mqtt: {exc}") from exc
            sinks.append(mqtt)
            publisher = mqtt

            async def job_to_mqtt(job: Any) -> None:
                publisher.job(job)

            runner.add_listener(job_to_mqtt)
        mqtt_stop = asyncio.Event()
        pipeline = Pipeline(queue=self.events, holder=self.policy, store=self.store, runner=runner,
                            sinks=sinks, metrics=self.metrics, clock=self.clock, inventory=self.inventory,
                            watch_interval=self.config.rules.watch_interval,
                            power=adapters.power, failover=self.config.failover)
        self.pipeline = pipeline
        deps.enclosure_faults.append(lambda: pipeline.decider.state.faulted_enclosures(self.clock.time()))
        self.metrics.gauge("events_queued", lambda: {"": float(self.events.qsize())},
                           "events waiting for the rules")
        self.metrics.gauge("rules_loaded", lambda: {"": float(len(self.policy.policy.ruleset))})
        redfish_tasks = self._redfish_events(adapters)
        http = self.config.http
        token = http.token
        limiter = RateLimiter(http.rate_limit, http.rate_limit_burst) if http.rate_limit else None
        api = Api(runner, self, self.metrics, token=token.get_secret_value() if token else None,
                  max_body=http.max_body, pipeline=pipeline, events=self.events,
                  extra_routes=redfish_tasks.pop("routes"), rate_limiter=limiter)
        snmp = None
        web_runner = web.AppRunner(api.app(), access_log=None, handle_signals=False)
        await web_runner.setup()
        try:
            if self.config.snmp.listen:
                from adapters.snmp_traps import SnmpTrapReceiver

                snmp = SnmpTrapReceiver(config=self.config.snmp, queue=self.events, metrics=self.metrics,
                                        clock=self.clock)
                self.snmp_address = await snmp.start()  # a port in use is a start-up error
                log.info("receiving SNMP traps on udp %s:%s", *self.snmp_address)
            site = web.SockSite(web_runner, sock, ssl_context=self._tls)
            await site.start()
            self.http_address = sock.getsockname()[:2]
            log.info("%s listening on %s://%s:%s", self.instance,
                     "https" if self._tls else "http", *self.http_address)
            async with asyncio.TaskGroup() as tg:
                async def jobs_then_mqtt() -> None:
                    try:  # MQTT stops after the jobs: their last states still go out
                        await runner.run(stop)
                    except (DuplicateInstance, MembershipLost) as exc:
                        self._fatal = str(exc)
                        log.critical("%s", exc)
                        stop.set()
                    finally:
                        mqtt_stop.set()

                self._tasks["jobs"] = tg.create_task(jobs_then_mqtt(), name="job-runner")
                if mqtt is not None:
                    self._tasks["mqtt"] = tg.create_task(mqtt.run(mqtt_stop), name="mqtt")
                    # A crash may have lost buffered job states: publish the recent ones again (retained,
                    # so this only brings subscribers up to date).
                    for recent in reversed(await self.store.list_jobs(limit=100)):
                        mqtt.job(recent)
                self._tasks["inventory_refresh"] = tg.create_task(
                    self._refresh_loop(adapters.manager, stop), name="inventory-refresh")
                self._tasks["rules"] = tg.create_task(pipeline.run(stop), name="rules-pipeline")
                if snmp is not None:
                    self._tasks["snmp"] = tg.create_task(snmp.run(stop), name="snmp-traps")
                for name, worker in redfish_tasks.items():
                    self._tasks[name] = tg.create_task(worker.run(stop), name=name)
                # Ready once the runner has joined the cluster; a refusal to join (another live
                # monitor has this name) sets `stop` instead.
                waits = [asyncio.ensure_future(runner.wait_ready()), asyncio.ensure_future(stop.wait())]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
                if runner.ready:
                    self.ready.set()
                await stop.wait()
        finally:
            if snmp is not None:
                await snmp.close()
            for worker in redfish_tasks.values():
                close = getattr(worker, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        await close()
            await web_runner.cleanup()
            closers = [adapters.power.close, adapters.manager.close, adapters.discovery.close]
            if adapters.fence is not None:
                closers.insert(0, adapters.fence.close)
            for closer in closers:
                with contextlib.suppress(Exception):
                    await closer()
        if self._fatal is not None:
            raise StartupError(self._fatal)
        log.info("%s stopped", self.instance)
