"""Redfish events in: the push listener, subscription management, SSE streams and health polling.

Four independent parts, each producing normalized `monitor.core.events.Event`s on one `asyncio.Queue`:

- `RedfishEventListener`: `POST /api/v1/events/redfish[/{token}]`, where BMCs push `#Event` payloads
  (source `redfish`). Every BMC has its own token, `bmc_token(secret, bmc_url)` (HMAC-SHA256 of the
  master secret and the BMC URL, urlsafe base64), sent back to us in an `Authorization: Bearer` header
  (or as a Basic password), in the Event's `Context` ("failover-monitor:<token>"), or in the path. The
  token identifies the BMC, so the Event's `sender` is that BMC's host address and
  `attributes.bmc_service` its service (scheme://host:port): on a service several inventory servers
  share, the resolver attributes each event by its OriginOfCondition (monitor/pipeline/resolve.py),
  never by the sender alone.
- `SubscriptionManager`: makes sure each BMC's EventService holds exactly one correct subscription of
  ours (created, repaired, our stale ones removed) and never touches another consumer's.
- `SseFollower`: follows each BMC's `ServerSentEventUri` (source `redfish-sse`).
- `HealthPoller`: polls each BMC's `Status.Health`/`HealthRollup`; a change becomes an Event (source
  `redfish-poll`, `message_key` "HealthChanged").

BMC requests go through the DMTF `redfish` library's async client (adapters/redfish/client.py, shared
with adapters/redfish/power.py), with a timeout on every request; a BMC endpoint without credentials
(empty username) is used unauthenticated, which is also the only way the library talks plain HTTP
(read-only peers such as `sushy-static`). SSE needs a streaming read, so it uses aiohttp directly
(Basic auth).

Metrics (prefix `failover_monitor_`; all counters):

- `redfish_events_received_total{source}`: Events put on the queue (`redfish`, `redfish-sse`,
  `redfish-poll`).
- `redfish_events_dropped_total{reason}`: pushes refused, per request: `sender` (403), `unauthorized`
  (401), `too_large` (413), `bad_json` and `not_event` (400), `error` (500); per event: `queue_full`
  (503 for a push; SSE and poll events too); SSE frames: `sse_bad_frame`, `sse_too_large`.
- `redfish_subscriptions_total{result}`: reconcile outcomes per BMC: `created`, `kept`, `repaired`,
  `removed-stale`, `skipped`, `error`.
- `redfish_sse_connections_total{result}`: `connected`, `error`, `no_sse`.
- `redfish_health_polls_total{result}`: `ok`, `error`, `unknown`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import random
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from yarl import URL

from adapters.redfish.client import (
    RedfishConnections,
    Reply,
    bmc_of,
    check_identity,
    check_reply,
    health_reading,
    normalize_bmc_url,
    path_of,
    tls_context,
)
from monitor.core.clock import Clock, sleep_unless
from monitor.core.config import RedfishEventsConfig
from monitor.core.errors import AdapterError
from monitor.core.events import BMC_SERVICE_ATTRIBUTE, Event, severity_rank
from monitor.core.metrics import Metrics
from monitor.core.model import BmcEndpoint, Health, Server, bmc_service
from monitor.core.ports import HealthReading

log = logging.getLogger(__name__)

__all__ = [
    "CONTEXT_PREFIX",
    "LISTENER_PATH",
    "BmcTokens",
    "HealthPoller",
    "HealthReader",
    "NotAnEvent",
    "RedfishEventListener",
    "RedfishReader",
    "SseFollower",
    "SubscriptionManager",
    "bmc_token",
    "normalize_bmc_url",
    "parse_event_payload",
]

LISTENER_PATH = "/api/v1/events/redfish"
CONTEXT_PREFIX = "failover-monitor:"
EVENT_SERVICE_PATH = "/redfish/v1/EventService"
SUBSCRIPTIONS_PATH = f"{EVENT_SERVICE_PATH}/Subscriptions"
SSE_FILTER = "$filter=EventFormatType%20eq%20Event"
HEALTH_CHANGED = "HealthChanged"
"""`message_key` of a health-poll Event (`message_id` and `registry` stay null: it is not a BMC message)."""
PREFERRED_EVENT_TYPES = ("Alert", "StatusChange")
"""What we subscribe to where the service lists EventTypesForSubscription (iLO 5 requires EventTypes)."""

_MAX_RECORDS = 64
_MAX_ARGS = 32
_MAX_DEPTH = 8
_MAX_ITEMS = 100
_MAX_TEXT = 4096
_MAX_ID = 256
_MAX_MEMBERS = 256
_SEVERITIES = {"ok": "OK", "warning": "Warning", "critical": "Critical"}


# --- tokens ---------------------------------------------------------------------------------------


def bmc_token(secret: str, bmc_url: str) -> str:
    """The per-BMC token: HMAC-SHA256(secret, normalized BMC URL), urlsafe base64 without padding."""
    digest = hmac.new(secret.encode(), normalize_bmc_url(bmc_url).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _endpoints(servers: Iterable[Server]) -> dict[str, tuple[BmcEndpoint, list[Server]]]:
    """Present servers with a BMC, by normalized BMC URL (a BMC serving several servers appears once)."""
    out: dict[str, tuple[BmcEndpoint, list[Server]]] = {}
    for server in servers:
        if server.bmc is None or not server.present:
            continue
        key = normalize_bmc_url(server.bmc.url)
        if key in out:
            out[key][1].append(server)
        else:
            out[key] = (server.bmc, [server])
    return out


def _host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


class BmcTokens:
    """Token -> BMC URL for the listener (`resolve_token`), over the current servers' BMCs.

    Every known token is compared (constant time, no early exit), so timing does not reveal which BMC
    or how much of a token matched."""

    def __init__(self, secret: str, servers: Callable[[], Iterable[Server]]) -> None:
        self._secret = secret
        self._servers = servers
        self._cache: dict[str, bytes] = {}

    def token_for(self, bmc_url: str) -> str:
        return bmc_token(self._secret, bmc_url)

    def __call__(self, token: str) -> str | None:
        given = token.encode("utf-8", "replace")
        found: str | None = None
        urls = {normalize_bmc_url(s.bmc.url) for s in self._servers() if s.bmc is not None}
        for url in sorted(urls):
            expected = self._cache.get(url)
            if expected is None:
                expected = self._cache[url] = bmc_token(self._secret, url).encode()
            if hmac.compare_digest(given, expected) and found is None:
                found = url
        for stale in set(self._cache) - urls:
            del self._cache[stale]
        return found


# --- parsing --------------------------------------------------------------------------------------


class NotAnEvent(ValueError):
    """The body is not a Redfish Event (the listener answers 400 with this message)."""


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _get(record: Mapping[str, Any], key: str) -> Any:
    """A property by name, tolerating wrong case (`MessageID`, `messageid`)."""
    if key in record:
        return record[key]
    folded = key.casefold()
    for k, v in record.items():
        if isinstance(k, str) and k.casefold() == folded:
            return v
    return None


def _text(value: object, limit: int = _MAX_TEXT) -> str | None:
    if isinstance(value, str):
        return value[:limit]
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float) and math.isfinite(value):
        return str(value)[:limit]
    return None


def _bounded(value: object, depth: int = 0) -> Any:
    """A JSON value cut to a safe size: depth, items and text limited; non-finite numbers as text."""
    if isinstance(value, dict):
        if depth >= _MAX_DEPTH:
            return "…"
        return {str(k)[:200]: _bounded(v, depth + 1) for k, v in list(value.items())[:_MAX_ITEMS]}
    if isinstance(value, list):
        if depth >= _MAX_DEPTH:
            return "…"
        return [_bounded(v, depth + 1) for v in value[:_MAX_ITEMS]]
    if isinstance(value, str):
        return value[:_MAX_TEXT]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)[:_MAX_TEXT]


def _redact_context(value: object) -> Any:
    """Our Context carries the BMC's token: never keep it in an Event."""
    if isinstance(value, str) and value.startswith(CONTEXT_PREFIX):
        return CONTEXT_PREFIX + "…"
    return _bounded(value)


def _severity(record: Mapping[str, Any]) -> str | None:
    for key in ("MessageSeverity", "Severity"):
        value = _text(_get(record, key), 64)
        if value and value.strip():
            return _SEVERITIES.get(value.strip().lower(), value.strip())
    return None


def _origin(value: object) -> str | None:
    if isinstance(value, dict):
        value = value.get("@odata.id")
    if isinstance(value, str) and value.strip():
        return path_of(value)[:_MAX_TEXT]
    return None


def _message_args(value: object) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items[:_MAX_ARGS]:
        text = _text(item, 1024)
        if text is None:
            text = "" if item is None else json.dumps(_bounded(item), ensure_ascii=False)[:1024]
        out.append(text)
    return out


_ROOT_ATTRIBUTES = (("Id", "EventPayloadId"), ("@odata.type", "EventPayloadType"), ("Oem", "EventPayloadOem"))
_RECORD_ATTRIBUTES = ("EventTimestamp", "MemberId", "EventGroupId", "Resolution", "LogEntry",
                      "OriginOfConditionUnavailable", "Oem")


def _record_event(
    record: Mapping[str, Any], root: Mapping[str, Any], *, sender: str | None, source: str,
    received: datetime, service: str | None,
) -> Event | None:
    message_id = _get(record, "MessageId")
    if not isinstance(message_id, str) or not message_id.strip():
        return None  # a MessageId is a string (Registry.Major.Minor.Key, or a bare key)
    message_id = message_id[:_MAX_ID]
    attributes: dict[str, Any] = {}
    for key in _RECORD_ATTRIBUTES:
        value = _get(record, key)
        if value is not None:
            attributes[key] = _bounded(value)
    if isinstance(attributes.get("LogEntry"), dict):
        attributes["LogEntry"] = _origin(attributes["LogEntry"])
    context = _get(record, "Context")
    if context is None:
        context = _get(root, "Context")
    if context is not None:
        attributes["Context"] = _redact_context(context)
    for key, name in _ROOT_ATTRIBUTES:
        value = _get(root, key)
        if value is not None:
            attributes[name] = _bounded(value)
    if service is not None:
        attributes[BMC_SERVICE_ATTRIBUTE] = service
    event = Event(
        source=source,  # type: ignore[arg-type]  # checked by pydantic
        time=received,
        sender=sender,
        message_id=message_id.strip(),
        message=_text(_get(record, "Message")),
        message_args=_message_args(_get(record, "MessageArgs")),
        severity=_severity(record),
        origin=_origin(_get(record, "OriginOfCondition")),
        event_type=_text(_get(record, "EventType"), 64),
        event_id=_text(_get(record, "EventId"), _MAX_ID),
        attributes=attributes,
    )
    return event.with_message_id()


def parse_event_payload(
    body: object, *, sender: str | None, source: str, received: datetime, service: str | None = None
) -> list[Event]:
    """A Redfish `#Event` payload (as pushed, or an SSE `data:` frame) -> one Event per EventRecord.

    Tolerant: `OriginOfCondition` as a string or `{"@odata.id"}`; bare (`FAN0001`) and prefixed
    (`iLOEvents.2.3.X`, `IDRAC.2.8.TMP0110`) MessageIds; `MessageID` (any case); `MessageSeverity`
    before the deprecated `Severity`; a bare EventRecord without the `Events` wrapper. `EventTimestamp`,
    `Oem` and the other record properties go to `attributes` (bounded in depth and size; our Context is
    redacted). Records without a MessageId are skipped. `service` (the BMC service the payload came
    from, when known) goes to `attributes.bmc_service`. Raises `NotAnEvent` when nothing in the body is
    an event record."""
    if not isinstance(body, dict):
        raise NotAnEvent(f"expected a JSON object (a Redfish Event), got {_kind(body)}")
    odata_type = _get(body, "@odata.type")
    if isinstance(odata_type, str) and "MetricReport" in odata_type:
        raise NotAnEvent(f"a {odata_type} is a metric report, not an Event")
    records = _get(body, "Events")
    root: Mapping[str, Any] = body
    if records is None:
        if _get(body, "MessageId") is None:
            raise NotAnEvent("not a Redfish Event: no Events array and no MessageId")
        records, root = [body], {}
    if not isinstance(records, list):
        raise NotAnEvent(f"not a Redfish Event: Events is {_kind(records)}, not an array")
    if not records:
        raise NotAnEvent("the Event has no EventRecords (Events is empty)")
    events: list[Event] = []
    for record in records[:_MAX_RECORDS]:
        if isinstance(record, dict):
            event = _record_event(record, root, sender=sender, source=source, received=received,
                                  service=service)
            if event is not None:
                events.append(event)
    if not events:
        raise NotAnEvent("no EventRecord in the Event has a MessageId")
    return events


# --- the push listener ------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, status: int, reason: str, message: str, count: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.count = count


def _networks(specs: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    for spec in specs:
        try:
            out.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"redfish_events.allowed_senders: {spec!r} is not a network: {exc}") from None
    return out


def _address(remote: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not remote:
        return None
    try:
        addr = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _header_token(authorization: str | None) -> str | None:
    """The token from `Bearer TOKEN`, or the password of `Basic base64(user:TOKEN)`."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return ""  # presented but unreadable: a bad credential, not a missing one
        _, sep, password = decoded.partition(":")
        return password if sep else ""
    return None


def _context_token(body: object) -> str | None:
    if not isinstance(body, dict):
        return None
    contexts = [_get(body, "Context")]
    records = _get(body, "Events")
    if isinstance(records, list):
        contexts += [_get(r, "Context") for r in records[:_MAX_RECORDS] if isinstance(r, dict)]
    for context in contexts:
        if isinstance(context, str) and context.startswith(CONTEXT_PREFIX):
            return context[len(CONTEXT_PREFIX):]
    return None


def _loads(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, absurd nesting
        raise _Refused(400, "bad_json", f"the body is not JSON: {str(exc)[:200]}") from None


class RedfishEventListener:
    """`POST /api/v1/events/redfish` and `/api/v1/events/redfish/{token}`, where BMCs push Events.

    Answers: 204 accepted; 401 missing or wrong token; 403 sender outside `allowed_senders`; 413 body
    over `max_body` (read with a limit, never buffered beyond it); 400 not JSON or not an Event; 503
    (with Retry-After) when the queue cannot take the whole payload: nothing of it is queued, so the
    BMC's own delivery retry brings it again instead of it being lost silently. Every refusal is counted
    in `redfish_events_dropped_total{reason}`, every queued Event in `redfish_events_received_total`.
    `resolve_token(token)` returns the BMC URL the token belongs to (see `BmcTokens`), or None."""

    RETRY_AFTER = 5

    def __init__(
        self,
        config: RedfishEventsConfig,
        queue: asyncio.Queue[Event],
        metrics: Metrics,
        clock: Clock,
        resolve_token: Callable[[str], str | None],
    ) -> None:
        self._config = config
        self._queue = queue
        self._metrics = metrics
        self._clock = clock
        self._resolve = resolve_token
        self._networks = _networks(config.allowed_senders)
        metrics.describe("redfish_events_received_total", "Redfish events queued for the rules, by source")
        metrics.describe("redfish_events_dropped_total", "Redfish event pushes and frames refused, by reason")

    def routes(self) -> list[web.RouteDef]:
        """The listener's routes (with and without a trailing slash, and with the token in the path)."""
        return [
            web.post(LISTENER_PATH, self.handle),
            web.post(LISTENER_PATH + "/", self.handle),
            web.post(LISTENER_PATH + "/{token}", self.handle),
        ]

    async def handle(self, request: web.Request) -> web.Response:
        try:
            events = await self._accept(request)
        except _Refused as refused:
            self._metrics.inc("redfish_events_dropped_total", refused.count, reason=refused.reason)
            # unauthenticated noise is only counted (and logged at debug level): no log flooding
            level = logging.DEBUG if refused.status in (401, 403) else logging.INFO
            log.log(level, "Redfish event push from %s refused (%d): %s", request.remote, refused.status,
                    refused.message)
            headers = {}
            if refused.status == 401:
                headers["WWW-Authenticate"] = 'Bearer realm="failover-monitor"'
            if refused.status == 503:
                headers["Retry-After"] = str(self.RETRY_AFTER)
            return web.json_response({"error": refused.message}, status=refused.status, headers=headers)
        except Exception:
            log.exception("Redfish event push from %s failed", request.remote)
            self._metrics.inc("redfish_events_dropped_total", reason="error")
            return web.json_response({"error": "internal error"}, status=500)
        for event in events:
            self._queue.put_nowait(event)
        self._metrics.inc("redfish_events_received_total", len(events), source="redfish")
        return web.Response(status=204)

    async def _accept(self, request: web.Request) -> list[Event]:
        if self._networks:
            addr = _address(request.remote)
            if addr is None or not any(addr in net for net in self._networks):
                raise _Refused(403, "sender", f"sender {request.remote} is not in allowed_senders")
        token = request.match_info.get("token") or _header_token(request.headers.get("Authorization"))
        bmc_url: str | None = None
        if token is not None:
            bmc_url = self._check(token)
        raw = await self._read(request)
        if token is None:
            missing = _Refused(401, "unauthorized", "no credentials (token, Authorization or Context)")
            try:
                body = _loads(raw)
            except _Refused:
                raise missing from None
            context_token = _context_token(body)
            if context_token is None:
                raise missing
            bmc_url = self._check(context_token)
        else:
            body = _loads(raw)
        assert bmc_url is not None
        try:
            events = parse_event_payload(
                body, sender=_host(bmc_url), source="redfish", received=self._clock.now(),
                service=bmc_service(bmc_url),
            )
        except NotAnEvent as exc:
            raise _Refused(400, "not_event", str(exc)) from None
        free = self._queue.maxsize - self._queue.qsize() if self._queue.maxsize > 0 else len(events)
        if free < len(events):
            raise _Refused(503, "queue_full", "the event queue is full; retry later", count=len(events))
        return events

    def _check(self, token: str) -> str:
        url = self._resolve(token) if token else None
        if url is None:
            raise _Refused(401, "unauthorized", "unknown token")
        return url

    async def _read(self, request: web.Request) -> bytes:
        limit = self._config.max_body
        length = request.content_length
        if length is not None and length > limit:
            raise _Refused(413, "too_large", f"body of {length} bytes is over the limit of {limit}")
        body = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > limit:
                raise _Refused(413, "too_large", f"body over the limit of {limit} bytes")
        return bytes(body)


# --- talking to BMCs --------------------------------------------------------------------------------


def _basic_header(bmc: BmcEndpoint) -> dict[str, str]:
    if not bmc.username:
        return {}
    encoded = base64.b64encode(f"{bmc.username}:{bmc.password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {encoded}"}


class RedfishReader:
    """Redfish requests to BMCs (DMTF async client per BMC connection, one shared aiohttp session; see
    `adapters.redfish.client.RedfishConnections`; redirects are not followed).

    An endpoint with an empty username is used without authentication (over http or https); otherwise
    `bmc.auth` ("basic" or "session") applies, which the library allows over HTTPS only. Also a
    `HealthReader` (`health(server)`) that works with such unauthenticated read-only peers."""

    def __init__(self, *, timeout: float = 10.0, session: aiohttp.ClientSession | None = None) -> None:
        self._conns = RedfishConnections(timeout=timeout, session=session, owner="Redfish reader",
                                         anonymous=True)

    @property
    def timeout(self) -> float:
        return self._conns.timeout

    def http(self) -> aiohttp.ClientSession:
        return self._conns.http()

    async def close(self) -> None:
        await self._conns.close()

    async def request(self, bmc: BmcEndpoint, method: str, path: str, body: object = None) -> Reply:
        return await self._conns.request(bmc, method, path, body)

    async def get(self, bmc: BmcEndpoint, path: str) -> Reply:
        return await self._conns.get(bmc, path)

    # --- reads ----------------------------------------------------------------------------------

    async def event_service(self, bmc: BmcEndpoint) -> dict[str, Any] | None:
        """The EventService resource, or None when the BMC has none (404/405/501: e.g. sushy-tools)."""
        reply = await self.get(bmc, EVENT_SERVICE_PATH)
        if reply.status in (404, 405, 501):
            return None
        check_reply(bmc, reply, f"GET {EVENT_SERVICE_PATH}")
        return reply.object()

    async def health(self, server: Server) -> HealthReading:
        """Status of the server's ComputerSystem (`bmc.system`, else the only member of Systems),
        after its identity check (`check_identity`)."""
        bmc = bmc_of(server)
        path = await self._conns.system_path(bmc)
        reply = await self.get(bmc, path)
        check_reply(bmc, reply, f"GET {path}")
        system = reply.object()
        check_identity(server, system, endpoint=bmc.url, path=path)
        return health_reading(system)


def _members(collection: Mapping[str, Any]) -> list[object]:
    members = collection.get("Members")
    return members[:_MAX_MEMBERS] if isinstance(members, list) else []


def _norm_url(url: str) -> str:
    """For comparing URLs a BMC echoes back: scheme and host lowercased, default port and trailing slash
    dropped."""
    parts = urlsplit(url.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}" + (f"?{parts.query}" if parts.query else "")


def _same_url(a: str, b: str) -> bool:
    try:
        return _norm_url(a) == _norm_url(b)
    except ValueError:
        return False


def _under(destination: str, base: str) -> bool:
    """Whether `destination` is `base` or below it (on a path boundary)."""
    try:
        d, b = _norm_url(destination), _norm_url(base)
    except ValueError:
        return False
    return d == b or d.startswith(b + "/")


# --- subscriptions -----------------------------------------------------------------------------------


class SubscriptionManager:
    """Keeps exactly one correct subscription of ours on every BMC's EventService.

    OURS: a subscription whose Destination is `config.destination` or below it, or whose Context is
    "failover-monitor:<this BMC's token>". A "failover-monitor:" Context with another token (another
    monitor instance, another secret) and every other subscription belong to other consumers: never
    touched. CORRECT: Destination `config.destination` (or `config.destination/<token>`, the path form),
    Context "failover-monitor:<token>", Protocol Redfish, and, where the service lists
    EventTypesForSubscription, EventTypes = those of `PREFERRED_EVENT_TYPES` it lists (else all it lists).
    Our incorrect and duplicate ones are deleted first, then a missing one is created with the token in
    `HttpHeaders` (array form; on 400 the object form iLO 6 documents; on 400 again no headers and the
    token in the Destination path). The token also travels in Context.

    `reconcile_once()` answers per BMC URL: `created`, `kept`, `repaired` (ours was gone or wrong and is
    recreated), `removed-stale` (the correct one kept, extra ones of ours deleted), `skipped: <reason>`
    (no EventService, service disabled) or `error: <reason>`."""

    def __init__(
        self,
        config: RedfishEventsConfig,
        servers: Callable[[], list[Server]],
        metrics: Metrics,
        clock: Clock,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        concurrency: int = 8,
    ) -> None:
        self._config = config
        self._servers = servers
        self._metrics = metrics
        self._clock = clock
        self._reader = RedfishReader(timeout=timeout, session=session)
        self._semaphore = asyncio.Semaphore(max(1, concurrency))
        self._known: dict[str, str] = {}
        """BMC URL -> path of our subscription, as last seen or created."""
        self._accepted_types: dict[str, frozenset[str]] = {}
        """BMC URL -> the EventTypes it stored when it did not keep the ones we asked for."""
        self.last: dict[str, str] = {}
        metrics.describe("redfish_subscriptions_total", "Subscription reconcile outcomes per BMC")

    @property
    def enabled(self) -> bool:
        return bool(self._config.subscribe and self._config.destination and self._config.secret)

    async def close(self) -> None:
        await self._reader.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile at start and every `check_interval` until `stop` is set."""
        if not self.enabled:
            log.info("Redfish subscriptions not managed (redfish_events.destination/subscribe)")
            return
        try:
            while not stop.is_set():
                await self.reconcile_once()
                if await sleep_unless(self._clock, self._config.check_interval, stop):
                    break
        finally:
            await self.close()

    async def reconcile_once(self) -> dict[str, str]:
        if not self.enabled:
            return {}
        endpoints = _endpoints(self._servers())
        urls = list(endpoints)
        results = await asyncio.gather(*(self._guarded(endpoints[u][0]) for u in urls))
        outcome = dict(zip(urls, results, strict=True))
        for url in set(self._known) - set(urls):
            del self._known[url]
        for url in set(self._accepted_types) - set(urls):
            del self._accepted_types[url]
        self.last = outcome
        return outcome

    async def _guarded(self, bmc: BmcEndpoint) -> str:
        async with self._semaphore:
            try:
                result = await self._reconcile(bmc)
            except AdapterError as exc:
                result = f"error: {exc}"
            except Exception as exc:
                log.exception("reconciling the subscription on %s failed", bmc.url)
                result = f"error: {type(exc).__name__}: {exc}"
        self._metrics.inc("redfish_subscriptions_total", result=result.split(":", 1)[0])
        level = logging.WARNING if result.startswith("error") else logging.DEBUG if result == "kept" \
            else logging.INFO
        log.log(level, "Redfish subscription on %s: %s", bmc.url, result)
        return result

    def _wanted_event_types(self, service: Mapping[str, Any]) -> list[str] | None:
        listed = service.get("EventTypesForSubscription")
        if not isinstance(listed, list):
            return None
        names = [t for t in listed if isinstance(t, str)]
        preferred = [t for t in PREFERRED_EVENT_TYPES if t in names]
        return preferred or names or None

    async def _reconcile(self, bmc: BmcEndpoint) -> str:
        assert self._config.destination is not None and self._config.secret is not None
        url = normalize_bmc_url(bmc.url)
        token = bmc_token(self._config.secret.get_secret_value(), url)
        service = await self._reader.event_service(bmc)
        if service is None:
            return "skipped: the BMC has no EventService"
        if service.get("ServiceEnabled") is False:
            return "skipped: the EventService is disabled"
        link = service.get("Subscriptions")
        collection = path_of(link["@odata.id"]) if isinstance(link, dict) and isinstance(
            link.get("@odata.id"), str) else SUBSCRIPTIONS_PATH
        wanted_types = self._wanted_event_types(service)
        subscriptions = await self._list(bmc, collection)
        ours = [(p, s) for p, s in subscriptions if self._is_ours(s, token)]
        accepted = self._accepted_types.get(url)
        correct = [(p, s) for p, s in ours if self._is_correct(s, token, wanted_types, accepted)]
        keep = correct[0] if correct else None
        stale = [(p, s) for p, s in ours if keep is None or p != keep[0]]
        for path, _ in stale:
            reply = await self._reader.request(bmc, "DELETE", path)
            if not reply.ok and reply.status != 404:
                return f"error: cannot delete our stale subscription {path}: {reply.reason()}"
        if keep is not None:
            self._known[url] = keep[0]
            return "removed-stale" if stale else "kept"
        had = url in self._known or bool(stale)
        created = await self._create(bmc, collection, token, wanted_types)
        if created.startswith("error"):
            self._known.pop(url, None)
            return created
        self._known[url] = created
        await self._read_back(bmc, url, created, token, wanted_types)
        return "repaired" if had else "created"

    async def _read_back(
        self, bmc: BmcEndpoint, url: str, path: str, token: str, wanted: list[str] | None
    ) -> None:
        """Read the new subscription back: a BMC that stores other EventTypes than we asked for would
        otherwise look wrong on every check and be deleted and recreated forever."""
        self._accepted_types.pop(url, None)
        reply = await self._reader.get(bmc, path)
        if not reply.ok:
            return
        sub = reply.object()
        if self._is_correct(sub, token, wanted):
            return
        types = sub.get("EventTypes")
        if isinstance(types, list) and self._is_correct(sub, token, None):
            log.warning("%s stored EventTypes %s instead of %s; accepted", bmc.url, types, wanted)
            self._accepted_types[url] = frozenset(t for t in types if isinstance(t, str))
        else:
            log.warning("%s stores our subscription differently than created: %s", bmc.url,
                        {k: sub.get(k) for k in ("Destination", "Context", "Protocol", "EventTypes")})

    async def _list(self, bmc: BmcEndpoint, collection: str) -> list[tuple[str, dict[str, Any]]]:
        reply = await self._reader.get(bmc, collection)
        check_reply(bmc, reply, f"GET {collection}")
        out: list[tuple[str, dict[str, Any]]] = []
        for member in _members(reply.object()):
            if not isinstance(member, dict) or not isinstance(member.get("@odata.id"), str):
                continue
            path = path_of(member["@odata.id"])
            if "Destination" in member or "Context" in member:  # expanded
                out.append((path, member))
                continue
            item = await self._reader.get(bmc, path)
            if item.status == 404:
                continue  # deleted meanwhile
            check_reply(bmc, item, f"GET {path}")
            out.append((path, item.object()))
        return out

    def _is_ours(self, sub: Mapping[str, Any], token: str) -> bool:
        assert self._config.destination is not None
        destination = sub.get("Destination")
        if isinstance(destination, str) and _under(destination, self._config.destination):
            return True
        context = sub.get("Context")
        return isinstance(context, str) and hmac.compare_digest(
            context.encode("utf-8", "replace"), (CONTEXT_PREFIX + token).encode()
        )

    def _is_correct(
        self, sub: Mapping[str, Any], token: str, wanted_types: list[str] | None,
        accepted_types: frozenset[str] | None = None,
    ) -> bool:
        assert self._config.destination is not None
        base = self._config.destination
        destination = sub.get("Destination")
        if not isinstance(destination, str) or not (
            _same_url(destination, base) or _same_url(destination, base.rstrip("/") + "/" + token)
        ):
            return False
        if sub.get("Context") != CONTEXT_PREFIX + token:
            return False
        if sub.get("Protocol") not in (None, "Redfish"):
            return False
        if sub.get("SubscriptionType") not in (None, "RedfishEvent"):
            return False
        if sub.get("EventFormatType") not in (None, "Event"):
            return False
        types = sub.get("EventTypes")
        if not wanted_types or not isinstance(types, list):
            return True
        stored = frozenset(t for t in types if isinstance(t, str))
        return stored == frozenset(wanted_types) or stored == accepted_types

    async def _create(self, bmc: BmcEndpoint, collection: str, token: str, wanted: list[str] | None) -> str:
        """POST our subscription; returns its path, or `error: ...`."""
        assert self._config.destination is not None
        base: dict[str, Any] = {
            "Destination": self._config.destination,
            "Protocol": "Redfish",
            "Context": CONTEXT_PREFIX + token,
        }
        if wanted:
            base["EventTypes"] = list(wanted)
        header = {"Authorization": f"Bearer {token}"}
        forms: list[tuple[str, dict[str, Any]]] = [
            ("HttpHeaders array", {**base, "HttpHeaders": [header]}),
            ("HttpHeaders object", {**base, "HttpHeaders": header}),
            ("token in path", {**base, "Destination": self._config.destination.rstrip("/") + "/" + token}),
        ]
        reply: Reply | None = None
        for form, body in forms:
            reply = await self._reader.request(bmc, "POST", collection, body)
            if reply.status != 400:
                break
            log.info("%s refused our subscription with %s: %s", bmc.url, form, reply.reason())
        assert reply is not None
        if not reply.ok:
            return f"error: creating the subscription failed: {reply.reason()}"
        location = reply.location or reply.object().get("@odata.id")
        if isinstance(location, str) and location.strip():
            return path_of(location)
        # 2xx without a Location: check that it really exists (a static mockup accepts and forgets)
        for path, sub in await self._list(bmc, collection):
            if self._is_correct(sub, token, wanted):
                return path
        return f"error: the BMC accepted the subscription (HTTP {reply.status}) but does not list it"


# --- SSE ---------------------------------------------------------------------------------------------


class _SseParser:
    """HTML5 server-sent events, incrementally; frames over `limit` bytes are skipped."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self._data: list[bytes] = []
        self._size = 0
        self._oversized = False
        self._skip_line = False
        self.last_id: str | None = None
        self.skipped = 0

    def feed(self, chunk: bytes) -> list[str]:
        frames: list[str] = []
        self._buffer += chunk
        while True:
            cut = self._newline()
            if cut is None:
                if len(self._buffer) > self._limit:  # a line longer than any frame we accept
                    self._buffer.clear()
                    self._skip_line = True
                    self._oversized = True
                return frames
            end, width = cut
            line = bytes(self._buffer[:end])
            del self._buffer[: end + width]
            if self._skip_line:
                self._skip_line = False
                continue
            frame = self._line(line)
            if frame is not None:
                frames.append(frame)

    def _newline(self) -> tuple[int, int] | None:
        for i, byte in enumerate(self._buffer):
            if byte == 0x0A:
                return i, 1
            if byte == 0x0D:
                if i + 1 < len(self._buffer):
                    return i, 2 if self._buffer[i + 1] == 0x0A else 1
                return None  # wait: \r\n may be split across chunks
        return None

    def _line(self, line: bytes) -> str | None:
        if not line:
            data, oversized = self._data, self._oversized
            self._data, self._size, self._oversized = [], 0, False
            if oversized:
                self.skipped += 1
                return None
            return b"\n".join(data).decode("utf-8", "replace") if data else None
        if line.startswith(b":"):
            return None
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._size += len(value) + 1
            if self._size > self._limit:
                self._oversized = True
                self._data = []
            elif not self._oversized:
                self._data.append(value)
        elif name == b"id" and b"\0" not in value:
            self.last_id = value.decode("utf-8", "replace")
        return None


class SseFollower:
    """Follows the ServerSentEventUri of every BMC whose EventService lists one (when `config.sse`).

    One task per BMC inside a TaskGroup; the BMC set is re-read every `check_interval`. Each task GETs
    `{ServerSentEventUri}?$filter=EventFormatType%20eq%20Event` (Basic auth when the endpoint has
    credentials; `Last-Event-ID` after a reconnect), turns every `data:` frame into Events (source
    `redfish-sse`, `sender` the BMC's host, `server` the server when the BMC serves exactly one), and
    reconnects with exponential backoff (1 s doubling to `max_backoff`, jittered). A stream silent for
    `idle_timeout` seconds is reconnected. BMCs without SSE are re-checked every `check_interval`."""

    def __init__(
        self,
        config: RedfishEventsConfig,
        servers: Callable[[], list[Server]],
        queue: asyncio.Queue[Event],
        metrics: Metrics,
        clock: Clock,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        idle_timeout: float = 600.0,
        max_backoff: float = 60.0,
    ) -> None:
        self._config = config
        self._servers = servers
        self._queue = queue
        self._metrics = metrics
        self._clock = clock
        self._reader = RedfishReader(timeout=timeout, session=session)
        self._timeout = timeout
        self._idle_timeout = idle_timeout
        self._max_backoff = max_backoff
        self._open: dict[str, asyncio.Event] = {}
        metrics.describe("redfish_sse_connections_total", "SSE connection attempts, by result")

    async def close(self) -> None:
        """Close the HTTP session (run() does it when it ends; for callers of follow())."""
        await self._reader.close()

    def connection(self, bmc_url: str) -> asyncio.Event:
        """Set while the stream of that BMC is open."""
        return self._open.setdefault(normalize_bmc_url(bmc_url), asyncio.Event())

    async def run(self, stop: asyncio.Event) -> None:
        if not self._config.sse:
            return
        tasks: dict[str, asyncio.Task[None]] = {}
        try:
            async with asyncio.TaskGroup() as tg:
                while True:
                    endpoints = _endpoints(self._servers())
                    for url in list(tasks):
                        if url not in endpoints or tasks[url].done():
                            tasks.pop(url).cancel()
                    for url, (bmc, servers) in endpoints.items():
                        if url not in tasks:
                            sid = servers[0].id if len(servers) == 1 else None
                            tasks[url] = tg.create_task(self.follow(bmc, stop, server_id=sid))
                    if await sleep_unless(self._clock, self._config.check_interval, stop):
                        break
                for task in tasks.values():
                    task.cancel()
        finally:
            await self._reader.close()

    async def follow(self, bmc: BmcEndpoint, stop: asyncio.Event, *, server_id: str | None = None) -> None:
        """Follow one BMC's stream until `stop` (never raises but CancelledError)."""
        url = normalize_bmc_url(bmc.url)
        backoff = 1.0
        last_id: str | None = None
        while not stop.is_set():
            delay = backoff
            try:
                service = await self._reader.event_service(bmc)
                uri = service.get("ServerSentEventUri") if service is not None else None
                if not isinstance(uri, str) or not uri.strip():
                    self._metrics.inc("redfish_sse_connections_total", result="no_sse")
                    delay = self._config.check_interval
                else:
                    last_id, delivered = await self._stream(bmc, path_of(uri), last_id, server_id)
                    if delivered:
                        backoff = 1.0
                    delay = backoff
                    log.info("SSE stream of %s ended; reconnecting", bmc.url)
            except (AdapterError, aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                self._metrics.inc("redfish_sse_connections_total", result="error")
                log.warning("SSE stream of %s: %s", bmc.url, exc)
            except Exception:
                self._metrics.inc("redfish_sse_connections_total", result="error")
                log.exception("SSE stream of %s failed", bmc.url)
            finally:
                self.connection(url).clear()
            if await sleep_unless(self._clock, delay * random.uniform(0.8, 1.0), stop):
                return
            if delay == backoff:
                backoff = min(backoff * 2, self._max_backoff)

    async def _stream(
        self, bmc: BmcEndpoint, path: str, last_id: str | None, server_id: str | None
    ) -> tuple[str | None, bool]:
        base = normalize_bmc_url(bmc.url)
        target = URL(base + path + ("&" if "?" in path else "?") + SSE_FILTER, encoded=True)
        headers = {"Accept": "text/event-stream", **_basic_header(bmc)}
        if last_id:
            headers["Last-Event-ID"] = last_id
        timeout = aiohttp.ClientTimeout(total=None, connect=self._timeout, sock_connect=self._timeout,
                                        sock_read=self._idle_timeout)
        tls = await tls_context(bmc)
        parser = _SseParser(self._config.max_body)
        delivered = False
        async with self._reader.http().get(target, headers=headers, ssl=tls, timeout=timeout,
                                           allow_redirects=False) as response:
            if response.status != 200:
                raise AdapterError(f"SSE GET {path}: HTTP {response.status}", endpoint=bmc.url)
            self._metrics.inc("redfish_sse_connections_total", result="connected")
            self.connection(bmc.url).set()
            log.info("following the SSE stream of %s", bmc.url)
            while True:
                chunk = await response.content.readany()
                if not chunk:
                    return parser.last_id, delivered
                skipped = parser.skipped
                for frame in parser.feed(chunk):
                    delivered = True
                    self._frame(bmc, frame, server_id)
                if parser.skipped > skipped:
                    self._metrics.inc("redfish_events_dropped_total", parser.skipped - skipped,
                                      reason="sse_too_large")
                last_id = parser.last_id

    def _frame(self, bmc: BmcEndpoint, data: str, server_id: str | None) -> None:
        try:
            body = json.loads(data)
            events = parse_event_payload(body, sender=_host(bmc.url), source="redfish-sse",
                                         received=self._clock.now(), service=bmc.service)
        except (ValueError, RecursionError) as exc:  # JSON errors and NotAnEvent
            self._metrics.inc("redfish_events_dropped_total", reason="sse_bad_frame")
            log.info("SSE frame from %s ignored: %s", bmc.url, str(exc)[:200])
            return
        for event in events:
            if server_id is not None:
                event = event.model_copy(update={"server": server_id})
            try:
                self._queue.put_nowait(event)
            except asyncio.QueueFull:
                self._metrics.inc("redfish_events_dropped_total", reason="queue_full")
                continue
            self._metrics.inc("redfish_events_received_total", source="redfish-sse")


# --- health polling ------------------------------------------------------------------------------------


class HealthReader(Protocol):
    """What the poller needs: `monitor.core.ports.PowerControl` (e.g. RedfishPower) or `RedfishReader`."""

    async def health(self, server: Server) -> HealthReading: ...


def _combined(reading: HealthReading) -> Health | None:
    """The worse of Health and HealthRollup (Unknown ignored); None when the BMC gave neither."""
    known = [h for h in (reading.health, reading.health_rollup) if h is not Health.UNKNOWN]
    if not known:
        return None
    return max(known, key=lambda h: severity_rank(h.value))


class HealthPoller:
    """Every `poll_interval` seconds (0: off) reads each present server's health through its BMC
    (the worse of Status.Health and Status.HealthRollup) and, when it differs from the last reading,
    emits an Event: source `redfish-poll`, `message_key` "HealthChanged" (no message_id/registry),
    `event_type` "StatusChange", `health` and `previous_health`, `severity` = the new health, `server`
    and `sender` (the BMC's host), the raw reading in `attributes`. The first reading of a server only
    records it; a failed read changes nothing. At most `concurrency` reads run at once."""

    def __init__(
        self,
        config: RedfishEventsConfig,
        servers: Callable[[], list[Server]],
        power: HealthReader,
        queue: asyncio.Queue[Event],
        metrics: Metrics,
        clock: Clock,
        *,
        concurrency: int = 16,
        timeout: float = 30.0,
    ) -> None:
        self._config = config
        self._servers = servers
        self._power = power
        self._queue = queue
        self._metrics = metrics
        self._clock = clock
        self._semaphore = asyncio.Semaphore(max(1, concurrency))
        self._timeout = timeout
        self.last: dict[str, Health] = {}
        """Server id -> the last health read."""
        metrics.describe("redfish_health_polls_total", "Health reads of BMCs, by result")

    async def run(self, stop: asyncio.Event) -> None:
        if self._config.poll_interval <= 0:
            return
        while not stop.is_set():
            await self.poll_once()
            if await sleep_unless(self._clock, self._config.poll_interval, stop):
                return

    async def poll_once(self) -> list[Event]:
        """One round over every present server with a BMC; returns the Events emitted."""
        servers = [s for s in self._servers() if s.bmc is not None and s.present]
        results = await asyncio.gather(*(self._poll(s) for s in servers))
        current = {s.id for s in servers}
        for gone in set(self.last) - current:
            del self.last[gone]
        return [e for e in results if e is not None]

    async def _poll(self, server: Server) -> Event | None:
        async with self._semaphore:
            try:
                async with asyncio.timeout(self._timeout):
                    reading = await self._power.health(server)
            except (AdapterError, TimeoutError) as exc:
                self._metrics.inc("redfish_health_polls_total", result="error")
                log.info("health of %s not read: %s", server.id, exc)
                return None
            except Exception:
                self._metrics.inc("redfish_health_polls_total", result="error")
                log.exception("health of %s not read", server.id)
                return None
        health = _combined(reading)
        if health is None:
            self._metrics.inc("redfish_health_polls_total", result="unknown")
            return None
        self._metrics.inc("redfish_health_polls_total", result="ok")
        previous = self.last.get(server.id)
        self.last[server.id] = health
        if previous is None or previous is health:
            return None
        assert server.bmc is not None
        event = Event(
            source="redfish-poll",
            time=self._clock.now(),
            sender=_host(server.bmc.url),
            server=server.id,
            message_key=HEALTH_CHANGED,
            message=f"Health of {server.id} changed from {previous.value} to {health.value}",
            message_args=[previous.value, health.value],
            severity=health.value,
            event_type="StatusChange",
            health=health.value,
            previous_health=previous.value,
            attributes={
                "Health": reading.health.value,
                "HealthRollup": reading.health_rollup.value,
                "PowerState": reading.power.value,
                "State": reading.state,
            },
        )
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._metrics.inc("redfish_events_dropped_total", reason="queue_full")
            return None
        self._metrics.inc("redfish_events_received_total", source="redfish-poll")
        log.info("%s", event.message)
        return event
