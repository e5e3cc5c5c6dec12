"""Dell OpenManage Enterprise / OME-Modular as the profile manager: `ProfileManager`, `TaskedMoves` and
`ManagerPower` of monitor/core/ports.py over `OmeClient` (managers.md section 2).

How OME's objects become the monitor's:
- **servers** are the sleds (devices of Type 1000), named by their DeviceName or service tag
  (`server_id`); their chassis (Type 2000) is both the server's enclosure and its domain (OME has no
  Virtual Connect domain: a chassis it cannot reach, or reports Critical, is an abnormal domain);
- **domain groups** are OME static groups: of chassis (`chassis_groups`: a sled is in its chassis'
  group) or of sleds (`device_groups`). A sled in no domain group is not part of the inventory;
- **spares** are the members of one static group (`spare_group`); `set_spare` adds or removes the sled;
- **models** are the device's `Model`; **power** its `PowerState` (17 On, 18 Off, 20 PoweringOn, 21
  PoweringOff), **health** its `Status` (1000 OK, 3000 Warning, 4000 Critical);
- **profiles** are server profiles by `ProfileName`; a profile is on a server when its `ProfileState`
  is 4 (deployed) and its `TargetId` is the server's device.

The move is `ProfileService.MigrateProfile {ProfileId, TargetId, ForceMigrate}`, sent only when the
profile is deployed on the source; OME names the job that carries it out in the profile's
`DeploymentTaskId`, late (the Ansible modules wait 3-5 s), so `start_move` reads the profile until a new
job id appears there. Jobs are `GET /api/JobService/Jobs({id})`, followed by `LastRunStatus.Id`.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from adapters.ome.client import OmeClient, query
from monitor.core.clock import Clock, SystemClock
from monitor.core.errors import AdapterError, AdapterTimeout, NotFound, OperationRejected
from monitor.core.model import (
    BmcEndpoint,
    Domain,
    DomainGroup,
    Enclosure,
    Health,
    Inventory,
    PowerState,
    Profile,
    Server,
)
from monitor.core.ports import TaskState, TaskStatus

log = logging.getLogger(__name__)

TYPE_SERVER = 1000
TYPE_CHASSIS = 2000
PROFILE_DEPLOYED = 4
STATIC_MEMBERSHIP = 12
COMPLETED = 2060
ACTIVE_STATES = (2020, 2030, 2040, 2050, 2080)
"""Scheduled, Queued, Starting, Running, New: a job that has not ended."""
DEVICE_ACTION = 3
FAILED_STATES = frozenset({2070, 2090, 2100, 2101, 2102, 2103})
"""LastRunStatus ids of a job that ended without doing its work (Failed, Warning = completed with
errors, Aborted, Paused, Stopped, Canceled)."""
POWER_OFF_HARD = 8
"""POWER_CONTROL powerState "Power Off Non-Graceful" (Ansible calls it "shutdown"; its "off" is 12, the
graceful one)."""
POWER_ON = 2
_POWER = {17: PowerState.ON, 18: PowerState.OFF, 20: PowerState.POWERING_ON, 21: PowerState.POWERING_OFF}
_HEALTH = {1000: Health.OK, 3000: Health.WARNING, 4000: Health.CRITICAL}
TOPOLOGY_TTL = 30.0
"""Seconds the groups' membership is reused by single-server reads (an inventory read refreshes it)."""
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?")


# --- OME's JSON, read leniently --------------------------------------------------------------------------


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SlotIn(_In):
    ChassisName: str | None = None
    SlotNumber: str | int | None = None
    ChassisServiceTag: str | None = None


class ManagementProfileIn(_In):
    ManagementURL: str | None = None


class ManagementIn(_In):
    NetworkAddress: str | None = None
    ManagementProfile: list[ManagementProfileIn] = []


class DeviceIn(_In):
    Id: int
    Type: int
    DeviceServiceTag: str | None = None
    DeviceName: str | None = None
    Model: str | None = None
    ChassisServiceTag: str | None = None
    PowerState: int | None = None
    Status: int | None = None
    ConnectionState: bool | None = None
    SlotConfiguration: SlotIn | None = None
    DeviceManagement: list[ManagementIn] | None = None

    def address(self) -> str | None:
        for m in self.DeviceManagement or []:
            if m.NetworkAddress:
                return m.NetworkAddress
        return None

    def management_url(self) -> str | None:
        for m in self.DeviceManagement or []:
            for p in m.ManagementProfile:
                if p.ManagementURL:
                    return p.ManagementURL
        address = self.address()
        if not address:
            return None
        return f"https://[{address}]" if ":" in address else f"https://{address}"


class GroupIn(_In):
    Id: int
    Name: str
    MembershipTypeId: int | None = None


class ProfileIn(_In):
    Id: int
    ProfileName: str
    ProfileState: int = 0
    TargetId: int | None = None
    TargetName: str | None = None
    DeploymentTaskId: int | None = None
    LastRunStatus: int | None = None


class StatusIn(_In):
    Id: int
    Name: str = ""


class TargetIn(_In):
    Id: int


class ParamIn(_In):
    Key: str = ""
    Value: str | None = None


class JobTypeIn(_In):
    Id: int | None = None
    Name: str = ""


class JobIn(_In):
    Id: int
    JobName: str = ""
    LastRunStatus: StatusIn
    Targets: list[TargetIn] = []
    Params: list[ParamIn] = []
    JobType: JobTypeIn | None = None
    LastRun: str | None = None

    def param(self, key: str) -> str | None:
        return next((p.Value for p in self.Params if p.Key.lower() == key.lower()), None)


class DetailIn(_In):
    Progress: str | int | None = None
    Value: str | None = None


M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], data: object, what: str, endpoint: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise AdapterError(f"OME {what}: malformed answer at {where}: {err['msg']}",
                           endpoint=endpoint) from exc


def _quoted(value: str) -> str:
    """An OData string literal."""
    return "'" + value.replace("'", "''") + "'"


def ome_time(text: str | None) -> float | None:
    """OME's "2023-06-07 09:33:07.161" (UTC, no zone given) as Unix seconds; None when unreadable."""
    if not text:
        return None
    try:
        stamp = datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    except ValueError:
        return None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


_UUID_EPOCH = 0x01B21DD213814000
"""100-ns intervals between 1582-10-15 (the UUID v1/v6 epoch) and 1970-01-01."""


def intent_time(intent: str) -> float | None:
    """The moment a move was written ahead, when the intent the flow recorded says it: an ISO-8601 time
    (or a string with one in it), or a time-based UUID (versions 1, 6, 7). None: it names no time (a
    random UUID 4)."""
    try:
        u = uuid.UUID(intent.strip())
    except ValueError:
        u = None
    if u is not None:
        if u.version == 7:
            return int(u.hex[:12], 16) / 1000.0
        if u.version == 1:
            return (u.time - _UUID_EPOCH) / 1e7
        if u.version == 6:
            h = u.hex
            return ((int(h[:12], 16) << 12 | int(h[13:16], 16)) - _UUID_EPOCH) / 1e7
        return None
    m = _ISO.search(intent)
    if m is None:
        return None
    text = m.group(0).replace("Z", "+00:00")
    try:
        stamp = datetime.fromisoformat(text.replace(" ", "T", 1))
    except ValueError:
        return None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


# --- the manager -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OmeSettings:
    domain_source: str = "chassis_groups"
    """chassis_groups | device_groups."""
    domain_names: tuple[str, ...] = ()
    spare_group: str = "failover-spares"
    server_id: str = "device_name"
    """device_name | service_tag."""
    force_migrate: bool = True
    job_id_wait: float = 20.0
    poll_interval: float = 1.0
    clock_skew: float = 300.0
    bmc_username: str | None = None
    bmc_password: str | None = None
    bmc_verify_tls: bool = True
    bmc_ca_file: str | None = None


@dataclass(slots=True)
class _Topology:
    read_at: float
    chassis: dict[str, DeviceIn]
    """By service tag."""
    group_of_chassis: dict[str, str]
    group_of_device: dict[int, str]
    groups: tuple[str, ...]
    spare_group: int


class OmeManager:
    """`ProfileManager` + `TaskedMoves` + `ManagerPower` over one OME appliance."""

    def __init__(self, client: OmeClient, settings: OmeSettings | None = None, *,
                 clock: Clock | None = None) -> None:
        self.c = client
        self.s = settings or OmeSettings()
        self.clock = clock or SystemClock()
        self._topology: _Topology | None = None

    # --- reads -------------------------------------------------------------------------------------

    async def _devices(self, flt: str | None = None) -> list[DeviceIn]:
        path = "/api/DeviceService/Devices"
        members = await self.c.collection(path, {"$filter": flt} if flt else None)
        return [_parse(DeviceIn, m, f"GET {path}", self.c.url + path) for m in members]

    async def _group_members(self, gid: int) -> list[DeviceIn]:
        path = f"/api/GroupService/Groups({gid})/Devices"
        return [_parse(DeviceIn, m, f"GET {path}", self.c.url + path) for m in await self.c.collection(path)]

    async def _read_topology(self) -> _Topology:
        path = "/api/GroupService/Groups"
        groups = [_parse(GroupIn, g, f"GET {path}", self.c.url + path) for g in await self.c.collection(path)]
        by_name = {g.Name: g for g in groups}
        spare = by_name.get(self.s.spare_group)
        if spare is None:
            raise NotFound(f"OME has no group {self.s.spare_group!r} (manager.ome.spare_group: the static "
                           "group of designated spares)", endpoint=self.c.url + path)
        if self.s.domain_names:
            missing = [n for n in self.s.domain_names if n not in by_name]
            if missing:
                raise NotFound(f"OME has no group {', '.join(map(repr, missing))} "
                               "(manager.ome.domain_groups.names)", endpoint=self.c.url + path)
            candidates = [by_name[n] for n in self.s.domain_names]
        else:
            candidates = [g for g in groups if g.MembershipTypeId == STATIC_MEMBERSHIP and g.Id != spare.Id]
        chassis: dict[str, DeviceIn] = {}
        of_chassis: dict[str, str] = {}
        of_device: dict[int, str] = {}
        names: list[str] = []
        for group in candidates:
            members = await self._group_members(group.Id)
            if self.s.domain_source == "chassis_groups":
                found = [m for m in members if m.Type == TYPE_CHASSIS and m.DeviceServiceTag]
                for m in found:
                    tag = m.DeviceServiceTag or ""
                    chassis[tag] = m
                    if of_chassis.setdefault(tag, group.Name) != group.Name:
                        log.warning("OME chassis %s is in groups %s and %s: %s is used", tag,
                                    of_chassis[tag], group.Name, of_chassis[tag])
            else:
                found = [m for m in members if m.Type == TYPE_SERVER]
                for m in found:
                    if of_device.setdefault(m.Id, group.Name) != group.Name:
                        log.warning("OME device %s is in groups %s and %s: %s is used", m.Id,
                                    of_device[m.Id], group.Name, of_device[m.Id])
            if found:
                names.append(group.Name)
        if self.s.domain_source == "device_groups":
            chassis = {d.DeviceServiceTag: d for d in await self._devices(f"Type eq {TYPE_CHASSIS}")
                       if d.DeviceServiceTag}
        self._topology = _Topology(self.clock.monotonic(), chassis, of_chassis, of_device, tuple(names),
                                   spare.Id)
        return self._topology

    async def _topo(self, fresh: bool = False) -> _Topology:
        t = self._topology
        if fresh or t is None or self.clock.monotonic() - t.read_at > TOPOLOGY_TTL:
            return await self._read_topology()
        return t

    async def _spares(self, topo: _Topology) -> set[int]:
        return {d.Id for d in await self._group_members(topo.spare_group)}

    async def _profiles(self, flt: str | None = None) -> list[ProfileIn]:
        path = "/api/ProfileService/Profiles"
        members = await self.c.collection(path, {"$filter": flt} if flt else None)
        return [_parse(ProfileIn, m, f"GET {path}", self.c.url + path) for m in members]

    def _key(self, device: DeviceIn) -> str | None:
        return device.DeviceName if self.s.server_id == "device_name" else device.DeviceServiceTag

    def _key_filter(self, server_id: str) -> str:
        field = "DeviceName" if self.s.server_id == "device_name" else "DeviceServiceTag"
        return f"{field} eq {_quoted(server_id)}"

    async def _device(self, server_id: str) -> DeviceIn:
        """The sled the monitor calls `server_id`; NotFound when OME has none, an error when several."""
        found = [d for d in await self._devices(self._key_filter(server_id)) if d.Type == TYPE_SERVER]
        if not found:
            raise NotFound(f"OME has no server {server_id!r}",
                           endpoint=self.c.url + "/api/DeviceService/Devices")
        if len(found) > 1:
            raise AdapterError(f"OME has {len(found)} servers named {server_id!r} (ids "
                               f"{', '.join(str(d.Id) for d in found)}): names must be unique",
                               endpoint=self.c.url + "/api/DeviceService/Devices")
        return found[0]

    async def _device_by_id(self, did: int) -> DeviceIn:
        path = f"/api/DeviceService/Devices({did})"
        return _parse(DeviceIn, await self.c.request("GET", path), f"GET {path}", self.c.url + path)

    def _chassis_of(self, device: DeviceIn, topo: _Topology) -> DeviceIn | None:
        tag = device.ChassisServiceTag or (device.SlotConfiguration.ChassisServiceTag
                                           if device.SlotConfiguration else None)
        return topo.chassis.get(tag or "")

    def _chassis_name(self, device: DeviceIn, topo: _Topology) -> str:
        chassis = self._chassis_of(device, topo)
        if chassis is not None and chassis.DeviceName:
            return chassis.DeviceName
        slot = device.SlotConfiguration
        return (slot.ChassisName if slot and slot.ChassisName else None) or device.ChassisServiceTag or "-"

    def _group_of(self, device: DeviceIn, topo: _Topology) -> str | None:
        if self.s.domain_source == "device_groups":
            return topo.group_of_device.get(device.Id)
        chassis = self._chassis_of(device, topo)
        return topo.group_of_chassis.get(chassis.DeviceServiceTag or "") if chassis else None

    def _to_server(self, device: DeviceIn, topo: _Topology, spares: set[int], profile: str | None
                   ) -> Server | None:
        key = self._key(device)
        group = self._group_of(device, topo)
        if not key or group is None:
            return None
        slot = device.SlotConfiguration
        try:
            bay = int(slot.SlotNumber) if slot and slot.SlotNumber is not None else 0
        except ValueError:
            bay = 0
        bmc = None
        url = device.management_url()
        if self.s.bmc_username and self.s.bmc_password is not None and url:
            try:
                bmc = BmcEndpoint(url, self.s.bmc_username, self.s.bmc_password,
                                  verify_tls=self.s.bmc_verify_tls, ca_file=self.s.bmc_ca_file)
            except ValueError as exc:
                log.warning("OME device %s: ManagementURL %r unusable: %s", device.Id, url, exc)
        name = self._chassis_name(device, topo)
        address = device.address()
        return Server(
            id=key, domain_group=group, domain=name, enclosure=name, bay=bay, product=device.Model or "",
            present=device.ConnectionState is True,
            power=_POWER.get(device.PowerState or 0, PowerState.UNKNOWN),
            health=_HEALTH.get(device.Status or 0, Health.UNKNOWN), profile=profile,
            spare=device.Id in spares, host=None, management_addresses=(address,) if address else (),
            bmc=bmc, serial=device.DeviceServiceTag, uuid=None,
        )

    @staticmethod
    def _deployed(profiles: Iterable[ProfileIn]) -> dict[int, str]:
        """Device id -> the profile deployed on it."""
        return {p.TargetId: p.ProfileName for p in profiles
                if p.ProfileState == PROFILE_DEPLOYED and p.TargetId}

    async def _servers(self) -> tuple[list[Server], _Topology, list[DeviceIn], list[ProfileIn]]:
        topo = await self._topo(fresh=True)
        devices = await self._devices()
        spares = await self._spares(topo)
        profiles = await self._profiles()
        on = self._deployed(profiles)
        servers = [s for d in devices if d.Type == TYPE_SERVER
                   if (s := self._to_server(d, topo, spares, on.get(d.Id))) is not None]
        seen: dict[str, int] = {}
        for s in servers:
            seen[s.id] = seen.get(s.id, 0) + 1
        doubles = sorted(k for k, n in seen.items() if n > 1)
        if doubles:
            raise AdapterError(f"OME: several servers are named {', '.join(doubles)} "
                               f"(manager.ome.server_id {self.s.server_id} must be unique)",
                               endpoint=self.c.url)
        return servers, topo, devices, profiles

    # --- ProfileManager ------------------------------------------------------------------------------

    async def inventory(self) -> Inventory:
        servers, topo, devices, profiles = await self._servers()
        by_id = {d.Id: d for d in devices}
        domains: dict[str, Domain] = {}
        enclosures: dict[str, Enclosure] = {}
        for server in servers:
            if server.domain not in domains:
                chassis = next((c for c in topo.chassis.values() if c.DeviceName == server.domain), None)
                domains[server.domain] = Domain(server.domain, server.domain_group, _domain_status(chassis))
                address = chassis.address() if chassis else None
                enclosures[server.enclosure] = Enclosure(server.enclosure, server.domain, 8,
                                                         (address,) if address else ())
            enc = enclosures[server.enclosure]
            if server.bay > enc.bays:
                enclosures[server.enclosure] = Enclosure(enc.id, enc.domain, server.bay,
                                                         enc.management_addresses)
        names = {d.Id: self._key(d) for d in by_id.values()}
        return Inventory(
            groups={g: DomainGroup(g) for g in topo.groups},
            domains=domains, enclosures=enclosures, servers={s.id: s for s in servers},
            profiles={p.ProfileName: Profile(p.ProfileName, _holder(p, names), None) for p in profiles},
        )

    async def domain(self, domain_id: str) -> Domain:
        topo = await self._topo()
        named = await self._devices(f"DeviceName eq {_quoted(domain_id)}")
        found = [d for d in named if d.Type == TYPE_CHASSIS]
        if not found:
            raise NotFound(f"OME has no chassis {domain_id!r}",
                           endpoint=self.c.url + "/api/DeviceService/Devices")
        chassis = found[0]
        tag = chassis.DeviceServiceTag or ""
        group = topo.group_of_chassis.get(tag, "")
        if self.s.domain_source == "device_groups":  # the group of its sleds (the first found)
            sleds = await self._devices(f"ChassisServiceTag eq {_quoted(tag)}") if tag else []
            group = next((topo.group_of_device[d.Id] for d in sleds if d.Id in topo.group_of_device), "")
        return Domain(domain_id, group, _domain_status(chassis))

    async def server(self, server_id: str) -> Server:
        device = await self._device(server_id)
        topo = await self._topo()
        if self._group_of(device, topo) is None:
            topo = await self._topo(fresh=True)  # a chassis or sled added to a group since
        spares = await self._spares(topo)
        on = self._deployed(await self._profiles(f"TargetId eq {device.Id}"))
        server = self._to_server(device, topo, spares, on.get(device.Id))
        if server is None:
            raise NotFound(f"OME server {server_id!r} is in no domain group (manager.ome.domain_groups)",
                           endpoint=self.c.url + f"/api/DeviceService/Devices({device.Id})")
        return server

    async def group_servers(self, group: str) -> list[Server]:
        servers, _, _, _ = await self._servers()
        return [s for s in servers if s.domain_group == group]

    async def _profile_in(self, profile_id: str) -> ProfileIn:
        found = await self._profiles(f"ProfileName eq {_quoted(profile_id)}")
        found = [p for p in found if p.ProfileName == profile_id]
        if not found:
            raise NotFound(f"OME has no profile {profile_id!r}",
                           endpoint=self.c.url + "/api/ProfileService/Profiles")
        return found[0]

    async def profile(self, profile_id: str) -> Profile:
        p = await self._profile_in(profile_id)
        server: str | None = None
        if p.ProfileState == PROFILE_DEPLOYED and p.TargetId:
            server = self._key(await self._device_by_id(p.TargetId))
        return Profile(p.ProfileName, server, None)

    async def move_profile(self, profile_id: str, source: str, target: str) -> None:
        """The move and its job, followed to the end (for a flow that does not follow tasks itself)."""
        ref = await self.start_move(profile_id, source, target, intent=datetime.now(UTC).isoformat())
        while True:
            status = await self.task(ref)
            if status.state is TaskState.COMPLETED:
                return
            if status.state is TaskState.FAILED:
                raise OperationRejected(f"OME job {ref} of MigrateProfile {profile_id} -> {target} ended: "
                                        f"{status.message}", endpoint=self.c.url)
            await self.clock.sleep(self.s.poll_interval)

    async def set_spare(self, server_id: str, spare: bool) -> None:
        device = await self._device(server_id)
        topo = await self._topo()
        members = await self._spares(topo)
        if (device.Id in members) == spare:
            return
        action = "AddMemberDevices" if spare else "RemoveMemberDevices"
        await self.c.request("POST", f"/api/GroupService/Actions/GroupService.{action}",
                             {"GroupId": topo.spare_group, "MemberDeviceIds": [device.Id]}, fenced=True)

    async def close(self) -> None:
        await self.c.close()

    # --- TaskedMoves ---------------------------------------------------------------------------------

    async def start_move(self, profile_id: str, source: str, target: str, *, intent: str) -> str:
        """MigrateProfile, only when the profile is deployed on `source`; returns the id of the job OME
        names for it in the profile's DeploymentTaskId. OME's request has no place for `intent`:
        `find_move` recognises the job by its target and its start time."""
        profile = await self._profile_in(profile_id)
        src, dst = await self._device(source), await self._device(target)
        if profile.ProfileState != PROFILE_DEPLOYED:
            raise OperationRejected(f"OME profile {profile_id} is not deployed (ProfileState "
                                    f"{profile.ProfileState}): MigrateProfile needs ProfileState 4",
                                    endpoint=self.c.url, status=409)
        if profile.TargetId != src.Id:
            raise OperationRejected(f"OME profile {profile_id} is deployed on device {profile.TargetId} "
                                    f"({profile.TargetName}), not on {source} ({src.Id}): not moved",
                                    endpoint=self.c.url, status=409)
        await self._check_target(profile, dst, target)
        before = profile.DeploymentTaskId or 0
        await self.c.request("POST", "/api/ProfileService/Actions/ProfileService.MigrateProfile",
                             {"ProfileId": profile.Id, "TargetId": dst.Id,
                              "ForceMigrate": self.s.force_migrate}, fenced=True)
        deadline = self.clock.monotonic() + self.s.job_id_wait
        while True:
            now = await self._profile_in(profile_id)
            job = now.DeploymentTaskId or 0
            if job and job != before:
                targets = {t.Id for t in (await self._job(job)).Targets}
                if dst.Id not in targets:
                    raise OperationRejected(f"OME profile {profile_id}: its new job {job} targets "
                                            f"{sorted(targets)}, not {target} ({dst.Id}): another move "
                                            "is under way", endpoint=self.c.url)
                return str(job)
            if self.clock.monotonic() >= deadline:
                active = await self._active_move_job(profile, dst)
                if active is not None:
                    log.warning("OME profile %s: DeploymentTaskId still %s after %g s; following the "
                                "active job %s that targets %s", profile_id, before, self.s.job_id_wait,
                                active, target)
                    return str(active)
                raise AdapterTimeout(f"OME accepted MigrateProfile {profile_id} -> {target}, but the profile "
                                     f"named no new job within {self.s.job_id_wait:g} s (DeploymentTaskId "
                                     f"still {before})", endpoint=self.c.url)
            await self.clock.sleep(self.s.poll_interval)

    async def _check_target(self, profile: ProfileIn, dst: DeviceIn, target: str) -> None:
        """GetInvalidTargetsForAssignProfile, as the Ansible module asks before a migrate; its own
        refusal is not one of the move's (only logged)."""
        path = "/api/ProfileService/Actions/ProfileService.GetInvalidTargetsForAssignProfile"
        try:
            invalid = await self.c.request("POST", path, {"Id": profile.Id})
        except (OperationRejected, NotFound) as exc:
            log.info("OME: %s for %s: %s", path, profile.ProfileName, exc)
            return
        if isinstance(invalid, list) and dst.Id in invalid:
            raise OperationRejected(f"OME: {target} ({dst.Id}) is an invalid target for profile "
                                    f"{profile.ProfileName} (GetInvalidTargetsForAssignProfile): not moved",
                                    endpoint=self.c.url, status=409)

    async def find_move(self, profile_id: str, target: str, *, intent: str) -> str | None:
        """The job the MigrateProfile written ahead as `intent` started: the profile's DeploymentTaskId,
        when that job targets `target` and started after the intent (less `clock_skew`); else None."""
        profile = await self._profile_in(profile_id)
        dst = await self._device(target)
        ref = profile.DeploymentTaskId or 0
        job: JobIn | None = None
        if ref:
            try:
                job = await self._job(ref)
            except NotFound:
                job = None
        if job is not None and dst.Id in {t.Id for t in job.Targets}:
            since, ran = intent_time(intent), ome_time(job.LastRun)
            if since is None or ran is None or ran >= since - self.s.clock_skew:
                return str(ref)
        # OME names the job in the profile late: an active deployment job on the target, of this
        # profile, is that request's too.
        active = await self._active_move_job(profile, dst)
        return str(active) if active is not None else None

    async def _active_move_job(self, profile: ProfileIn, dst: DeviceIn) -> int | None:
        """The one job that has not ended, targets `dst`, is not a device action (power) and names no
        other profile; None when there is none (or several: nothing certain)."""
        flt = " or ".join(f"LastRunStatus/Id eq {s}" for s in ACTIVE_STATES)
        path = "/api/JobService/Jobs"
        jobs = [_parse(JobIn, j, f"GET {path}", self.c.url + path)
                for j in await self.c.collection(path, {"$filter": flt})]
        found = [j.Id for j in jobs
                 if dst.Id in {t.Id for t in j.Targets}
                 and (j.JobType is None or j.JobType.Id != DEVICE_ACTION)
                 and j.param("profileId") in (None, str(profile.Id))]
        return found[0] if len(found) == 1 else None

    async def _job(self, ref: int | str) -> JobIn:
        path = f"/api/JobService/Jobs({int(ref)})"
        return _parse(JobIn, await self.c.request("GET", path), f"GET {path}", self.c.url + path)

    async def task(self, ref: str) -> TaskStatus:
        try:
            job = await self._job(ref)
        except ValueError:
            raise AdapterError(f"OME job reference {ref!r} is not a job id", endpoint=self.c.url) from None
        status = job.LastRunStatus
        said = f"job {job.Id} {job.JobName}: {status.Name or 'status'} ({status.Id})"
        if status.Id == COMPLETED or status.Id in FAILED_STATES:
            detail = await self._detail(job.Id)
            percent = _percent(detail.Progress) if detail else None
            words = f"{said}: {detail.Value.strip()}" if detail and detail.Value else said
            state = TaskState.COMPLETED if status.Id == COMPLETED else TaskState.FAILED
            return TaskStatus(ref, state, percent, words)
        return TaskStatus(ref, TaskState.RUNNING, None, said)

    async def _detail(self, jid: int) -> DetailIn | None:
        path = f"/api/JobService/Jobs({jid})/LastExecutionDetail"
        try:
            return _parse(DetailIn, await self.c.request("GET", path), f"GET {path}", self.c.url + path)
        except (NotFound, OperationRejected):
            return None

    # --- ManagerPower --------------------------------------------------------------------------------

    async def manager_power_state(self, server_id: str) -> PowerState:
        return _POWER.get((await self._device(server_id)).PowerState or 0, PowerState.UNKNOWN)

    async def manager_force_off(self, server_id: str) -> str | None:
        device = await self._device(server_id)
        if _POWER.get(device.PowerState or 0) in (PowerState.OFF, PowerState.POWERING_OFF):
            return None
        return await self._power_job(device, POWER_OFF_HARD)

    async def manager_power_on(self, server_id: str) -> str | None:
        device = await self._device(server_id)
        if _POWER.get(device.PowerState or 0) in (PowerState.ON, PowerState.POWERING_ON):
            return None
        return await self._power_job(device, POWER_ON)

    async def _power_job(self, device: DeviceIn, value: int) -> str:
        body = {
            "Id": 0, "JobName": "DeviceAction_Task_PowerState", "JobDescription": "DeviceAction_Task",
            "Schedule": "startnow", "State": "Enabled", "JobType": {"Id": 3, "Name": "DeviceAction_Task"},
            "Params": [{"Key": "operationName", "Value": "POWER_CONTROL"},
                       {"Key": "powerState", "Value": str(value)}],
            "Targets": [{"Id": device.Id, "Data": "", "TargetType": {"Id": TYPE_SERVER, "Name": "DEVICE"}}],
        }
        path = "/api/JobService/Jobs"
        data = await self.c.request("POST", path, body, fenced=True)
        if not isinstance(data, dict) or not isinstance(data.get("Id"), int):
            raise AdapterError(f"OME POST {path}: the answer names no job Id", endpoint=self.c.url + path)
        return str(data["Id"])


def _holder(profile: ProfileIn, names: dict[int, str | None]) -> str | None:
    if profile.ProfileState != PROFILE_DEPLOYED or not profile.TargetId:
        return None
    return names.get(profile.TargetId) or None


def _domain_status(chassis: DeviceIn | None) -> str:
    """A chassis as a domain: `ok` while OME reaches it and reports it Normal or Warning."""
    if chassis is None:
        return "unknown (no chassis)"
    if chassis.ConnectionState is False:
        return "disconnected"
    status = chassis.Status
    if status in (1000, 3000):
        return "ok"
    if status == 4000:
        return "critical"
    return f"unknown (Status {status})"


def _percent(value: str | int | None) -> int | None:
    try:
        return max(0, min(100, int(value))) if value is not None else None
    except ValueError:
        return None


__all__ = ["OmeManager", "OmeSettings", "intent_time", "ome_time", "query"]
