"""The manager (VCEM role: profile moves and spare flags) and the Systems Insight Manager role (host
records, discovery)."""

from __future__ import annotations

from typing import Any

from lab.fencing import FenceToken
from lab.world.errors import Conflict, InjectedFailure, LabError, NotFound
from lab.world.state import HostRecord, Profile, Server, WorldState, wall_time


class ProfilesPart(WorldState):
    def move(self, profile_id: str, from_id: str, to_id: str, token: FenceToken | None = None, *,
             admitted: bool = False) -> Profile:
        """Move a profile between servers, atomically; every refusal leaves the world unchanged.

        The source's power is not checked (as a manager that does not check); moving off a server that
        is not Off is recorded as a violation (`move_off_running`). `admitted`: the request carrying
        `token` passed the fence earlier (a manager task that takes effect later, lab.oneview, lab.ome):
        it is logged with that token and not held against the epochs seen since."""
        action = f"{profile_id} {from_id} -> {to_id}"
        if not admitted:
            self._admit(token, "move", from_id, action)
        try:
            profile = self.profile(profile_id)
            src = self.server(from_id)
            dst = self.server(to_id)
            self._check_move(profile, src, dst)
        except LabError as exc:
            self.record("move", from_id, f"{action}: refused {exc.status} ({exc.message})", token,
                        accepted=False)
            raise
        src.profile = None
        dst.profile = profile.id
        profile.server = dst.id
        profile.previous_server = src.id
        if src.power != "Off":
            self._violation(
                "move_off_running", [src.id, dst.id], profile.id, token,
                f"{profile.id} moved off {src.id} to {dst.id} while {src.id} is {src.power}",
            )
        self.record("move", src.id, f"{action}: ok", token, checked=not admitted)
        return profile

    def _check_move(self, profile: Profile, src: Server, dst: Server) -> None:
        if profile.server != src.id:
            raise Conflict(f"profile {profile.id} is on {profile.server or 'no server'}, not on {src.id}")
        if dst.id == src.id:
            raise Conflict("from and to are the same server")
        if dst.profile is not None:
            raise Conflict(f"server {dst.id} already has profile {dst.profile}")
        if not self.reported_present(dst):
            raise Conflict(f"server {dst.id} is not present")
        if dst.power != "Off":
            raise Conflict(f"server {dst.id} is not powered off ({dst.power})")
        if src.domain_group != dst.domain_group:
            raise Conflict(
                f"{src.id} ({src.domain_group}) and {dst.id} ({dst.domain_group}) are in different "
                "domain groups"
            )
        for d in sorted({src.domain, dst.domain}):
            status = self.domain_status(d)
            if status != "ok":
                raise Conflict(f"domain {d} is {status}")
        for s in (src, dst):
            if self.has_fault(s, "move_error"):
                raise InjectedFailure(f"VCEM job failed for {s.id} (injected move_error)")

    def unassign(self, profile_id: str, from_id: str, token: FenceToken | None = None) -> Profile:
        """Take a profile off its server (a manager's unassign; the request passed the fence already).
        Taking it off a server that is not Off is a `move_off_running` violation."""
        profile = self.profile(profile_id)
        src = self.server(from_id)
        if profile.server != src.id:
            raise Conflict(f"profile {profile.id} is on {profile.server or 'no server'}, not on {src.id}")
        src.profile = None
        profile.server = None
        profile.previous_server = src.id
        if src.power != "Off":
            self._violation("move_off_running", [src.id], profile.id, token,
                            f"{profile.id} taken off {src.id} while {src.id} is {src.power}")
        self.record("move", src.id, f"{profile.id} {src.id} -> none: ok", token)
        return profile

    def assign(self, profile_id: str, to_id: str, token: FenceToken | None = None) -> Profile:
        """Put an unassigned profile on a server that is Off and has none (the request passed the fence)."""
        profile = self.profile(profile_id)
        dst = self.server(to_id)
        if profile.server is not None:
            raise Conflict(f"profile {profile.id} is on {profile.server}")
        if dst.profile is not None:
            raise Conflict(f"server {dst.id} already has profile {dst.profile}")
        if not self.reported_present(dst):
            raise Conflict(f"server {dst.id} is not present")
        if dst.power != "Off":
            raise Conflict(f"server {dst.id} is not powered off ({dst.power})")
        if self.has_fault(dst, "move_error"):
            raise InjectedFailure(f"VCEM job failed for {dst.id} (injected move_error)")
        dst.profile = profile.id
        profile.server = dst.id
        self.record("move", dst.id, f"{profile.id} none -> {dst.id}: ok", token)
        return profile

    def set_spare(self, server_id: str, spare: bool, token: FenceToken | None = None) -> Server:
        action = f"spare={str(spare).lower()}"
        self._admit(token, "spare", server_id, action)
        server = self.server(server_id)
        if server.product is None and spare:
            raise Conflict(f"bay {server.id} is empty")
        server.spare = spare
        self.record("spare", server.id, action, token)
        return server

    def delete_host(self, server_id: str, token: FenceToken | None = None) -> dict[str, Any]:
        self._admit(token, "host", server_id, "delete")
        self.server(server_id)
        record = self.hosts.pop(server_id, None)
        if record is None:
            raise NotFound(f"server {server_id} has no host record")
        self.record("host", server_id, f"deleted {record.name} {record.ip}", token)
        return {"server": server_id, "name": record.name, "ip": record.ip}

    def put_host(self, server_id: str, name: str, ip: str, token: FenceToken | None = None) -> dict[str, Any]:
        self._admit(token, "host", server_id, f"set {name} {ip}")
        self.server(server_id)
        self.hosts[server_id] = HostRecord(name, ip)
        self.record("host", server_id, f"set {name} {ip}", token)
        return {"server": server_id, "name": name, "ip": ip}

    def discover(self, server_id: str, token: FenceToken | None = None) -> dict[str, Any]:
        self._admit(token, "discover", server_id, "discover")
        server = self.server(server_id)
        host: dict[str, str] | None = None
        found = False
        if not self.reported_present(server):
            detail = "no server in the bay"
        elif server.power != "On" or server.on_since is None:
            detail = f"no answer: the server is {server.power}"
        elif server.profile is None:
            detail = "no answer: the server has no profile (no network identity)"
        else:
            up = wall_time() - server.on_since
            if up < self.latency.boot_s:
                detail = f"no answer: booting ({up:.1f}s of {self.latency.boot_s:.1f}s)"
            else:
                profile = self.profiles[server.profile]
                found = True
                host = {"name": profile.host_name, "ip": profile.host_ip}
                self.hosts[server.id] = HostRecord(profile.host_name, profile.host_ip)
                detail = f"{profile.host_name} ({profile.host_ip}) answered"
        self.record("discover", server.id, f"found={str(found).lower()}: {detail}", token)
        return {"server": server.id, "found": found, "host": host, "detail": detail}
