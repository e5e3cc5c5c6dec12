"""HTTP access to Dell OpenManage Enterprise / OME-Modular (managers.md section 2): one session, renewed
when it expires, a timeout on every call, and one mapping of OME's answers onto the adapter errors.

- Session: `POST /api/SessionService/Sessions {"UserName", "Password", "SessionType": "API"}` answers
  201 with `X-Auth-Token` (sent with every later request) and the session's `Id` (`DELETE
  /api/SessionService/Sessions('<Id>')` at close). A 401 on a request made with a token renews the session
  once and sends the request again (a 401 means OME did not act on it); a session unused for
  `session_idle` seconds is replaced before the next request.
- Errors: OME answers `{"error": {"message", "@Message.ExtendedInfo": [{"MessageId", "Message",
  "Resolution"}]}}`; the adapter's error carries OME's own words (`MessageId: Message`). 401/403 ->
  AuthenticationFailed, 404 -> NotFound, 502/503/504 -> AdapterUnavailable, any other 4xx/5xx ->
  OperationRejected (with the status); no answer in time -> AdapterTimeout; no connection ->
  AdapterUnavailable. A 409 naming a stale fencing token (the lab's) -> OmeFenceRefused.
- Actions (`fenced=True`) carry `monitor.core.fencing.fence_headers()` and are not sent once the current
  action's deadline has passed (`check_fence()`, right before each attempt).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from monitor.core.clock import Clock, SystemClock
from monitor.core.errors import (
    AdapterError,
    AdapterTimeout,
    AdapterUnavailable,
    AuthenticationFailed,
    FenceRefused,
    NotFound,
    OperationRejected,
)
from monitor.core.fencing import check_fence, fence_headers

log = logging.getLogger(__name__)

SESSIONS = "/api/SessionService/Sessions"
MAX_PAGES = 1000
"""A collection longer than this many pages is an error (a nextLink loop)."""


class OmeFenceRefused(FenceRefused):
    """OME (the lab's emulation) refused the request for a stale fencing token: another monitor has
    acted for the job with a newer epoch since; nothing was changed."""

    def __init__(self, message: str, *, endpoint: str) -> None:
        super().__init__(message)
        self.endpoint = endpoint


@dataclass(frozen=True, slots=True)
class OmeAccount:
    url: str
    """The appliance's base URL (`https://ome.example.com`)."""
    username: str
    password: str


def ome_message(data: object, text: str, status: int) -> str:
    """OME's own words for a failed request: the ExtendedInfo MessageId and Message, else the error's
    message, else the start of the body."""
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        infos = error.get("@Message.ExtendedInfo")
        parts: list[str] = []
        if isinstance(infos, list):
            for info in infos:
                if isinstance(info, dict) and info.get("Message"):
                    mid = info.get("MessageId")
                    parts.append(f"{mid}: {info['Message']}" if mid else str(info["Message"]))
        if not parts and isinstance(error.get("message"), str):
            parts.append(error["message"])
        if parts:
            return f"{'; '.join(parts)} (HTTP {status})"
    return f"HTTP {status}: {text[:200]}" if text else f"HTTP {status}"


def query(params: dict[str, str | int]) -> str:
    """OME's query string: spaces as %20, never '+' (OME's $filter does not read '+')."""
    return urlencode(params, quote_via=quote)


class OmeClient:
    """One OME appliance: `await client.request("GET", "/api/DeviceService/Devices")`. Reusable after
    `close()` (a new session is made on the next request)."""

    def __init__(self, account: OmeAccount, *, timeout: float = 30.0, session_idle: float = 1500.0,
                 verify_tls: bool = True, ca_file: str | None = None, clock: Clock | None = None,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.account = account
        self.url = account.url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._idle = session_idle
        self._verify_tls = verify_tls
        self._ca_file = ca_file
        self._clock = clock or SystemClock()
        self._http = session
        self._own_http = session is None
        self._tls: ssl.SSLContext | bool | None = None
        self._token: str | None = None
        self._session_id: str | None = None
        self._last_used = 0.0
        self._login_lock = asyncio.Lock()
        self.logins = 0
        """Sessions created so far (renewals included)."""

    # --- session -------------------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
            self._own_http = True
        return self._http

    def _ssl(self) -> ssl.SSLContext | bool:
        if self._tls is None:
            if not self.url.startswith("https://"):
                self._tls = True
            elif not self._verify_tls:
                self._tls = False
            else:
                try:
                    self._tls = ssl.create_default_context(cafile=self._ca_file)
                except (OSError, ssl.SSLError) as exc:
                    raise AdapterUnavailable(f"OME CA file {self._ca_file}: {exc}",
                                             endpoint=self.url) from exc
        return self._tls

    async def _login(self, stale: str | None) -> str:
        """A valid session token: the current one, or a new session when there is none, it is `stale`
        (the token a 401 answered), or it sat unused past `session_idle`."""
        async with self._login_lock:
            idle = self._clock.monotonic() - self._last_used > self._idle
            if self._token is not None and self._token != stale and not idle:
                return self._token
            if self._token is not None and self._token == stale:
                log.info("OME %s: the session expired; logging in again", self.url)
            self._token = self._session_id = None
            body = {"UserName": self.account.username, "Password": self.account.password,
                    "SessionType": "API"}
            status, data, text, headers = await self._send("POST", SESSIONS, body, {})
            if status not in (200, 201):
                raise self._error(status, data, text, "POST", SESSIONS)
            token = headers.get("X-Auth-Token")
            if not token:
                raise AuthenticationFailed(f"POST {SESSIONS}: OME answered {status} without X-Auth-Token",
                                           endpoint=self.url + SESSIONS)
            self._token = token
            self._session_id = str(data.get("Id")) if isinstance(data, dict) and data.get("Id") else None
            self._last_used = self._clock.monotonic()
            self.logins += 1
            return token

    async def logout(self) -> None:
        """DELETE the session (errors are logged: the appliance ends it at its idle timeout anyway)."""
        token, sid = self._token, self._session_id
        self._token = self._session_id = None
        if token is None or sid is None or self._http is None or self._http.closed:
            return
        path = f"{SESSIONS}('{sid}')"
        try:
            status, _, _, _ = await self._send("DELETE", path, None, {"X-Auth-Token": token})
            if status >= 400 and status != 404:
                log.warning("OME %s: logout answered %s", self.url, status)
        except AdapterError as exc:
            log.warning("OME %s: logout failed: %s", self.url, exc)

    async def close(self) -> None:
        await self.logout()
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None

    # --- requests ------------------------------------------------------------------------------------

    async def _send(self, method: str, path: str, body: object, headers: dict[str, str]
                    ) -> tuple[int, Any, str, dict[str, str]]:
        """One HTTP exchange within the timeout: (status, JSON or None, text, headers)."""
        endpoint = self.url + path
        try:
            async with self._client().request(method, endpoint, json=body, headers=headers,
                                              timeout=self._timeout, ssl=self._ssl()) as resp:
                text = await resp.text()
                try:
                    data = await resp.json(content_type=None) if text else None
                except ValueError:
                    data = None
                return resp.status, data, text, dict(resp.headers)
        except TimeoutError:
            raise AdapterTimeout(f"OME {method} {path}: no answer within {self._timeout.total:g} s",
                                 endpoint=endpoint) from None
        except aiohttp.ClientError as exc:
            raise AdapterUnavailable(f"OME {method} {path}: {exc}", endpoint=endpoint) from exc

    def _error(self, status: int, data: object, text: str, method: str, path: str
               ) -> AdapterError | OmeFenceRefused:
        endpoint = self.url + path
        message = f"OME {method} {path}: {ome_message(data, text, status)}"
        if status == 409 and isinstance(data, dict) and "stale_fence" in data:
            return OmeFenceRefused(message, endpoint=endpoint)
        if status in (401, 403):
            return AuthenticationFailed(message, endpoint=endpoint)
        if status == 404:
            return NotFound(message, endpoint=endpoint)
        if status in (502, 503, 504):
            return AdapterUnavailable(message, endpoint=endpoint)
        return OperationRejected(message, endpoint=endpoint, status=status)

    async def request(self, method: str, path: str, body: object = None, *, fenced: bool = False) -> Any:
        """One API call with the session (renewed once on a 401); the JSON answer, or None when empty.
        `fenced`: an action of the current job (fencing header, deadline checked before sending)."""
        headers: dict[str, str] = {"Accept": "application/json"}
        if fenced:
            headers.update(fence_headers())
        token = await self._login(None)
        for attempt in (1, 2):
            if fenced:
                check_fence()  # the last moment before the request leaves
            status, data, text, _ = await self._send(method, path, body, {**headers, "X-Auth-Token": token})
            self._last_used = self._clock.monotonic()
            if status == 401 and attempt == 1:
                token = await self._login(token)
                continue
            if status >= 400:
                raise self._error(status, data, text, method, path)
            return data
        raise AssertionError("unreachable")

    async def collection(self, path: str, params: dict[str, str | int] | None = None) -> list[dict[str, Any]]:
        """Every member of a collection, following `@odata.nextLink` page by page."""
        link: str | None = f"{path}?{query(params)}" if params else path
        members: list[dict[str, Any]] = []
        pages = 0
        while link:
            pages += 1
            if pages > MAX_PAGES:
                raise AdapterError(f"OME GET {path}: more than {MAX_PAGES} pages", endpoint=self.url + path)
            data = await self.request("GET", link)
            if not isinstance(data, dict) or not isinstance(data.get("value"), list):
                raise AdapterError(f"OME GET {link}: not a collection (no value list)",
                                   endpoint=self.url + link)
            members.extend(m for m in data["value"] if isinstance(m, dict))
            nxt = data.get("@odata.nextLink")
            link = _relative(nxt) if isinstance(nxt, str) and nxt else None
        return members


def _relative(link: str) -> str:
    """A nextLink as a path under the appliance ("/api/..."), whether OME gave it absolute or not."""
    if "://" in link:
        link = "/" + link.split("://", 1)[1].split("/", 1)[-1]
    return link if link.startswith("/api/") else "/api/" + link.lstrip("/").removeprefix("api/")
