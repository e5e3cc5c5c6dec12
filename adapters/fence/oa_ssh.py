"""The `oa` fence level: a c-Class Onboard Administrator's CLI over SSH (asyncssh).

The dialogue is the one fence-agents' `fence_hpblade` has with an OA (facts from its source; no code):
log in, wait for the prompt (`<enclosure name>oa>`, fence_hpblade's default `c7000oa>`), then
- `show server status BAY`: the line `Power: On` / `Power: Off` is the blade's power (any other value, or
  no such line, is not a reading: a server the OA cannot report is not Off);
- `poweroff server BAY force`: the hard power-off (press and hold); the OA's answer is not parsed, the
  result is confirmed by reading the status again;
- `exit` to log out.

The OA's CLI is not a POSIX shell: each enclosure has one interactive session (a PTY), opened on first use
and kept; commands are written to it one at a time and the output read up to the next prompt. Any error
or timeout drops the session (the next call logs in again). A server is found by its `enclosure` (the
OA's address in `failover.fencing.oa.enclosures`) and its `bay`.

Errors: wrong credentials or an unknown host key are `AuthenticationFailed`, a refused or broken
connection `AdapterUnavailable`, no answer within `request_timeout` `AdapterTimeout`. The forced
power-off is checked against the action's deadline (`monitor.core.fencing.check_fence`) right before it is
written.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from monitor.core.errors import (
    AdapterError,
    AdapterTimeout,
    AdapterUnavailable,
    AuthenticationFailed,
    NotFound,
)
from monitor.core.fence_config import OaSettings
from monitor.core.fencing import check_fence
from monitor.core.model import PowerState, Server

log = logging.getLogger(__name__)

POWER_LINE = re.compile(r"^\s*Power:\s*(.*?)\s*$", re.MULTILINE)
"""fence_hpblade's reading of `show server status`: the value after `Power:`."""

MAX_OUTPUT = 256 * 1024
"""Characters read for one command at most (an OA that never shows its prompt is not read forever)."""


@dataclass
class _Session:
    conn: asyncssh.SSHClientConnection
    process: asyncssh.SSHClientProcess[str]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class OaSsh:
    """`monitor.core.fence_levels.FenceLevel` through each enclosure's Onboard Administrator."""

    name = "oa"

    def __init__(self, settings: OaSettings, *, known_hosts: Path | None = None) -> None:
        self._s = settings
        self._known_hosts = known_hosts
        self._prompt = re.compile(settings.prompt)
        self._sessions: dict[str, _Session] = {}
        self._opening: dict[str, asyncio.Lock] = {}

    # --- FenceLevel ------------------------------------------------------------------------------

    async def power_state(self, server: Server) -> PowerState:
        output = await self._command(server, f"show server status {server.bay}")
        match = POWER_LINE.search(output)
        if match is None:
            raise AdapterError(f"the OA of {server.enclosure} shows no power state for bay {server.bay}: "
                               f"{_first_line(output)}", endpoint=self._endpoint(server))
        value = match.group(1)
        state = PowerState.parse(value)
        if state not in (PowerState.ON, PowerState.OFF):
            raise AdapterError(f"the OA of {server.enclosure} shows bay {server.bay} Power: {value!r}",
                               endpoint=self._endpoint(server))
        return state

    async def force_off(self, server: Server) -> None:
        """`poweroff server BAY force`. Already off is not an error (the OA says so and does nothing)."""
        output = await self._command(server, f"poweroff server {server.bay} force", mutating=True)
        log.info("OA of %s: poweroff server %d force: %s", server.enclosure, server.bay, _first_line(output))

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await self._logout(session)

    # --- the dialogue ------------------------------------------------------------------------------

    def _target(self, server: Server) -> tuple[str, int, str, str]:
        target = self._s.enclosure(server.enclosure)
        if target is None:
            raise NotFound(f"no Onboard Administrator configured for enclosure {server.enclosure} "
                           "(failover.fencing.oa.enclosures)")
        host, port, username, password = target
        return host, port, username, password.get_secret_value()

    def _endpoint(self, server: Server) -> str:
        target = self._s.enclosure(server.enclosure)
        return f"ssh://{target[0]}:{target[1]}" if target else f"oa:{server.enclosure}"

    async def _command(self, server: Server, command: str, *, mutating: bool = False) -> str:
        """Run one CLI command on the enclosure's OA and return what it printed before the next prompt."""
        host, port, username, password = self._target(server)
        endpoint = f"ssh://{host}:{port}"
        key = server.enclosure
        written = answered = False
        try:
            async with asyncio.timeout(self._s.request_timeout):
                session = await self._session(key, host, port, username, password, endpoint)
                async with session.lock:
                    if mutating:
                        check_fence()  # the last moment before the command leaves
                    written = True
                    session.process.stdin.write(command + "\n")
                    output = await self._read_to_prompt(session, endpoint)
                    answered = True
        except TimeoutError:
            raise AdapterTimeout(f"the OA gave no answer within {self._s.request_timeout:g} s to "
                                 f"{command!r}", endpoint=endpoint) from None
        except (OSError, asyncssh.Error) as exc:
            raise AdapterUnavailable(f"OA session broke during {command!r}: {exc}", endpoint=endpoint) \
                from exc
        finally:
            if written and not answered:
                # A command whose answer was not read to its prompt (an error, a timeout, the caller
                # cancelled): its output would be taken for the next command's. Log in afresh next time.
                self._drop(key)
        return _strip_echo(output, command)

    async def _session(self, key: str, host: str, port: int, username: str, password: str,
                       endpoint: str) -> _Session:
        session = self._sessions.get(key)
        if session is not None and not session.process.is_closing():
            return session
        lock = self._opening.setdefault(key, asyncio.Lock())
        async with lock:
            session = self._sessions.get(key)
            if session is not None and not session.process.is_closing():
                return session
            session = await self._login(host, port, username, password, endpoint)
            self._sessions[key] = session
            return session

    async def _login(self, host: str, port: int, username: str, password: str, endpoint: str) -> _Session:
        known_hosts = str(self._known_hosts) if self._known_hosts is not None else None
        try:
            conn = await asyncssh.connect(
                host, port, username=username, password=password, known_hosts=known_hosts,
                client_keys=None, agent_path=None, config=None, preferred_auth="password",
                connect_timeout=self._s.request_timeout, login_timeout=self._s.request_timeout,
            )
        except asyncssh.PermissionDenied as exc:
            raise AuthenticationFailed(f"the OA refused the login of {username}: {exc.reason}",
                                       endpoint=endpoint) from None
        except asyncssh.HostKeyNotVerifiable as exc:
            raise AuthenticationFailed(f"the OA's SSH host key is not the one in known_hosts: {exc.reason}",
                                       endpoint=endpoint) from None
        except (OSError, asyncssh.Error) as exc:
            raise AdapterUnavailable(f"cannot reach the OA: {exc}", endpoint=endpoint) from exc
        try:
            process = await conn.create_process(term_type="vt100", term_size=(200, 50))
            session = _Session(conn, process)
            await self._read_to_prompt(session, endpoint)  # the banner, then the first prompt
        except BaseException:
            conn.close()
            raise
        return session

    async def _read_to_prompt(self, session: _Session, endpoint: str) -> str:
        text = ""
        while True:
            chunk = await session.process.stdout.read(4096)
            if not chunk:
                raise AdapterUnavailable("the OA closed the session", endpoint=endpoint)
            text += chunk.replace("\r", "")
            match = self._prompt.search(text)
            if match is not None:
                before = text[:match.start()]
                return before.rsplit("\n", 1)[0] if "\n" in before else ""
            if len(text) > MAX_OUTPUT:
                raise AdapterError(f"the OA printed {len(text)} characters without its prompt",
                                   endpoint=endpoint)

    def _drop(self, key: str) -> None:
        session = self._sessions.pop(key, None)
        if session is not None:
            session.conn.close()

    async def _logout(self, session: _Session) -> None:
        """`exit`, then close the connection (best effort, bounded)."""
        try:
            async with asyncio.timeout(min(self._s.request_timeout, 5.0)):
                if not session.process.is_closing():
                    session.process.stdin.write("exit\n")
                    await session.process.wait_closed()
        except (TimeoutError, OSError, asyncssh.Error):
            pass
        session.conn.close()
        try:
            async with asyncio.timeout(5.0):
                await session.conn.wait_closed()
        except (TimeoutError, OSError, asyncssh.Error):
            pass


def _strip_echo(output: str, command: str) -> str:
    """The OA echoes the command line on a PTY: drop it."""
    lines = output.split("\n")
    while lines and (not lines[0].strip() or lines[0].strip().endswith(command)):
        lines.pop(0)
    return "\n".join(lines)


def _first_line(output: str) -> str:
    for line in output.splitlines():
        if line.strip():
            return line.strip()[:200]
    return "(nothing)"


__all__ = ["POWER_LINE", "OaSsh"]
