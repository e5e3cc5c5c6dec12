"""The ingest path made cheap (issue 14, "Ingest without lag"): what was changed for speed still does
what it did. The per-BMC token table, decisions stored by group commit (what is pending goes in the
next transaction, at most FLUSH_BATCH) with their ids, a burst that lets the rest of the loop run,
the candidate-rule cache, the event JSON made once per decision, and the collector's freeze. Timers on
the fake clock."""

from __future__ import annotations

import asyncio
import gc
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.redfish.listener import BmcTokens, bmc_token
from lab.main import LabSimulator
from monitor.core.clock import FakeClock
from monitor.core.events import Event
from monitor.core.model import BmcEndpoint, Server
from monitor.pipeline import pipeline as pipeline_module
from monitor.store.sqlite import SqliteStore
from rules.engine import Decision
from rules.loader import load_policy
from tests.support.harness import DaemonFactory, Harness, monitor_config

SECRET = "ingest-secret"
FAN = "1.3.6.1.4.1.232.0.6015"


def _server(n: int) -> Server:
    bmc = BmcEndpoint(url=f"https://127.64.{n // 250}.{n % 250 + 1}:443", username="u", password="p")
    return Server(id=f"s{n}", domain_group="dg1", domain="d1", enclosure=f"e{n // 16}", bay=n % 16 + 1,
                  product="ProLiant BL460c Gen10", bmc=bmc)


def test_the_token_table_resolves_every_bmc_and_follows_the_inventory() -> None:
    servers = [_server(n) for n in range(2000)]
    current: list[Server] = servers
    generation = [object()]
    tokens = BmcTokens(SECRET, lambda: current, generation=lambda: generation[0])
    for s in servers[::97]:
        assert s.bmc is not None
        assert tokens(bmc_token(SECRET, s.bmc.url)) == s.bmc.url
    assert tokens("not-a-token") is None and tokens("") is None
    assert tokens(bmc_token("another secret", servers[5].bmc.url if servers[5].bmc else "")) is None
    gone = servers[7].bmc
    assert gone is not None
    # the inventory changes (a new object): the table follows it
    current = servers[8:]
    assert tokens(bmc_token(SECRET, gone.url)) is not None  # same generation: the table as it was
    generation[0] = object()
    assert tokens(bmc_token(SECRET, gone.url)) is None
    assert tokens(bmc_token(SECRET, servers[9].bmc.url if servers[9].bmc else "")) is not None


def test_without_a_generation_the_table_follows_the_set_of_bmcs() -> None:
    current = [_server(1), _server(2)]
    tokens = BmcTokens(SECRET, lambda: current)
    t3 = bmc_token(SECRET, "https://127.64.0.4:443")
    assert tokens(t3) is None
    current = [*current, _server(3)]
    assert tokens(t3) == "https://127.64.0.4:443"


async def test_decision_ids_are_the_stored_rows(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "m.db"))
    await store.open()
    try:
        first = await store.add_decisions([(1.0, "a", "alert", "r1", {"n": 1})])
        batch = await store.add_decisions([(2.0 + i, f"s{i}", "none", None, {"n": i}) for i in range(250)])
        assert batch == list(range(first[0] + 1, first[0] + 251))
        rows = await store.list_decisions(limit=300)
        by_id = {r["id"]: r for r in rows}
        for i, did in enumerate(batch):
            assert by_id[did]["n"] == i
        assert await store.add_decisions([]) == []
    finally:
        await store.close()


def test_the_candidate_cache_answers_as_the_index_does() -> None:
    ruleset = load_policy([]).ruleset
    events = [
        Event(source="snmp", time=datetime.now(UTC), trap_oid=FAN),
        Event(source="snmp", time=datetime.now(UTC), trap_oid="1.3.6.1.4.1.232.0.1026"),
        Event(source="redfish", time=datetime.now(UTC), message_id="iLOEvents.2.3.FanRedundancyLost",
              message_key="FanRedundancyLost", registry="iLOEvents"),
        Event(source="redfish-poll", time=datetime.now(UTC), health="Critical"),
        Event(source="snmp", time=datetime.now(UTC), trap_oid="1.3.6.1.4.1.674.10892.5.3.2.5"),
    ]
    for event in events:
        key = event.message_key or None
        uncached = ruleset._find(event.trap_oid, key, event.source)
        assert ruleset.candidates(event) == uncached
        assert ruleset.candidates(event) == uncached  # from the cache now
    assert any(ruleset.candidates(e) for e in events)


def test_a_decision_makes_its_event_json_once_and_shares_it() -> None:
    event = Event(source="snmp", time=datetime.now(UTC), trap_oid=FAN, varbinds={"1.3.6.1.2.1.1.5.0": "h"})
    d = Decision(time=event.time, event=event, server=None)
    first = d.event_json()
    assert first == event.model_dump(mode="json", exclude_defaults=True)
    assert d.public()["event"] is first  # the same object: made once
    assert pipeline_module.Pipeline.alert_payload(d)["event"] is first
    ids = {Event(source="snmp", time=event.time).id for _ in range(10_000)}
    assert len(ids) == 10_000 and all(len(i) == 16 for i in ids)


async def _started(start_daemon: DaemonFactory, lab: LabSimulator, tmp_path: Path, token: str,
                   clock: FakeClock) -> tuple[Harness, pipeline_module.Pipeline, list[int]]:
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token), clock=clock)
    pipeline = h.daemon.pipeline
    assert pipeline is not None
    store = h.daemon.store
    sizes: list[int] = []
    inner = store.add_decisions

    async def add_decisions(rows: Any, *args: Any, **kw: Any) -> Any:
        sizes.append(len(rows))
        return await inner(rows, *args, **kw)

    store.add_decisions = add_decisions
    return h, pipeline, sizes


def _trap(n: int, when: datetime) -> Event:
    return Event(source="snmp", time=when, sender="192.0.2.1", trap_oid=FAN,
                 varbinds={"1.3.6.1.2.1.1.5.0": f"host{n}"})


async def test_decisions_are_stored_by_group_commit_without_a_timer(
        lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str) -> None:
    clock = FakeClock()
    h, pipeline, sizes = await _started(start_daemon, lab, tmp_path, token, clock)
    start = clock.time()
    for n in range(5):
        await pipeline.queue.put(_trap(n, clock.now()))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while sum(sizes) < 5:  # the fake clock never moves: stored because they came, not by a timer
        assert loop.time() < deadline, (pipeline.processed, sizes)
        await asyncio.sleep(0)
    assert clock.time() == start and len(sizes) <= 5
    rows = await h.daemon.store.list_decisions(limit=10)
    assert len(rows) == 5


async def test_a_burst_is_stored_in_few_bounded_commits_and_lets_the_loop_run(
        lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str) -> None:
    clock = FakeClock()
    _h, pipeline, sizes = await _started(start_daemon, lab, tmp_path, token, clock)
    n = 2 * pipeline_module.FLUSH_BATCH + 300
    for i in range(n):
        pipeline.queue.put_nowait(_trap(i, clock.now()))
    seen_during_burst: list[int] = []

    async def bystander() -> None:  # another task of the loop: it must run before the burst ends
        seen_during_burst.append(pipeline.processed)

    task = asyncio.ensure_future(bystander())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while sum(sizes) < n:
        assert loop.time() < deadline, (pipeline.processed, sizes)
        await asyncio.sleep(0)
    await task
    assert seen_during_burst and seen_during_burst[0] < n  # the consumer gave the loop away mid-burst
    assert sum(sizes) == n and max(sizes) <= pipeline_module.FLUSH_BATCH
    assert len(sizes) < n // 10  # grouped: far fewer commits than decisions


async def test_the_collector_freezes_at_the_first_inventory_and_thaws_at_stop(
        lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str) -> None:
    gc.unfreeze()
    h, _pipeline, _sizes = await _started(start_daemon, lab, tmp_path, token, FakeClock())
    daemon = h.daemon
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while daemon.inventory() is None:
        assert loop.time() < deadline
        await asyncio.sleep(0.01)
    assert gc.get_freeze_count() > 0
    h.daemon_stop()
    await h.stopped()
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("body", [
    {"Events": [{"MessageId": "iLOEvents.2.3.FanRedundancyLost", "messageseverity": "Warning",
                 "MESSAGE": "x", "OriginOfCondition": "/redfish/v1/Chassis/1"}]},
    {"MessageID": "IDRAC.2.8.TMP0110", "Severity": "Critical", "Context": "ctx"},
])
def test_payload_properties_in_any_case(body: dict[str, object]) -> None:
    from adapters.redfish.payload import parse_event_payload

    (event,) = parse_event_payload(json.loads(json.dumps(body)), sender="h", source="redfish",
                                   received=datetime.now(UTC))
    assert event.message_key in ("FanRedundancyLost", "TMP0110")
    assert event.registry in ("iLOEvents", "IDRAC")
    assert event.severity in ("Warning", "Critical")
    assert event == Event.model_validate(event.model_dump())


async def test_a_batch_on_its_way_to_the_store_at_stop_is_not_lost(
        lab: LabSimulator, start_daemon: DaemonFactory, tmp_path: Path, token: str) -> None:
    clock = FakeClock()
    h = await start_daemon(monitor_config(lab.manager_url, tmp_path, token), clock=clock)
    pipeline = h.daemon.pipeline
    assert pipeline is not None
    store = h.daemon.store
    inner = store.add_decisions
    in_flight, release = asyncio.Event(), asyncio.Event()

    async def slow_add(rows: Any, *args: Any, **kw: Any) -> Any:  # injected: a slow disk
        in_flight.set()
        await release.wait()
        return await inner(rows, *args, **kw)

    store.add_decisions = slow_add
    for n in range(3):
        pipeline.queue.put_nowait(_trap(n, clock.now()))
    await asyncio.wait_for(in_flight.wait(), 10)  # the flusher holds the batch, not yet committed
    h.daemon_stop()

    async def answer_while_stopping() -> None:  # the disk answers once the pipeline is stopping
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not pipeline._closing:
            assert loop.time() < deadline
            await asyncio.sleep(0)
        release.set()

    answer = asyncio.ensure_future(answer_while_stopping())
    await h.stopped()
    await answer
    reopened = SqliteStore(str(tmp_path / "monitor.db"))
    await reopened.open()
    try:
        assert len(await reopened.list_decisions(limit=10)) == 3
    finally:
        await reopened.close()
