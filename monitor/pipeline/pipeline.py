"""The event pipeline: normalized events → server resolution → rules → guards → confirmation → decision
→ alert or job.

A failover decision is confirmed before a job is created (monitor/pipeline/confirmation.py,
`failover.confirm`):
the source's BMC is read again (with a timeout) and must read the server down or unhealthy. A decline is
its own outcome, `declined`: it gives back the cooldown and the rate-limit slot, and stays open for
`failover.confirm_window`: a second failover signal, or a health poll reading the server unhealthy, within
it fails the server over. The verdict and the reading go into the decision and the job's trigger. The
reads a failover needs run together: the BMC's (confirmation), the operator silences (store) and the
manager's view of the server (the job's creation); a decision silenced or declined drops the others.

One consumer task takes events from a bounded queue (sources put into it and count what overflows),
so the rule state is only ever touched from one task. Decisions are stored by group commit; the rule
state is snapshotted to the store every few seconds and at stop, and restored at start, so a restart does not
forget an open threshold window. Rule files are watched and reloaded (also on SIGHUP): an invalid file is
reported as FILE:LINE and the running rules stay in force.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from monitor.core.clock import Clock
from monitor.core.config import FailoverConfig
from monitor.core.errors import (
    ActiveJobExists,
    AdapterError,
    ShuttingDown,
    StoreError,
    UnknownServer,
)
from monitor.core.events import Event
from monitor.core.fence_levels import FenceTopology
from monitor.core.metrics import Metrics
from monitor.core.model import Inventory, Server, iso
from monitor.core.ports import AlertSink, PowerControl
from monitor.jobs import JobRunner
from monitor.pipeline import confirmation, maintenance
from monitor.pipeline.policy import PolicyHolder
from monitor.pipeline.resolve import NO_INVENTORY, NO_MATCH, Resolution, Resolver
from monitor.store import Store
from rules.engine import Decider, Decision, RuleState

log = logging.getLogger(__name__)

STATE_KEY = "rule_state"
PAUSE_KEY = "pause"
SNAPSHOT_INTERVAL = 5.0
MAX_PENDING = 100_000
"""Decisions kept in memory while the store is away."""
FLUSH_BATCH = 1000
"""Decisions stored in one transaction at most."""
STORE_RETRY = 1.0
"""Seconds before the decisions are tried again when the store was away."""
CONSUME_BATCH = 256
"""Events decided in a row before the consumer lets the rest of the loop run (receivers, the API,
the flusher): a burst does not hold everything else up until the queue is empty."""
PERIOD = 0.2
"""Seconds between two looks at the rule files and the snapshot's age."""
DRAIN_TIMEOUT = 5.0
"""Seconds the pipeline goes on deciding queued events at stop."""


class Pipeline:
    def __init__(self, *, queue: asyncio.Queue[Event], holder: PolicyHolder, store: Store,
                 runner: JobRunner, sinks: list[AlertSink], metrics: Metrics, clock: Clock,
                 inventory: Callable[[], Inventory | None], watch_interval: float = 2.0,
                 power: PowerControl | None = None, failover: FailoverConfig | None = None,
                 fence: FenceTopology | None = None) -> None:
        self.fence = fence
        """The fence levels: read when the BMC cannot be, to confirm (None: the BMC alone)."""
        self.power = power
        """Where the confirmation reads the source's health (None: nothing can confirm)."""
        self.failover = failover or FailoverConfig()
        self.queue = queue
        self.holder = holder
        self.store = store
        self.runner = runner
        self.sinks = sinks
        self.metrics = metrics
        self.clock = clock
        self._inventory = inventory
        self._resolver: Resolver | None = None
        self._pending: list[Decision] = []
        self._flushed = asyncio.Event()
        self._storing = asyncio.Lock()
        """Held while a batch of decisions is on its way to the store (one at a time, in order)."""
        self._has_pending = asyncio.Event()
        """Set when a decision is added: the flusher stores it (idle, it waits on nothing else)."""
        self.watch_interval = watch_interval
        self.processed = 0
        self._busy = False
        """The consumer is deciding an event (not waiting for one)."""
        self._closing = False
        self.decision_listeners: list[Callable[[Decision], None]] = []
        """Called with every decision as it is made (the dashboard's live stream); each must be cheap
        and never raise into the pipeline."""

    @property
    def decider(self) -> Decider:
        return self.holder.decider

    def resolver(self) -> Resolver | None:
        inv = self._inventory()
        if inv is None:
            return None
        if self._resolver is None or self._resolver.inventory is not inv:
            self._resolver = Resolver(inv)
        return self._resolver

    # --- pause switch -----------------------------------------------------------------------------

    async def set_paused(self, reason: str | None) -> None:
        await self.store.set_value(PAUSE_KEY, {"reason": reason, "since": iso(self.clock.now())}
                                   if reason else None)
        self.decider.paused = reason
        log.warning("automatic failover %s", f"PAUSED: {reason}" if reason else "resumed")

    # --- one event ---------------------------------------------------------------------------------

    def _resolve(self, event: Event) -> tuple[Event, Server | None, Resolution, int | None]:
        """The event with its server and enclosure filled in, the server, how it was resolved (or why
        not), and its group's size."""
        resolver = self.resolver()
        found = (resolver.attribute(event) if resolver
                 else Resolution(None, "inventory not loaded", NO_INVENTORY))
        sid = found.server
        server = resolver.server(sid) if resolver else None
        enclosure = resolver.enclosure(event, sid)[0] if resolver else None
        if event.server != sid or event.enclosure != enclosure:
            event = event.model_copy(update={"server": sid, "enclosure": enclosure})
        group_size = resolver.group_sizes.get(server.domain_group, 0) if resolver and server else None
        return event, server, found, group_size

    def _start_reading(self, decider: Decider, decision: Decision,
                       server: Server) -> asyncio.Task[confirmation.Reading] | None:
        """The BMC read a failover decision's confirmation will need, started now (None: it needs none),
        so that it runs while the silences are read. Only a read: when the decision ends up silenced,
        it is cancelled or its answer dropped."""
        assert decision.rule is not None
        rule = decider.ruleset.rules[decision.rule]
        if self.power is None or not confirmation.needs_reading(self.failover.confirm, rule.spec):
            return None
        task = asyncio.create_task(confirmation.read(self.power, server, self.failover.confirm_timeout,
                                                     self.clock), name=f"confirm-{server.id}")
        task.add_done_callback(_retrieve)  # a dropped read's unexpected error is not logged as unretrieved
        return task

    async def _confirm(self, decider: Decider, decision: Decision, server: Server,
                       read_bmc: bool = True,
                       started: asyncio.Task[confirmation.Reading] | None = None,
                       ) -> confirmation.Confirmation:
        """Confirm a failover decision with the BMC (with the read `started` already, if any); a decline
        is recorded in `decider`'s state (the cooldown given back, the window opened) and turns the
        decision into `declined`."""
        assert decision.rule is not None
        rule = decider.ruleset.rules[decision.rule]
        policy = self.failover.confirm
        reading: confirmation.Reading = None
        if started is not None:
            reading = await started
        elif read_bmc and self.power is not None and confirmation.needs_reading(policy, rule.spec):
            reading = await confirmation.read(self.power, server, self.failover.confirm_timeout, self.clock)
        others = None
        if isinstance(reading, AdapterError):  # the BMC is dead: do the other fence levels read it down?
            others = await confirmation.read_others(self.fence, server, self.failover.confirm_timeout,
                                                    self.clock)
        verdict = confirmation.decide(policy=policy, rule_id=rule.id, rule=rule.spec, event=decision.event,
                                      reading=reading, reopened=decision.reopened, others=others)
        decision.confirmation = verdict.public()
        if verdict.confirmed:
            decider.close_decline(server.id)
            return verdict
        until = decision.time.timestamp() + self.failover.confirm_window
        decider.decline(decision, until, verdict.reason, verdict.reading)
        open_ = decider.state.open_decline(server.id, decision.time.timestamp())
        decision.confirmation["open_until"] = iso(datetime.fromtimestamp(
            float(open_["until"]) if open_ else until, UTC))
        decision.action = "declined"
        decision.guard = f"confirmation declined: {verdict.reason}"
        return verdict

    async def handle(self, event: Event) -> Decision:
        event, server, found, group_size = self._resolve(event)
        how = found.how
        if server is None:
            self.metrics.inc("events_unresolved_total", source=event.source, reason=found.reason or NO_MATCH)
        decision = self.decider.decide(event, server, group_size)
        manager_read: asyncio.Task[Server] | None = None
        if decision.action == "failover" and server is not None:
            # The BMC is read (confirmation) while the operator silences are read from the store, and
            # the manager's view of the server, which the job's creation needs, is read meanwhile too.
            reading = self._start_reading(self.decider, decision, server)
            manager_read = asyncio.create_task(self.runner.read_server(server.id),
                                               name=f"manager-read-{server.id}")
            manager_read.add_done_callback(_retrieve)
            try:
                await maintenance.honour_silences(self.store, self.decider, decision, server)
                if decision.action == "failover":
                    await self._confirm(self.decider, decision, server, started=reading)
            finally:
                if reading is not None and not reading.done():
                    reading.cancel()
                if decision.action != "failover" and not manager_read.done():
                    manager_read.cancel()  # silenced or declined: no job, the read is not needed
        try:
            await self._decided(decision, event, server, how, manager_read)
        finally:
            if manager_read is not None and not manager_read.done():
                manager_read.cancel()
        return decision

    async def _decided(self, decision: Decision, event: Event, server: Server | None, how: str,
                       manager_read: asyncio.Task[Server] | None) -> None:
        """After the confirmation: dedupe, the job, alerts, the record, the listeners."""
        self.metrics.inc("decisions_total", action=decision.action)
        if decision.action == "failover" and server is not None:
            # Every monitor hears the same trap: one of them starts the failover.
            first = await self.store.dedupe(f"failover:{server.id}:{decision.rule}", self.runner.instance,
                                            None, self.runner.cluster.dedupe_window)
            if first is not None:
                decision.action, decision.guard = "none", f"already being handled by monitor {first}"
        if decision.action == "failover" and server is not None:
            # The pipeline has confirmed (or the policy said not to): the flow only records the health
            # it reads before fencing ("confirm": False).
            trigger = {"kind": "rule", "rule": decision.rule, "confirm": False,
                       "confirmation": decision.confirmation, "resolved_by": how,
                       "event": event.model_dump(mode="json", exclude_defaults=True)}
            if decision.reopened is not None:
                trigger["reopened"] = decision.reopened
            try:
                read = await manager_read if manager_read is not None else None
                job = await self.runner.submit(server.id, trigger, server=read)
                decision.job = job.id
            except ActiveJobExists as exc:
                decision.action, decision.guard = "none", f"{server.id} already has active job {exc.job}"
            except (UnknownServer, ShuttingDown, AdapterError) as exc:
                # e.g. the manager is down: the decision is kept and alerted, nothing is touched
                decision.action, decision.guard = "alert", f"failover not started: {exc}"
        if decision.action in ("failover", "alert", "declined") or decision.storm_alert:
            payload = self.alert_payload(decision)
            for sink in self.sinks:
                sink.alert(decision.server, payload)
        self._pending.append(decision)
        self._has_pending.set()
        self.processed += 1
        for listener in self.decision_listeners:
            try:
                listener(decision)
            except Exception:  # a listener never breaks the pipeline
                log.exception("decision listener failed")

    @staticmethod
    def alert_payload(d: Decision) -> dict[str, object]:
        return {"server": d.server, "rule": d.rule, "action": d.action, "severity": d.severity,
                "event": d.event_json(), "time": iso(d.time),
                "guard": d.guard, "job": d.job, "labels": d.labels,
                **({"storm": d.storm_alert} if d.storm_alert else {}),
                **({"confirmation": d.confirmation} if d.confirmation else {})}

    # --- background work ----------------------------------------------------------------------------

    async def flush(self) -> None:
        """Store the pending decisions now (in transactions of at most FLUSH_BATCH)."""
        while self._pending:
            await self._store_some()
        async with self._storing:  # and what the flusher took before is committed too
            pass

    async def _store_some(self) -> None:
        async with self._storing:
            await self._store_batch()

    async def _store_batch(self) -> None:
        batch, self._pending = self._pending[:FLUSH_BATCH], self._pending[FLUSH_BATCH:]
        if not batch:
            return
        # The records are made off the loop (a thousand of them are tens of milliseconds of Python
        # that would otherwise hold every receiver and timer up in one piece).
        rows = await asyncio.to_thread(_rows, batch)
        try:
            ids = await self.store.add_decisions(rows)
        except StoreError:
            # The store is away: keep them (the oldest go first beyond MAX_PENDING) and try again later.
            self._pending = (batch + self._pending)[-MAX_PENDING:]
            self._has_pending.set()  # tried again after the flusher's pause (STORE_RETRY)
            dropped = len(batch) + len(self._pending) - MAX_PENDING
            if dropped > 0:
                self.metrics.inc("decisions_dropped_total", float(dropped))
            raise
        for d, i in zip(batch, ids, strict=True):
            d.id = i

    async def snapshot(self) -> None:
        await self.store.set_value(STATE_KEY, self.decider.state.snapshot())

    async def restore(self) -> None:
        data = await self.store.get_value(STATE_KEY)
        if isinstance(data, dict):
            self.decider.state = RuleState.restore(data)
        pause = await self.store.get_value(PAUSE_KEY)
        if isinstance(pause, dict) and pause.get("reason"):
            self.decider.paused = str(pause["reason"])
            log.warning("automatic failover is paused (since %s): %s", pause.get("since"), pause["reason"])

    async def run(self, stop: asyncio.Event, *, drain: float = DRAIN_TIMEOUT) -> None:
        """Decide events until `stop`; then drain: what is already queued (the sources have stopped
        first) is decided, for at most `drain` seconds; whatever is left then is counted as dropped
        (`events_dropped_total{reason="shutdown"}`). Decisions and the rule state are stored last."""
        await self.restore()
        try:
            async with asyncio.TaskGroup() as tg:
                consumer = tg.create_task(self._consume(), name="rules-consumer")
                periodic = tg.create_task(self._periodic(stop), name="rules-periodic")
                flusher = tg.create_task(self._flusher(stop), name="decisions-flusher")
                await stop.wait()
                periodic.cancel()
                self._closing = True
                async with self._storing:  # a batch on its way is committed first, never cut off
                    flusher.cancel()
                if not self._busy and self.queue.empty():
                    consumer.cancel()  # waiting for an event that will not come
                else:
                    done, _ = await asyncio.wait([consumer], timeout=drain)
                    if not done:
                        consumer.cancel()
                        left = self.queue.qsize() + 1
                        self.metrics.inc("events_dropped_total", left, reason="shutdown")
                        log.error("at stop, %d queued event(s) were not decided within %g s", left, drain)
        finally:
            try:
                await self.flush()
                await self.snapshot()
            except StoreError as exc:  # stopping while the store is away: say what is lost
                log.error("at stop, %d decision(s) and the rule state could not be stored: %s",
                          len(self._pending), exc)

    async def _consume(self) -> None:
        in_a_row = 0
        while True:
            if in_a_row >= CONSUME_BATCH:
                in_a_row = 0
                await asyncio.sleep(0)  # a burst: let the receivers, the API and the flusher run
            event = await self.queue.get()
            in_a_row = in_a_row + 1 if not self.queue.empty() else 0
            self._busy = True
            try:
                await self.handle(event)
            except Exception:
                self.metrics.inc("events_dropped_total", reason="internal_error")
                log.exception("event %s could not be decided", event.id)
            finally:
                self._busy = False
            if self._closing and self.queue.empty():
                return  # drained

    async def _flusher(self, stop: asyncio.Event) -> None:
        """Group commit: whatever is pending is stored as soon as the previous store has committed
        (what came meanwhile goes in the next, up to FLUSH_BATCH a transaction), so a burst costs few
        commits and the last decision of one waits for one commit, not a timer; idle, it waits on
        nothing but the next decision."""
        while not stop.is_set():
            await self._has_pending.wait()
            self._has_pending.clear()
            try:
                await self._store_some()
            except StoreError as exc:
                self.metrics.inc("store_errors_total", part="decisions")
                log.warning("decisions wait for the store (%d pending): %s", len(self._pending), exc)
                await self.clock.sleep(STORE_RETRY)  # the store is away: not a try per decision
            if self._pending:
                self._has_pending.set()

    async def _periodic(self, stop: asyncio.Event) -> None:
        since_snapshot = 0.0
        since_watch = 0.0
        while not stop.is_set():
            await self.clock.sleep(PERIOD)
            since_snapshot += PERIOD
            since_watch += PERIOD
            if since_snapshot >= SNAPSHOT_INTERVAL:
                since_snapshot = 0.0
                try:
                    await self.snapshot()
                except StoreError as exc:
                    self.metrics.inc("store_errors_total", part="decisions")
                    log.warning("the rule state waits for the store: %s", exc)
            if since_watch >= self.watch_interval:
                since_watch = 0.0
                if self.holder.changed():
                    self.holder.reload()

    async def explain(self, events: list[Event], *, live: bool = True) -> list[dict[str, Any]]:
        """What the pipeline would decide for these events, in order, acting on nothing.

        live: on a copy of the running state (pause, silences, cooldowns, rate-limit and storm windows,
        open declined failovers) and with the confirmation the pipeline would make, reading the BMC's
        health (read only). Otherwise (`rules`): the rules and the configured guards over these events
        alone, from a fresh state, and the confirmation each failover would need (no BMC read)."""
        if live:
            decider = Decider(self.decider.ruleset, self.decider.guards, [],
                              RuleState.restore(self.decider.state.snapshot()))
            decider.silences = self.decider.silences
            decider.paused = self.decider.paused
        else:
            decider = Decider(self.decider.ruleset, self.decider.guards, [])
            decider.silences = self.decider.silences
        out: list[dict[str, Any]] = []
        for raw in events:
            event, server, found, group_size = self._resolve(raw)
            how = found.how
            d = decider.decide(event, server, group_size)
            if live and d.action == "failover" and server is not None:
                await maintenance.honour_silences(self.store, decider, d, server)
            extra: dict[str, Any] = {}
            if d.action == "failover" and server is not None and d.rule is not None:
                spec = decider.ruleset.rules[d.rule].spec
                if live:
                    await self._confirm(decider, d, server)
                else:
                    extra["confirmation"] = {"requirement": confirmation.requirement(
                        self.failover.confirm, d.rule, spec)}
            out.append({**d.public(), **extra, "resolved_by": how, "mode": explain_mode(live)})
        return out


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _rows(batch: list[Decision]) -> list[tuple[float, str | None, str, str | None, dict[str, Any]]]:
    """The store's rows of decisions (run in a worker thread: the decisions are no longer changed)."""
    return [(d.time.timestamp(), d.server, d.action, d.rule, d.public()) for d in batch]


def explain_mode(live: bool) -> str:
    """How an explanation was made, said with every one of them."""
    if live:
        return ("live: the running monitor's pause, silences, cooldowns, rate-limit and storm windows and "
                "open declines, and the confirmation read from the BMC; nothing acted on")
    return ("rules: the rules and configured guards over these events alone (no pause, cooldowns or "
            "windows of a running monitor); the BMC is not read")
