"""The push listener: `POST /api/v1/events/redfish[/{token}]`, where BMCs push their events, each BMC
known by its own token (`bmc_token`: HMAC-SHA256 of the master secret and the BMC URL)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
from collections.abc import Callable, Iterable

from aiohttp import web

from adapters.redfish.client import (
    normalize_bmc_url,
)
from adapters.redfish.payload import CONTEXT_PREFIX, MAX_RECORDS, NotAnEvent, get_field, parse_event_payload
from adapters.redfish.reader import host_of
from monitor.core.clock import Clock
from monitor.core.config import RedfishEventsConfig
from monitor.core.events import Event
from monitor.core.metrics import Metrics
from monitor.core.model import Server, bmc_service

log = logging.getLogger(__name__)


LISTENER_PATH = "/api/v1/events/redfish"


def bmc_token(secret: str, bmc_url: str) -> str:
    """The per-BMC token: HMAC-SHA256(secret, normalized BMC URL), urlsafe base64 without padding."""
    digest = hmac.new(secret.encode(), normalize_bmc_url(bmc_url).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class BmcTokens:
    """Token -> BMC URL for the listener (`resolve_token`), over the current servers' BMCs.

    The tokens are kept in a table keyed by the SHA-256 of each token: a pushed token is hashed, looked
    up, and compared in constant time with the one found, so one push costs the same with 10 BMCs or
    10,000, and timing reveals nothing of which BMC or how much of a token matched (the attacker cannot
    steer the hash). The table is rebuilt when `generation()` (the inventory object) changes; without
    one, when the set of BMC URLs does. A BMC's token is computed once while its URL stays."""

    def __init__(self, secret: str, servers: Callable[[], Iterable[Server]], *,
                 generation: Callable[[], object] | None = None) -> None:
        self._secret = secret
        self._servers = servers
        self._generation = generation
        self._key: object = None
        self._built = False
        self._tokens: dict[str, bytes] = {}
        """BMC URL -> its token."""
        self._table: dict[bytes, tuple[bytes, str]] = {}
        """SHA-256 of a token -> (the token, its BMC URL)."""

    def token_for(self, bmc_url: str) -> str:
        return bmc_token(self._secret, bmc_url)

    def _current(self) -> dict[bytes, tuple[bytes, str]]:
        if self._generation is not None:
            key: object = self._generation()
            if self._built and key is self._key:
                return self._table
            urls = frozenset(normalize_bmc_url(s.bmc.url) for s in self._servers() if s.bmc is not None)
        else:
            urls = frozenset(normalize_bmc_url(s.bmc.url) for s in self._servers() if s.bmc is not None)
            key = urls
            if self._built and key == self._key:
                return self._table
        tokens = {url: self._tokens.get(url) or bmc_token(self._secret, url).encode() for url in urls}
        self._tokens = tokens
        self._table = {hashlib.sha256(tok).digest(): (tok, url) for url, tok in tokens.items()}
        self._key, self._built = key, True
        return self._table

    def __call__(self, token: str) -> str | None:
        given = token.encode("utf-8", "replace")
        hit = self._current().get(hashlib.sha256(given).digest())
        if hit is None:
            return None
        expected, url = hit
        return url if hmac.compare_digest(given, expected) else None


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
    contexts = [get_field(body, "Context")]
    records = get_field(body, "Events")
    if isinstance(records, list):
        contexts += [get_field(r, "Context") for r in records[:MAX_RECORDS] if isinstance(r, dict)]
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
                body, sender=host_of(bmc_url), source="redfish", received=self._clock.now(),
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
        if length is not None:  # the usual push: its length said, and within the limit
            raw = await request.content.read()
            if len(raw) > limit:
                raise _Refused(413, "too_large", f"body over the limit of {limit} bytes")
            return raw
        body = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > limit:
                raise _Refused(413, "too_large", f"body over the limit of {limit} bytes")
        return bytes(body)
