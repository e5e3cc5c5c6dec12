"""`SubscriptionManager`: each BMC's EventService holds exactly one correct subscription of ours
(created, repaired, our stale ones removed); another consumer's are never touched."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from adapters.redfish.client import (
    Reply,
    check_reply,
    normalize_bmc_url,
    path_of,
)
from adapters.redfish.listener import bmc_token
from adapters.redfish.payload import CONTEXT_PREFIX
from adapters.redfish.poller import spread_offset
from adapters.redfish.reader import (
    SUBSCRIPTIONS_PATH,
    RedfishReader,
    bmc_endpoints,
    is_under,
    members_of,
    same_url,
)
from monitor.core.bounded import bounded_map
from monitor.core.clock import Clock, run_unless, sleep_unless
from monitor.core.config import RedfishEventsConfig
from monitor.core.errors import AdapterError
from monitor.core.metrics import Metrics
from monitor.core.model import BmcEndpoint, Server

log = logging.getLogger(__name__)


PREFERRED_EVENT_TYPES = ("Alert", "StatusChange")
"""What we subscribe to where the service lists EventTypesForSubscription (iLO 5 requires EventTypes)."""


EMPTY_RETRY = 2.0
"""Seconds until the next reconcile while the inventory lists no BMC."""


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
    (no EventService, service disabled) or `error: <reason>`. The periodic reconciles of `run()` are
    quick between two full checks of a BMC (`full_check_interval`): our subscription, found correct by
    the last full check, is read back alone, and anything but a correct one (gone, changed, an error
    status) gets the full check at once."""

    def __init__(
        self,
        config: RedfishEventsConfig,
        servers: Callable[[], list[Server]],
        metrics: Metrics,
        clock: Clock,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        concurrency: int | None = None,
        bmc_timeout: float | None = None,
        start_after: asyncio.Event | None = None,
        start_wait: float = 0.0,
    ) -> None:
        """`session`: share another adapter's (the power adapter's) connection pool; `concurrency`
        (default `config.max_concurrency`) BMCs are reconciled at once, each within `bmc_timeout`
        seconds (default: 4 requests' worth, `4 x timeout`). `start_after`: the first reconcile of
        `run()` over more than `reconcile_rate` BMCs waits for it, at most `start_wait` seconds (the
        health poll's first cycle: at start each BMC's first read, a full TLS handshake, and its
        reconcile do not pile up in the same minute, and the reconcile resumes the TLS session the
        poll left)."""
        self._config = config
        self._servers = servers
        self._metrics = metrics
        self._clock = clock
        self._reader = RedfishReader(timeout=timeout, session=session)
        self._concurrency = max(1, concurrency if concurrency is not None else config.max_concurrency)
        self._bmc_timeout = bmc_timeout if bmc_timeout is not None else 4 * timeout
        self._known: dict[str, str] = {}
        """BMC URL -> path of our subscription, as last seen or created."""
        self._accepted_types: dict[str, frozenset[str]] = {}
        """BMC URL -> the EventTypes it stored when it did not keep the ones we asked for."""
        self._start_after = start_after
        self._start_wait = start_wait
        self._full: dict[str, tuple[float, list[str] | None]] = {}
        """BMC URL -> (clock time of its last full check that left our subscription correct, the
        EventTypes wanted then): what a quick check reads back against."""
        self.last: dict[str, str] = {}
        metrics.describe("redfish_subscriptions_total", "Subscription reconcile outcomes per BMC")

    @property
    def enabled(self) -> bool:
        return bool(self._config.subscribe and self._config.destination and self._config.secret)

    async def close(self) -> None:
        await self._reader.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile at start (after `start_after`, see the constructor) and every `check_interval`
        until `stop` is set, each reconcile spread over `window()` (`reconcile_rate`)."""
        if not self.enabled:
            log.info("Redfish subscriptions not managed (redfish_events.destination/subscribe)")
            return
        try:
            first = True
            while not stop.is_set():
                if first and self._servers():
                    first = False
                    if await self._wait_for_start(stop):
                        break
                started = self._clock.monotonic()
                # Raced with `stop`: a spread reconcile lasts up to 0.8 x check_interval, and a stop
                # does not wait for it (a BMC cut off halfway is reconciled at the next start).
                reconcile = await run_unless(self.reconcile_once(spread=True, quick=True), stop)
                if reconcile is None or stop.is_set():
                    break
                outcome = reconcile.result()
                # Each BMC about once per check_interval (the spread is part of it). No BMC known yet
                # (the inventory's first load is under way): look again soon rather than a whole
                # check_interval later.
                elapsed = self._clock.monotonic() - started
                wait = max(0.0, self._config.check_interval - elapsed) if outcome else min(
                    self._config.check_interval, EMPTY_RETRY)
                if await sleep_unless(self._clock, wait, stop):
                    break
        finally:
            await self.close()

    async def _wait_for_start(self, stop: asyncio.Event) -> bool:
        """Before the first reconcile of more than `reconcile_rate` BMCs (a second's worth, reconciled
        at once at a small site): wait for `start_after`, at most `start_wait` seconds. Returns whether
        `stop` was set meanwhile."""
        bmcs = len(bmc_endpoints(self._servers()))
        after, rate = self._start_after, self._config.reconcile_rate
        if after is None or after.is_set() or self._start_wait <= 0 or rate <= 0 or bmcs <= rate:
            return False
        waited = self._clock.monotonic()
        await sleep_unless(self._clock, self._start_wait, stop, after)
        log.info("Redfish subscriptions: the first reconcile of %d BMCs starts after %.1f s (%s)", bmcs,
                 self._clock.monotonic() - waited,
                 "the first health poll cycle is done" if after.is_set() else "waited long enough")
        return stop.is_set()

    def window(self, bmcs: int) -> float:
        """Seconds over which one reconcile of `bmcs` BMCs is spread (`reconcile_rate`)."""
        rate = self._config.reconcile_rate
        if rate <= 0:
            return 0.0
        return min(bmcs / rate, self._config.poll_spread * self._config.check_interval)

    async def reconcile_once(self, *, spread: bool = False, quick: bool = False) -> dict[str, str]:
        """Reconcile every BMC's subscription now (`spread`: each at its offset in `window()` after now;
        `quick`: a BMC fully checked within `full_check_interval` only has our subscription read back;
        both as `run()` does) and answer per BMC URL."""
        if not self.enabled:
            return {}
        endpoints = bmc_endpoints(self._servers())
        urls = list(endpoints)
        start_at: Callable[[int], float] | None = None
        window = self.window(len(urls)) if spread else 0.0
        if window > 0:
            offsets = {u: spread_offset(u, window) for u in urls}
            urls.sort(key=offsets.__getitem__)
            started = self._clock.monotonic()
            start_at = lambda i: started + offsets[urls[i]]  # noqa: E731
        outcomes = await bounded_map(lambda bmc: self._guarded(bmc, quick), [endpoints[u][0] for u in urls],
                                     self._concurrency, clock=self._clock, start_at=start_at)
        results = [o.value if o.value is not None else f"error: {o.error}" for o in outcomes]
        outcome = dict(zip(urls, results, strict=True))
        for url in set(self._known) - set(urls):
            del self._known[url]
        for url in set(self._accepted_types) - set(urls):
            del self._accepted_types[url]
        for url in set(self._full) - set(urls):
            del self._full[url]
        self.last = outcome
        return outcome

    async def _guarded(self, bmc: BmcEndpoint, quick: bool = False) -> str:
        try:
            async with asyncio.timeout(self._bmc_timeout):  # network time is real time
                result = await self._reconcile(bmc, quick)
        except AdapterError as exc:
            result = f"error: {exc}"
        except TimeoutError:
            result = f"error: no reconcile within {self._bmc_timeout:g} s"
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

    async def _quick(self, bmc: BmcEndpoint, url: str, token: str) -> bool:
        """Whether our subscription, fully checked within `full_check_interval`, reads back correct."""
        interval = self._config.full_check_interval
        full, path = self._full.get(url), self._known.get(url)
        if interval <= 0 or full is None or path is None or self._clock.monotonic() - full[0] >= interval:
            return False
        reply = await self._reader.get(bmc, path)
        return reply.ok and self._is_correct(reply.object(), token, full[1], self._accepted_types.get(url))

    async def _reconcile(self, bmc: BmcEndpoint, quick: bool = False) -> str:
        assert self._config.destination is not None and self._config.secret is not None
        url = normalize_bmc_url(bmc.url)
        token = bmc_token(self._config.secret.get_secret_value(), url)
        if quick and await self._quick(bmc, url, token):
            return "kept"
        # The full check: a first one, one due, or our subscription gone, changed or unreadable.
        self._full.pop(url, None)
        return await self._full_check(bmc, url, token)

    async def _full_check(self, bmc: BmcEndpoint, url: str, token: str) -> str:
        started = self._clock.monotonic()
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
            self._full[url] = (started, wanted_types)
            return "removed-stale" if stale else "kept"
        had = url in self._known or bool(stale)
        created = await self._create(bmc, collection, token, wanted_types)
        if created.startswith("error"):
            self._known.pop(url, None)
            return created
        self._known[url] = created
        await self._read_back(bmc, url, created, token, wanted_types)
        self._full[url] = (started, wanted_types)
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
        for member in members_of(reply.object()):
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
        if isinstance(destination, str) and is_under(destination, self._config.destination):
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
            same_url(destination, base) or same_url(destination, base.rstrip("/") + "/" + token)
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
