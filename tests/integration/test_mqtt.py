"""MqttPublisher against a real mosquitto: order, retained job states, status and last will, a broker
outage, overflow, credentials, TLS, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adapters.mqtt import BrokerAddress, MqttConfigInvalid, MqttPublisher, encode, parse_url, topic_level
from monitor.core.clock import Clock, FakeClock, SystemClock
from monitor.core.config import MqttConfig
from monitor.core.metrics import Metrics
from monitor.core.model import STEPS, Job, JobState, Step, StepState
from tests.peers.mqtt import Message, messages, next_message, start_mosquitto, subscribe
from tests.peers.sushy import make_self_signed
from tests.support.net import reserve_port

REPO = Path(__file__).resolve().parents[2]
FAST_BACKOFF = (0.02, 0.1)
WAIT = 10.0
"""Seconds any single expected MQTT event may take."""


class GatedClock(SystemClock):
    """The real clock, whose sleeps (the publisher's backoffs) are counted and can be held at a gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.sleeps = 0
        self._changed = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self._changed.set()
        await self.gate.wait()
        await super().sleep(seconds)

    async def wait_sleeps(self, n: int, timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while self.sleeps < n:
                self._changed.clear()
                await self._changed.wait()


class Running:
    def __init__(self, publisher: MqttPublisher, metrics: Metrics) -> None:
        self.p, self.metrics = publisher, metrics
        self.stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        assert self._task is None
        self._task = asyncio.create_task(self.p.run(self.stop), name="mqtt-publisher")

    @property
    def task(self) -> asyncio.Task[None]:
        assert self._task is not None, "not started"
        return self._task

    async def stopped(self, timeout: float = WAIT) -> None:
        self.stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, timeout)

    async def connected(self) -> None:
        await asyncio.wait_for(self.p.wait_connected(), WAIT)


Starter = Callable[..., Running]


@pytest.fixture
async def publisher() -> AsyncIterator[Starter]:
    """`publisher(url, run=True, clock=None, **config)`: an MqttPublisher, its run() task started;
    all stopped at the end."""
    started: list[Running] = []

    def make(url: str, *, run: bool = True, clock: Clock | None = None, instance: str = "mon-1",
             backoff: tuple[float, float] = FAST_BACKOFF, **config: Any) -> Running:
        metrics = Metrics()
        p = MqttPublisher(config=MqttConfig(url=url, **{"timeout": 5, **config}), instance=instance,
                          metrics=metrics, clock=clock or SystemClock(),
                          backoff_initial=backoff[0], backoff_max=backoff[1])
        r = Running(p, metrics)
        if run:
            r.start()
        started.append(r)
        return r

    yield make
    for r in reversed(started):
        if r._task is not None and not r._task.done():
            await r.stopped(30)


def gauge(metrics: Metrics, name: str) -> float:
    m = re.search(rf"^failover_monitor_{name} (\S+)$", metrics.render(), re.M)
    assert m, name
    return float(m.group(1))


def payload(m: Message) -> Any:
    return json.loads(m.payload)


def alert(i: int, server: str = "enc1-bay3") -> dict[str, Any]:
    return {"server": server, "rule": "hpe-cpu-uncorrectable", "action": "failover", "severity": "critical",
            "event": {"source": "snmp", "trap_oid": "1.3.6.1.4.1.232.0.1234", "seq": i},
            "time": "2026-11-27T11:02:03.120Z"}


def seqs(ms: list[Message]) -> list[int]:
    return [payload(m)["event"]["seq"] for m in ms]


# --- unit: URL and payload --------------------------------------------------------------------------


def test_url_parsing_keeps_the_password_out_of_sight() -> None:
    b = parse_url("mqtts://mon%40x:p%3Ass@broker.example:8884")
    assert b == BrokerAddress("mqtts", "broker.example", 8884, "mon@x", "p:ss")
    assert "p:ss" not in repr(b) and "p%3Ass" not in b.display()
    assert b.display() == "mqtts://mon@x@broker.example:8884"
    assert parse_url("mqtt://[::1]").port == 1883
    assert parse_url("mqtts://h").port == 8883
    for bad in ("http://h", "mqtt://", "mqtt://h:99999", "mqtt://h/topic"):
        with pytest.raises(MqttConfigInvalid):
            parse_url(bad)
    assert encode({"a": "é", "t": datetime(2026, 1, 1, tzinfo=UTC)}) == \
        '{"a":"é","t":"2026-01-01 00:00:00+00:00"}'.encode()
    assert encode("online") == b"online"
    assert topic_level("a/b+c#d") == "a_b_c_d"


def test_bad_settings_fail_at_construction(tmp_path: Path) -> None:
    def make(**config: Any) -> MqttPublisher:
        return MqttPublisher(config=MqttConfig.model_validate(config), instance="i", metrics=Metrics(),
                             clock=SystemClock())

    with pytest.raises(MqttConfigInvalid, match="ca_file"):
        make(url="mqtts://h", ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(MqttConfigInvalid, match=r"(?i)port"):
        make(url="mqtt://h:0x")
    p = make(url="mqtt://u:pw@h")
    assert p.broker == "mqtt://u@h:1883"
    with pytest.raises(ValueError, match="topic"):
        p.publish("alerts/#", "x")
    p.alert("enc1/bay+3", {"a": 1})
    p.publish("/x/", "y")
    assert p.buffered == 2


def test_overflow_keeps_the_message_being_sent() -> None:
    metrics = Metrics()
    p = MqttPublisher(config=MqttConfig(url="mqtt://h", buffer=2), instance="i", metrics=metrics,
                      clock=SystemClock())
    for i in range(2):
        p.publish("t", str(i))
    p._inflight = p._buffer[0]  # as while _send_head awaits its PUBACK
    p.publish("t", "2")
    assert [m.payload for m in p._buffer] == [b"0", b"2"]
    p._inflight = None
    p.publish("t", "3")
    assert [m.payload for m in p._buffer] == [b"2", b"3"]
    assert metrics.get("mqtt_dropped_total") == 2


# --- against mosquitto -----------------------------------------------------------------------------


async def test_alerts_arrive_in_order_with_the_contract_payload(tmp_path: Path, publisher: Starter) -> None:
    async with start_mosquitto(tmp_path) as broker, subscribe(broker, "failover/alerts/#") as inbox:
        r = publisher(broker.url())
        await r.connected()
        for i in range(200):
            r.p.alert("enc1-bay3", alert(i))
        r.p.alert(None, alert(200, server=None))  # type: ignore[arg-type]
        got = await messages(inbox, 201)
        assert [m.topic for m in got] == ["failover/alerts/enc1-bay3"] * 200 + ["failover/alerts/unknown"]
        assert seqs(got) == list(range(201))
        assert set(payload(got[0])) == {"server", "rule", "action", "severity", "event", "time"}
        assert payload(got[0]) == alert(0)
        assert not any(m.retain for m in got)
        assert gauge(r.metrics, "mqtt_connected") == 1
        await r.stopped()  # the subscriber may see a message before the publisher counts its PUBACK
        assert r.metrics.get("mqtt_published_total") == 201
        assert gauge(r.metrics, "mqtt_buffered") == 0
        assert gauge(r.metrics, "mqtt_connected") == 0


async def test_online_is_retained_on_connect(tmp_path: Path, publisher: Starter) -> None:
    async with start_mosquitto(tmp_path) as broker:
        r = publisher(broker.url(), instance="dc1-a", topic_prefix="ops/failover")
        await r.connected()
        async with subscribe(broker, "ops/failover/monitor/+/status") as inbox:
            m = await next_message(inbox)
        assert m == Message("ops/failover/monitor/dc1-a/status", "online", retain=True)


def _job(n: int, server: str) -> Job:
    return Job(id=n, server=server, group="vcd-enc1", state=JobState.QUEUED,
               trigger={"kind": "manual", "reason": "test"}, created=datetime.now(UTC),
               steps=[Step(s) for s in STEPS])


async def test_job_states_are_retained(tmp_path: Path, publisher: Starter) -> None:
    async with start_mosquitto(tmp_path) as broker:
        r = publisher(broker.url())
        await r.connected()
        async with subscribe(broker, "failover/jobs/#") as live:
            a, b = _job(7, "enc1-bay3"), _job(8, "enc1-bay4")
            r.p.job(a)
            r.p.job(b)
            a.state = b.state = JobState.RUNNING
            for step in STEPS:
                a.step(step).state = StepState.DONE
                r.p.job(a)
            b.step("check_domain").state = StepState.RUNNING
            r.p.job(b)
            a.state = JobState.COMPLETED
            r.p.job(a)
            sent = 2 + len(STEPS) + 2
            got = await messages(live, sent)
            assert [payload(m)["job"] for m in got][-2:] == [8, 7]
            # the payload is the state at publish() time, not at sending time
            assert payload(got[0]) == {**_job(7, "enc1-bay3").public(), "created": payload(got[0])["created"]}
        async with subscribe(broker, "failover/jobs/#") as late:
            retained = {m.topic: m for m in await messages(late, 2)}
        assert set(retained) == {"failover/jobs/7", "failover/jobs/8"}
        assert all(m.retain for m in retained.values())
        assert payload(retained["failover/jobs/7"]) == a.public()
        assert payload(retained["failover/jobs/8"]) == b.public()
        assert payload(retained["failover/jobs/8"])["steps"][0]["state"] == "running"


async def test_broker_outage_buffers_without_blocking_and_delivers_in_order(
    tmp_path: Path, publisher: Starter
) -> None:
    clock = GatedClock()
    async with start_mosquitto(tmp_path) as broker:
        r = publisher(broker.url(), clock=clock)
        await r.connected()
        async with subscribe(broker, "failover/alerts/#") as inbox:
            for i in range(10):
                r.p.alert("enc1-bay3", alert(i))
            assert seqs(await messages(inbox, 10)) == list(range(10))

            clock.gate.clear()  # hold the publisher's reconnect until the subscriber is back
            await broker.stop()
            slowest = 0.0
            for i in range(10, 60):  # some before the publisher notices the outage
                t0 = time.perf_counter()
                r.p.alert("enc1-bay3", alert(i))
                slowest = max(slowest, time.perf_counter() - t0)
            await clock.wait_sleeps(1)  # in backoff now
            assert not r.p.connected and gauge(r.metrics, "mqtt_connected") == 0
            for i in range(60, 100):
                t0 = time.perf_counter()
                r.p.alert("enc1-bay3", alert(i))
                slowest = max(slowest, time.perf_counter() - t0)
            assert slowest < 0.05, slowest
            assert r.p.buffered == 90 and gauge(r.metrics, "mqtt_buffered") == 90
            assert not r.task.done()

        await broker.start()
        async with subscribe(broker, "failover/alerts/#") as inbox:
            t0 = time.perf_counter()
            clock.gate.set()
            got = await messages(inbox, 90)
            logging.getLogger(__name__).info("90 buffered messages delivered %.3f s after the gate opened",
                                             time.perf_counter() - t0)
        assert seqs(got) == list(range(10, 100))
        await r.stopped()
        assert r.metrics.get("mqtt_reconnects_total") >= 1
        assert r.metrics.get("mqtt_dropped_total") == 0
        assert r.metrics.get("mqtt_published_total") == 100
        assert r.p.buffered == 0


@pytest.mark.slow
async def test_a_hung_broker_times_out_then_the_message_is_sent_again(
    tmp_path: Path, publisher: Starter
) -> None:
    clock = GatedClock()
    async with start_mosquitto(tmp_path) as broker:
        r = publisher(broker.url(), clock=clock, timeout=1)
        await r.connected()
        async with subscribe(broker, "failover/alerts/#") as inbox:
            broker.pause()
            t0 = time.perf_counter()
            r.p.alert("enc1-bay3", alert(0))
            await clock.wait_sleeps(1)  # the publish waited out its timeout
            assert 0.9 < time.perf_counter() - t0 < 3
            assert r.p.buffered == 1 and not r.p.connected
            broker.resume()
            await r.connected()
            r.p.alert("enc1-bay3", alert(1))
            got: list[int] = []
            while 1 not in got:
                got += seqs([await next_message(inbox)])
        # at least once: the broker may have read the first PUBLISH before our DISCONNECT
        assert list(dict.fromkeys(got)) == [0, 1], got

        broker.pause()  # stopping with a hung broker is bounded by the timeout (1 s) plus 1 s for "offline"
        r.p.alert("enc1-bay3", alert(2))
        t0 = time.perf_counter()
        await r.stopped()
        assert time.perf_counter() - t0 < 2.5
        assert r.p.buffered == 1
        broker.resume()


async def test_backoff_doubles_to_its_cap_and_restarts_after_a_connection(
    tmp_path: Path, publisher: Starter
) -> None:
    clock = FakeClock()
    port = reserve_port()  # nothing listens yet: every attempt is refused at once

    async def next_backoff() -> float:
        await asyncio.wait_for(clock.next_sleeper(), WAIT)
        (due,) = clock.deadlines()
        delay = due - clock.time()
        await clock.advance(delay)
        return delay

    r = publisher(f"mqtt://127.0.0.1:{port}", clock=clock, backoff=(1.0, 4.0))
    delays = [await next_backoff() for _ in range(4)]
    for got, nominal in zip(delays, [1, 2, 4, 4], strict=True):
        assert 0.8 * nominal - 1e-6 <= got <= nominal + 1e-6, delays
    async with start_mosquitto(tmp_path, port=port) as broker:
        await next_backoff()
        await r.connected()
        assert r.metrics.get("mqtt_reconnects_total") == 5
        await broker.stop()
        assert await next_backoff() <= 1.0 + 1e-6  # back to backoff_initial


async def test_overflow_drops_the_oldest_and_counts(tmp_path: Path, publisher: Starter) -> None:
    async with start_mosquitto(tmp_path) as broker:
        r = publisher(broker.url(), run=False, buffer=5)
        for i in range(8):
            r.p.alert("enc1-bay3", alert(i))
        assert r.p.buffered == 5
        assert r.metrics.get("mqtt_dropped_total") == 3
        assert "failover_monitor_mqtt_dropped_total 3" in r.metrics.render()
        async with subscribe(broker, "failover/alerts/#") as inbox:
            r.start()
            assert seqs(await messages(inbox, 5)) == [3, 4, 5, 6, 7]
            await r.stopped()
        assert r.metrics.get("mqtt_published_total") == 5


async def test_credentials_wrong_password_retries_right_password_works(
    tmp_path: Path, publisher: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    users = {"monitor": "s3cret-pw", "reader": "r3ader-pw"}
    async with start_mosquitto(tmp_path, users=users, allow_anonymous=False) as broker:
        clock = GatedClock()
        bad = publisher(broker.url("monitor", "wr0ng-pw"), clock=clock)
        bad.p.alert("enc1-bay3", alert(0))
        await clock.wait_sleeps(4)
        assert not bad.task.done()
        assert not bad.p.connected
        assert bad.metrics.get("mqtt_reconnects_total") >= 3
        assert bad.p.buffered == 1
        await bad.stopped()
        assert "not authori" in caplog.text.lower()

        async with subscribe(broker, "failover/#", username="reader", password="r3ader-pw") as inbox:
            good = publisher(broker.url("monitor", "s3cret-pw"))
            await good.connected()
            good.p.alert("enc1-bay3", alert(1))
            got = await messages(inbox, 2)
        assert got[0].payload == "online"
        assert seqs(got[1:]) == [1]
        assert "wr0ng-pw" not in caplog.text and "s3cret-pw" not in caplog.text


async def test_tls_with_ca_file(tmp_path: Path, publisher: Starter) -> None:
    cert, key = make_self_signed(tmp_path / "tls")
    async with start_mosquitto(tmp_path, tls=(cert, key)) as broker:
        clock = GatedClock()
        untrusted = publisher(broker.url(), clock=clock)  # the system store does not know the cert
        await clock.wait_sleeps(2)
        assert not untrusted.p.connected
        await untrusted.stopped()

        r = publisher(broker.url(), ca_file=str(cert))
        async with subscribe(broker, "failover/alerts/#", ca_file=cert) as inbox:
            await r.connected()
            r.p.alert("enc1-bay3", alert(5))
            assert seqs([await next_message(inbox)]) == [5]


async def test_graceful_stop_flushes_then_says_offline(tmp_path: Path, publisher: Starter) -> None:
    async with start_mosquitto(tmp_path) as broker, subscribe(broker, "failover/#") as inbox:
        r = publisher(broker.url())
        await r.connected()
        assert (await next_message(inbox)).payload == "online"
        for i in range(300):
            r.p.alert("enc1-bay3", alert(i))
        await r.stopped()  # set in the same tick: all 300 are still buffered
        got = await messages(inbox, 301)
        assert seqs(got[:300]) == list(range(300))
        assert got[300] == Message("failover/monitor/mon-1/status", "offline", retain=False)
        assert r.p.buffered == 0 and not r.p.connected
        async with subscribe(broker, "failover/monitor/#") as late:
            assert await next_message(late) == Message("failover/monitor/mon-1/status", "offline", True)


async def test_stop_before_connecting_still_flushes(tmp_path: Path, publisher: Starter) -> None:
    async with start_mosquitto(tmp_path) as broker, subscribe(broker, "failover/#") as inbox:
        r = publisher(broker.url(), run=False)
        for i in range(3):
            r.p.alert("enc1-bay3", alert(i))
        r.stop.set()
        await asyncio.wait_for(r.p.run(r.stop), WAIT)
        got = await messages(inbox, 5)
        assert [m.payload for m in (got[0], got[4])] == ["online", "offline"]
        assert seqs(got[1:4]) == [0, 1, 2]


async def test_stop_with_the_broker_down_returns_quickly(tmp_path: Path, publisher: Starter) -> None:
    async with start_mosquitto(tmp_path) as broker:
        r = publisher(broker.url())
        await r.connected()
        await broker.stop()
        r.p.alert("enc1-bay3", alert(0))
        t0 = time.perf_counter()
        await r.stopped(timeout=6)  # config timeout is 5 s; a refused connection fails at once
        assert time.perf_counter() - t0 < 2
        assert r.p.buffered == 1


async def test_cancelled_run_says_offline(tmp_path: Path, publisher: Starter) -> None:
    async with start_mosquitto(tmp_path) as broker, subscribe(broker, "failover/monitor/#") as inbox:
        r = publisher(broker.url())
        await r.connected()
        assert (await next_message(inbox)).payload == "online"
        r.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await r.task
        assert (await next_message(inbox)).payload == "offline"


_WILL_SCRIPT = """
import asyncio, sys
from adapters.mqtt import MqttPublisher
from monitor.core.clock import Clock, FakeClock, SystemClock
from monitor.core.config import MqttConfig
from monitor.core.metrics import Metrics

async def main() -> None:
    p = MqttPublisher(config=MqttConfig(url=sys.argv[1], keepalive=5), instance=sys.argv[2],
                      metrics=Metrics(), clock=SystemClock())
    task = asyncio.create_task(p.run(asyncio.Event()))
    await asyncio.wait_for(p.wait_connected(), 30)
    print("ready", flush=True)
    await task

asyncio.run(main())
"""


@pytest.mark.slow
async def test_last_will_says_offline_when_the_process_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "will.py"
    script.write_text(_WILL_SCRIPT)
    async with start_mosquitto(tmp_path) as broker, subscribe(broker, "failover/monitor/#") as inbox:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), broker.url(), "killed-1", cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line == b"ready\n", line + await proc.stdout.read()
            assert await next_message(inbox) == Message("failover/monitor/killed-1/status", "online", False)
            proc.send_signal(signal.SIGKILL)
            assert await next_message(inbox) == Message("failover/monitor/killed-1/status", "offline", False)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        async with subscribe(broker, "failover/monitor/#") as late:
            assert (await next_message(late)).payload == "offline"
