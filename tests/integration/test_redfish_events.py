"""Redfish events in: payload parsing, the push listener, subscription management, SSE and health
polling, against real peers (the in-process lab's HTTPS BMCs, `sushy-static` over the DMTF
public-rackmount1 mockup) and a listener on 127.0.0.1 port 0. Nothing sleeps to synchronise: tests wait
on queues and events with timeouts."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.redfish.client import normalize_bmc_url
from adapters.redfish.listener import LISTENER_PATH, BmcTokens, RedfishEventListener, bmc_token
from adapters.redfish.payload import CONTEXT_PREFIX, NotAnEvent, parse_event_payload
from adapters.redfish.poller import HEALTH_CHANGED, HealthPoller, spread_offset
from adapters.redfish.power import RedfishPower
from adapters.redfish.reader import RedfishReader
from adapters.redfish.sse import SseFollower
from adapters.redfish.subscriptions import SubscriptionManager
from lab.main import LabSimulator
from lab.world import FOREIGN_DESTINATION
from monitor.core.clock import FakeClock, SystemClock
from monitor.core.config import RedfishEventsConfig
from monitor.core.events import Event
from monitor.core.metrics import Metrics
from monitor.core.model import BmcEndpoint, Health, Server
from tests.support.net import bound_socket, reserve_port
from tests.support.wait import eventually

FIXTURES = Path(__file__).parents[1] / "fixtures" / "redfish"
PAYLOADS = FIXTURES / "payloads"
MOCKUP = FIXTURES / "public-rackmount1"
SECRET = "test-secret-0123456789"
WAIT = 15.0
LAB_AUTH = {"Authorization": "Basic " + base64.b64encode(b"admin:lab-password").decode()}
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

IDRAC_URL = "https://10.0.0.5"
ILO_URL = "https://10.0.0.6:443"


async def wait_sleepers(clock: FakeClock, n: int) -> None:
    """Wait (without time passing) until n sleeps are pending on the fake clock."""
    async with asyncio.timeout(WAIT):
        while clock.pending < n:
            clock.sleepers_changed.clear()
            await clock.sleepers_changed.wait()


def payload(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / name).read_text())
    return data


def server(sid: str, bmc: BmcEndpoint | None) -> Server:
    return Server(sid, "dg1", "vcd-enc1", "enc1", 1, "ProLiant BL460c Gen9", bmc=bmc)


def static_servers() -> list[Server]:
    return [
        server("idrac", BmcEndpoint(IDRAC_URL, "root", "x")),
        server("ilo", BmcEndpoint(ILO_URL, "a", "b")),
    ]


# --- parsing -------------------------------------------------------------------------------------------


def test_parse_captured_idrac_payload() -> None:
    [event] = parse_event_payload(
        payload("idrac-IDRAC.2.8.TMP0110.json"), sender="10.0.0.5", source="redfish", received=NOW
    )
    assert (event.source, event.sender, event.time) == ("redfish", "10.0.0.5", NOW)
    assert event.message_id == "IDRAC.2.8.TMP0110"
    assert (event.registry, event.message_key) == ("IDRAC", "TMP0110")
    assert event.severity == "Critical"
    assert event.message == "The memory module 1 temperature is outside of range."
    assert event.message_args == ["1"]
    assert (event.event_type, event.event_id, event.origin) == ("Alert", "2161", None)
    assert event.attributes["EventTimestamp"] == "2023-02-16T15:50:29-0500"
    assert event.attributes["MemberId"] == "298"
    assert event.attributes["Context"] == "root"
    assert event.attributes["EventPayloadOem"]["Dell"]["@odata.type"] == "#DellEvent.v1_0_0.DellEvent"


def test_parse_captured_ilo5_payload() -> None:
    [event] = parse_event_payload(
        payload("ilo5-ResourceUpdated.json"), sender=None, source="redfish-sse", received=NOW
    )
    assert event.source == "redfish-sse"
    assert event.message_id == "iLOEvents.2.3.ResourceUpdated"
    assert (event.registry, event.message_key) == ("iLOEvents", "ResourceUpdated")
    assert event.severity == "OK"  # only the deprecated Severity
    assert event.origin == "/redfish/v1/Systems/1/Memory"  # OriginOfCondition as a plain string
    assert event.event_type == "ResourceUpdated"
    assert event.event_id == "e771996e-e7ee-a913-13b5-f3ec75a47b06"
    assert event.message is None and event.message_args == []
    assert event.attributes["Oem"]["Hpe"]["Resource"] == "/redfish/v1/Systems/1/Memory"
    assert event.attributes["EventTimestamp"] == "2022-01-28T18:41:11Z"


def test_parse_bare_message_id_misspelled_key_and_odata_origin() -> None:
    [fan] = parse_event_payload(
        payload("dell-FAN0001.constructed.json"), sender="h", source="redfish", received=NOW
    )
    assert (fan.message_id, fan.registry, fan.message_key) == ("FAN0001", None, "FAN0001")  # "MessageID"
    assert fan.severity == "Critical" and fan.origin == "/redfish/v1/Chassis/System.Embedded.1"
    [psu] = parse_event_payload(
        payload("ilo6-PowerSupplyFailed.constructed.json"), sender="h", source="redfish", received=NOW
    )
    assert (psu.registry, psu.message_key, psu.severity) == ("iLOEvents", "PowerSupplyFailed", "Critical")
    assert psu.origin == "/redfish/v1/Chassis/1/Power"  # {"@odata.id": ...}
    assert psu.attributes["Context"] == CONTEXT_PREFIX + "…"  # our token is never kept


def test_parse_tolerance_and_refusals() -> None:
    def parse(body: object) -> list[Event]:
        return parse_event_payload(body, sender=None, source="redfish", received=NOW)

    cases: list[tuple[object, str]] = [
        ([], "got an array"),
        ("x", "got a string"),
        (None, "got null"),
        (3, "got a number"),
        ({"hello": 1}, "no Events"),
        ({"Events": "x"}, "not an array"),
        ({"Events": []}, "empty"),
        ({"Events": [1, None, [], {"MessageId": 5}, {"MessageId": " "}]}, "MessageId"),
        ({"@odata.type": "#MetricReport.v1_0_0.MetricReport", "MetricValues": []}, "metric report"),
    ]
    for body, words in cases:
        with pytest.raises(NotAnEvent, match=words):
            parse(body)
    assert issubclass(NotAnEvent, ValueError)

    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(3000):
        deep = {"x": deep}
    [event] = parse(
        {
            "Events": [
                {
                    "MessageId": "ResourceEvent.1.4.3.ResourceStatusChangedCritical",
                    "Oem": deep,
                    "MessageSeverity": "critical",
                    "Severity": "OK",
                    "MessageArgs": ["a", 2, 3.5, None, {"k": [1]}, True, float("nan")] + ["z"] * 100,
                    "OriginOfCondition": {"@odata.id": "https://10.0.0.5/redfish/v1/Chassis/1"},
                    "EventId": 42,
                    "EventType": ["odd"],
                },
                "not a record",
            ]
        }
    )
    assert event.severity == "Critical"  # MessageSeverity first, canonical case
    assert event.registry == "ResourceEvent" and event.message_key == "ResourceStatusChangedCritical"
    assert event.message_args[:6] == ["a", "2", "3.5", "", '{"k": [1]}', "true"]
    assert len(event.message_args) == 32
    assert event.origin == "/redfish/v1/Chassis/1" and event.event_id == "42" and event.event_type is None
    json.dumps(event.model_dump(mode="json"))  # bounded attributes stay serialisable
    depth, node = 0, event.attributes["Oem"]
    while isinstance(node, dict):
        node, depth = node["x"], depth + 1
    assert depth <= 8 and node == "…"

    [bare] = parse({"MessageId": "Base.1.8.Success", "Message": "ok"})  # a bare EventRecord
    assert bare.message_key == "Success"
    assert len(parse({"Events": [{"MessageId": f"X{i}"} for i in range(200)]})) == 64


def test_tokens() -> None:
    t = bmc_token(SECRET, "HTTPS://127.77.1.1:443/redfish/v1/")
    assert t == bmc_token(SECRET, "https://127.77.1.1:443") != bmc_token("other", "https://127.77.1.1:443")
    assert normalize_bmc_url("HTTPS://Host:8443/x/") == "https://host:8443"
    assert "=" not in t and "+" not in t and "/" not in t
    tokens = BmcTokens(SECRET, static_servers)
    assert tokens(bmc_token(SECRET, ILO_URL)) == ILO_URL
    assert tokens(bmc_token(SECRET, IDRAC_URL)) == IDRAC_URL
    assert tokens("nope") is None and tokens("") is None


# --- the listener ----------------------------------------------------------------------------------------


@dataclass
class Listener:
    url: str
    """The full destination URL (http://127.0.0.1:PORT/api/v1/events/redfish)."""
    config: RedfishEventsConfig
    queue: asyncio.Queue[Event]
    metrics: Metrics
    http: aiohttp.ClientSession

    async def post(
        self,
        body: bytes | str | dict[str, Any] | list[Any],
        *,
        token: str | None = None,
        basic: str | None = None,
        path_token: str | None = None,
    ) -> aiohttp.ClientResponse:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if basic is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"redfish:{basic}".encode()).decode()
        data = body if isinstance(body, bytes | str) else json.dumps(body)
        url = self.url + (f"/{path_token}" if path_token else "")
        async with self.http.post(url, data=data, headers=headers) as response:
            await response.read()
            return response

    async def next_event(self) -> Event:
        return await asyncio.wait_for(self.queue.get(), WAIT)

    def dropped(self, reason: str) -> float:
        return self.metrics.get("redfish_events_dropped_total", reason=reason)


@contextlib.asynccontextmanager
async def start_listener(
    servers: Callable[[], list[Server]], *, queue_size: int = 100, **config: Any
) -> AsyncIterator[Listener]:
    sock = bound_socket()
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}{LISTENER_PATH}"
    cfg = RedfishEventsConfig.model_validate({"destination": url, "secret": SECRET, **config})
    queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=queue_size)
    metrics = Metrics()
    listener = RedfishEventListener(cfg, queue, metrics, SystemClock(), BmcTokens(SECRET, servers))
    app = web.Application()
    app.add_routes(listener.routes())
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as http:
            yield Listener(url, cfg, queue, metrics, http)
    finally:
        await runner.cleanup()
        sock.close()


async def test_listener_accepts_captured_payloads() -> None:
    async with start_listener(static_servers) as ls:
        idrac_token, ilo_token = bmc_token(SECRET, IDRAC_URL), bmc_token(SECRET, ILO_URL)

        r = await ls.post(payload("idrac-IDRAC.2.8.TMP0110.json"), token=idrac_token)
        assert r.status == 204
        e = await ls.next_event()
        assert (e.source, e.sender, e.message_id, e.severity) == (
            "redfish",
            "10.0.0.5",
            "IDRAC.2.8.TMP0110",
            "Critical",
        )
        assert e.registry == "IDRAC" and e.message_key == "TMP0110" and e.message_args == ["1"]

        r = await ls.post(payload("ilo5-ResourceUpdated.json"), basic=ilo_token)  # Basic password
        assert r.status == 204
        e = await ls.next_event()
        assert (e.sender, e.message_key, e.origin) == (
            "10.0.0.6",
            "ResourceUpdated",
            "/redfish/v1/Systems/1/Memory",
        )

        body = json.loads(
            (PAYLOADS / "ilo6-PowerSupplyFailed.constructed.json").read_text().replace("TOKEN", ilo_token)
        )
        assert (await ls.post(body)).status == 204  # the token in Context
        e = await ls.next_event()
        assert (e.sender, e.message_key, e.severity) == ("10.0.0.6", "PowerSupplyFailed", "Critical")

        r = await ls.post(payload("dell-FAN0001.constructed.json"), path_token=idrac_token)  # in the path
        assert r.status == 204
        e = await ls.next_event()
        assert (e.sender, e.message_id) == ("10.0.0.5", "FAN0001")

        assert ls.metrics.get("redfish_events_received_total", source="redfish") == 4
        assert ls.queue.empty()


async def test_listener_refusals_are_answered_and_counted() -> None:
    async with start_listener(static_servers, max_body=4096, queue_size=1) as ls:
        good = bmc_token(SECRET, IDRAC_URL)
        event = payload("idrac-IDRAC.2.8.TMP0110.json")

        assert (await ls.post(event, token="wrong-token")).status == 401
        assert (await ls.post(event, basic="wrong")).status == 401
        assert (await ls.post(event, path_token=good + "x")).status == 401
        assert (await ls.post(event)).status == 401  # no token anywhere (Context is "root")
        assert (await ls.post(b"\xff garbage")).status == 401  # unauthenticated garbage: 401, not 400
        wrong_context = {**event, "Context": CONTEXT_PREFIX + "forged"}
        assert (await ls.post(wrong_context)).status == 401
        assert ls.dropped("unauthorized") == 6

        big = {**event, "Oem": {"pad": "x" * 5000}}
        assert (await ls.post(big, token=good)).status == 413

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while reading
            for _ in range(10):
                yield b" " * 1000

        async with ls.http.post(ls.url, data=chunks(), headers={"Authorization": f"Bearer {good}"}) as r:
            assert r.status == 413
        assert ls.dropped("too_large") == 2

        assert (await ls.post("{not json", token=good)).status == 400
        assert (await ls.post(b"\xff\xfe", token=good)).status == 400
        assert (await ls.post("[" * 4000, token=good)).status == 400  # absurd nesting
        assert ls.dropped("bad_json") == 3
        assert (await ls.post({"hello": "world"}, token=good)).status == 400
        assert (await ls.post([event], token=good)).status == 400
        assert ls.dropped("not_event") == 2

        assert (await ls.post(event, token=good)).status == 204  # fills the queue (size 1)
        async with ls.http.post(ls.url, json=event, headers={"Authorization": f"Bearer {good}"}) as r:
            assert r.status == 503 and r.headers["Retry-After"] == "5"
        assert ls.dropped("queue_full") == 1
        assert ls.queue.qsize() == 1
        assert ls.metrics.get("redfish_events_received_total", source="redfish") == 1

    async with start_listener(static_servers, allowed_senders=["10.99.0.0/16", "192.0.2.7/32"]) as ls:
        r = await ls.post(payload("idrac-IDRAC.2.8.TMP0110.json"), token=bmc_token(SECRET, IDRAC_URL))
        assert r.status == 403
        assert ls.dropped("sender") == 1 and ls.queue.empty()

    async with start_listener(static_servers, allowed_senders=["127.0.0.0/8"]) as ls:
        r = await ls.post(payload("idrac-IDRAC.2.8.TMP0110.json"), token=bmc_token(SECRET, IDRAC_URL))
        assert r.status == 204


def test_listener_rejects_malformed_allowed_senders() -> None:
    cfg = RedfishEventsConfig(allowed_senders=["10.0.0.0/33"])
    with pytest.raises(ValueError, match="allowed_senders"):
        RedfishEventListener(cfg, asyncio.Queue(), Metrics(), SystemClock(), lambda _t: None)


# --- against the lab -------------------------------------------------------------------------------------


class LabBmcs:
    """The lab's servers as the monitor sees them, plus direct BMC and control calls."""

    def __init__(self, lab: LabSimulator, http: aiohttp.ClientSession, inventory: dict[str, Any]) -> None:
        self.lab = lab
        self.http = http
        self.by_id: dict[str, Server] = {}
        for s in inventory["servers"]:
            bmc = s["bmc"]
            endpoint = (
                BmcEndpoint(bmc["url"], bmc["username"], bmc["password"], verify_tls=False) if bmc else None
            )
            self.by_id[s["id"]] = Server(
                s["id"],
                s["domain_group"],
                s["domain"],
                s["enclosure"],
                s["bay"],
                s["product"] or "",
                present=s["present"],
                bmc=endpoint,
            )

    def pick(self, *ids: str) -> Callable[[], list[Server]]:
        return lambda: [self.by_id[i] for i in ids]

    def url(self, sid: str) -> str:
        bmc = self.by_id[sid].bmc
        assert bmc is not None
        return bmc.url

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.lab.manager_url + path, json=body) as r:
            assert r.status < 400, f"{method} {path}: {r.status} {await r.text()}"
            return await r.json()

    async def redfish(self, sid: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(
            method, self.url(sid) + path, json=body, headers=LAB_AUTH, ssl=False
        ) as r:
            return r.status, await r.json(content_type=None)

    async def subscriptions(self, sid: str) -> list[dict[str, Any]]:
        return list((await self.control("GET", f"/lab/v1/servers/{sid}/eventservice"))["subscriptions"])


@pytest.fixture
async def bmcs(lab: LabSimulator) -> AsyncIterator[LabBmcs]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as http:
        async with http.get(lab.manager_url + "/api/v1/inventory") as r:
            inventory = await r.json()
        yield LabBmcs(lab, http, inventory)


def ours(subs: list[dict[str, Any]], destination: str) -> list[dict[str, Any]]:
    return [
        s
        for s in subs
        if str(s["Destination"]).startswith(destination)
        or str(s.get("Context") or "").startswith(CONTEXT_PREFIX)
    ]


async def test_lab_event_service_shapes(bmcs: LabBmcs) -> None:
    status, root = await bmcs.redfish("enc1-bay1", "GET", "/redfish/v1/")
    assert status == 200 and root["EventService"] == {"@odata.id": "/redfish/v1/EventService"}
    status, service = await bmcs.redfish("enc1-bay1", "GET", "/redfish/v1/EventService")
    assert status == 200
    assert (
        service["ServiceEnabled"] is True and service["ServerSentEventUri"] == "/redfish/v1/EventService/SSE"
    )
    assert service["RegistryPrefixes"] == ["iLOEvents", "ResourceEvent"]
    assert "Alert" in service["EventTypesForSubscription"]
    assert "#EventService.SubmitTestEvent" in service["Actions"]
    # the foreign subscription seeded on enc1-bay2, HttpHeaders never shown
    status, coll = await bmcs.redfish("enc1-bay2", "GET", "/redfish/v1/EventService/Subscriptions")
    assert status == 200 and coll["Members@odata.count"] == 1
    status, foreign = await bmcs.redfish("enc1-bay2", "GET", coll["Members"][0]["@odata.id"])
    assert foreign["Destination"] == FOREIGN_DESTINATION and foreign["HttpHeaders"] is None
    # creation: required properties, loopback only, both HttpHeaders shapes, PATCH, DELETE
    subs = "/redfish/v1/EventService/Subscriptions"
    status, err = await bmcs.redfish("enc1-bay1", "POST", subs, {"Destination": "http://127.0.0.1:1/x"})
    assert status == 400 and "Protocol" in err["error"]["message"]
    status, err = await bmcs.redfish(
        "enc1-bay1", "POST", subs, {"Destination": "http://192.0.2.1/x", "Protocol": "Redfish"}
    )
    assert status == 400 and "loopback" in err["error"]["message"]
    for headers in ([{"Authorization": "Bearer a"}], {"Authorization": "Bearer b"}):
        async with bmcs.http.post(
            bmcs.url("enc1-bay1") + subs,
            ssl=False,
            headers=LAB_AUTH,
            json={
                "Destination": "http://127.0.0.1:1/x",
                "Protocol": "Redfish",
                "HttpHeaders": headers,
                "Context": "c",
            },
        ) as r:
            assert r.status == 201 and r.headers["Location"].startswith(subs + "/")
            created = await r.json()
            assert created["HttpHeaders"] is None and created["Context"] == "c"
    location = r.headers["Location"]
    status, patched = await bmcs.redfish("enc1-bay1", "PATCH", location, {"Context": "d"})
    assert status == 200 and patched["Context"] == "d"
    status, _ = await bmcs.redfish("enc1-bay1", "PATCH", location, {"Destination": "http://127.0.0.1:2/"})
    assert status == 400
    status, _ = await bmcs.redfish("enc1-bay1", "DELETE", location)
    assert status == 200
    status, _ = await bmcs.redfish("enc1-bay1", "GET", location)
    assert status == 404
    status, _ = await bmcs.redfish(
        "enc1-bay1",
        "POST",
        "/redfish/v1/EventService/Actions/EventService.SubmitTestEvent",
        {"MessageId": "ResourceEvent.1.4.3.X"},
    )
    assert status == 200
    events = await bmcs.control("GET", "/lab/v1/servers/enc1-bay1/events")
    assert events["events"][-1]["event"]["Events"][0]["MessageId"] == "ResourceEvent.1.4.3.X"


async def test_subscription_lifecycle_and_push_delivery(bmcs: LabBmcs) -> None:
    picked = bmcs.pick("enc1-bay1", "enc1-bay2", "enc1-bay3", "enc1-bay8")  # bay 8 is empty: no BMC
    async with start_listener(picked) as ls:
        manager = SubscriptionManager(ls.config, picked, ls.metrics, SystemClock(), timeout=5.0)
        try:
            url1, url2, url3 = (bmcs.url(s) for s in ("enc1-bay1", "enc1-bay2", "enc1-bay3"))
            foreign_before = await bmcs.subscriptions("enc1-bay2")
            assert [s["Destination"] for s in foreign_before] == [FOREIGN_DESTINATION]

            assert await manager.reconcile_once() == {url1: "created", url2: "created", url3: "created"}
            for sid, url in (("enc1-bay1", url1), ("enc1-bay2", url2), ("enc1-bay3", url3)):
                [mine] = ours(await bmcs.subscriptions(sid), ls.url)
                assert mine["Destination"] == ls.url
                assert mine["Context"] == CONTEXT_PREFIX + bmc_token(SECRET, url)
                assert mine["EventTypes"] == ["Alert", "StatusChange"] and mine["Protocol"] == "Redfish"
            # the token went into HttpHeaders in the schema's array form (the lab keeps it, never shows it)
            world = bmcs.lab.world
            [sub] = [s for s in world.event_services["enc1-bay1"].subscriptions.values()]
            assert sub.http_headers == {"Authorization": f"Bearer {bmc_token(SECRET, url1)}"}

            assert await manager.reconcile_once() == {url1: "kept", url2: "kept", url3: "kept"}
            assert len(ours(await bmcs.subscriptions("enc1-bay1"), ls.url)) == 1
            # a BMC that echoes the Destination normalised (trailing slash, default port) still matches
            [sub2] = [s for s in world.event_services["enc1-bay2"].subscriptions.values() if s.id != "1"]
            sub2.destination = ls.url + "/"
            assert (await manager.reconcile_once())[url2] == "kept"

            # ours deleted by hand -> repaired
            [mine] = ours(await bmcs.subscriptions("enc1-bay1"), ls.url)
            status, _ = await bmcs.redfish("enc1-bay1", "DELETE", mine["@odata.id"])
            assert status == 200
            assert (await manager.reconcile_once())[url1] == "repaired"
            assert len(ours(await bmcs.subscriptions("enc1-bay1"), ls.url)) == 1

            # a stale one of ours (an old destination path, our Context) and a duplicate -> removed
            token3 = bmc_token(SECRET, url3)
            old = ls.url.replace(LISTENER_PATH, "/api/v0/redfish-events")
            for destination in (old, ls.url):
                status, _ = await bmcs.redfish(
                    "enc1-bay3",
                    "POST",
                    "/redfish/v1/EventService/Subscriptions",
                    {
                        "Destination": destination,
                        "Protocol": "Redfish",
                        "Context": CONTEXT_PREFIX + token3,
                        "EventTypes": ["Alert", "StatusChange"],
                    },
                )
                assert status == 201
            # another monitor's subscription (its own token) is another consumer's: untouched
            status, _ = await bmcs.redfish(
                "enc1-bay3",
                "POST",
                "/redfish/v1/EventService/Subscriptions",
                {
                    "Destination": "http://127.0.0.1:1/elsewhere",
                    "Protocol": "Redfish",
                    "Context": CONTEXT_PREFIX + "another-instance",
                },
            )
            assert status == 201
            assert len(await bmcs.subscriptions("enc1-bay3")) == 4
            result = await manager.reconcile_once()
            assert result == {url1: "kept", url2: "kept", url3: "removed-stale"}
            left = await bmcs.subscriptions("enc1-bay3")
            assert sorted(s["Destination"] for s in left) == sorted([ls.url, "http://127.0.0.1:1/elsewhere"])

            # a wrong one of ours (EventTypes changed by someone) -> replaced
            [mine] = [s for s in await bmcs.subscriptions("enc1-bay3") if s["Destination"] == ls.url]
            world.event_services["enc1-bay3"].subscriptions[mine["Id"]].event_types = ["ResourceAdded"]
            assert (await manager.reconcile_once())[url3] == "repaired"

            # the foreign subscription was never touched
            after = await bmcs.subscriptions("enc1-bay2")
            assert [s for s in after if s["Destination"] == FOREIGN_DESTINATION] == foreign_before
            assert ls.metrics.get("redfish_subscriptions_total", result="created") == 3
            assert ls.metrics.get("redfish_subscriptions_total", result="removed-stale") == 1

            # an event raised on a blade is pushed by its BMC to the listener
            raised = await bmcs.control(
                "POST",
                "/lab/v1/servers/enc1-bay2/events",
                {
                    "message_id": "iLOEvents.2.3.PowerSupplyFailed",
                    "severity": "Critical",
                    "message": "The fault tolerant power supply in bay 2 has failed.",
                    "message_args": ["2"],
                    "health": "Critical",
                },
            )
            assert raised["subscriptions"] == 2  # ours and the foreign one
            event = await ls.next_event()
            assert (event.source, event.sender) == ("redfish", "127.77.1.2")
            assert event.message_id == "iLOEvents.2.3.PowerSupplyFailed"
            assert (event.registry, event.message_key, event.severity) == (
                "iLOEvents",
                "PowerSupplyFailed",
                "Critical",
            )
            assert event.message_args == ["2"] and event.origin == "/redfish/v1/Systems/1"
            assert event.event_type == "Alert" and event.attributes["Context"] == CONTEXT_PREFIX + "…"
            status, system = await bmcs.redfish("enc1-bay2", "GET", "/redfish/v1/Systems/1")
            assert system["Status"]["Health"] == "Critical"
            assert ls.metrics.get("redfish_events_received_total", source="redfish") == 1
        finally:
            await manager.close()


async def test_quick_reconciles_read_our_subscription_back_and_fall_back_to_the_full_check(
        bmcs: LabBmcs) -> None:
    """Between full checks (`full_check_interval`, on the fake clock) a periodic reconcile reads only
    our subscription back: one GET per BMC. Ours gone or changed gets the full check in the same round;
    a duplicate of ours added meanwhile waits for the next full check."""
    picked = bmcs.pick("enc1-bay1", "enc1-bay2", "enc1-bay3")
    async with start_listener(picked, full_check_interval=3600) as ls:
        clock = FakeClock()
        manager = SubscriptionManager(ls.config, picked, ls.metrics, clock, timeout=5.0)
        reader = manager._reader
        sent: list[tuple[str, str]] = []
        real_request = reader.request

        async def counted(bmc: Any, method: str, path: str, body: object = None) -> Any:
            sent.append((method, path))
            return await real_request(bmc, method, path, body)

        reader.request = counted  # type: ignore[method-assign]
        reader.get = lambda bmc, path: counted(bmc, "GET", path)  # type: ignore[method-assign]
        try:
            url1, url2, url3 = (bmcs.url(s) for s in ("enc1-bay1", "enc1-bay2", "enc1-bay3"))
            assert await manager.reconcile_once(quick=True) == {url1: "created", url2: "created",
                                                                url3: "created"}  # none checked yet
            mine = {sid: ours(await bmcs.subscriptions(sid), ls.url)[0]["@odata.id"]
                    for sid in ("enc1-bay1", "enc1-bay2", "enc1-bay3")}
            sent.clear()
            assert await manager.reconcile_once(quick=True) == {url1: "kept", url2: "kept", url3: "kept"}
            assert sorted(sent) == sorted(("GET", m) for m in mine.values())  # one GET per BMC
            sent.clear()
            assert await manager.reconcile_once() == {url1: "kept", url2: "kept", url3: "kept"}
            assert len(sent) > 6  # on demand: the full check (EventService, collection, members)

            # ours deleted on bay 1, changed on bay 2, a duplicate of ours added on bay 3
            world = bmcs.lab.world
            status, _ = await bmcs.redfish("enc1-bay1", "DELETE", mine["enc1-bay1"])
            assert status == 200
            sub2 = world.event_services["enc1-bay2"].subscriptions[mine["enc1-bay2"].rsplit("/", 1)[1]]
            sub2.event_types = ["ResourceAdded"]
            status, _ = await bmcs.redfish("enc1-bay3", "POST", "/redfish/v1/EventService/Subscriptions", {
                "Destination": ls.url, "Protocol": "Redfish",
                "Context": CONTEXT_PREFIX + bmc_token(SECRET, normalize_bmc_url(url3)),
                "EventTypes": ["Alert", "StatusChange"]})
            assert status == 201
            assert await manager.reconcile_once(quick=True) == {url1: "repaired", url2: "repaired",
                                                                url3: "kept"}
            assert len(ours(await bmcs.subscriptions("enc1-bay3"), ls.url)) == 2

            await clock.advance(3600)  # the full check is due: the duplicate goes
            assert (await manager.reconcile_once(quick=True))[url3] == "removed-stale"
            assert len(ours(await bmcs.subscriptions("enc1-bay3"), ls.url)) == 1
            for sid in ("enc1-bay1", "enc1-bay2"):
                [sub] = ours(await bmcs.subscriptions(sid), ls.url)
                assert sub["EventTypes"] == ["Alert", "StatusChange"]
        finally:
            await manager.close()


@pytest.mark.parametrize(("form", "expect_path"), [("object", False), ("none", True)])
async def test_http_headers_fallbacks(bmcs: LabBmcs, form: str, expect_path: bool) -> None:
    picked = bmcs.pick("enc1-bay1")
    await bmcs.control("PUT", "/lab/v1/servers/enc1-bay1/eventservice", {"http_headers": form})
    async with start_listener(picked) as ls:
        manager = SubscriptionManager(ls.config, picked, ls.metrics, SystemClock(), timeout=5.0)
        try:
            url = bmcs.url("enc1-bay1")
            token = bmc_token(SECRET, url)
            assert await manager.reconcile_once() == {url: "created"}
            [sub] = bmcs.lab.world.event_services["enc1-bay1"].subscriptions.values()
            if expect_path:  # no HttpHeaders at all: the token rides in the Destination path
                assert sub.destination == f"{ls.url}/{token}" and sub.http_headers == {}
            else:  # iLO 6's object form
                assert sub.destination == ls.url and sub.http_headers == {"Authorization": f"Bearer {token}"}
            assert await manager.reconcile_once() == {url: "kept"}
            await bmcs.control(
                "POST",
                "/lab/v1/servers/enc1-bay1/events",
                {"message_id": "iLOEvents.2.3.FanFailed", "severity": "Critical"},
            )
            event = await ls.next_event()
            assert (event.sender, event.message_key) == ("127.77.1.1", "FanFailed")
        finally:
            await manager.close()


async def test_subscription_manager_reports_bmc_problems(bmcs: LabBmcs) -> None:
    picked = bmcs.pick("enc1-bay1", "enc1-bay3")
    await bmcs.control("PUT", "/lab/v1/servers/enc1-bay1/eventservice", {"enabled": False})
    await bmcs.control("POST", "/lab/v1/faults", {"fault": "bmc_error", "server": "enc1-bay3"})
    async with start_listener(picked) as ls:
        manager = SubscriptionManager(ls.config, picked, ls.metrics, SystemClock(), timeout=5.0)
        try:
            result = await manager.reconcile_once()
            assert result[bmcs.url("enc1-bay1")].startswith("skipped: ")
            assert (
                result[bmcs.url("enc1-bay3")].startswith("error: ") and "500" in result[bmcs.url("enc1-bay3")]
            )
            assert ls.metrics.get("redfish_subscriptions_total", result="skipped") == 1
            assert ls.metrics.get("redfish_subscriptions_total", result="error") == 1
        finally:
            await manager.close()


async def test_subscription_manager_run_loop_spreads_its_bmcs_on_fake_clock(bmcs: LabBmcs) -> None:
    """The run loop reconciles each BMC at its stable offset in the window (3 BMCs at 0.1/s: 30 s),
    none before it, and starts the next reconcile one check_interval after the previous one started."""
    names = ("enc1-bay1", "enc1-bay2", "enc1-bay3")
    picked = bmcs.pick(*names)
    async with start_listener(picked, check_interval=300, reconcile_rate=0.1) as ls:
        clock = FakeClock()
        manager = SubscriptionManager(ls.config, picked, ls.metrics, clock, timeout=5.0)
        assert manager.window(3) == 30.0 and manager.window(10_000) == 240.0  # capped: 0.8 x 300
        urls = {normalize_bmc_url(bmcs.url(n)): n for n in names}
        order = sorted(urls, key=lambda u: spread_offset(u, 30.0))
        begin = clock.time()
        stop = asyncio.Event()
        task = asyncio.create_task(manager.run(stop))

        def reconciled(want: int | None = None) -> int | bool:
            """BMCs reconciled so far (with `want`: whether that many)."""
            n = sum(int(ls.metrics.get("redfish_subscriptions_total", result=r))
                       for r in ("created", "kept", "repaired"))
            return n if want is None else n == want

        async def one_round(start: float) -> None:
            for url in order:
                await asyncio.wait_for(clock.next_sleeper(), WAIT)  # the next BMC waits for its offset
                assert clock.deadlines()[0] - start == pytest.approx(spread_offset(url, 30.0), abs=1e-6)
                want = int(reconciled()) + 1
                await clock.advance(clock.deadlines()[0] - clock.time())
                await eventually(functools.partial(reconciled, want), WAIT, f"{urls[url]} reconciled")
            # the next round one check_interval after this one started (the spread is part of it)
            await asyncio.wait_for(clock.wait_for_deadline(start + 300), WAIT)

        await asyncio.wait_for(clock.next_sleeper(), WAIT)
        for n in names:  # none before its time
            assert ours(await bmcs.subscriptions(n), ls.url) == []
        await one_round(begin)
        assert set(manager.last.values()) == {"created"}
        for n in names:
            assert len(ours(await bmcs.subscriptions(n), ls.url)) == 1
        [mine] = ours(await bmcs.subscriptions("enc1-bay1"), ls.url)
        await bmcs.redfish("enc1-bay1", "DELETE", mine["@odata.id"])
        await clock.advance(begin + 300 - clock.time())
        await one_round(begin + 300)
        assert manager.last[normalize_bmc_url(bmcs.url("enc1-bay1"))] == "repaired"
        assert sorted(manager.last.values()) == ["kept", "kept", "repaired"]
        await clock.advance(begin + 600 - clock.time())  # the third round begins: stop within its spread
        await asyncio.wait_for(clock.next_sleeper(), WAIT)
        stop.set()
        await asyncio.wait_for(task, WAIT)  # not waiting for the rest of the window


async def test_sse_follower_against_the_lab(bmcs: LabBmcs) -> None:
    picked = bmcs.pick("enc1-bay1", "enc1-bay4")
    async with start_listener(picked, sse=True) as ls:
        follower = SseFollower(ls.config, picked, ls.queue, ls.metrics, SystemClock(), timeout=5.0)
        stop = asyncio.Event()
        task = asyncio.create_task(follower.run(stop))
        try:
            for sid in ("enc1-bay1", "enc1-bay4"):
                await asyncio.wait_for(follower.connection(bmcs.url(sid)).wait(), WAIT)
            await bmcs.control(
                "POST",
                "/lab/v1/servers/enc1-bay4/events",
                {
                    "message_id": "iLOEvents.2.3.ProcessorStatusFailed",
                    "severity": "Critical",
                    "message_args": ["1"],
                },
            )
            event = await ls.next_event()
            assert (event.source, event.sender, event.server) == ("redfish-sse", "127.77.1.4", "enc1-bay4")
            assert (event.registry, event.message_key, event.severity) == (
                "iLOEvents",
                "ProcessorStatusFailed",
                "Critical",
            )
            # SubmitTestEvent reaches the stream too
            status, _ = await bmcs.redfish(
                "enc1-bay1",
                "POST",
                "/redfish/v1/EventService/Actions/EventService.SubmitTestEvent",
                {
                    "MessageId": "ResourceEvent.1.4.3.ResourceErrorsDetected",
                    "MessageSeverity": "Warning",
                    "MessageArgs": ["Fan", "speed"],
                },
            )
            assert status == 200
            event = await ls.next_event()
            assert (event.server, event.message_key, event.severity) == (
                "enc1-bay1",
                "ResourceErrorsDetected",
                "Warning",
            )
            assert ls.metrics.get("redfish_events_received_total", source="redfish-sse") == 2
            assert ls.metrics.get("redfish_sse_connections_total", result="connected") == 2
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT)


async def test_sse_reconnects_after_the_bmc_goes_away(bmcs: LabBmcs) -> None:
    picked = bmcs.pick("enc1-bay1")
    async with start_listener(picked, sse=True) as ls:
        clock = FakeClock()
        follower = SseFollower(ls.config, picked, ls.queue, ls.metrics, clock, timeout=5.0)
        stop = asyncio.Event()
        task = asyncio.create_task(follower.run(stop))
        connected = follower.connection(bmcs.url("enc1-bay1"))
        try:
            await asyncio.wait_for(connected.wait(), WAIT)
            await bmcs.control("PUT", "/lab/v1/servers/enc1-bay1", {"present": False})  # stream ends
            await wait_sleepers(clock, 2)  # the follower's backoff (≤ 1 s) next to the supervisor's sleep
            assert not connected.is_set()
            await bmcs.control("PUT", "/lab/v1/servers/enc1-bay1", {"present": True})
            await clock.advance(1.0)
            await asyncio.wait_for(connected.wait(), WAIT)
            await bmcs.control(
                "POST", "/lab/v1/servers/enc1-bay1/events", {"message_id": "iLOEvents.2.3.FanFailed"}
            )
            event = await ls.next_event()
            assert (
                event.source == "redfish-sse" and event.message_key == "FanFailed" and event.severity is None
            )
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT)


async def test_health_poller_against_the_lab(bmcs: LabBmcs) -> None:
    picked = bmcs.pick("enc1-bay1", "enc1-bay3", "enc1-bay8")
    queue: asyncio.Queue[Event] = asyncio.Queue()
    metrics = Metrics()
    power = RedfishPower(timeout=5.0)
    clock = FakeClock()
    cfg = RedfishEventsConfig(poll_interval=60)
    poller = HealthPoller(cfg, picked, power, queue, metrics, clock, concurrency=2)
    try:
        assert await poller.poll_once() == []  # the first reading only records
        assert poller.last == {"enc1-bay1": Health.OK, "enc1-bay3": Health.OK}
        await bmcs.control("PUT", "/lab/v1/servers/enc1-bay3", {"health": "Critical"})
        [event] = await poller.poll_once()
        assert queue.get_nowait() is event
        assert (event.source, event.server, event.sender) == ("redfish-poll", "enc1-bay3", "127.77.1.3")
        assert (event.previous_health, event.health, event.severity) == ("OK", "Critical", "Critical")
        assert event.message_key == HEALTH_CHANGED and event.event_type == "StatusChange"
        assert event.time == clock.now()
        assert await poller.poll_once() == []  # unchanged: nothing new

        # the run loop on the fake clock: a change shows up one poll_interval later
        stop = asyncio.Event()
        task = asyncio.create_task(poller.run(stop))
        await asyncio.wait_for(clock.next_sleeper(), WAIT)
        await bmcs.control("PUT", "/lab/v1/servers/enc1-bay3", {"health": "OK"})
        await clock.advance(60)
        event = await asyncio.wait_for(queue.get(), WAIT)
        assert (event.previous_health, event.health, event.severity) == ("Critical", "OK", "OK")
        stop.set()
        await asyncio.wait_for(task, WAIT)

        await bmcs.control("POST", "/lab/v1/faults", {"fault": "bmc_error", "server": "enc1-bay1"})
        assert await poller.poll_once() == []  # a failed read changes nothing
        assert metrics.get("redfish_health_polls_total", result="error") == 1
        assert metrics.get("redfish_events_received_total", source="redfish-poll") == 2
    finally:
        await power.close()


# --- sushy-static over the DMTF public-rackmount1 mockup -------------------------------------------------


@dataclass
class StaticPeer:
    url: str
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


@contextlib.asynccontextmanager
async def sushy_static(tmp_path: Path, mockup: Path) -> AsyncIterator[StaticPeer]:
    exe = Path(sys.executable).parent / "sushy-static"
    log_file = tmp_path / "sushy-static.log"
    for _attempt in range(5):
        port = reserve_port()
        url = f"http://127.0.0.1:{port}"
        with log_file.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                str(exe),
                "--mockup-files",
                str(mockup),
                "--interface",
                "127.0.0.1",
                "--port",
                str(port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            if await _answers(proc, url):
                yield StaticPeer(url, log_file)
                return
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 5)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
    pytest.fail(f"sushy-static did not start; log:\n{log_file.read_text(errors='replace')[-2000:]}")


async def _answers(proc: asyncio.subprocess.Process, url: str) -> bool:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while proc.returncode is None and time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url + "/redfish/v1/") as r:
                    if r.status == 200:
                        return True
            await asyncio.sleep(0.1)  # polling an outside process coming up, not synchronising our own tasks
    return False


def _members_of(directory: Path) -> Sequence[str]:
    data = json.loads((directory / "index.json").read_text())
    return [m["@odata.id"] for m in data["Members"]]


async def test_discovery_against_sushy_static_mockup(tmp_path: Path) -> None:
    assert (FIXTURES / "LICENSE-DMTF.md").exists()
    foreign = {
        p: json.loads((MOCKUP / p.removeprefix("/redfish/v1/") / "index.json").read_text())
        for p in _members_of(MOCKUP / "EventService" / "Subscriptions")
    }
    async with sushy_static(tmp_path, MOCKUP) as peer:
        endpoint = BmcEndpoint(peer.url, "", "")  # no credentials: plain HTTP, unauthenticated
        rack = Server("rack1", "dg1", "d1", "enc1", 1, "Contoso 3500", bmc=endpoint)
        servers: Callable[[], list[Server]] = lambda: [rack]  # noqa: E731
        async with start_listener(servers) as ls:
            # the EventService in its real shape
            reader = RedfishReader(timeout=5.0)
            try:
                service = await reader.event_service(endpoint)
                assert service is not None and service["EventTypesForSubscription"][-1] == "Alert"
                assert "ServerSentEventUri" not in service
                reading = await reader.health(rack)  # Systems -> 437XR1138R2, unauthenticated plain HTTP
                assert (reading.health, reading.health_rollup, reading.state) == (
                    Health.OK,
                    Health.OK,
                    "Enabled",
                )
            finally:
                await reader.close()

            # subscriptions: the mockup's four are other consumers'; a static service accepts a POST (204, no
            # Location) and forgets it, which is reported, not crashed on
            manager = SubscriptionManager(ls.config, servers, ls.metrics, SystemClock(), timeout=5.0)
            try:
                result = await manager.reconcile_once()
            finally:
                await manager.close()
            assert result[peer.url].startswith("error: ") and "does not list it" in result[peer.url]
            log = peer.log()
            assert "DELETE" not in log and "PATCH" not in log
            posted = [line for line in log.splitlines() if line.startswith("Data: ")]
            assert posted and all(ls.url in line and "Alert" in line for line in posted)
            for path, original in foreign.items():
                assert (
                    json.loads((MOCKUP / path.removeprefix("/redfish/v1/") / "index.json").read_text())
                    == original
                )

            # health: first reading recorded through the unauthenticated reader; the power adapter
            # (credentials required, HTTPS only) fails cleanly on this plain-HTTP peer
            queue: asyncio.Queue[Event] = asyncio.Queue()
            reader = RedfishReader(timeout=5.0)
            poller = HealthPoller(ls.config, servers, reader, queue, ls.metrics, SystemClock())
            try:
                assert await poller.poll_once() == [] and poller.last == {"rack1": Health.OK}
            finally:
                await reader.close()
            power = RedfishPower(timeout=5.0)
            poller = HealthPoller(ls.config, servers, power, queue, ls.metrics, SystemClock())
            try:
                assert await poller.poll_once() == [] and poller.last == {}
            finally:
                await power.close()
            assert ls.metrics.get("redfish_health_polls_total", result="ok") == 1
            assert ls.metrics.get("redfish_health_polls_total", result="error") == 1

            # SSE: this service has no ServerSentEventUri, so nothing is followed
            clock = FakeClock()
            follower = SseFollower(
                ls.config.model_copy(update={"sse": True}), servers, queue, ls.metrics, clock
            )
            stop = asyncio.Event()
            task = asyncio.create_task(follower.run(stop))
            await wait_sleepers(clock, 2)  # the follower waits check_interval to look again
            assert ls.metrics.get("redfish_sse_connections_total", result="no_sse") == 1
            stop.set()
            await asyncio.wait_for(task, WAIT)
            assert queue.empty()
