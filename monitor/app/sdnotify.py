"""systemd's notification protocol (sd_notify(3)) for `Type=notify` units: `READY=1` once the daemon
serves, `WATCHDOG=1` every half `WatchdogSec` while its event loop runs, `STOPPING=1` at shutdown.

Each message is one datagram on the AF_UNIX socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the
abstract namespace); the watchdog interval is `$WATCHDOG_USEC`, meant for us when `$WATCHDOG_PID` is
unset or our pid. Without `$NOTIFY_SOCKET` nothing is sent."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

from monitor.core.clock import Clock, sleep_unless

log = logging.getLogger("monitor.sdnotify")


class Notifier:
    def __init__(self, address: str) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.sent = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier | None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        return cls(address) if address else None

    def send(self, *fields: str) -> bool:
        """Send `FIELD=VALUE` lines as one datagram; a failure is logged, never raised."""
        data = ("\n".join(fields) + "\n").encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                s.sendto(data, self.address)
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", self.address.replace("\0", "@"),
                        exc.strerror or exc)
            return False
        self.sent += 1
        return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when no watchdog is asked."""
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


async def notify_systemd(notifier: Notifier, clock: Clock, ready: asyncio.Event, finished: asyncio.Event,
                         interval: float | None, status: str = "") -> None:
    """READY=1 when `ready` is set, then WATCHDOG=1 every `interval` until `finished`; STOPPING=1 then."""
    waits = [asyncio.ensure_future(ready.wait()), asyncio.ensure_future(finished.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    if finished.is_set():
        return
    notifier.send("READY=1", *([f"STATUS={status}"] if status else []))
    if interval is not None:
        notifier.send("WATCHDOG=1")
    while not await sleep_unless(clock, interval if interval is not None else 3600.0, finished):
        if interval is not None:
            notifier.send("WATCHDOG=1")
    notifier.send("STOPPING=1")
