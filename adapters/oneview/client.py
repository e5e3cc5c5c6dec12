"""HTTP access to an HPE OneView appliance (REST API, aiohttp): version, session, errors, collections.

- **Version.** Every call carries `X-API-Version`: the configured one, or the appliance's
  `currentVersion` (`GET /rest/version`, read once). A configured version outside the appliance's
  [minimumVersion, currentVersion] is a clear error before anything else is sent.
- **Session.** `POST /rest/login-sessions` (`loginMsgAck: true`) gives the `sessionID`, sent in the
  `auth` header. A 401 (the session expired, was dropped, or the appliance restarted) logs in again once
  and repeats the request: a 401 means the appliance did not act on it, so a mutating request may be
  repeated too. Logins are serialised (one at a time for every request waiting on it).
- **Fencing.** A mutating request carries `monitor.core.fencing.fence_headers()` and is not sent once the
  action may no longer act (`check_fence()` right before it leaves, also before a repeat).
- **Errors.** One mapping (`error_for`) from the HTTP status and OneView's ErrorMessage
  (`errorCode`, `message`, `details`, `recommendedActions`) to the adapter errors of monitor.core.ports, with
  the appliance's own words in the message.
- **Timeouts.** Every request has its own time limit (`timeout`); an overrun is `AdapterTimeout`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy

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

MUTATING = frozenset({"POST", "PUT", "DELETE", "PATCH"})
MAX_PAGES = 1000
"""A collection longer than this many pages is an error (a nextPageUri that never ends)."""


class OneViewFenceRejected(FenceRefused):
    """The appliance (the lab's emulator, which checks the fencing token) refused the request for a stale
    token: another monitor acted for the job with a newer epoch; nothing was changed."""

    def __init__(self, message: str, *, endpoint: str) -> None:
        super().__init__(message)
        self.endpoint = endpoint


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    data: Any


def oneview_message(data: Any, text: str) -> str:
    """The appliance's own words from an ErrorMessage body: `message [errorCode]; details; actions`."""
    if not isinstance(data, dict):
        return text.strip()[:300] or "no message"
    message = str(data.get("message") or data.get("details") or "no message").strip()
    code = data.get("errorCode")
    parts = [f"{message} [{code}]" if code else message]
    details = data.get("details")
    if details and str(details).strip() and str(details).strip() != message:
        parts.append(str(details).strip())
    actions = data.get("recommendedActions")
    if isinstance(actions, list) and actions:
        parts.append("recommended: " + " ".join(str(a) for a in actions))
    return "; ".join(parts)


def error_for(method: str, path: str, status: int, data: Any, text: str, endpoint: str) -> Exception:
    """The adapter error for an answer of status >= 400 (the one mapping of this adapter)."""
    said = f"OneView {method} {path}: {oneview_message(data, text)} (HTTP {status})"
    if status == 409 and isinstance(data, dict) and "stale_fence" in data:
        return OneViewFenceRejected(said, endpoint=endpoint)
    if status in (401, 403):
        return AuthenticationFailed(said, endpoint=endpoint)
    if status == 404:
        return NotFound(said, endpoint=endpoint)
    if status in (408, 504):
        return AdapterTimeout(said, endpoint=endpoint)
    if status == 503:
        return AdapterUnavailable(said, endpoint=endpoint)
    return OperationRejected(said, endpoint=endpoint, status=status)


class OneViewClient:
    """One appliance: its API version, one session, a time limit on every request."""

    def __init__(self, address: str, username: str, password: str, *, login_domain: str = "Local",
                 api_version: int | None = None, tls: ssl.SSLContext | bool = True,
                 timeout: float = 10.0, session: aiohttp.ClientSession | None = None) -> None:
        parts = urlsplit(address.strip())
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"OneView address {address!r}: expected https://HOST[:PORT]")
        self.address = f"https://{parts.netloc}"
        self._username = username
        self._password = password
        self._domain = login_domain
        self._wanted_version = api_version
        self.version: int | None = None
        self._tls = tls
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._own_session = session is None
        self._sid: str | None = None
        self._login_lock = asyncio.Lock()
        self.logins = 0
        """Sessions opened so far (a renewal after a 401 is one more)."""

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        """Log out (best effort, within the time limit), then close the HTTP session."""
        if self._sid is not None and self._session is not None and not self._session.closed:
            try:
                await self._send("DELETE", "/rest/login-sessions", None, {}, auth=True, fenced=False)
            except (AdapterError, FenceRefused) as exc:
                log.debug("OneView logout: %s", exc)
            self._sid = None
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # --- the wire --------------------------------------------------------------------------------------

    async def _send(self, method: str, path: str, body: Any, headers: dict[str, str], *, auth: bool,
                    fenced: bool) -> Reply:
        endpoint = f"{self.address}{path}"
        sent: dict[str, str] = {"Accept": "application/json", **headers}
        if self.version is not None:
            sent["X-API-Version"] = str(self.version)
        if auth and self._sid is not None:
            sent["auth"] = self._sid
        if fenced:
            sent.update(fence_headers())
        try:
            if fenced:
                check_fence()  # the last moment before the request leaves
            async with self._http().request(method, endpoint, json=body, headers=sent, ssl=self._tls,
                                            timeout=self._timeout) as resp:
                text = await resp.text()
                try:
                    data = await resp.json(content_type=None) if text.strip() else None
                except ValueError:
                    data = None
                return Reply(resp.status, resp.headers, data if data is not None else text)
        except TimeoutError:
            raise AdapterTimeout(f"OneView {method} {path}: no answer within "
                                 f"{self._timeout.total:g} s", endpoint=endpoint) from None
        except aiohttp.ClientError as exc:
            raise AdapterUnavailable(f"OneView {method} {path}: {exc}", endpoint=endpoint) from exc

    def _check(self, method: str, path: str, reply: Reply) -> Reply:
        if reply.status >= 400:
            data = reply.data if isinstance(reply.data, dict) else None
            text = reply.data if isinstance(reply.data, str) else ""
            raise error_for(method, path, reply.status, data, text, f"{self.address}{path}")
        return reply

    async def _ensure_version(self) -> None:
        if self.version is not None:
            return
        reply = self._check("GET", "/rest/version",
                            await self._send("GET", "/rest/version", None, {}, auth=False, fenced=False))
        data = reply.data if isinstance(reply.data, dict) else {}
        current, minimum = data.get("currentVersion"), data.get("minimumVersion")
        if not isinstance(current, int):
            raise AdapterError(f"OneView GET /rest/version: no currentVersion in {str(reply.data)[:200]}",
                               endpoint=f"{self.address}/rest/version")
        wanted = self._wanted_version
        if wanted is not None:
            low = minimum if isinstance(minimum, int) else 0
            if not low <= wanted <= current:
                raise AdapterError(f"OneView at {self.address} supports API versions {low} to {current}, "
                                   f"not the configured {wanted}", endpoint=f"{self.address}/rest/version")
            self.version = wanted
        else:
            self.version = current

    async def _login(self, stale: str | None) -> None:
        async with self._login_lock:
            if self._sid is not None and self._sid != stale:
                return  # another request logged in meanwhile
            self._sid = None
            body = {"userName": self._username, "password": self._password,
                    "authLoginDomain": self._domain, "loginMsgAck": True}
            reply = self._check("POST", "/rest/login-sessions",
                                await self._send("POST", "/rest/login-sessions", body, {}, auth=False,
                                                 fenced=False))
            sid = reply.data.get("sessionID") if isinstance(reply.data, dict) else None
            if not isinstance(sid, str) or not sid:
                raise AuthenticationFailed(f"OneView login at {self.address}: no sessionID in the answer",
                                           endpoint=f"{self.address}/rest/login-sessions")
            self._sid = sid
            self.logins += 1
            log.info("OneView %s: session opened (%d so far)", self.address, self.logins)

    async def request(self, method: str, path: str, body: Any = None, *,
                      headers: dict[str, str] | None = None) -> Reply:
        """One call; a 401 logs in again once and repeats it. Raises the adapter errors."""
        method = method.upper()
        await self._ensure_version()
        if self._sid is None:
            await self._login(None)
        fenced = method in MUTATING
        used = self._sid
        reply = await self._send(method, path, body, headers or {}, auth=True, fenced=fenced)
        if reply.status == 401:
            log.info("OneView %s: %s %s answered 401; logging in again", self.address, method, path)
            await self._login(used)
            reply = await self._send(method, path, body, headers or {}, auth=True, fenced=fenced)
        return self._check(method, path, reply)

    async def get(self, path: str) -> dict[str, Any]:
        reply = await self.request("GET", path)
        if not isinstance(reply.data, dict):
            raise AdapterError(f"OneView GET {path}: the answer is not a JSON object",
                               endpoint=f"{self.address}{path}")
        return reply.data

    async def get_all(self, path: str) -> list[dict[str, Any]]:
        """Every member of a collection, following nextPageUri."""
        members: list[dict[str, Any]] = []
        seen: set[str] = set()
        next_path: str | None = path
        while next_path is not None:
            if next_path in seen or len(seen) >= MAX_PAGES:
                raise AdapterError(f"OneView GET {path}: the collection's pages do not end",
                                   endpoint=f"{self.address}{path}")
            seen.add(next_path)
            page = await self.get(next_path)
            items = page.get("members")
            if not isinstance(items, list):
                raise AdapterError(f"OneView GET {next_path}: not a collection (no members)",
                                   endpoint=f"{self.address}{next_path}")
            members += [m for m in items if isinstance(m, dict)]
            nxt = page.get("nextPageUri")
            next_path = nxt if isinstance(nxt, str) and nxt else None
        return members
