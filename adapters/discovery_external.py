"""The discovery service (the Systems Insight Manager role) reached through an HTTP webhook or a command.

Both receive the same request: an action (`remove_host`, `restore_host`, `discover`), the server id, the
host record (name and IP) and the profile. Answers:

webhook (`POST url`, JSON body) — 2xx with JSON:
  remove_host: `{"removed": {"name", "ip"} | null}`; restore_host: anything;
  discover: `{"found": bool, "host": {"name", "ip"} | null, "detail": "..."}`.
  Any other status is an error (the flow explains it; discovery is retried by the job's timer).
command (argv with `{action}`, `{server}`, `{host}`, `{ip}`, `{profile}` substituted; the same values in
the environment as FAILOVER_ACTION, FAILOVER_SERVER, FAILOVER_HOST, FAILOVER_IP, FAILOVER_PROFILE):
  exit 0: done (for discover: found); exit 3 (discover only): the host is not up yet; anything else, or
  the timeout, is an error. Standard output may carry the same JSON as the webhook's answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from monitor.core.config import CommandDiscovery, WebhookDiscovery
from monitor.core.errors import (
    AdapterError,
    AdapterTimeout,
    AdapterUnavailable,
    OperationRejected,
    error_for_status,
)
from monitor.core.model import HostRecord, Server
from monitor.core.ports import DiscoveryResult

Lookup = Callable[[str], Awaitable[Server]]
NOT_UP_YET = 3


def _host(data: Any) -> HostRecord | None:
    if isinstance(data, dict) and isinstance(data.get("name"), str) and isinstance(data.get("ip"), str):
        return HostRecord(data["name"], data["ip"])
    return None


class _External(ABC):
    """What both variants share: the request they build and the answers they understand."""

    def __init__(self, lookup: Lookup) -> None:
        self._lookup = lookup

    async def _request(self, action: str, server_id: str, host: HostRecord | None) -> dict[str, Any]:
        server = await self._lookup(server_id)
        if host is None and action == "remove_host":
            host = server.host
        return {"action": action, "server": server_id, "host": host.as_dict() if host else None,
                "profile": server.profile}

    @abstractmethod
    async def _call(self, request: dict[str, Any]) -> tuple[bool, Any]:
        """Send the request to the service: (done/found, its parsed answer)."""

    async def remove_host(self, server_id: str) -> HostRecord | None:
        request = await self._request("remove_host", server_id, None)
        _, answer = await self._call(request)
        if isinstance(answer, dict) and "removed" in answer:
            return _host(answer["removed"])
        return _host(request["host"])

    async def restore_host(self, server_id: str, record: HostRecord) -> None:
        await self._call(await self._request("restore_host", server_id, record))

    async def discover(self, server_id: str) -> DiscoveryResult:
        found, answer = await self._call(await self._request("discover", server_id, None))
        if isinstance(answer, dict):
            found = bool(answer.get("found", found))
            detail = str(answer.get("detail") or ("found" if found else "not up yet"))
            return DiscoveryResult(found, _host(answer.get("host")), detail)
        return DiscoveryResult(found, None, "found" if found else "not up yet")


class WebhookDiscoveryService(_External):
    def __init__(self, config: WebhookDiscovery, lookup: Lookup) -> None:
        super().__init__(lookup)
        self._cfg = config
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            ssl_ctx = ssl.create_default_context(cafile=self._cfg.ca_file) if self._cfg.ca_file else None
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._cfg.timeout),
                connector=aiohttp.TCPConnector(ssl=ssl_ctx) if ssl_ctx else None)
        return self._session

    async def _call(self, request: dict[str, Any]) -> tuple[bool, Any]:
        token = self._cfg.token
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        url = self._cfg.url
        try:
            async with self._http().post(url, json=request, headers=headers) as resp:
                text = await resp.text()
                if resp.status in (401, 403):
                    raise error_for_status(resp.status, f"discovery webhook refused us ({resp.status})",
                                           endpoint=url)
                if resp.status >= 300:
                    raise error_for_status(resp.status,
                                           f"discovery webhook answered {resp.status}: {text[:200]}",
                                           endpoint=url)
                try:
                    return True, json.loads(text) if text.strip() else None
                except ValueError:
                    return True, None
        except TimeoutError:
            raise AdapterTimeout(f"discovery webhook did not answer within {self._cfg.timeout:g} s",
                                 endpoint=url) from None
        except aiohttp.ClientError as exc:
            raise AdapterUnavailable(f"discovery webhook unreachable: {exc}", endpoint=url) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class CommandDiscoveryService(_External):
    def __init__(self, config: CommandDiscovery, lookup: Lookup) -> None:
        super().__init__(lookup)
        self._cfg = config

    async def _call(self, request: dict[str, Any]) -> tuple[bool, Any]:
        host = request["host"] or {}
        values = {"action": request["action"], "server": request["server"], "host": host.get("name", ""),
                  "ip": host.get("ip", ""), "profile": request["profile"] or ""}
        argv = [a.format(**values) for a in self._cfg.argv]
        env = {**os.environ, **{f"FAILOVER_{k.upper()}": v for k, v in values.items()}}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise AdapterUnavailable(f"discovery command {argv[0]}: {exc.strerror}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self._cfg.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise AdapterTimeout(f"discovery command {argv[0]} ran over {self._cfg.timeout:g} s") from None
        answer: Any = None
        with contextlib.suppress(ValueError):
            answer = json.loads(out) if out.strip() else None
        if proc.returncode == 0:
            return True, answer
        if proc.returncode == NOT_UP_YET and request["action"] == "discover":
            return False, answer
        raise OperationRejected(f"discovery command {argv[0]} {request['action']} exited "
                                f"{proc.returncode}: {err.decode(errors='replace').strip()[:200]}")

    async def close(self) -> None:
        """Nothing to release."""


def external_discovery(kind: str, webhook: WebhookDiscovery | None, command: CommandDiscovery | None,
                       lookup: Lookup) -> WebhookDiscoveryService | CommandDiscoveryService:
    if kind == "webhook" and webhook is not None:
        return WebhookDiscoveryService(webhook, lookup)
    if kind == "command" and command is not None:
        return CommandDiscoveryService(command, lookup)
    raise AdapterError(f"discovery kind {kind} is not configured")
