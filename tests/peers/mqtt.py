"""A real mosquitto broker as a test peer, and a subscriber that collects messages into a queue.

    async with start_mosquitto(tmp_path) as broker:            # 127.0.0.1, a free port
        async with subscribe(broker, "failover/#") as inbox:
            ...
            msg = await next_message(inbox)                     # (topic, payload text, retain)
        await broker.stop(); await broker.start()               # same port: a broker outage

Options: `users={"name": "password"}` writes a password_file (with `mosquitto_passwd -b -c`),
`allow_anonymous=False` refuses clients without credentials, `tls=(cert, key)` makes the listener TLS.
Persistence is off: a restarted broker has no retained messages and no sessions.
Enter and leave the context on the same event loop (mosquitto is an asyncio subprocess).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt

from tests.support.net import reserve_port

MOSQUITTO = Path("/usr/sbin/mosquitto")
START_DEADLINE = 10.0
"""Seconds for the broker to accept connections."""
STOP_DEADLINE = 5.0
"""Seconds between SIGTERM and SIGKILL."""
_PORT_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: str
    retain: bool


@dataclass(slots=True)
class Mosquitto:
    directory: Path
    port: int
    users: Mapping[str, str] = field(default_factory=dict, repr=False)
    allow_anonymous: bool = True
    tls: tuple[Path, Path] | None = None
    """(certificate, key) of a TLS listener."""
    log_file: Path = field(init=False)
    _proc: asyncio.subprocess.Process | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.log_file = self.directory / "mosquitto.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def url(self, username: str | None = None, password: str | None = None) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        cred = ""
        if username is not None:
            cred = username + (f":{password}" if password is not None else "") + "@"
        return f"{scheme}://{cred}127.0.0.1:{self.port}"

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    async def _write_config(self) -> Path:
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "max_queued_messages 100000",
            # As root, mosquitto would switch to the `mosquitto` user and lose access to tmp files.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
        ]
        if self.users:
            pw_file = self.directory / "mosquitto.passwd"
            pw_file.unlink(missing_ok=True)
            for i, (name, password) in enumerate(self.users.items()):
                flags = ["-b", "-c"] if i == 0 else ["-b"]
                proc = await asyncio.create_subprocess_exec(
                    _passwd_tool(), *flags, str(pw_file), name, password,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
                out, _ = await proc.communicate()
                assert proc.returncode == 0, out.decode(errors="replace")
            pw_file.chmod(0o600)
            lines.append(f"password_file {pw_file}")
        if self.tls:
            cert, key = self.tls
            lines += [f"certfile {cert}", f"keyfile {key}"]
        conf = self.directory / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    async def start(self) -> None:
        """Start the broker on `self.port` and wait until it accepts connections."""
        assert not self.running, "already running"
        if not MOSQUITTO.exists():
            raise RuntimeError("mosquitto is not installed: apt-get install -y mosquitto mosquitto-clients")
        conf = await self._write_config()
        with self.log_file.open("ab") as out:
            self._proc = await asyncio.create_subprocess_exec(
                str(MOSQUITTO), "-c", str(conf), stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_DEADLINE
        while True:
            if self._proc.returncode is not None:
                self._proc = None
                raise RuntimeError(f"mosquitto exited at start:\n{self.tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if loop.time() > deadline:
                    await self.stop()
                    raise RuntimeError(f"mosquitto did not listen within {START_DEADLINE:g} s:\n"
                                       f"{self.tail()}") from None
                await asyncio.sleep(0.01)  # poll with a deadline
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered (a hung broker, a black hole)."""
        assert self._proc is not None and self._proc.returncode is None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause()`."""
        assert self._proc is not None and self._proc.returncode is None
        self._proc.send_signal(signal.SIGCONT)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_DEADLINE; the port can be started again."""
        await self._end(signal.SIGTERM)

    async def kill(self) -> None:
        """SIGKILL at once (no goodbye to clients)."""
        await self._end(signal.SIGKILL)

    async def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(sig)
        proc.send_signal(signal.SIGCONT)  # in case it was paused
        try:
            await asyncio.wait_for(proc.wait(), STOP_DEADLINE)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _passwd_tool() -> str:
    return shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


@contextlib.asynccontextmanager
async def start_mosquitto(
    tmp_path: Path,
    *,
    port: int | None = None,
    users: Mapping[str, str] | None = None,
    allow_anonymous: bool = True,
    tls: tuple[Path, Path] | None = None,
) -> AsyncIterator[Mosquitto]:
    directory = tmp_path / "mosquitto"
    directory.mkdir(parents=True, exist_ok=True)
    attempts = 1 if port is not None else _PORT_ATTEMPTS
    broker: Mosquitto | None = None
    for attempt in range(attempts):
        broker = Mosquitto(directory, port if port is not None else reserve_port(), dict(users or {}),
                           allow_anonymous, tls)
        try:
            await broker.start()
            break
        except RuntimeError:
            if attempt == attempts - 1:
                raise
    assert broker is not None
    try:
        yield broker
    finally:
        await broker.stop()


def client_tls_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


@contextlib.asynccontextmanager
async def subscribe(
    broker: Mosquitto,
    topic_filter: str,
    *,
    username: str | None = None,
    password: str | None = None,
    ca_file: Path | None = None,
) -> AsyncIterator[asyncio.Queue[Message]]:
    """Subscribe (QoS 1) and put every message into the queue, in arrival order; retained ones first."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    tls_context = client_tls_context(ca_file) if ca_file else None
    async with aiomqtt.Client("127.0.0.1", broker.port, username=username, password=password,
                              timeout=10, tls_context=tls_context) as client:
        await client.subscribe(topic_filter, qos=1)

        async def pump() -> None:
            async for m in client.messages:
                raw = m.payload
                text = raw.decode() if isinstance(raw, bytes | bytearray) else str(raw)
                inbox.put_nowait(Message(str(m.topic), text, bool(m.retain)))

        task = asyncio.create_task(pump(), name=f"subscriber[{topic_filter}]")
        try:
            yield inbox
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


async def next_message(inbox: asyncio.Queue[Message], timeout: float = 10.0) -> Message:
    try:
        return await asyncio.wait_for(inbox.get(), timeout)
    except TimeoutError:
        raise AssertionError(f"no MQTT message within {timeout:g} s") from None


async def messages(inbox: asyncio.Queue[Message], count: int, timeout: float = 10.0) -> list[Message]:
    """The next `count` messages, with one deadline for all of them."""
    out: list[Message] = []
    try:
        async with asyncio.timeout(timeout):
            while len(out) < count:
                out.append(await inbox.get())
    except TimeoutError:
        raise AssertionError(f"{len(out)} of {count} MQTT messages within {timeout:g} s: "
                             f"{[m.topic for m in out][-5:]}") from None
    return out
