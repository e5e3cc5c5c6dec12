"""The live stream's fan-out: job changes, decisions and the spare count to every connected page.

With no client connected a publish builds nothing (the payload is a callable, never called). Each client
has a bounded queue; a client that falls `max_queued` frames behind is dropped (counted in
dashboard_stream_dropped_total) rather than buffered without bound: its page reconnects and re-reads."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from typing import Any

from monitor.core.metrics import Metrics


class StreamClient:
    def __init__(self, max_queued: int) -> None:
        self.frames: deque[str] = deque()
        self.max_queued = max_queued
        self.ready = asyncio.Event()
        self.dropped = False
        self.closed = False


class Hub:
    def __init__(self, metrics: Metrics, *, max_queued: int = 256) -> None:
        self.metrics = metrics
        self.max_queued = max_queued
        self._clients: set[StreamClient] = set()
        self.built = 0
        """Payloads built so far (a test reads that nothing is built with no client)."""

    @property
    def active(self) -> bool:
        return bool(self._clients)

    def __len__(self) -> int:
        return len(self._clients)

    def subscribe(self) -> StreamClient:
        client = StreamClient(self.max_queued)
        self._clients.add(client)
        return client

    def unsubscribe(self, client: StreamClient) -> None:
        self._clients.discard(client)

    def publish(self, kind: str, payload: Callable[[], dict[str, Any]]) -> None:
        if not self._clients:
            return
        self.built += 1
        frame = f"event: {kind}\ndata: {json.dumps(payload(), default=str)}\n\n"
        for client in list(self._clients):
            if len(client.frames) >= client.max_queued:
                client.dropped = True
                self._clients.discard(client)
                self.metrics.inc("dashboard_stream_dropped_total")
            else:
                client.frames.append(frame)
            client.ready.set()

    def close(self) -> None:
        """At stop: every stream ends (the HTTP server's shutdown does not wait on them)."""
        for client in self._clients:
            client.closed = True
            client.ready.set()
        self._clients.clear()
