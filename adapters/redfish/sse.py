"""`SseFollower`: follows each BMC's `ServerSentEventUri` (source `redfish-sse`), with a bounded frame
parser; a streaming read, so aiohttp directly (Basic auth)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable

import aiohttp
from yarl import URL

from adapters.redfish.client import (
    normalize_bmc_url,
    path_of,
    tls_context,
)
from adapters.redfish.payload import parse_event_payload
from adapters.redfish.reader import RedfishReader, basic_header, bmc_endpoints, host_of
from monitor.core.clock import Clock, sleep_unless
from monitor.core.config import RedfishEventsConfig
from monitor.core.errors import AdapterError
from monitor.core.events import Event
from monitor.core.metrics import Metrics
from monitor.core.model import BmcEndpoint, Server

log = logging.getLogger(__name__)


SSE_FILTER = "$filter=EventFormatType%20eq%20Event"


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
                    endpoints = bmc_endpoints(self._servers())
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
        headers = {"Accept": "text/event-stream", **basic_header(bmc)}
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
            events = parse_event_payload(body, sender=host_of(bmc.url), source="redfish-sse",
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
