"""MQTT forwarding: alerts, job progress and this monitor's status, over aiomqtt 2.5.x (QoS 1, JSON).

A broker that is down never delays a failover. `publish()` is synchronous and only appends to a
bounded, in-order buffer; `run()` is the one long-lived task that owns the connection and drains the
buffer, one message at a time, each awaited to its PUBACK. A message leaves the buffer only once the
broker acknowledged it, so after a failure the unsent message is still at the head and goes out first
on the next connection (QoS 1 is at-least-once: a message whose PUBACK was lost is sent again). When the
buffer is full the oldest message is dropped and counted (`mqtt_dropped_total`).

Topics (relative to `{topic_prefix}/`):
  alerts/{server}              every rule decision other than ignore; not retained
  jobs/{N}                     the job JSON at every step change; retained
  monitor/{instance}/status    "online" (retained) once connected; "offline" (retained) as the last
                               will, on a graceful stop, and best-effort when the task is cancelled

aiomqtt 2.5.1 facts this module is built around:
  * The `Client` context is the connection; reconnecting means entering a context again. A fresh
    `Client` is made for every attempt, so a cancelled or failed connect never leaves a client whose
    lock is still held.
  * A QoS 1 publish in flight when the broker dies does not fail at the disconnect; it waits out its
    timeout. A watcher task iterates `client.messages` (which raises `MqttError` as soon as the
    connection is lost) and cancels the drain, so an outage is noticed at once, not after `timeout`.
  * Timeouts surface as `MqttError("Operation timed out")`.

Timeouts (`mqtt.timeout`, T): TCP/TLS connect <= T, CONNACK <= T, each PUBACK <= T (a hung broker that
keeps the TCP connection open is noticed this way, or by the keepalive). After `stop` is set, the flush,
"offline" and the disconnect together get T; then the task is cancelled and "offline" gets one more
second. Reconnects back off exponentially (`backoff_initial` doubling up to `backoff_max`, jittered
down by up to 20 %) on the injected clock; the backoff starts again from `backoff_initial` after a
connection that got as far as publishing "online".

`tls_insecure` has the meaning of mosquitto_pub's `--insecure` and paho's `tls_insecure_set`: the server
certificate is still verified against `ca_file` (or the system store) but its host name is not checked.

Call `publish()`, `alert()` and `job()` from the event loop's thread (they touch asyncio primitives).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit

import aiomqtt

from monitor.core.clock import Clock, sleep_unless
from monitor.core.config import MqttConfig
from monitor.core.errors import AdapterError
from monitor.core.metrics import Metrics
from monitor.core.model import Job

log = logging.getLogger(__name__)

QOS: Final = 1
ONLINE: Final = "online"
OFFLINE: Final = "offline"
CANCEL_OFFLINE_TIMEOUT: Final = 1.0
"""Seconds granted to the best-effort "offline" publish when the task is cancelled."""
PENDING_CALLS_THRESHOLD: Final = 1000
"""aiomqtt warns past this many pending calls (its default, 10, is noise for a forwarding queue)."""

_DEFAULT_PORTS: Final = {"mqtt": 1883, "mqtts": 8883}


class MqttAdapterError(AdapterError):
    """Root of the errors this adapter raises (only for invalid settings: the loop itself never
    raises on a broker problem)."""


class MqttConfigInvalid(MqttAdapterError):
    """The settings cannot be used: `mqtt.url` (scheme, host, port), `mqtt.ca_file`, the backoff."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    scheme: Literal["mqtt", "mqtts"]
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def display(self) -> str:
        """The URL without the password (for logs)."""
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{user}{host}:{self.port}"


def parse_url(url: str) -> BrokerAddress:
    """mqtt://[user[:password]@]host[:port] or mqtts://…; user and password may be percent-encoded."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise MqttConfigInvalid(f"mqtt.url: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise MqttConfigInvalid("mqtt.url: the scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise MqttConfigInvalid("mqtt.url: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise MqttConfigInvalid("mqtt.url: expected mqtt[s]://[user:password@]host[:port] with no path")
    return BrokerAddress(
        scheme="mqtts" if scheme == "mqtts" else "mqtt",
        host=parts.hostname,
        port=port if port is not None else _DEFAULT_PORTS[scheme],
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def topic_level(name: str) -> str:
    """`name` as one topic level: `/`, `+`, `#` and NUL become `_`."""
    return name.translate(_NOT_IN_A_LEVEL)


_NOT_IN_A_LEVEL: Final = str.maketrans({c: "_" for c in "/+#\0"})


def encode(payload: dict[str, Any] | str) -> bytes:
    """Strings go out as they are (UTF-8); everything else as compact JSON. Values JSON does not know
    (datetimes, enums) are written as their `str()`: a payload never stops a failover."""
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode()


@dataclass(frozen=True, slots=True, eq=False)
class _Message:
    topic: str
    payload: bytes
    retain: bool


class MqttPublisher:
    """Forwards alerts and job states to an MQTT broker; see the module docstring."""

    def __init__(
        self,
        *,
        config: MqttConfig,
        instance: str,
        metrics: Metrics,
        clock: Clock,
        backoff_initial: float = 0.5,
        backoff_max: float = 15.0,
    ) -> None:
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise MqttConfigInvalid("backoff: need 0 < backoff_initial <= backoff_max")
        self._config = config
        self._broker = parse_url(config.url)
        self._instance = instance
        self._metrics = metrics
        self._clock = clock
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._prefix = config.topic_prefix.strip("/")
        self.status_topic = f"{self._prefix}/monitor/{instance}/status"
        self._buffer: deque[_Message] = deque()
        self._inflight: _Message | None = None
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._tls_context = self._make_tls_context() if self._broker.tls else None
        self._went_online = False
        """Whether the current connection attempt got as far as "online" (resets the backoff)."""

        for name, text in (
            ("mqtt_published_total", "Messages the MQTT broker acknowledged (QoS 1)."),
            ("mqtt_dropped_total", "Messages dropped, oldest first, because the MQTT buffer was full."),
            ("mqtt_reconnects_total", "MQTT connection attempts after the first one."),
        ):
            metrics.describe(name, text)
            metrics.inc(name, 0.0)
        metrics.gauge("mqtt_buffered", lambda: {"": float(len(self._buffer))},
                      "Messages waiting for the MQTT broker.")
        metrics.gauge("mqtt_connected", lambda: {"": 1.0 if self._connected.is_set() else 0.0},
                      "1 while connected to the MQTT broker (and \"online\" published).")

    # --- the synchronous side (called by the daemon; never blocks, never raises on a broker problem) --

    @property
    def broker(self) -> str:
        """The broker URL without the password."""
        return self._broker.display()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def wait_connected(self) -> None:
        """Return once connected and "online" is published (no timeout: wrap it in one)."""
        await self._connected.wait()

    def publish(self, topic: str, payload: dict[str, Any] | str, *, retain: bool = False) -> None:
        """Queue a message for `{topic_prefix}/{topic}`; the payload is encoded now (a later change to
        the dict does not show). A topic with a wildcard (`+`, `#`) or NUL is a ValueError."""
        if not topic.strip("/") or any(c in topic for c in "+#\0"):
            raise ValueError(f"not an MQTT topic name: {topic!r}")
        msg = _Message(f"{self._prefix}/{topic.lstrip('/')}", encode(payload), retain)
        self._buffer.append(msg)
        while len(self._buffer) > self._config.buffer:
            self._drop_oldest()
        self._wake.set()

    def alert(self, server: str | None, payload: dict[str, Any]) -> None:
        """`alerts/{server}` (`unknown` without one; `/`, `+`, `#` in an id become `_`)."""
        self.publish(f"alerts/{topic_level(server) if server else 'unknown'}", payload)

    def job(self, job: Job) -> None:
        self.publish(f"jobs/{job.id}", job.public(), retain=True)

    def _drop_oldest(self) -> None:
        # The message being sent stays (dropping it would make its PUBACK remove the wrong one); the
        # oldest one waiting behind it goes instead.
        if self._buffer[0] is self._inflight and len(self._buffer) > 1:
            del self._buffer[1]
        else:
            self._buffer.popleft()
        self._metrics.inc("mqtt_dropped_total")

    # --- the connection loop -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, publish "online", drain the buffer; reconnect with backoff on any failure. When
        `stop` is set: flush, publish "offline" and disconnect, all within `timeout` seconds (then the
        flush is abandoned and "offline" gets one more second), and return."""
        stop_waker = asyncio.create_task(self._wake_on(stop), name="mqtt.stop-waker")
        loop = asyncio.create_task(self._loop(stop), name="mqtt.loop")
        try:
            await asyncio.wait({loop, stop_waker}, return_when=asyncio.FIRST_COMPLETED)
            if not loop.done():  # stopping: bound the flush
                await asyncio.wait({loop}, timeout=self._config.timeout)
            if not loop.done():
                log.warning("mqtt %s: stop: %d message(s) not flushed within %g s", self.broker,
                            len(self._buffer), self._config.timeout)
                loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        finally:
            for task in (loop, stop_waker):
                task.cancel()
            await asyncio.gather(loop, stop_waker, return_exceptions=True)
            self._connected.clear()

    async def _loop(self, stop: asyncio.Event) -> None:
        delay = self._backoff_initial
        attempts = 0
        while not stop.is_set():
            if attempts:
                self._metrics.inc("mqtt_reconnects_total")
            attempts += 1
            self._went_online = False
            try:
                await self._session(stop)
                return  # stopped and flushed
            except Exception as exc:  # the forwarding loop must outlive any failure
                self._failed(exc)
            if self._went_online:
                delay = self._backoff_initial
            if stop.is_set():
                break
            await self._backoff(delay, stop)
            delay = min(delay * 2, self._backoff_max)
        # Stopped while not connected: one last attempt (bounded by run()) to flush and say "offline".
        try:
            await self._session(stop)
        except Exception as exc:
            self._failed(exc, final=True)

    def _failed(self, exc: BaseException, *, final: bool = False) -> None:
        self._connected.clear()
        if isinstance(exc, aiomqtt.MqttError | OSError | TimeoutError):
            what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning("mqtt %s: %s%s", self.broker, what,
                        f"; {len(self._buffer)} message(s) not sent" if final
                        else f"; {len(self._buffer)} message(s) buffered, reconnecting")
        else:
            log.error("mqtt %s: unexpected error; reconnecting", self.broker, exc_info=exc)

    async def _backoff(self, delay: float, stop: asyncio.Event) -> None:
        """Sleep (on the injected clock) up to `delay`, with jitter; `stop` ends it early."""
        await sleep_unless(self._clock, delay * random.uniform(0.8, 1.0), stop)

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    def _make_client(self) -> aiomqtt.Client:
        b = self._broker
        client = aiomqtt.Client(
            b.host,
            b.port,
            username=b.username,
            password=b.password,
            identifier=self._config.client_id,
            will=aiomqtt.Will(self.status_topic, OFFLINE, qos=QOS, retain=True),
            timeout=self._config.timeout,
            keepalive=self._config.keepalive,
            tls_context=self._tls_context,
            logger=logging.getLogger(f"{__name__}.client"),
        )
        client.pending_calls_threshold = PENDING_CALLS_THRESHOLD
        _retrieve_disconnect_error(client)
        # paho's TCP/TLS connect timeout (5 s by default); the CONNACK wait is `timeout` above.
        client._client.connect_timeout = self._config.timeout
        return client

    def _make_tls_context(self) -> ssl.SSLContext:
        """Built once, at construction (it reads `ca_file`), so a bad file is a startup error."""
        try:
            ctx = ssl.create_default_context(cafile=self._config.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise MqttConfigInvalid(f"mqtt.ca_file: {exc}") from exc
        ctx.sslsocket_class = _ClosingSSLSocket
        if self._config.tls_insecure:
            ctx.check_hostname = False
        return ctx

    async def _session(self, stop: asyncio.Event) -> None:
        """One connection: returns after a graceful stop; raises when the connection fails."""
        client = self._make_client()
        log.debug("mqtt %s: connecting", self.broker)
        async with client:
            _retrieve_disconnect_error(client)
            try:
                await client.publish(self.status_topic, ONLINE, qos=QOS, retain=True)
                self._connected.set()
                self._went_online = True
                log.info("mqtt %s: connected, %d message(s) buffered", self.broker, len(self._buffer))
                watcher = asyncio.create_task(self._watch(client), name="mqtt.watch")
                drain = asyncio.create_task(self._drain(client, stop), name="mqtt.drain")
                try:
                    done, _ = await asyncio.wait({watcher, drain}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (watcher, drain):
                        task.cancel()
                    await asyncio.gather(watcher, drain, return_exceptions=True)
                # The drain ends only after a graceful stop; the watcher only by raising.
                (drain if drain in done else watcher).result()
            except asyncio.CancelledError:
                await self._offline_on_cancel(client)
                raise
            finally:
                self._connected.clear()
        log.info("mqtt %s: disconnected (stopped)", self.broker)

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Raises MqttError as soon as the connection is lost (nothing is subscribed, so no message
        ever arrives). Without it a publish in flight would wait out its whole timeout."""
        try:
            async for _ in client.messages:
                pass
        except aiomqtt.MqttError as exc:
            raise aiomqtt.MqttError(f"connection lost ({exc.__cause__ or exc})") from exc
        raise aiomqtt.MqttError("connection lost")  # not reached: the iteration raises on disconnect

    async def _drain(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self._buffer:
                await self._send_head(client)
                continue
            self._wake.clear()
            await self._wake.wait()
        while self._buffer:  # stopping: flush (run() bounds this)
            await self._send_head(client)
        await client.publish(self.status_topic, OFFLINE, qos=QOS, retain=True)

    async def _send_head(self, client: aiomqtt.Client) -> None:
        msg = self._buffer[0]
        self._inflight = msg
        try:
            await client.publish(msg.topic, msg.payload, qos=QOS, retain=msg.retain)
        except ValueError as exc:  # paho refused the message itself: never retry it
            log.error("mqtt: dropping a message to %s: %s", msg.topic, exc)
            if self._buffer and self._buffer[0] is msg:
                self._buffer.popleft()
                self._metrics.inc("mqtt_dropped_total")
            return
        finally:
            self._inflight = None
        if self._buffer and self._buffer[0] is msg:
            self._buffer.popleft()
        self._metrics.inc("mqtt_published_total")

    async def _offline_on_cancel(self, client: aiomqtt.Client) -> None:
        """Cancelled (a crash or a hard shutdown): leaving the context sends DISCONNECT, which makes the
        broker discard the will, so say "offline" here, briefly."""
        with contextlib.suppress(Exception):
            await client.publish(self.status_topic, OFFLINE, qos=QOS, retain=True,
                                 timeout=CANCEL_OFFLINE_TIMEOUT)


def _retrieve_disconnect_error(client: aiomqtt.Client) -> None:
    """aiomqtt 2.5 stores a lost connection's error in a future that nobody reads once the watcher is
    gone (e.g. after a publish timeout), and asyncio then logs "Future exception was never retrieved".
    Mark it read; the error itself reaches us through the watcher, a publish or the context exit."""
    fut: asyncio.Future[None] = client._disconnected
    fut.add_done_callback(lambda f: None if f.cancelled() else f.exception())


class _ClosingSSLSocket(ssl.SSLSocket):
    """paho 2.2 does not close the socket when the TLS handshake fails (an untrusted certificate), so
    each retry would leak one until garbage collection. Close it here."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


