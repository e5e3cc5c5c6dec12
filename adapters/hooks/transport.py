"""How a request reaches the site's hook: an HTTP POST (webhook) or a process (command).

Both send one JSON object `{"action": ..., ...}` and read one JSON object back. Mutating actions (`move`,
`spare`) are checked against the job's fence right before they are sent and carry its token (the
`X-Failover-Fence` header, or `FAILOVER_FENCE` in the command's environment). Reads are retried on a
timeout, an unreachable hook or a 5xx (`retries`, waiting `retry_interval`, then twice as long each time);
a mutating action is sent once (the flow asks `find_move` when its answer is unclear).

Command exit codes: 0 done (the answer on standard output), 2 refused (nothing was started), 4 unknown
(the task or profile), 75 temporarily unavailable (retried like a timeout); anything else, a signal or
the timeout is an error whose outcome is unknown. Standard error is kept (its last 2 KiB) in the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
from abc import ABC, abstractmethod
from typing import Any, Protocol

import aiohttp

from monitor.core.clock import Clock
from monitor.core.config import CommandHookConfig, WebhookHookConfig
from monitor.core.errors import (
    AdapterError,
    AdapterTimeout,
    AdapterUnavailable,
    NotFound,
    OperationRejected,
    error_for_status,
)
from monitor.core.fencing import FENCE_HEADER, check_fence, current_fence, fence_headers, read_headers

MUTATING = frozenset({"move", "spare"})
EXIT_REFUSED, EXIT_UNKNOWN, EXIT_TEMPFAIL = 2, 4, 75
STDERR_KEPT = 2048
STDOUT_MAX = 1 << 20


class Hook(Protocol):
    async def call(self, request: dict[str, Any]) -> dict[str, Any]: ...

    async def close(self) -> None: ...


def _retryable(exc: AdapterError) -> bool:
    if isinstance(exc, AdapterTimeout | AdapterUnavailable):
        return True
    return isinstance(exc, OperationRejected) and exc.status is not None and exc.status >= 500


def _answer(raw: bytes | str, what: str, endpoint: str | None = None) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        text = raw if isinstance(raw, str) else raw.decode(errors="replace")
        raise AdapterError(f"{what} answered something that is not JSON: {text.strip()[:200]!r}",
                           endpoint=endpoint) from None
    if not isinstance(data, dict):
        raise AdapterError(f"{what} answered {type(data).__name__}, not a JSON object", endpoint=endpoint)
    return data


def _fenced(request: dict[str, Any]) -> dict[str, Any]:
    """The request with the job's fencing token in it (job, epoch, monitor; null outside a job)."""
    fence = current_fence()
    return {**request, "job": fence.job if fence else None, "epoch": fence.epoch if fence else None,
            "monitor": fence.monitor if fence else None}


class _Retrying(ABC):
    def __init__(self, clock: Clock, retries: int, interval: float) -> None:
        self._clock = clock
        self._retries = retries
        self._interval = interval

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        mutating = request["action"] in MUTATING
        wait = self._interval
        attempt = 0
        while True:
            if mutating:
                check_fence()
            try:
                return await self._send(_fenced(request) if mutating else request, mutating)
            except AdapterError as exc:
                once = mutating and request["action"] == "move"
                if once or attempt >= self._retries or not _retryable(exc):
                    raise
            attempt += 1
            await self._clock.sleep(wait)
            wait *= 2

    @abstractmethod
    async def _send(self, request: dict[str, Any], mutating: bool) -> dict[str, Any]:
        """Send one request to the hook; its answer."""


class WebhookHook(_Retrying):
    """POST the request as JSON to `url` with `Authorization: Bearer TOKEN`; a 2xx JSON object is the
    answer; any other status maps through `error_for_status` (a 4xx refusal, a 5xx unclear)."""

    def __init__(self, cfg: WebhookHookConfig, clock: Clock, *, ca_file: str | None = None) -> None:
        super().__init__(clock, cfg.retries, cfg.retry_interval)
        self._cfg = cfg
        self._ca_file = ca_file
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            ssl_opt: ssl.SSLContext | bool | None = None
            if self._ca_file:
                ssl_opt = ssl.create_default_context(cafile=self._ca_file)
            elif not self._cfg.verify_tls:
                ssl_opt = False
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._cfg.timeout),
                connector=aiohttp.TCPConnector(ssl=ssl_opt) if ssl_opt is not None else None)
        return self._session

    async def _send(self, request: dict[str, Any], mutating: bool) -> dict[str, Any]:
        url = self._cfg.url
        token = self._cfg.token
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        headers.update(fence_headers() if mutating else read_headers())
        what = f"manager webhook {request['action']}"
        try:
            async with self._http().post(url, json=request, headers=headers) as resp:
                text = await resp.text()
                if resp.status >= 300:
                    raise error_for_status(resp.status,
                                           f"{what} answered {resp.status}: {text.strip()[:300]}",
                                           endpoint=url)
                return _answer(text, what, url)
        except TimeoutError:
            raise AdapterTimeout(f"{what} did not answer within {self._cfg.timeout:g} s",
                                 endpoint=url) from None
        except aiohttp.ClientError as exc:
            raise AdapterUnavailable(f"{what}: hook unreachable: {exc}", endpoint=url) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class CommandHook(_Retrying):
    """Run `argv` with the request as JSON on standard input; the answer is the JSON object on standard
    output. The environment carries FAILOVER_ACTION and, for a mutating action, FAILOVER_FENCE."""

    def __init__(self, cfg: CommandHookConfig, clock: Clock) -> None:
        super().__init__(clock, cfg.retries, cfg.retry_interval)
        self._cfg = cfg

    async def _send(self, request: dict[str, Any], mutating: bool) -> dict[str, Any]:
        argv = list(self._cfg.argv)
        action = request["action"]
        what = f"manager command {argv[0]} {action}"
        env = {**os.environ, **self._cfg.env, "FAILOVER_ACTION": action}
        fence = fence_headers() if mutating else {}
        env.pop("FAILOVER_FENCE", None)
        if FENCE_HEADER in fence:
            env["FAILOVER_FENCE"] = fence[FENCE_HEADER]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise AdapterUnavailable(f"{what}: {exc.strerror or exc}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(json.dumps(request).encode()),
                                              self._cfg.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the whole group: a playbook's children too
            await proc.wait()
            raise AdapterTimeout(f"{what} ran over {self._cfg.timeout:g} s (killed)") from None
        finally:
            if proc.returncode is None:  # cancelled: do not leave the process behind
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        stderr = err[-STDERR_KEPT:].decode(errors="replace").strip()
        tail = f": {stderr}" if stderr else ""
        code = proc.returncode
        if code == 0:
            if len(out) > STDOUT_MAX:
                raise AdapterError(f"{what} wrote more than {STDOUT_MAX} bytes on standard output")
            return _answer(out, what)
        if code == EXIT_REFUSED:
            raise OperationRejected(f"{what} refused (exit {code}){tail}", status=409)
        if code == EXIT_UNKNOWN:
            raise NotFound(f"{what}: unknown (exit {code}){tail}")
        if code == EXIT_TEMPFAIL:
            raise AdapterUnavailable(f"{what}: temporarily unavailable (exit {code}){tail}")
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited {code}"
        raise AdapterError(f"{what} {how}{tail}")

    async def close(self) -> None:
        """Nothing to release: each request is its own process."""
