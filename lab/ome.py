"""The Dell OpenManage Enterprise / OME-Modular REST API, as one more face of the lab's world (lab/API.md,
"OME-Modular face").

What it serves is the API of /work/shared/reference/managers.md section 2 (sessions, DeviceService,
GroupService, ProfileService with MigrateProfile, JobService with POWER_CONTROL jobs) over the same
`lab.world.World` the lab's own manager API and the BMCs serve: a profile migrated here is moved in the
world, a sled powered off here goes Off for its BMC too, and the world's oracle watches every move and
power-on, whichever face asked for it.

Jobs are state machines on the lab's clock (the event loop's): 2080 New, 2050 Running after
`job_start_s`, then 2060 Completed or 2070 Failed after `migrate_s` / `power_s`. A request is admitted by
the fence (`X-Failover-Fence`) when it is accepted; the job carries it out later under that token
(`World.move(..., admitted=True)`), as a manager that goes on when the monitor that asked is gone.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import quote

from aiohttp import web

from lab.config import Credentials, OmeLab
from lab.fencing import FENCE_HEADER, FenceToken, MalformedFence, parse_fence
from lab.world import LabError, Server, StaleFence, World

__all__ = ["JOB_STATUS", "OmeFace", "OmeJob", "device_id", "power_state_id"]

# --- enums (managers.md 2.2, 2.4) ---------------------------------------------------------------------

TYPE_SERVER: Final = 1000
TYPE_CHASSIS: Final = 2000
POWER_ON: Final = 17
POWER_OFF: Final = 18
POWERING_ON: Final = 20
POWERING_OFF: Final = 21
STATUS_NORMAL: Final = 1000
STATUS_UNKNOWN: Final = 2000
STATUS_WARNING: Final = 3000
STATUS_CRITICAL: Final = 4000
JOB_STATUS: Final[dict[int, str]] = {
    2020: "Scheduled", 2030: "Queued", 2040: "Starting", 2050: "Running", 2060: "Completed",
    2070: "Failed", 2080: "New", 2090: "Warning", 2100: "Aborted", 2101: "Paused", 2102: "Stopped",
    2103: "Canceled", 2200: "NotRun",
}
NEW, RUNNING, COMPLETED, FAILED, NOT_RUN = 2080, 2050, 2060, 2070, 2200
PROFILE_UNASSIGNED, PROFILE_DEPLOYED = 0, 4
POWER_VALUES: Final[dict[int, str]] = {
    2: "Power On", 5: "Power Cycle", 8: "Power Off Non-Graceful", 10: "Master Bus Reset",
    12: "Power Off Graceful",
}
JOB_TYPE_DEVICE_ACTION: Final = (3, "DeviceAction_Task")
JOB_TYPE_PROFILE: Final = (47, "ProfileDeployment_Task")
"""The job type of a profile's deploy/migrate job: not in the reference (U); the lab's choice."""
STATIC_GROUPS_ID: Final = 1021
"""The "Static Groups" parent group (Dell's static-group guide)."""

# Id ranges of the lab's objects (any stable numbering would do; OME's own ids are opaque integers).
_CHASSIS_BASE, _SERVER_BASE, _PROFILE_BASE, _GROUP_BASE, _SPARE_GROUP_ID = 10000, 100000, 50000, 2000, 3001
_FIRST_JOB: Final = 200001
_TEMPLATE_BASE: Final = 700


def device_id(server: Server) -> int:
    return _SERVER_BASE + server.enclosure_no * 100 + server.bay


def chassis_id(enclosure_no: int) -> int:
    return _CHASSIS_BASE + enclosure_no


def chassis_tag(enclosure_no: int) -> str:
    return f"MXC{enclosure_no:04d}"


def power_state_id(power: str) -> int:
    return {"On": POWER_ON, "Off": POWER_OFF, "PoweringOn": POWERING_ON, "PoweringOff": POWERING_OFF}[power]


def ome_time(at: float | None) -> str | None:
    """OME's timestamp form ("2023-06-07 09:33:07.161", UTC here)."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


# --- errors --------------------------------------------------------------------------------------------


class OmeError(Exception):
    """A request the face refuses, answered with OME's error body."""

    def __init__(self, status: int, message_id: str, message: str, resolution: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message_id = message_id
        self.message = message
        self.resolution = resolution


def error_body(message_id: str, message: str, resolution: str = "") -> dict[str, Any]:
    return {"error": {
        "code": "Base.1.0.GeneralError",
        "message": "A general error has occurred. See ExtendedInfo for more information.",
        "@Message.ExtendedInfo": [{
            "MessageId": message_id, "RelatedProperties": [], "Message": message, "MessageArgs": [],
            "Severity": "Critical", "Resolution": resolution or "None.",
        }],
    }}


def _bad(message: str, message_id: str = "LAB4000") -> OmeError:
    return OmeError(400, message_id, message)


# --- state ---------------------------------------------------------------------------------------------


@dataclass
class OmeSession:
    id: str
    token: str = field(repr=False)
    user: str
    started: float
    last_used: float
    """Loop time of the last request made with it (idle expiry)."""


@dataclass
class OmeJob:
    id: int
    name: str
    description: str
    kind: Literal["deploy", "migrate", "power"]
    job_type: tuple[int, str]
    targets: list[int]
    params: list[dict[str, str]]
    created: float
    token: FenceToken | None = None
    status: int = NEW
    last_run: float | None = None
    ended: float | None = None
    progress: int = 0
    detail: str = ""
    profile: str | None = None
    """migrate/deploy: the world's profile id."""
    source: str | None = None
    target: str | None = None
    power_value: int | None = None

    @property
    def active(self) -> bool:
        return self.status in (NEW, RUNNING)

    def status_view(self) -> dict[str, Any]:
        return {"Id": self.status, "Name": JOB_STATUS[self.status]}

    def detail_view(self) -> dict[str, Any]:
        return {
            "Id": self.id * 10, "Progress": str(self.progress), "StartTime": ome_time(self.last_run),
            "EndTime": ome_time(self.ended), "ElapsedTime": None, "Key": "This Chassis",
            "Value": self.detail, "ExecutionHistoryId": self.id * 10, "IdBaseEntity": 0,
            "JobStatus": self.status_view(),
        }

    def view(self) -> dict[str, Any]:
        return {
            "@odata.type": "#JobService.Job", "@odata.id": f"/api/JobService/Jobs({self.id})",
            "Id": self.id, "JobName": self.name, "JobDescription": self.description,
            "NextRun": None, "LastRun": ome_time(self.last_run), "StartTime": None,
            "EndTime": ome_time(self.ended), "Schedule": "startnow", "State": "Enabled",
            "CreatedBy": "admin", "UpdatedBy": None, "Visible": True, "Editable": False, "Builtin": False,
            "UserGenerated": True,
            "Targets": [{"JobId": self.id, "Id": t, "Data": "", "TargetType": {"Id": TYPE_SERVER,
                                                                               "Name": "DEVICE"}}
                        for t in self.targets],
            "Params": [{"JobId": self.id, **p} for p in self.params],
            "LastRunStatus": self.status_view(), "JobType": {"Id": self.job_type[0],
                                                             "Name": self.job_type[1], "Internal": False},
            "JobStatus": self.status_view(),
        }


@dataclass
class ProfileMeta:
    """What OME keeps about a profile beyond where the world says it is."""

    id: int
    template_id: int
    template_name: str
    deployment_task: int = 0
    last_run_status: int = NOT_RUN
    current_job: int | None = None
    """The migrate job in progress (its own DeploymentTaskId may not show it yet)."""
    last_deploy: float | None = None


Handler = Callable[[web.Request, re.Match[str]], Awaitable[web.StreamResponse]]


# --- $filter (the small subset clients use: `A eq 'x'`, `A/B eq 2050`, joined by `and` / `or`) ---------

_COMPARISON = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*(?:/[A-Za-z][A-Za-z0-9]*)?)\s+(eq|ne)\s+"
                         r"('(?:[^']|'')*'|-?\d+|true|false|null)\s*$")


def _literal(text: str) -> object:
    if text.startswith("'"):
        return text[1:-1].replace("''", "'")
    if text in ("true", "false"):
        return text == "true"
    if text == "null":
        return None
    return int(text)


def compile_filter(expression: str) -> Callable[[dict[str, Any]], bool]:
    """`$filter` as a predicate on a member's JSON; a form the lab does not know is a 400."""
    alternatives: list[list[tuple[list[str], str, object]]] = []
    for alternative in re.split(r"\s+or\s+", expression.strip()):
        terms: list[tuple[list[str], str, object]] = []
        for term in re.split(r"\s+and\s+", alternative):
            m = _COMPARISON.match(term)
            if m is None:
                raise _bad(f"The $filter expression {expression!r} is not supported: use comparisons "
                           "such as Name eq 'x' or LastRunStatus/Id eq 2050 joined by and/or.", "LAB4001")
            terms.append((m.group(1).split("/"), m.group(2), _literal(m.group(3))))
        alternatives.append(terms)

    def value(member: dict[str, Any], path: list[str]) -> object:
        current: object = member
        for key in path:
            current = current.get(key) if isinstance(current, dict) else None
        return current

    def matches(member: dict[str, Any]) -> bool:
        for terms in alternatives:
            if all((value(member, p) == v) == (op == "eq") for p, op, v in terms):
                return True
        return False

    return matches


# --- the face ------------------------------------------------------------------------------------------


class OmeFace:
    """The OME-Modular API over `world`. `app()` is the aiohttp application; `close()` stops the jobs."""

    def __init__(self, world: World, config: OmeLab) -> None:
        self.world = world
        self.config = config
        self.sessions: dict[str, OmeSession] = {}
        self.jobs: dict[int, OmeJob] = {}
        self.migrate_requests: list[dict[str, Any]] = []
        """Every MigrateProfile request that reached the profile service, accepted or refused (tests
        count them: a takeover must not send the move again)."""
        self._next_job = _FIRST_JOB
        self._expired_by: set[str] = set()
        """The `ome_session_expiry` faults already applied (each expires the sessions alive then)."""
        self._closed = False
        self._timers: set[asyncio.TimerHandle] = set()
        self._meta: dict[str, ProfileMeta] = {}
        self._profile_by_id: dict[int, str] = {}
        self._servers_by_device: dict[int, str] = {}
        self._groups: dict[int, str] = {}
        for index, group in enumerate(world.domain_groups, start=1):
            self._groups[_GROUP_BASE + index] = group
        for server in world.servers.values():
            if server.product is not None:
                self._servers_by_device[device_id(server)] = server.id
        templates = {p: _TEMPLATE_BASE + i for i, p in enumerate(sorted(
            {s.product for s in world.servers.values() if s.product}), start=1)}
        started = time.time()
        for index, profile in enumerate(sorted(world.profiles.values(), key=lambda p: p.id), start=1):
            holder = world.servers.get(profile.server or "")
            product = holder.product if holder and holder.product else ""
            meta = ProfileMeta(_PROFILE_BASE + index, templates.get(product, _TEMPLATE_BASE),
                               f"Template {product}".strip())
            self._meta[profile.id] = meta
            self._profile_by_id[meta.id] = profile.id
            if holder is not None:  # its deployment, long done
                job = self._new_job("deploy", f"Deploy {profile.id}", [device_id(holder)],
                                    [{"Key": "profileId", "Value": str(meta.id)}], started - 86400.0)
                job.status, job.progress, job.profile, job.target = COMPLETED, 100, profile.id, holder.id
                job.last_run, job.ended = started - 86400.0, started - 86340.0
                job.detail = f"Profile {profile.id} deployed on {holder.id}."
                meta.deployment_task, meta.last_run_status, meta.last_deploy = job.id, COMPLETED, job.ended

    # --- ids and views -------------------------------------------------------------------------------

    def server_of(self, device: int) -> Server:
        sid = self._servers_by_device.get(device)
        if sid is None:
            raise _bad(f"Unable to complete the request because the device ID {device} is invalid "
                       "or not a server.", "LAB4041")
        return self.world.servers[sid]

    def _chassis_view(self, enc: str) -> dict[str, Any]:
        number = int(enc.removeprefix("enc"))
        domain = self.world.enclosures[enc]
        status = self.world.domain_status(domain)
        return {
            "@odata.type": "#DeviceService.Device",
            "@odata.id": f"/api/DeviceService/Devices({chassis_id(number)})", "Id": chassis_id(number),
            "Type": TYPE_CHASSIS, "Identifier": chassis_tag(number),
            "DeviceServiceTag": chassis_tag(number), "ChassisServiceTag": None, "Model": "PowerEdge MX7000",
            "PowerState": POWER_ON, "ManagedState": 3000 if status != "unmanaged" else 5000,
            "Status": STATUS_NORMAL if status == "ok" else STATUS_CRITICAL,
            "ConnectionState": status != "unmanaged", "AssetTag": None, "SystemId": 2031,
            "DeviceName": enc, "LastInventoryTime": ome_time(time.time()),
            "LastStatusTime": ome_time(time.time()), "DeviceSubscription": None, "SlotConfiguration": {},
            "DeviceManagement": [{
                "ManagementId": chassis_id(number), "NetworkAddress": self.world.oa_address(enc),
                "MacAddress": f"00:1E:C9:00:{number:02X}:00", "ManagementType": 2,
                "InstrumentationName": enc, "DnsName": f"{enc}-mm.lab.example", "ManagementProfile": [],
            }],
            "Actions": None,
        }

    def connected(self, server: Server) -> bool:
        """Whether OME can reach the sled's iDRAC (a pulled sled or a dead iDRAC: it cannot)."""
        return (self.world.reported_present(server) and self.world.bmc_listening(server)
                and not self.world.has_fault(server, "bmc_timeout")
                and not self.world.has_fault(server, "bmc_error"))

    def _device_view(self, server: Server) -> dict[str, Any]:
        did = device_id(server)
        health = {"OK": STATUS_NORMAL, "Warning": STATUS_WARNING, "Critical": STATUS_CRITICAL}
        url = self.world.bmc_url(server)
        return {
            "@odata.type": "#DeviceService.Device", "@odata.id": f"/api/DeviceService/Devices({did})",
            "Id": did, "Type": TYPE_SERVER, "Identifier": server.serial, "DeviceServiceTag": server.serial,
            "ChassisServiceTag": chassis_tag(server.enclosure_no), "Model": server.product,
            "PowerState": power_state_id(server.power), "ManagedState": 3000,
            "Status": health[server.health] if self.connected(server) else STATUS_UNKNOWN,
            "ConnectionState": self.connected(server), "AssetTag": None, "SystemId": 1894,
            "DeviceName": server.id, "LastInventoryTime": ome_time(time.time()),
            "LastStatusTime": ome_time(time.time()), "DeviceSubscription": None,
            "SlotConfiguration": {
                "ChassisName": server.enclosure, "SlotId": str(did), "DeviceType": str(TYPE_SERVER),
                "ChassisId": str(chassis_id(server.enclosure_no)), "SlotNumber": str(server.bay),
                "SledBlockPowerOn": "None", "SlotName": f"Sled-{server.bay}",
                "ChassisServiceTag": chassis_tag(server.enclosure_no), "SlotType": str(TYPE_SERVER),
            },
            "DeviceManagement": [{
                "ManagementId": did, "NetworkAddress": server.bmc_ip,
                "MacAddress": f"D0:94:66:{server.enclosure_no:02X}:{server.bay:02X}:00", "ManagementType": 2,
                "InstrumentationName": server.id, "DnsName": f"idrac-{server.serial}.lab.example",
                "ManagementProfile": [{
                    "ManagementProfileId": did, "ProfileId": "WSMAN_OOB", "ManagementId": did,
                    "AgentName": "iDRAC", "Version": "6.10.30.00", "ManagementURL": url or "",
                    "HasCreds": 0, "Status": STATUS_NORMAL, "StatusDateTime": ome_time(time.time()),
                }] if url else [],
            }],
            "Actions": None,
        }

    def devices(self) -> list[dict[str, Any]]:
        views = [self._chassis_view(enc) for enc in self.world.enclosures]
        views += [self._device_view(s) for s in self.world.servers.values() if s.product is not None]
        return views

    def device(self, did: int) -> dict[str, Any]:
        for view in self.devices():
            if view["Id"] == did:
                return view
        raise OmeError(404, "LAB4040", f"Unable to complete the request because the device ID {did} "
                                       "does not exist.")

    def _profile_view(self, pid: str) -> dict[str, Any]:
        profile = self.world.profiles[pid]
        meta = self._meta[pid]
        holder = self.world.servers.get(profile.server or "")
        deployed = holder is not None
        return {
            "@odata.type": "#ProfileService.Profile", "@odata.id": f"/api/ProfileService/Profiles({meta.id})",
            "Id": meta.id, "ProfileName": pid, "ProfileDescription": f"Server profile {pid}",
            "TemplateId": meta.template_id, "TemplateName": meta.template_name,
            "TargetId": device_id(holder) if holder else 0, "TargetName": holder.id if holder else "",
            "TargetTypeId": TYPE_SERVER if holder else 0,
            "DeviceIdInSlot": device_id(holder) if holder else 0,
            "ChassisId": chassis_id(holder.enclosure_no) if holder else 0,
            "ChassisName": holder.enclosure if holder else "", "GroupId": 0, "NetworkBootToIso": None,
            "ProfileState": PROFILE_DEPLOYED if deployed else PROFILE_UNASSIGNED,
            "DeploymentTaskId": meta.deployment_task, "LastRunStatus": meta.last_run_status,
            "ProfileModified": 0, "CreatedBy": "admin", "EditedBy": None,
            "CreatedDate": ome_time(time.time() - 86400.0 * 30), "LastEditDate": None,
            "LastDeployDate": ome_time(meta.last_deploy) or "", "AttributeIdMap": {},
        }

    def profiles(self) -> list[dict[str, Any]]:
        ordered = sorted(self.world.profiles, key=lambda p: self._meta[p].id)
        return [self._profile_view(pid) for pid in ordered]

    def _group_view(self, gid: int, name: str, description: str, type_id: int) -> dict[str, Any]:
        return {
            "@odata.type": "#GroupService.Group", "@odata.id": f"/api/GroupService/Groups({gid})",
            "Id": gid, "Name": name, "Description": description, "GlobalStatus": STATUS_NORMAL,
            "ParentId": STATIC_GROUPS_ID if gid != STATIC_GROUPS_ID else 0, "CreatedBy": "admin",
            "CreationTime": ome_time(time.time() - 86400.0 * 30), "UpdatedBy": "admin",
            "UpdatedTime": ome_time(time.time()), "Visible": True, "DefinitionId": 400,
            "DefinitionDescription": "UserDefined", "TypeId": type_id, "MembershipTypeId": 12,
            "IdOwner": 10078,
        }

    def groups(self) -> list[dict[str, Any]]:
        views = [self._group_view(STATIC_GROUPS_ID, "Static Groups", "Static groups", 3000)]
        views += [self._group_view(gid, name, f"Chassis of domain group {name}", 3000)
                  for gid, name in self._groups.items()]
        views.append(self._group_view(_SPARE_GROUP_ID, self.config.spare_group,
                                      "Designated spares for failover", 3000))
        return views

    def group_members(self, gid: int) -> list[dict[str, Any]]:
        if gid == _SPARE_GROUP_ID:
            return [self._device_view(s) for s in self.world.servers.values() if s.spare and s.product]
        name = self._groups.get(gid)
        if name is not None:
            return [self._chassis_view(enc) for enc, dom in self.world.enclosures.items()
                    if self.world.domains[dom] == name]
        if gid == STATIC_GROUPS_ID:
            return []
        raise OmeError(404, "LAB4042", f"Unable to complete the request because the group ID {gid} "
                                       "does not exist.")

    # --- jobs ------------------------------------------------------------------------------------------

    def _new_job(self, kind: Literal["deploy", "migrate", "power"], name: str, targets: list[int],
                 params: list[dict[str, str]], created: float, token: FenceToken | None = None) -> OmeJob:
        job_type = JOB_TYPE_DEVICE_ACTION if kind == "power" else JOB_TYPE_PROFILE
        job = OmeJob(self._next_job, name, name, kind, job_type, targets, params, created, token)
        self._next_job += 1
        self.jobs[job.id] = job
        return job

    def _later(self, delay: float, step: Callable[[], None]) -> None:
        """Run `step` after `delay` seconds of the lab's clock, unless the face closed first."""
        if self._closed:
            return
        handles: list[asyncio.TimerHandle] = []

        def fire() -> None:
            self._timers.difference_update(handles)
            if not self._closed:
                step()

        handles.append(asyncio.get_running_loop().call_later(max(0.0, delay), fire))
        self._timers.update(handles)

    def _start(self, job: OmeJob, run_for: float, finish: Callable[[OmeJob], None]) -> None:
        """New -> Running after job_start_s -> `finish` after `run_for` (unless the job hangs)."""

        def running() -> None:
            job.status, job.last_run, job.progress = RUNNING, time.time(), 10
            job.detail = "Running"
            if job.profile is not None:
                self._meta[job.profile].last_run_status = RUNNING
            self._later(run_for, end)

        def end() -> None:
            servers = [self.world.servers[s] for s in (self._servers_by_device.get(t) for t in job.targets)
                       if s is not None]
            if job.source is not None:
                servers.append(self.world.servers[job.source])
            if any(self.world.has_fault(s, "ome_job_hangs") for s in servers):
                job.progress = 50
                job.detail = "Running (the job hangs: injected fault ome_job_hangs)"
                return  # stays Running; clearing the fault does not finish it
            failing = next((s for s in servers if self.world.has_fault(s, "ome_job_fails")), None)
            if failing is not None:
                self._end(job, FAILED, f"Task Failed. The operation on {failing.id} did not complete "
                                       "(injected fault ome_job_fails).")
                return
            finish(job)

        self._later(self.config.job_start_s, running)

    def _end(self, job: OmeJob, status: int, detail: str) -> None:
        job.status, job.ended, job.progress, job.detail = status, time.time(), 100, detail
        if job.profile is not None:
            meta = self._meta[job.profile]
            meta.last_run_status = status
            if meta.current_job == job.id:
                meta.current_job = None
                meta.deployment_task = job.id  # at the latest now
            if status == COMPLETED:
                meta.last_deploy = job.ended

    def _finish_migrate(self, job: OmeJob) -> None:
        assert job.profile is not None and job.source is not None and job.target is not None
        try:
            self.world.move(job.profile, job.source, job.target, job.token, admitted=True)
        except LabError as exc:
            self._end(job, FAILED, f"Task Failed. Unable to migrate {job.profile} to {job.target}: "
                                   f"{exc.message}")
            return
        self._end(job, COMPLETED, f"Profile {job.profile} migrated from {job.source} to {job.target}. "
                                  "Task Completed.")

    def _finish_power(self, job: OmeJob) -> None:
        value = job.power_value
        assert value is not None
        done: list[str] = []
        for did in job.targets:
            server = self.world.servers[self._servers_by_device[did]]
            if not server.installed:
                self._end(job, FAILED, f"Task Failed. {server.id} is not in its slot.")
                return
            reset = {2: "On", 8: "ForceOff", 12: "GracefulShutdown", 10: "ForceRestart"}.get(value)
            if value == 5:
                reset = "ForceRestart" if server.power == "On" else "On"
            assert reset is not None
            already = (reset == "On" and server.power in ("On", "PoweringOn")) or (
                reset in ("ForceOff", "GracefulShutdown") and server.power in ("Off", "PoweringOff"))
            if already:
                done.append(f"{server.id} already {server.power}")
                continue
            try:
                self.world.reset(server.id, reset, job.token, admitted=True)
            except LabError as exc:
                self._end(job, FAILED, f"Task Failed. {POWER_VALUES[value]} of {server.id}: {exc.message}")
                return
            done.append(f"{server.id}: {POWER_VALUES[value]} sent")
        self._end(job, COMPLETED, "; ".join(done) + ". Task Completed.")

    # --- sessions --------------------------------------------------------------------------------------

    def _expire_sessions(self) -> None:
        for fault in self.world.faults.values():
            if fault.fault == "ome_session_expiry" and fault.id not in self._expired_by:
                self._expired_by.add(fault.id)
                self.sessions.clear()

    def _authenticated(self, request: web.Request) -> str:
        """The user of a request: a live X-Auth-Token, else Basic credentials; 401 otherwise."""
        now = asyncio.get_running_loop().time()
        token = request.headers.get("X-Auth-Token")
        if token:
            for session in list(self.sessions.values()):
                if hmac.compare_digest(session.token.encode(), token.encode()):
                    if now - session.last_used > self.config.session_idle_s:
                        del self.sessions[session.id]
                        break
                    session.last_used = now
                    return session.user
            raise OmeError(401, "LAB1401", "Unable to complete the request because the session is "
                                           "invalid or has expired.", "Log in again.")
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            if self._credentials_ok(user, password):
                return user
        raise OmeError(401, "LAB1401", "Unable to complete the request because the credentials are "
                                       "missing or invalid.", "Log in with a valid user name and password.")

    def _credentials_ok(self, user: str, password: str) -> bool:
        creds: Credentials = self.config.credentials
        return hmac.compare_digest(user.encode(), creds.username.encode()) and hmac.compare_digest(
            password.encode(), creds.password.encode())

    # --- request plumbing ------------------------------------------------------------------------------

    @staticmethod
    def _token(request: web.Request) -> FenceToken | None:
        try:
            return parse_fence(request.headers.getall(FENCE_HEADER, []))
        except MalformedFence as exc:
            raise _bad(str(exc), "LAB4002") from None

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            raise _bad("Unable to process the request because the payload is not valid JSON.",
                       "LAB4003") from None
        if not isinstance(data, dict):
            raise _bad("Unable to process the request because the payload is not a JSON object.",
                       "LAB4003")
        return data

    def _collection(self, request: web.Request, members: list[dict[str, Any]]) -> web.Response:
        query = request.query
        if "$filter" in query:
            members = [m for m in members if compile_filter(query["$filter"])(m)]
        try:
            skip = int(query.get("$skip", "0"))
            top = int(query.get("$top", str(self.config.page_size)))
        except ValueError:
            raise _bad("$skip and $top must be integers.", "LAB4004") from None
        if skip < 0 or top < 1:
            raise _bad("$skip must be 0 or more and $top 1 or more.", "LAB4004")
        page = members[skip:skip + top]
        body: dict[str, Any] = {"@odata.context": f"/api/$metadata#Collection({request.path})",
                                "@odata.count": len(members), "value": page}
        if skip + top < len(members):
            parts = [f"$skip={skip + top}", f"$top={top}"]
            if "$filter" in query:
                parts.append("$filter=" + quote(query["$filter"], safe=""))
            body["@odata.nextLink"] = f"{request.path}?{'&'.join(parts)}"
        return web.json_response(body)

    # --- handlers --------------------------------------------------------------------------------------

    async def post_session(self, request: web.Request, m: re.Match[str]) -> web.StreamResponse:
        body = await self._body(request)
        user, password = body.get("UserName"), body.get("Password")
        if not isinstance(user, str) or not isinstance(password, str):
            raise _bad("UserName and Password are required strings.", "LAB4005")
        if not self._credentials_ok(user, password):
            raise OmeError(401, "LAB1401", "Unable to complete the request because the user name or "
                                           "password is incorrect.", "Enter valid credentials.")
        now = asyncio.get_running_loop().time()
        session = OmeSession(secrets.token_hex(8), secrets.token_urlsafe(24), user, time.time(), now)
        self.sessions[session.id] = session
        response = web.json_response(self._session_view(session), status=201)
        response.headers["X-Auth-Token"] = session.token
        response.headers["Location"] = f"/api/SessionService/Sessions('{session.id}')"
        return response

    @staticmethod
    def _session_view(session: OmeSession) -> dict[str, Any]:
        return {"@odata.type": "#SessionService.Session",
                "@odata.id": f"/api/SessionService/Sessions('{session.id}')", "Id": session.id,
                "Description": "OME session", "Name": "API", "UserName": session.user, "Password": None,
                "Roles": ["ADMINISTRATOR"], "IpAddress": "127.0.0.1",
                "StartTimeStamp": ome_time(session.started), "LastAccessedTimeStamp": ome_time(time.time()),
                "DirectoryGroup": []}

    async def get_sessions(self, request: web.Request, m: re.Match[str]) -> web.StreamResponse:
        return self._collection(request, [self._session_view(s) for s in self.sessions.values()])

    async def get_session(self, request: web.Request, m: re.Match[str]) -> web.StreamResponse:
        session = self.sessions.get(m.group(1))
        if session is None:
            raise OmeError(404, "LAB4043", f"The session {m.group(1)} does not exist.")
        return web.json_response(self._session_view(session))

    async def delete_session(self, request: web.Request, m: re.Match[str]) -> web.StreamResponse:
        if self.sessions.pop(m.group(1), None) is None:
            raise OmeError(404, "LAB4043", f"The session {m.group(1)} does not exist.")
        return web.Response(status=204)

    async def get_devices(self, request: web.Request, m: re.Match[str]) -> web.StreamResponse:
        return self._collection(request, self.devices())

    async def get_device(self, request: web.Request, m: re.Match[str]) -> web.StreamResponse:
        return web.json_response(self.device(int(m.group(1))))

    async def get_groups(self, request: web.Request, m: re.Match[str]) -> web.StreamResponse:
        return self._collection(request, self.groups())

    async def get_group(self, request: web.Request, m: re.Match[str]) -> web.StreamResponse:
        gid = int(m.group(1))
        for view in self.groups():
            if view["Id"] == gid:
                return web.json_response(view)
        raise OmeError(404, "LAB4042", f"Unable to complete the request because the group ID {gid} "
                                       "does not exist.")

    async def get_group_devices(self, request: web.Request, m: re.Match[str]) -> web.StreamResponse:
        return self._collection(request, self.group_members(int(m.group(1))))

    async def post_group_action(self, request: web.Request, m: re.Match[str]) -> web.StreamResponse:
        """AddMemberDevices / RemoveMemberDevices: only the spare group is the lab's to change (the
        chassis groups follow the world's domain groups)."""
        token = self._token(request)
        body = await self._body(request)
        gid, members = body.get("GroupId"), body.get("MemberDeviceIds")
        if not isinstance(gid, int) or not isinstance(members, list) or not members or not all(
                isinstance(d, int) for d in members):
            raise _bad("GroupId (an integer) and MemberDeviceIds (a non-empty list of integers) are "
                       "required.", "LAB4005")
        if gid != _SPARE_GROUP_ID:
            self.group_members(gid)  # 404 for an unknown group
            raise _bad(f"Unable to change the members of group {gid}: in the lab only the group "
                       f"{self.config.spare_group!r} ({_SPARE_GROUP_ID}) is a static group of devices.",
                       "LAB4006")
        adding = m.group(1) == "AddMemberDevices"
        servers = [self.server_of(d) for d in members]
        if not adding:
            outside = [s.id for s in servers if not s.spare]
            if outside:
                raise _bad(f"Unable to remove devices that are not members of group {gid}: "
                           f"{', '.join(outside)}.", "LAB4007")
        for server in servers:
            try:
                self.world.set_spare(server.id, adding, token)
            except StaleFence:
                raise
            except LabError as exc:
                raise _bad(exc.message, "LAB4008") from None
        return web.json_response(1)

    async def get_profiles(self, request: web.Request, m: re.Match[str]) -> web.StreamResponse:
        return self._collection(request, self.profiles())

    def _profile_id(self, pid: object) -> str:
        if not isinstance(pid, int) or pid not in self._profile_by_id:
            raise _bad(f"Unable to complete the request because the profile ID {pid!r} is invalid.",
                       "LAB4044")
        return self._profile_by_id[pid]

    async def get_profile(self, request: web.Request, m: re.Match[str]) -> web.StreamResponse:
        pid = int(m.group(1))
        if pid not in self._profile_by_id:
            raise OmeError(404, "LAB4044", f"Unable to complete the request because the profile ID {pid} "
                                           "does not exist.")
        return web.json_response(self._profile_view(self._profile_by_id[pid]))

    def invalid_targets(self, pid: str) -> list[int]:
        """Devices that cannot take the profile: other models than its holder's, and devices already
        carrying a deployed profile."""
        profile = self.world.profiles[pid]
        holder = self.world.servers.get(profile.server or "")
        bad = []
        for server in self.world.servers.values():
            if server.product is None or server is holder:
                continue
            if server.profile is not None or (holder is not None and server.product != holder.product):
                bad.append(device_id(server))
        return bad

    async def post_profile_action(self, request: web.Request, m: re.Match[str]) -> web.StreamResponse:
        action = m.group(1)
        if action == "GetInvalidTargetsForAssignProfile":
            body = await self._body(request)
            return web.json_response(self.invalid_targets(self._profile_id(body.get("Id"))))
        if action == "MigrateProfile":
            return await self.migrate(request)
        raise OmeError(404, "LAB4045", f"The action ProfileService.{action} is not served by the lab "
                                       "(it emulates MigrateProfile and GetInvalidTargetsForAssignProfile).")

    async def migrate(self, request: web.Request) -> web.StreamResponse:
        token = self._token(request)
        body = await self._body(request)
        entry: dict[str, Any] = {"time": time.time(), "body": body,
                                 "token": token.fields() if token else None}
        self.migrate_requests.append(entry)
        pid = self._profile_id(body.get("ProfileId"))
        target_id, force = body.get("TargetId"), body.get("ForceMigrate", False)
        if not isinstance(target_id, int) or not isinstance(force, bool):
            raise _bad("TargetId (an integer) is required; ForceMigrate is a boolean.", "LAB4005")
        profile = self.world.profiles[pid]
        source = self.world.servers.get(profile.server or "")
        action = f"{pid} {source.id if source else '-'} -> device {target_id} (ForceMigrate={force})"
        self.world.admit(token, "move", source.id if source else None, action)
        try:
            target = self.server_of(target_id)
            job = self._check_and_start_migrate(pid, source, target, force, token)
        except OmeError as exc:
            entry["result"] = f"refused {exc.status}: {exc.message}"
            self.world.record("ome-migrate", source.id if source else None,
                              f"{action}: refused {exc.status} ({exc.message})", token, accepted=False)
            raise
        entry["result"] = f"accepted: job {job.id}"
        entry["job"] = job.id
        self.world.record("ome-migrate", source.id if source else None, f"{action}: accepted, job {job.id}",
                          token)
        return web.Response(status=200)

    def _check_and_start_migrate(self, pid: str, source: Server | None, target: Server, force: bool,
                                 token: FenceToken | None) -> OmeJob:
        meta = self._meta[pid]
        if source is None:
            raise _bad(f"Profile {pid} needs to be in a deployed state (ProfileState 4) for a migrate "
                       "operation.", "LAB4010")
        running = self.jobs.get(meta.current_job or 0)
        if running is not None and running.active:
            raise _bad(f"Profile {pid}: deployment job {running.id} is in progress. Wait for the job to "
                       "finish.", "LAB4011")
        if target is source:
            raise _bad(f"Profile {pid} is already deployed on {target.id}.", "LAB4012")
        if device_id(target) in self.invalid_targets(pid):
            raise _bad(f"The target device {target.id} is invalid for profile {pid} (another model, or "
                       "it carries a profile).", "LAB4013")
        if not self.connected(target):
            raise _bad(f"Unable to migrate to {target.id}: the target device cannot be contacted.",
                       "LAB4014")
        if target.power != "Off":
            raise _bad(f"Unable to migrate to {target.id}: the target device is powered on "
                       f"(PowerState {power_state_id(target.power)}); power it off first.", "LAB4015")
        if self.connected(source):
            if source.power != "Off":
                raise _bad(f"Unable to migrate {pid} off {source.id}: the source device is powered on "
                           f"(PowerState {power_state_id(source.power)}); power it off first.", "LAB4016")
        elif not force:
            raise _bad(f"Unable to migrate {pid}: the source device {source.id} cannot be contacted. Use "
                       "ForceMigrate to migrate without it.", "LAB4017")
        job = self._new_job("migrate", f"Migrate {pid}", [device_id(target)],
                            [{"Key": "profileId", "Value": str(meta.id)},
                             {"Key": "sourceId", "Value": str(device_id(source))},
                             {"Key": "forceMigrate", "Value": str(force).lower()}], time.time(), token)
        job.profile, job.source, job.target = pid, source.id, target.id
        meta.current_job = job.id

        def name_job() -> None:
            if meta.current_job == job.id or not job.active:
                meta.deployment_task = job.id

        if self.config.job_id_delay_s <= 0:
            meta.deployment_task = job.id
        else:
            self._later(self.config.job_id_delay_s, name_job)
        self._start(job, self.config.migrate_s, self._finish_migrate)
        return job

    async def get_jobs(self, request: web.Request, m: re.Match[str]) -> web.StreamResponse:
        return self._collection(request, [j.view() for j in sorted(self.jobs.values(), key=lambda j: j.id)])

    def job(self, jid: int) -> OmeJob:
        job = self.jobs.get(jid)
        if job is None:
            raise OmeError(404, "LAB4046", f"Unable to complete the request because the job ID {jid} does "
                                           "not exist.")
        return job

    async def get_job(self, request: web.Request, m: re.Match[str]) -> web.StreamResponse:
        return web.json_response(self.job(int(m.group(1))).view())

    async def get_job_detail(self, request: web.Request, m: re.Match[str]) -> web.StreamResponse:
        return web.json_response(self.job(int(m.group(1))).detail_view())

    async def get_job_histories(self, request: web.Request, m: re.Match[str]) -> web.StreamResponse:
        job = self.job(int(m.group(1)))
        history = {"Id": job.id * 10, "JobName": job.name, "Progress": str(job.progress),
                   "StartTime": ome_time(job.last_run), "EndTime": ome_time(job.ended),
                   "LastUpdateTime": ome_time(time.time()), "ExecutedBy": "admin", "JobId": job.id,
                   "JobStatus": job.status_view()}
        return self._collection(request, [history] if job.last_run is not None else [])

    async def post_job(self, request: web.Request, m: re.Match[str]) -> web.StreamResponse:
        """POST /api/JobService/Jobs: the lab runs DeviceAction_Task POWER_CONTROL jobs on sleds."""
        token = self._token(request)
        body = await self._body(request)
        job_type = body.get("JobType")
        type_id = job_type.get("Id") if isinstance(job_type, dict) else None
        params = body.get("Params")
        if not isinstance(params, list) or not all(isinstance(p, dict) for p in params):
            raise _bad("Params must be a list of {Key, Value} objects.", "LAB4005")
        keyed = {str(p.get("Key")): str(p.get("Value")) for p in params}
        if type_id != JOB_TYPE_DEVICE_ACTION[0] or keyed.get("operationName") != "POWER_CONTROL":
            raise _bad("The lab runs only DeviceAction_Task (JobType 3) jobs with operationName "
                       "POWER_CONTROL.", "LAB4020")
        try:
            value = int(keyed.get("powerState", ""))
        except ValueError:
            value = -1
        if value not in POWER_VALUES:
            raise _bad(f"powerState {keyed.get('powerState')!r} is not one of "
                       f"{', '.join(str(v) for v in POWER_VALUES)}.", "LAB4021")
        targets = body.get("Targets")
        if not isinstance(targets, list) or not targets or not all(
                isinstance(t, dict) and isinstance(t.get("Id"), int) for t in targets):
            raise _bad("Targets must be a non-empty list of {Id, TargetType} objects.", "LAB4005")
        for t in targets:
            kind = t.get("TargetType")
            if isinstance(kind, dict) and kind.get("Id") not in (None, TYPE_SERVER):
                raise _bad("The lab runs power jobs on DEVICE targets (TargetType 1000) only.", "LAB4022")
        servers = [self.server_of(int(t["Id"])) for t in targets]
        action = f"POWER_CONTROL powerState={value} ({POWER_VALUES[value]})"
        for server in servers:
            self.world.admit(token, "reset", server.id, action)
        job = self._new_job("power", str(body.get("JobName") or "DeviceAction_Task_PowerState"),
                            [device_id(s) for s in servers],
                            [{"Key": k, "Value": v} for k, v in keyed.items()], time.time(), token)
        job.power_value = value
        for server in servers:
            self.world.record("ome-power", server.id, f"{action}: accepted, job {job.id}", token)
        self._start(job, self.config.power_s, self._finish_power)
        return web.json_response(job.view(), status=201)

    # --- dispatch --------------------------------------------------------------------------------------

    def _routes(self) -> list[tuple[str, re.Pattern[str], Handler, bool]]:
        def r(method: str, pattern: str, handler: Handler, auth: bool = True) -> tuple[
                str, re.Pattern[str], Handler, bool]:
            return method, re.compile(f"^/api/{pattern}$"), handler, auth

        return [
            r("POST", r"SessionService/Sessions", self.post_session, auth=False),
            r("GET", r"SessionService/Sessions", self.get_sessions),
            r("GET", r"SessionService/Sessions\('([^']+)'\)", self.get_session),
            r("DELETE", r"SessionService/Sessions\('([^']+)'\)", self.delete_session),
            r("GET", r"DeviceService/Devices", self.get_devices),
            r("GET", r"DeviceService/Devices\((\d+)\)", self.get_device),
            r("GET", r"GroupService/Groups", self.get_groups),
            r("GET", r"GroupService/Groups\((\d+)\)", self.get_group),
            r("GET", r"GroupService/Groups\((\d+)\)/Devices", self.get_group_devices),
            r("POST", r"GroupService/Actions/GroupService\.(AddMemberDevices|RemoveMemberDevices)",
              self.post_group_action),
            r("GET", r"ProfileService/Profiles", self.get_profiles),
            r("GET", r"ProfileService/Profiles\((\d+)\)", self.get_profile),
            r("POST", r"ProfileService/Actions/ProfileService\.([A-Za-z]+)", self.post_profile_action),
            r("GET", r"JobService/Jobs", self.get_jobs),
            r("POST", r"JobService/Jobs", self.post_job),
            r("GET", r"JobService/Jobs\((\d+)\)", self.get_job),
            r("GET", r"JobService/Jobs\((\d+)\)/LastExecutionDetail", self.get_job_detail),
            r("GET", r"JobService/Jobs\((\d+)\)/ExecutionHistories", self.get_job_histories),
        ]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except StaleFence as exc:
            body = error_body("LAB4090", exc.message, "Another monitor acts for this job now.")
            body["stale_fence"] = exc.view()
            return web.json_response(body, status=409)
        except OmeError as exc:
            response = web.json_response(error_body(exc.message_id, exc.message, exc.resolution),
                                         status=exc.status)
            if exc.status == 503:
                response.headers["Retry-After"] = "30"
            return response

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.config.request_ms > 0:
            await asyncio.sleep(self.config.request_ms / 1000.0)
        if self.world.manager_fault("ome_unavailable"):
            raise OmeError(503, "LAB5030", "The OpenManage service is unavailable (injected fault "
                                           "ome_unavailable).", "Retry the operation later.")
        self._expire_sessions()
        allowed: list[str] = []
        for method, pattern, handler, auth in self._routes():
            m = pattern.match(request.path)
            if m is None:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            if auth:
                self._authenticated(request)
            return await handler(request, m)
        if allowed:
            raise OmeError(405, "LAB4050", f"The method {request.method} is not allowed on {request.path} "
                                           f"(allowed: {', '.join(allowed)}).")
        raise OmeError(404, "LAB4047", f"Unable to complete the request because the resource URI "
                                       f"{request.path} does not exist or is not implemented.")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def close(self) -> None:
        """Stop every pending job transition (at shutdown)."""
        self._closed = True
        for handle in list(self._timers):
            handle.cancel()
        self._timers.clear()
