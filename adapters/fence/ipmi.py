"""The `ipmi` fence level: IPMI over LAN (RMCP+) with pyghmi, as fence-agents' fence_ipmilan drives a
BMC with ipmitool (`chassis power off`, `chassis power status`; facts only, no code).

- the power state is Get Chassis Status's "power is on" bit (`Chassis Power is on|off`);
- the forced power-off is Chassis Control "power down" (immediate, not the soft shutdown).

pyghmi is synchronous (it runs its own I/O thread and retries): each call runs in a worker thread of a
small pool this level owns, under `request_timeout` on the event loop's side. A call that overruns is
reported as `AdapterTimeout` and left to end in its thread (pyghmi gives up by itself, within about
five seconds); the forced power-off is checked against the action's deadline (`check_fence`, which
follows into the thread) right before the command is sent.

The endpoint of a server: `failover.fencing.ipmi.servers[ID]` where given, else the host of the
server's BMC URL in the inventory on `failover.fencing.ipmi.port` (623); the account likewise, else the
inventory's BMC account. Wrong credentials are `AuthenticationFailed`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pyghmi import exceptions as ipmi_errors
from pyghmi.ipmi import command as ipmi_command

from monitor.core.errors import (
    AdapterError,
    AdapterTimeout,
    AdapterUnavailable,
    AuthenticationFailed,
    NotFound,
)
from monitor.core.fence_config import IpmiSettings
from monitor.core.fencing import check_fence
from monitor.core.model import PowerState, Server

log = logging.getLogger(__name__)

T = TypeVar("T")

_AUTH_WORDS = ("password", "unauthorized", "privilege", "authenticat")
"""pyghmi's words for a refused session set-up (`Incorrect password provided`, `Unauthorized name`, …)."""


@dataclass(frozen=True, slots=True)
class IpmiTarget:
    host: str
    port: int
    username: str
    password: str

    @property
    def endpoint(self) -> str:
        return f"ipmi://{self.host}:{self.port}"


class IpmiFence:
    """`monitor.core.fence_levels.FenceLevel` over IPMI LAN."""

    name = "ipmi"

    def __init__(self, settings: IpmiSettings, *, workers: int = 4) -> None:
        self._s = settings
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ipmi-fence")

    # --- FenceLevel ------------------------------------------------------------------------------

    async def power_state(self, server: Server) -> PowerState:
        target = self.target(server)
        reply = await self._call(target, "chassis power status", lambda c: c.get_power())
        state = reply.get("powerstate") if isinstance(reply, dict) else None
        if state == "on":
            return PowerState.ON
        if state == "off":
            return PowerState.OFF
        raise AdapterError(f"chassis power status: unexpected answer {reply!r}", endpoint=target.endpoint)

    async def force_off(self, server: Server) -> None:
        """Chassis Control power down; a server already off is left as it is (no command sent)."""
        target = self.target(server)

        def off(c: Any) -> Any:
            if c.get_power().get("powerstate") == "off":
                return {"powerstate": "off"}
            check_fence()  # the last moment before the command leaves
            return c.set_power("off", wait=False)

        reply = await self._call(target, "chassis power off", off)
        log.info("IPMI chassis power off %s (%s): %s", server.id, target.endpoint, reply)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- plumbing ------------------------------------------------------------------------------------

    def target(self, server: Server) -> IpmiTarget:
        own = self._s.servers.get(server.id)
        bmc = server.bmc
        host = own.address if own and own.address else (urlsplit(bmc.url).hostname if bmc else None)
        if not host:
            raise NotFound(f"no IPMI address for {server.id}: no failover.fencing.ipmi.servers entry and "
                           "no BMC in the inventory")
        port = own.port if own and own.port else self._s.port
        username = (own.username if own and own.username else None) or self._s.username or \
            (bmc.username if bmc else None)
        secret = (own.password if own and own.password else None) or self._s.password
        password = secret.get_secret_value() if secret is not None else (bmc.password if bmc else None)
        if username is None or password is None:
            raise NotFound(f"no IPMI account for {server.id} (failover.fencing.ipmi or the inventory's BMC)")
        return IpmiTarget(host, port, username, password)

    async def _call(self, target: IpmiTarget, what: str, op: Callable[[Any], T]) -> T:
        def run() -> T:
            # pyghmi shares one session per BMC and account between Command objects and logs an idle
            # one out by itself (keepalive=False); a broken one is replaced at the next Command. The
            # account goes as bytes: pyghmi 1.6 keys its sessions by the bytes it encodes, and with str
            # a second Command for the same account waits forever on the first one's login.
            session = ipmi_command.Command(bmc=target.host, userid=target.username.encode(),
                                           password=target.password.encode(), port=target.port,
                                           keepalive=False)
            return op(session)

        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # the action's fence follows the call into the thread
        future = loop.run_in_executor(self._pool, functools.partial(context.run, run))
        try:
            async with asyncio.timeout(self._s.request_timeout):
                return await future
        except TimeoutError:
            raise AdapterTimeout(f"{what}: no answer within {self._s.request_timeout:g} s",
                                 endpoint=target.endpoint) from None
        except ipmi_errors.IpmiException as exc:
            raise _error(exc, what, target) from None
        except OSError as exc:
            raise AdapterUnavailable(f"{what}: {exc}", endpoint=target.endpoint) from exc


def _error(exc: Exception, what: str, target: IpmiTarget) -> AdapterError:
    text = str(exc.args[0]) if exc.args and exc.args[0] is not None else ""
    if not text or text == "None":
        return AdapterTimeout(f"{what}: the BMC did not answer (pyghmi gave up)", endpoint=target.endpoint)
    lowered = text.lower()
    if any(word in lowered for word in _AUTH_WORDS):
        return AuthenticationFailed(f"{what}: the BMC refused the session of {target.username}: {text}",
                                    endpoint=target.endpoint)
    if "timeout" in lowered or "timed out" in lowered or "no longer connected" in lowered:
        return AdapterTimeout(f"{what}: {text}", endpoint=target.endpoint)
    return AdapterError(f"{what}: {text}", endpoint=target.endpoint)


__all__ = ["IpmiFence", "IpmiTarget"]
