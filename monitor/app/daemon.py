"""The composition root: builds the store, adapters, job runner, pipeline and HTTP API, runs them until
the stop event is set, and takes them down in phases. It composes and does nothing else: the inventory
view lives in monitor/pipeline/inventory.py, health in monitor/app/health.py. Dependencies can be passed
in (tests pass a fake clock, or adapters)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from monitor.api import Api, ApiDeps, RateLimiter
from monitor.app.health import health
from monitor.core.clock import Clock, SystemClock
from monitor.core.config import LoadedConfig, parse_listen
from monitor.core.errors import (
    ConfigError,
    DuplicateInstance,
    MembershipLost,
    StartupError,
    StoreError,
)
from monitor.core.events import Event
from monitor.core.fence_levels import FenceTopology
from monitor.core.heap import CollectorFreeze
from monitor.core.metrics import Metrics
from monitor.core.model import Inventory
from monitor.core.ports import AlertSink, DiscoveryService, PowerControl, ProfileManager
from monitor.dashboard.web import Dashboard
from monitor.jobs import FlowDeps, GroupLocks, JobRunner
from monitor.pipeline.inventory import InventoryView, spare_counts
from monitor.pipeline.pipeline import Pipeline
from monitor.pipeline.plan import PlanDeps
from monitor.pipeline.policy import PolicyHolder
from monitor.pipeline.sinks import LogAlertSink
from monitor.pipeline.spare_pool import SparePool
from monitor.store import Store, open_store

log = logging.getLogger(__name__)






@dataclass
class Adapters:
    power: PowerControl
    manager: ProfileManager
    discovery: DiscoveryService
    reload: Any = None
    """A callable rereading the inventory file (static source), or None."""
    closers: list[Any] = field(default_factory=list)
    """More async callables to close at the end (a client the replaced manager shared)."""
    fence: FenceTopology | None = None
    """The fence levels (failover.fencing); None: the BMC through `power` alone."""


def build_adapters(loaded: LoadedConfig, store: Store) -> Adapters:
    from adapters.redfish.power import RedfishPower

    cfg = loaded.config
    power = RedfishPower(timeout=cfg.redfish.timeout, max_connections=cfg.redfish.max_connections)
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
    if cfg.manager.kind == "oneview":
        from adapters.oneview.build import oneview_manager

        assert cfg.manager.oneview is not None
        adapters.closers.append(adapters.manager.close)  # the inventory source's; discovery may share it
        adapters.manager = oneview_manager(cfg.manager.oneview, cfg.failover, loaded.resolve)
    if cfg.manager.kind == "ome":
        from adapters.ome import build_ome_manager

        assert cfg.manager.ome is not None
        adapters.closers.append(adapters.manager.close)  # the inventory source's; discovery may share it
        adapters.manager = build_ome_manager(cfg.manager.ome, resolve=lambda f: str(loaded.resolve(f)))
    if cfg.manager.kind in ("webhook", "command"):
        from adapters.hooks import build_hook_manager

        # The inventory source's manager stays: the hook manager reads through it and records the moves
        # there; closing the hook manager closes only the hook (the wrapped one is closed here).
        adapters.closers.append(adapters.manager.close)
        adapters.manager = build_hook_manager(cfg.manager, adapters.manager, store,
                                              resolve=loaded.resolve)
    from adapters.fence.build import build_topology

    # Last: the manager level uses the manager in use (a OneView or OME one replaces the inventory's).
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
    """The composition root. `run` builds every part on an AsyncExitStack (so each resource is closed,
    in reverse order, whatever fails; a close that fails is logged and the rest still run), runs the
    long-lived tasks under one TaskGroup, and stops in phases: the sources (HTTP API and Redfish
    listener, SNMP, Redfish subscriptions/SSE/polling, inventory refresh) stop taking input → the
    pipeline decides what is queued → the jobs park at safe points and the monitor leaves the cluster →
    MQTT sends what it holds → the adapters and the store close."""

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
        self.collector = CollectorFreeze(self.clock, self.metrics)
        self.inventory_view = InventoryView(self.clock, self.metrics,
                                            timeout=self.loaded.manager_timeout + 5,
                                            interval=self.config.inventory.refresh_interval,
                                            collector=self.collector)
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self.http_address: tuple[str, int] | None = None
        self.snmp_address: tuple[str, int] | None = None
        self.dashboard: Dashboard | None = None
        self.events: asyncio.Queue[Event] = asyncio.Queue(maxsize=self.config.snmp.queue_size)
        rules = self.config.rules
        # Rules load before anything starts: an invalid rule file is a start-up error, not a silent one.
        try:
            self.policy = PolicyHolder([loaded.resolve(f) for f in rules.files], builtin=rules.builtin,
                                       packs=rules.packs, metrics=self.metrics)
        except ConfigError as exc:
            raise StartupError(str(exc)) from exc
        self.pipeline: Pipeline | None = None
        self.spare_pool: SparePool | None = None
        if not len(self.policy.policy.ruleset):
            log.warning("no rules are loaded: events are recorded but nothing is decided")
        self.ready = asyncio.Event()
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
        return self.inventory_view.current()

    async def health(self) -> dict[str, Any]:
        return await health(instance=self.instance, store=self.store, tasks=self._tasks,
                            runner=self.runner, inventory=self.inventory_view)

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
        self.inventory_view.wake()
        return problems

    # --- run -----------------------------------------------------------------------------------

    def _action_timeouts(self) -> tuple[float, float]:
        """(the discovery hooks' time limit, the longest one outside action of a job may take: the
        adapters' own time limits — a Redfish request, a manager call, a discovery hook — plus a
        second)."""
        cfg = self.config
        d = cfg.discovery
        discovery = (d.webhook.timeout if d.kind == "webhook" and d.webhook else
                     d.command.timeout if d.kind == "command" and d.command else
                     max(cfg.inventory.lab.timeout, cfg.redfish.timeout))
        return discovery, max(cfg.redfish.timeout, self.loaded.manager_timeout, discovery,
                              cfg.failover.fencing.request_timeout()) + 1.0

    async def run(self, stop: asyncio.Event) -> None:
        async with contextlib.AsyncExitStack() as stack:
            closing = _Closing(stack)
            # frozen at the first inventory, and again after a slow full collection
            closing.sync("the collector's frozen objects", self.collector.thaw)
            self._tls = tls_context(self.loaded)  # before binding: a bad certificate is a start-up error
            sock = bind_tcp(self.config.http.listen)
            closing.sync("the HTTP socket", sock.close)  # closed by the HTTP site once it has started
            try:
                await self.store.open()
            except StoreError as exc:
                raise StartupError(str(exc)) from exc
            closing.add("the store", self.store.close)
            try:
                adapters = self._adapters or build_adapters(self.loaded, self.store)
            except ConfigError as exc:
                raise StartupError(str(exc)) from exc
            self._adapters = adapters
            for n, extra in enumerate(adapters.closers):
                closing.add(f"a shared client ({n + 1})", extra)
            closing.add("the discovery service", adapters.discovery.close)
            closing.add("the profile manager", adapters.manager.close)
            closing.add("the power adapter", adapters.power.close)
            if adapters.fence is not None:
                closing.add("the fence levels", adapters.fence.close)
            await self._serve(stop, sock, adapters, closing)
        if self._fatal is not None:
            raise StartupError(self._fatal)
        log.info("%s stopped", self.instance)

    async def _serve(self, stop: asyncio.Event, sock: socket.socket, adapters: Adapters,
                     closing: _Closing) -> None:
        cfg = self.config
        locks = GroupLocks(self.store, self.clock)
        deps = FlowDeps(self.store, adapters.manager, adapters.power, adapters.discovery, locks,
                        self.clock, cfg.failover,
                        enclosure_faults=lambda: self.policy.faulted_enclosures(self.clock.time()),
                        fence=adapters.fence)
        discovery_timeout, action_timeout = self._action_timeouts()
        runner = JobRunner(deps, self.metrics, instance=self.instance, cluster=cfg.cluster,
                           discovery_timeout=discovery_timeout, action_timeout=action_timeout)
        self.runner = runner
        view = self.inventory_view

        async def after_job(job: Any) -> None:
            if not job.state.active:
                view.wake()

        runner.add_listener(after_job)
        self.metrics.gauge("group_locks_held", lambda: {"": float(len(locks.held()))},
                           "domain groups locked by a job")
        self.metrics.gauge("jobs_running", lambda: {"": float(len(runner.running_jobs))},
                           "jobs executing now")
        sinks: list[AlertSink] = [LogAlertSink(self.clock)]
        mqtt = None
        if cfg.mqtt is not None:
            from adapters.mqtt import MqttAdapterError, MqttPublisher

            try:
                mqtt = MqttPublisher(config=cfg.mqtt, instance=self.instance, metrics=self.metrics,
                                     clock=self.clock)
            except MqttAdapterError as exc:
                raise StartupError(f"mqtt: {exc}") from exc
            sinks.append(mqtt)
            publisher = mqtt

            async def job_to_mqtt(job: Any) -> None:
                publisher.job(job)

            runner.add_listener(job_to_mqtt)
        pipeline = Pipeline(queue=self.events, holder=self.policy, store=self.store, runner=runner,
                            sinks=sinks, metrics=self.metrics, clock=self.clock, inventory=view.current,
                            watch_interval=cfg.rules.watch_interval, power=adapters.power,
                            failover=cfg.failover, fence=adapters.fence)
        self.pipeline = pipeline
        self.metrics.gauge("events_queued", lambda: {"": float(self.events.qsize())},
                           "events waiting for the rules")
        self.spare_pool = spare_pool = SparePool(
            power=adapters.power, inventory=view.current, clock=self.clock, config=cfg.spares,
            sinks=sinks, metrics=self.metrics)
        planning = PlanDeps(adapters.manager, adapters.power, self.store, self.clock, cfg.failover,
                            decider=lambda: pipeline.decider, fence=adapters.fence,
                            enclosure_faults=lambda: self.policy.faulted_enclosures(self.clock.time()),
                            timeout=max(cfg.redfish.timeout, self.loaded.manager_timeout))
        self.metrics.gauge("rules_loaded", lambda: {"": float(len(self.policy.policy.ruleset))},
                           "rules loaded now")
        self.metrics.gauge("failover_paused", lambda: {"": 1.0 if pipeline.decider.paused else 0.0},
                           "1 while automatic failover is paused (the pause switch)")
        self.metrics.gauge("spares", lambda: spare_counts(view.current()),
                           "designated spares (present, no profile) per domain group and model",
                           ("domain_group", "model"))
        listener_routes, workers = self._redfish_events(adapters)
        poller = workers.get("redfish-health-poll")
        if poller is not None:  # the spare check reuses what the health poll read lately
            spare_pool.recent = poller.recent
        for worker in workers.values():
            close = getattr(worker, "close", None)
            if close is not None:
                closing.add(f"the {worker.__class__.__name__}", close)
        http = cfg.http
        token = http.token
        limiter = RateLimiter(http.rate_limit, http.rate_limit_burst) if http.rate_limit else None
        api = Api(ApiDeps(runner=runner, store=self.store, manager=adapters.manager, locks=locks,
                          clock=self.clock, metrics=self.metrics, health=self.health,
                          inventory=view.current, pipeline=pipeline, events=self.events,
                          plan=planning, spares=spare_pool),
                  token=token.get_secret_value() if token else None, max_body=http.max_body,
                  extra_routes=listener_routes, rate_limiter=limiter)
        dashboard = self.dashboard = Dashboard(api)
        dashboard.attach()
        api.extra_routes.extend(dashboard.routes())
        web_runner = web.AppRunner(api.app(), access_log=None, handle_signals=False)
        await web_runner.setup()
        closing.add("the HTTP server", web_runner.cleanup)
        closing.sync("the dashboard's streams", dashboard.hub.close)
        snmp = None
        if cfg.snmp.listen:
            from adapters.snmp.receiver import SnmpTrapReceiver

            snmp = SnmpTrapReceiver(config=cfg.snmp, queue=self.events, metrics=self.metrics,
                                    clock=self.clock)
            self.snmp_address = await snmp.start()  # a port in use is a start-up error
            closing.add("the SNMP receiver", snmp.close)
            log.info("receiving SNMP traps on udp %s:%s", *self.snmp_address)
        site = web.SockSite(web_runner, sock, ssl_context=self._tls)
        await site.start()
        self.http_address = sock.getsockname()[:2]
        log.info("%s listening on %s://%s:%s", self.instance, "https" if self._tls else "http",
                 *self.http_address)

        # One stop event per phase, set in order once `stop` is.
        sources_stop, pipeline_stop, jobs_stop, mqtt_stop = (asyncio.Event() for _ in range(4))
        async with asyncio.TaskGroup() as tg:
            async def jobs() -> None:
                try:
                    await runner.run(jobs_stop)
                except (DuplicateInstance, MembershipLost) as exc:
                    self._fatal = str(exc)
                    log.critical("%s", exc)
                    stop.set()

            def start(name: str, coro: Any) -> asyncio.Task[Any]:
                self._tasks[name] = task = tg.create_task(coro, name=name)
                return task

            sources: list[asyncio.Task[Any]] = []
            jobs_task = start("jobs", jobs())
            mqtt_task = start("mqtt", mqtt.run(mqtt_stop)) if mqtt is not None else None
            if mqtt is not None:
                # A crash may have lost buffered job states: publish the recent ones again (retained,
                # so this only brings subscribers up to date).
                for recent in reversed(await self.store.list_jobs(limit=100)):
                    mqtt.job(recent)
            sources.append(start("inventory_refresh", view.run(adapters.manager, sources_stop)))
            sources.append(start("collector", self.collector.run(sources_stop)))
            pipeline_task = start("rules", pipeline.run(pipeline_stop))
            sources.append(start("spare_pool", spare_pool.run(sources_stop)))
            if snmp is not None:
                sources.append(start("snmp", snmp.run(sources_stop)))
            for name, worker in workers.items():
                sources.append(start(name, worker.run(sources_stop)))
            # Ready once the runner has joined the cluster; a refusal to join (another live monitor has
            # this name) sets `stop` instead.
            waits = [asyncio.ensure_future(runner.wait_ready()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            if runner.ready:
                self.ready.set()
            await stop.wait()
            log.info("%s stopping: sources", self.instance)
            sources_stop.set()
            await site.stop()  # no more API requests or Redfish pushes
            await asyncio.wait(sources)
            log.info("%s stopping: the pipeline decides what is queued", self.instance)
            pipeline_stop.set()
            await asyncio.wait([pipeline_task])
            log.info("%s stopping: jobs park", self.instance)
            jobs_stop.set()
            await asyncio.wait([jobs_task])
            if mqtt_task is not None:
                log.info("%s stopping: MQTT sends what it holds", self.instance)
                mqtt_stop.set()
                await asyncio.wait([mqtt_task])

    def _redfish_events(self, adapters: Adapters) -> tuple[list[web.RouteDef], dict[str, Any]]:
        """The Redfish push listener's routes, and the subscription, SSE and health-poll workers."""
        from adapters.redfish.listener import BmcTokens, RedfishEventListener
        from adapters.redfish.poller import HealthPoller
        from adapters.redfish.sse import SseFollower
        from adapters.redfish.subscriptions import SubscriptionManager

        cfg = self.config.redfish_events
        servers = self.inventory_view.servers
        secret = cfg.secret.get_secret_value() if cfg.secret else None
        resolve: Any = (BmcTokens(secret, servers, generation=self.inventory_view.current) if secret
                        else (lambda _token: None))
        listener = RedfishEventListener(cfg, self.events, self.metrics, self.clock, resolve)
        workers: dict[str, Any] = {}
        timeout = self.config.redfish.timeout
        poller = None
        if cfg.poll_interval > 0:
            poller = HealthPoller(cfg, servers, adapters.power, self.events, self.metrics, self.clock,
                                  timeout=timeout * 3)
        if cfg.destination and cfg.subscribe:
            # The power adapter's session: one connection pool (redfish.max_connections) to every BMC.
            # The first reconcile follows the first poll cycle (at most one poll_interval later).
            http = getattr(adapters.power, "http", None)
            workers["redfish-subscriptions"] = SubscriptionManager(
                cfg, servers, self.metrics, self.clock, timeout=timeout,
                session=http() if callable(http) else None,
                start_after=poller.cycle_done if poller is not None else None,
                start_wait=cfg.poll_interval)
        if cfg.sse:
            workers["redfish-sse"] = SseFollower(cfg, servers, self.events, self.metrics, self.clock,
                                                 timeout=timeout)
        if poller is not None:
            workers["redfish-health-poll"] = poller
        return listener.routes(), workers


class _Closing:
    """Registers closes on the exit stack: each runs whatever happened before it, in reverse order of
    registration; one that fails is logged and never skips the rest."""

    def __init__(self, stack: contextlib.AsyncExitStack) -> None:
        self._stack = stack

    def add(self, what: str, close: Callable[[], Awaitable[Any]]) -> None:
        async def run() -> None:
            try:
                await close()
            except Exception:
                log.exception("closing %s failed (the rest still close)", what)

        self._stack.push_async_callback(run)

    def sync(self, what: str, close: Callable[[], Any]) -> None:
        def run() -> None:
            try:
                close()
            except Exception:
                log.exception("closing %s failed (the rest still close)", what)

        self._stack.callback(run)
