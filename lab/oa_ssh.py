"""The enclosures' Onboard Administrators: one SSH server per enclosure speaking the c-Class OA CLI, on
127.0.0.1 and a free port, against the lab world's blades of that enclosure (by bay number).

What a client sees (the commands and the `Power:` line are those fence-agents' fence_hpblade sends and
parses; the rest of the wording is the lab's, see lab/API.md "Onboard Administrator"):

    <banner>
    enc1oa> show server status 3
    Blade #3 Status:
            Power: On
            Current Wattage used: 215
            Health: OK
            Unit Identification LED: Off
    enc1oa> poweroff server 3 force
    Blade 3 is powering off.
    enc1oa> exit

Password authentication with the lab's OA account; one host key, generated at start, for every OA of
the lab. A power command acts on the world through `World.enclosure_power` (via "oa"): it works while the
blade's BMC is down, and carries no fencing token (the OA CLI has none).
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Any, Literal

import asyncssh

from lab.config import OaConfig
from lab.world import LabError, World

__all__ = ["OaFleet", "OaStartError"]

log = logging.getLogger("lab.oa")

BANNER = ("\nHP BladeSystem Onboard Administrator (lab simulator)\n"
          "WARNING: This is a private system. Do not attempt to login unless you are an authorized user.\n")


class OaStartError(Exception):
    """An OA could not start listening."""


@dataclass(frozen=True)
class OaEndpoint:
    enclosure: str
    host: str
    port: int


class _Server(asyncssh.SSHServer):
    def __init__(self, fleet: OaFleet) -> None:
        self._fleet = fleet
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._fleet.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._fleet.connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is required

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        cfg = self._fleet.config
        user_ok = hmac.compare_digest(username.encode(), cfg.username.encode())
        password_ok = hmac.compare_digest(password.encode(), cfg.password.encode())
        return user_ok and password_ok


class OaFleet:
    """Every OA of the lab: start, stop, and where each listens."""

    def __init__(self, world: World, config: OaConfig) -> None:
        self.world = world
        self.config = config
        self.endpoints: dict[str, OaEndpoint] = {}
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self._key = asyncssh.generate_private_key("ssh-ed25519")
        self._acceptors: list[asyncssh.SSHAcceptor] = []

    @property
    def host_key(self) -> str:
        """The OAs' public host key, OpenSSH format (`ssh-ed25519 AAAA…`)."""
        return self._key.export_public_key().decode().strip()

    def known_hosts(self) -> str:
        """A known_hosts file's lines naming every OA of the lab."""
        return "".join(f"[{e.host}]:{e.port} {self.host_key}\n" for e in self.endpoints.values())

    def view(self) -> dict[str, Any]:
        enclosures = {e.enclosure: {"host": e.host, "port": e.port} for e in self.endpoints.values()}
        return {"host_key": self.host_key, "enclosures": enclosures}

    async def start(self) -> None:
        enclosures = self.config.enclosures or list(self.world.enclosures)
        unknown = [e for e in enclosures if e not in self.world.enclosures]
        if unknown:
            raise OaStartError(f"oa.enclosures: unknown enclosure(s) {', '.join(unknown)}")
        for enclosure in enclosures:
            try:
                acceptor = await asyncssh.create_server(
                    lambda: _Server(self), "127.0.0.1", 0, server_host_keys=[self._key],
                    process_factory=self._session_of(enclosure), encoding="utf-8", line_editor=True,
                    keepalive_interval=0, login_timeout=30,
                )
            except OSError as exc:
                raise OaStartError(f"cannot start the OA of {enclosure}: {exc.strerror or exc}") from exc
            self._acceptors.append(acceptor)
            port = acceptor.sockets[0].getsockname()[1]
            self.endpoints[enclosure] = OaEndpoint(enclosure, "127.0.0.1", int(port))
        log.info("lab OAs: %s", ", ".join(f"{e.enclosure} {e.host}:{e.port}"
                                          for e in self.endpoints.values()))

    async def stop(self) -> None:
        for acceptor in self._acceptors:
            acceptor.close()
        for conn in list(self.connections):
            conn.close()
        for acceptor in self._acceptors:
            await acceptor.wait_closed()
        self._acceptors.clear()
        self.connections.clear()

    # --- the CLI -----------------------------------------------------------------------------------

    def _session_of(self, enclosure: str) -> Any:
        async def session(process: asyncssh.SSHServerProcess[str]) -> None:
            prompt = f"{enclosure}oa> "
            process.stdout.write(BANNER + "\n" + prompt)
            while True:
                try:
                    line = await process.stdin.readline()
                except asyncssh.TerminalSizeChanged:
                    continue
                except asyncssh.BreakReceived:
                    break
                except (OSError, asyncssh.Error):
                    return
                if not line:
                    break
                words = line.split()
                if [w.lower() for w in words] in (["exit"], ["quit"], ["logout"]):
                    break
                if words:
                    process.stdout.write(self.run(enclosure, words))
                process.stdout.write(prompt)
            process.exit(0)

        return session

    def run(self, enclosure: str, words: list[str]) -> str:
        """One command line; the text the OA prints before its next prompt."""
        low = [w.lower() for w in words]
        try:
            if low[:3] == ["show", "server", "status"] and len(low) == 4:
                return self._status(enclosure, low[3])
            if low[:2] == ["poweroff", "server"] and len(low) in (3, 4) and low[3:] in ([], ["force"]):
                return self._power(enclosure, low[2], "ForceOff")
            if low[:2] == ["poweron", "server"] and len(low) == 3:
                return self._power(enclosure, low[2], "On")
            if low[:3] == ["show", "enclosure", "info"]:
                return (f"\nEnclosure Information:\n\tEnclosure Name: {enclosure}\n"
                        "\tEnclosure Type: BladeSystem c7000 Enclosure G2\n\tPart Number: 507019-B21\n\n")
        except LabError as exc:
            return f"\n{exc.message}\n\n"
        return f"\nInvalid command: {' '.join(words)}\n\n"

    def _bay(self, enclosure: str, text: str) -> int | None:
        return int(text) if text.isdigit() and 1 <= int(text) <= 16 else None

    def _status(self, enclosure: str, bay_text: str) -> str:
        bay = self._bay(enclosure, bay_text)
        if bay is None:
            return f"\nInvalid bay number: {bay_text}\n\n"
        server = self.world.servers.get(f"{enclosure}-bay{bay}")
        if server is None or not server.installed or server.product is None:
            return f"\nBlade #{bay} Status:\n\tThere is no blade installed in bay {bay}.\n\n"
        power = "Off" if server.power == "Off" else "On"  # a blade powering off still draws power
        watts = 0 if power == "Off" else 215
        return (f"\nBlade #{bay} Status:\n\tPower: {power}\n\tCurrent Wattage used: {watts}\n"
                f"\tHealth: {server.health}\n\tUnit Identification LED: Off\n\n")

    def _power(self, enclosure: str, bay_text: str, action: Literal["ForceOff", "On"]) -> str:
        bay = self._bay(enclosure, bay_text)
        if bay is None:
            return f"\nInvalid bay number: {bay_text}\n\n"
        server_id = f"{enclosure}-bay{bay}"
        if server_id not in self.world.servers:
            return f"\nThere is no blade installed in bay {bay}.\n\n"
        before = self.world.servers[server_id].power
        self.world.enclosure_power(server_id, action, "oa")
        if action == "ForceOff":
            return (f"\nBlade {bay} is already powered off.\n\n" if before in ("Off", "PoweringOff")
                    else f"\nBlade {bay} is powering off.\n\n")
        return (f"\nBlade {bay} is already powered on.\n\n" if before in ("On", "PoweringOn")
                else f"\nPowering on blade {bay}.\n\n")
