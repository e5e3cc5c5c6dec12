"""HPE OneView's REST API as a face of the lab's simulated world (lab/API.md, "OneView").

The servers, profiles, power and spare flags are the world's (lab.world): a profile moved here is moved
there, power changes go through the same state machine, and the oracle watches both faces. What this
face adds is OneView's own: sessions, `X-API-Version`, resources with URIs and eTags, collections with
filters and pages, conditional updates (If-Match, 412), asynchronous tasks (New -> Running ->
Completed | Error) with their durations, labels, scopes and the index search. Shapes and enums follow
`shared/reference/managers.md` section 1; what it marks unverified is chosen as documented and listed in
lab/API.md.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import urlencode

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from lab.config import OneViewDurations, OneViewLab
from lab.fencing import FENCE_HEADER, FenceToken, MalformedFence, parse_fence, token_fields
from lab.world import (
    PRODUCTS,
    BadRequest,
    Conflict,
    InjectedFailure,
    LabError,
    NotFound,
    Server,
    StaleFence,
    World,
)

__all__ = ["OneViewFace", "create_oneview_app"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_NS: Final = uuid.UUID("6f1c2a4e-0b7d-4c55-9f1e-3d2a8b0c9e71")
_BASE_MS: Final = 1_441_036_118_675
"""The first half of every eTag ("1441036118675/8", as OneView writes them)."""
RUNNING_STATES: Final = ("New", "Starting", "Pending", "Running", "Suspended", "Stopping")
POWER_CONTROLS: Final = ("MomentaryPress", "PressAndHold", "ColdBoot", "Reset")
MUTATING: Final = frozenset({"POST", "PUT", "DELETE", "PATCH"})
_PRESENT_STATES_GONE: Final = "Removed"
_POWER_TICK_S: Final = 0.05
_HUNG_PERCENT: Final = 60


class OneViewError(Exception):
    """An answer in OneView's ErrorMessage shape (errorCode, message, details, recommendedActions)."""

    def __init__(self, status: int, code: str, message: str, *, actions: tuple[str, ...] = (),
                 details: str = "", extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.actions = actions
        self.details = details
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"errorCode": self.code, "message": self.message, "details": self.details,
                "recommendedActions": list(self.actions), "errorSource": None, "nestedErrors": [],
                "data": {}, **self.extra}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(t * 1000) % 1000:03d}Z"


def _short(product: str) -> str:
    return product.removeprefix("ProLiant ").removeprefix("Integrity ")


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


# --- state ---------------------------------------------------------------------------------------------


@dataclass
class ProfileDoc:
    """What OneView keeps of a profile beyond the world's assignment."""

    uri: str
    sht: str
    """The profile's server-hardware-type URI (fixed: the profile was made for that hardware)."""
    eg: str
    description: str = ""
    version: int = 1
    task: str | None = None
    """The id of the task changing the profile now (None: not in progress)."""
    task_uri: str | None = None
    """The profile's last task."""
    created: float = field(default_factory=time.time)
    modified: float = field(default_factory=time.time)

    @property
    def etag(self) -> str:
        return f"{_BASE_MS}/{self.version}"


@dataclass
class Task:
    id: str
    name: str
    kind: Literal["profile", "power"]
    owner: str
    resource_uri: str
    resource_name: str
    resource_category: str
    token: FenceToken | None
    expected_s: float
    created: float = field(default_factory=time.time)
    modified: float = field(default_factory=time.time)
    state: str = "New"
    status: str = ""
    errors: list[dict[str, Any]] = field(default_factory=list)
    progress: list[dict[str, Any]] = field(default_factory=list)
    started: float | None = None
    """Loop time it became Running."""
    duration: float = 0.0
    frozen: int | None = None
    """A hung task's percentComplete."""
    version: int = 1
    # a profile update
    profile: str | None = None
    source: str | None = None
    target: str | None = None
    moves: bool = False
    quirk: bool = False
    """The body kept the old enclosureUri/enclosureBay: the update "succeeds" and changes nothing."""
    # a power change
    server: str | None = None
    power: str | None = None

    @property
    def uri(self) -> str:
        return f"/rest/tasks/{self.id}"

    @property
    def terminal(self) -> bool:
        return self.state not in RUNNING_STATES

    def percent(self, now: float) -> int:
        if self.terminal:
            return 100
        if self.frozen is not None:
            return self.frozen
        if self.started is None or self.duration <= 0:
            return 0
        return max(0, min(99, int(100 * (now - self.started) / self.duration)))

    def note(self, text: str) -> None:
        self.status = text
        self.modified = time.time()
        self.version += 1
        self.progress.append({"timestamp": _iso(self.modified), "statusUpdate": text,
                              "id": len(self.progress) + 1})

    def view(self, now: float) -> dict[str, Any]:
        pct = self.percent(now)
        return {
            "type": "TaskResourceV2", "category": "tasks", "uri": self.uri, "name": self.name,
            "taskState": self.state, "taskStatus": self.status, "percentComplete": pct,
            "computedPercentComplete": pct, "taskErrors": list(self.errors),
            "progressUpdates": list(self.progress),
            "associatedResource": {"resourceUri": self.resource_uri, "resourceName": self.resource_name,
                                   "resourceCategory": self.resource_category,
                                   "associationType": "MANAGED_BY"},
            "parentTaskUri": None, "expectedDuration": round(self.expected_s), "taskType": "User",
            "userInitiated": True, "owner": self.owner, "stateReason": None,
            "created": _iso(self.created), "modified": _iso(self.modified),
            "eTag": f"{_BASE_MS}/{self.version}",
        }


class PowerBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    powerState: Literal["On", "Off"]
    powerControl: Literal["MomentaryPress", "PressAndHold", "ColdBoot", "Reset"]


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    userName: str
    password: str
    authLoginDomain: str = "Local"
    loginMsgAck: bool = False


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str


class ResourceLabelsBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    resourceUri: str
    labels: list[LabelIn]


class OneViewFace:
    """The OneView appliance's state over the world: sessions, documents, tasks, labels, counters."""

    def __init__(self, world: World, config: OneViewLab) -> None:
        self.world = world
        self.config = config
        self.durations: OneViewDurations = config.durations.model_copy()
        self.sessions: dict[str, float] = {}
        """Session id -> loop time of its last use."""
        self._expired_by: set[str] = set()
        """Ids of `oneview_sessions_expire` faults already applied."""
        self.tasks: dict[str, Task] = {}
        self.labels: dict[str, list[str]] = {}
        """Resource URI -> labels other than the spare label (that one is the world's spare flag)."""
        self.requests: list[dict[str, Any]] = []
        """Every mutating request that reached the appliance, with its answer's status."""
        self.counts: dict[str, int] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._closed = False
        self.sh_uri: dict[str, str] = {}
        self.sh_by_uri: dict[str, str] = {}
        self.sht_uri: dict[str, str] = {}
        self.sht_by_uri: dict[str, str] = {}
        self.eg_uri: dict[str, str] = {}
        self.eg_by_uri: dict[str, str] = {}
        self.enc_uri: dict[str, str] = {}
        self.enc_by_uri: dict[str, str] = {}
        self.scope_uri: dict[str, str] = {}
        self.scope_by_uri: dict[str, str] = {}
        self.docs: dict[str, ProfileDoc] = {}
        self.profile_by_uri: dict[str, str] = {}
        self._index()

    # --- identities ------------------------------------------------------------------------------------

    @staticmethod
    def _id(kind: str, name: str) -> str:
        return str(uuid.uuid5(_NS, f"{kind}:{name}"))

    def _index(self) -> None:
        w = self.world
        for group in w.domain_groups:
            self.eg_uri[group] = f"/rest/enclosure-groups/{self._id('eg', group)}"
            self.scope_uri[group] = f"/rest/scopes/{self._id('scope', group)}"
        for enc in w.enclosures:
            self.enc_uri[enc] = f"/rest/enclosures/{self._id('enc', enc)}"
        for product in PRODUCTS:
            self.sht_uri[product] = f"/rest/server-hardware-types/{self._id('sht', product)}"
        for s in w.servers.values():
            if s.product is not None:
                self.sh_uri[s.id] = f"/rest/server-hardware/{self._id('sh', s.id)}"
        for p in w.profiles.values():
            holder = w.servers[p.server] if p.server else None
            assert holder is not None and holder.product is not None
            self.docs[p.id] = ProfileDoc(
                uri=f"/rest/server-profiles/{self._id('sp', p.id)}",
                sht=self.sht_uri[holder.product], eg=self.eg_uri[holder.domain_group],
                description=f"lab profile of {holder.id}")
        for forward, backward in ((self.eg_uri, self.eg_by_uri), (self.scope_uri, self.scope_by_uri),
                                  (self.enc_uri, self.enc_by_uri), (self.sht_uri, self.sht_by_uri),
                                  (self.sh_uri, self.sh_by_uri)):
            backward.update({v: k for k, v in forward.items()})
        self.profile_by_uri = {d.uri: pid for pid, d in self.docs.items()}

    def group_name(self, group: str) -> str:
        return group

    def scope_name(self, group: str) -> str:
        return f"{group}-scope"

    def hw_name(self, s: Server) -> str:
        return f"{s.enclosure}, bay {s.bay}"

    def server_at(self, uri: str) -> Server:
        sid = self.sh_by_uri.get(uri)
        if sid is None:
            raise OneViewError(404, "RESOURCE_NOT_FOUND", f"The resource {uri} was not found.")
        return self.world.servers[sid]

    def profile_at(self, uri: str) -> str:
        pid = self.profile_by_uri.get(uri)
        if pid is None:
            raise OneViewError(404, "RESOURCE_NOT_FOUND", f"The resource {uri} was not found.")
        return pid

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # --- views ---------------------------------------------------------------------------------------

    def active_task_on(self, server_id: str) -> Task | None:
        for t in self.tasks.values():
            if not t.terminal and t.kind == "profile" and server_id in (t.source, t.target):
                return t
        return None

    def hardware_view(self, s: Server) -> dict[str, Any]:
        assert s.product is not None
        w = self.world
        present = w.reported_present(s)
        product = PRODUCTS[s.product]
        task = self.active_task_on(s.id)
        if not present:
            state = _PRESENT_STATES_GONE
        elif task is not None and task.moves:
            state = "RemovingProfile" if task.source == s.id else "ApplyingProfile"
        else:
            state = "ProfileApplied" if s.profile else "NoProfileApplied"
        profile_uri = self.docs[s.profile].uri if s.profile else None
        doc = self.docs[s.profile] if s.profile else None
        view: dict[str, Any] = {
            "type": "server-hardware-12", "category": "server-hardware",
            "uri": self.sh_uri[s.id], "name": self.hw_name(s), "position": s.bay,
            "model": s.product, "shortModel": _short(s.product), "formFactor":
                "FullHeight" if s.span > 1 else "HalfHeight",
            "powerState": s.power if present else "Off", "state": state, "stateReason": "NotApplicable",
            "status": s.health if present else "Disabled", "serverProfileUri": profile_uri,
            "serverHardwareTypeUri": self.sht_uri[s.product],
            "serverGroupUri": self.eg_uri[s.domain_group], "locationUri": self.enc_uri[s.enclosure],
            "refreshState": "NotRefreshing", "mpIpAddress": s.bmc_ip, "mpModel": product.ilo_model,
            "mpFirmwareVersion": product.ilo_firmware, "romVersion": product.bios_version,
            "processorType": product.cpu, "memoryMb": product.memory_gib * 1024,
            "uuid": s.uuid, "serialNumber": s.serial,
            "virtualSerialNumber": self._virtual_serial(s.profile) if doc else None,
            "virtualUuid": self._virtual_uuid(s.profile) if s.profile else None,
            "uidState": "Off", "maintenanceMode": False,
            "scopesUri": f"/rest/scopes/resources{self.sh_uri[s.id]}",
        }
        view["eTag"] = f"{_BASE_MS}/{zlib.crc32(json.dumps(view, sort_keys=True).encode())}"
        return view

    def _virtual_serial(self, pid: str | None) -> str:
        return "VCX" + self._id("serial", pid or "")[:7].upper()

    def _virtual_uuid(self, pid: str | None) -> str:
        return self._id("vuuid", pid or "")

    def profile_view(self, pid: str) -> dict[str, Any]:
        w = self.world
        p = w.profile(pid)
        doc = self.docs[pid]
        holder = w.servers[p.server] if p.server else None
        connections: list[dict[str, Any]] = []
        for n, mac in enumerate(p.macs, start=1):
            connections.append({
                "id": n, "name": f"eth{n}", "functionType": "Ethernet", "portId": f"Flb 1:{n}-a",
                "networkUri": f"/rest/ethernet-networks/{self._id('net', 'prod')}", "requestedMbps": "2500",
                "mac": mac, "macType": "Virtual", "boot": {"priority": "NotBootable"}})
        for n, wwn in enumerate(p.wwns, start=len(connections) + 1):
            connections.append({
                "id": n, "name": f"fc{n}", "functionType": "FibreChannel", "portId": f"Mezz 1:{n - 2}",
                "networkUri": f"/rest/fc-networks/{self._id('fc', str(n))}", "requestedMbps": "8000",
                "wwpn": wwn, "wwnn": "10" + wwn[2:], "wwpnType": "Virtual",
                "boot": {"priority": "Primary" if n == len(p.macs) + 1 else "Secondary",
                         "targets": [{"arrayWwpn": "50:00:14:38:02:8D:9F:21", "lun": "0"}]}})
        return {
            "type": "ServerProfileV12", "category": "server-profiles", "uri": doc.uri, "name": pid,
            "description": doc.description, "eTag": doc.etag,
            "serverHardwareUri": self.sh_uri[holder.id] if holder else None,
            "serverHardwareTypeUri": doc.sht, "enclosureGroupUri": doc.eg,
            "enclosureUri": self.enc_uri[holder.enclosure] if holder else None,
            "enclosureBay": holder.bay if holder else None,
            "affinity": "Bay", "macType": "Virtual", "wwnType": "Virtual", "serialNumberType": "Virtual",
            "serialNumber": self._virtual_serial(pid), "uuid": self._virtual_uuid(pid),
            "state": "Updating" if doc.task else "Normal", "status": "OK",
            "inProgress": doc.task is not None, "taskUri": doc.task_uri,
            "templateCompliance": "Unknown", "serverProfileTemplateUri": None,
            "scopesUri": f"/rest/scopes/resources{doc.uri}",
            "connectionSettings": {"manageConnections": True, "connections": connections},
            "boot": {"manageBoot": True, "order": ["HardDisk"]},
            "bootMode": {"manageMode": True, "mode": "BIOS", "pxeBootPolicy": None},
            "sanStorage": {"manageSanStorage": False, "volumeAttachments": []},
            "created": _iso(doc.created), "modified": _iso(doc.modified),
        }

    def sht_view(self, product: str) -> dict[str, Any]:
        p = PRODUCTS[product]
        return {
            "type": "server-hardware-type-12", "category": "server-hardware-types",
            "uri": self.sht_uri[product], "name": f"{_short(product)} 1", "model": product,
            "family": p.family, "formFactor": "FullHeight" if p.span > 1 else "HalfHeight",
            "bootModes": ["BIOS"], "eTag": f"{_BASE_MS}/1",
        }

    def eg_view(self, group: str) -> dict[str, Any]:
        encs = [e for e, d in self.world.enclosures.items() if self.world.domains[d] == group]
        return {
            "type": "EnclosureGroupV8", "category": "enclosure-groups", "uri": self.eg_uri[group],
            "name": self.group_name(group), "enclosureCount": len(encs), "stackingMode": "Enclosure",
            "status": "OK", "state": "Normal", "enclosureTypeUri": "/rest/enclosure-types/c7000",
            "eTag": f"{_BASE_MS}/1",
        }

    def enclosure_view(self, enc: str) -> dict[str, Any]:
        w = self.world
        domain = w.enclosures[enc]
        status = w.domain_status(domain)
        state = {"ok": "Configured", "unmanaged": "Unmanaged", "incompatible": "Unsupported",
                 "unlicensed": "Unlicensed"}.get(status, "Unknown")
        return {
            "type": "EnclosureV7", "category": "enclosures", "uri": self.enc_uri[enc], "name": enc,
            "enclosureType": "C7000", "enclosureGroupUri": self.eg_uri[w.domains[domain]],
            "state": state, "stateReason": "None" if status == "ok" else status.capitalize(),
            "status": "OK" if status == "ok" else "Warning", "deviceBayCount": 16,
            "licensingIntent": "OneView", "serialNumber": "CZ" + self._id("encsn", enc)[:8].upper(),
            "activeOaPreferredIP": w.oa_address(enc), "eTag": f"{_BASE_MS}/1",
        }

    def scope_view(self, group: str) -> dict[str, Any]:
        return {"type": "ScopeV3", "category": "scopes", "uri": self.scope_uri[group],
                "name": self.scope_name(group), "description": f"the servers of {group}",
                "eTag": f"{_BASE_MS}/1"}

    def scopes_of(self, uri: str) -> list[str]:
        w = self.world
        if uri in self.sh_by_uri:
            return [self.scope_uri[w.servers[self.sh_by_uri[uri]].domain_group]]
        if uri in self.enc_by_uri:
            return [self.scope_uri[w.domains[w.enclosures[self.enc_by_uri[uri]]]]]
        if uri in self.profile_by_uri:
            p = w.profiles[self.profile_by_uri[uri]]
            return [self.scope_uri[w.servers[p.server].domain_group]] if p.server else []
        return []

    def labels_of(self, uri: str) -> list[str]:
        names = list(self.labels.get(uri, []))
        sid = self.sh_by_uri.get(uri)
        if sid is not None and self.world.servers[sid].spare:
            names.insert(0, self.config.spare_label)
        return names

    def labels_view(self, uri: str) -> dict[str, Any]:
        names = self.labels_of(uri)
        return {"type": "ResourceLabels", "category": "labels", "resourceUri": uri,
                "uri": f"/rest/labels/resources{uri}",
                "labels": [{"name": n, "uri": f"/rest/labels/{self._id('label', n)}"} for n in names],
                "eTag": f"{_BASE_MS}/{zlib.crc32(','.join(names).encode())}"}

    def known_resource(self, uri: str) -> bool:
        return uri in self.sh_by_uri or uri in self.profile_by_uri or uri in self.enc_by_uri

    # --- sessions --------------------------------------------------------------------------------------

    def login(self, body: LoginBody) -> str:
        if not (secrets.compare_digest(body.userName.encode(), self.config.username.encode())
                and secrets.compare_digest(body.password.encode(), self.config.password.encode())):
            self.count("login_refused")
            raise OneViewError(401, "AUTHN_AUTH_FAIL",
                               "Invalid user name or password or authentication directory.",
                               actions=("Check the user name, password and login domain, and retry.",))
        sid = secrets.token_urlsafe(24)
        self.sessions[sid] = _loop_time()
        self.count("login")
        return sid

    def check_session(self, sid: str | None) -> str:
        self._apply_expiry_faults()
        now = _loop_time()
        if not sid:
            raise OneViewError(401, "AUTHORIZATION", "Authorization is required: no session (auth header).",
                               actions=("Log in (POST /rest/login-sessions) and send the sessionID in "
                                        "the auth header.",))
        last = self.sessions.get(sid)
        if last is None or now - last > self.config.session_idle_s:
            self.sessions.pop(sid, None)
            raise OneViewError(401, "AUTHN_SESSION_EXPIRED", "The session is not valid or has expired.",
                               actions=("Log in again.",))
        self.sessions[sid] = now
        return sid

    def _apply_expiry_faults(self) -> None:
        for f in self.world.faults.values():
            if f.fault == "oneview_sessions_expire" and f.id not in self._expired_by:
                self._expired_by.add(f.id)
                self.sessions.clear()

    # --- timers ----------------------------------------------------------------------------------------

    def _later(self, delay: float, step: Callable[[], None]) -> None:
        if self._closed:
            return
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            if handle is not None:
                self._timers.discard(handle)
            if not self._closed:
                step()

        handle = asyncio.get_running_loop().call_later(max(0.0, delay), fire)
        self._timers.add(handle)

    def close(self) -> None:
        self._closed = True
        for h in self._timers:
            h.cancel()
        self._timers.clear()

    # --- profile updates --------------------------------------------------------------------------------

    def put_profile(self, pid: str, body: dict[str, Any], if_match: str | None,
                    token: FenceToken | None) -> Task:
        w = self.world
        p = w.profile(pid)
        doc = self.docs[pid]
        if body.get("uri", doc.uri) != doc.uri:
            raise OneViewError(400, "INVALID_URI", f"The uri in the body ({body.get('uri')}) is not the "
                                                   f"resource's ({doc.uri}).")
        for key, current in (("serverHardwareTypeUri", doc.sht), ("enclosureGroupUri", doc.eg)):
            if key in body and body[key] != current:
                raise OneViewError(400, "INVALID_PROFILE_UPDATE",
                                   f"{key} cannot change while the profile is assigned ({current}).",
                                   actions=("Create a new profile for other hardware.",))
        source = w.servers[p.server] if p.server else None
        if "serverHardwareUri" in body:
            target_uri = body["serverHardwareUri"]
            if target_uri is not None and not isinstance(target_uri, str):
                raise OneViewError(400, "INVALID_PROFILE_UPDATE", "serverHardwareUri must be a URI or null.")
            target = self.server_at(target_uri) if target_uri else None
        else:
            target = source
        where = source.id if source else (target.id if target else None)
        w.admit(token, "move", where, f"PUT {pid}")
        if if_match is not None and if_match != "*" and if_match != doc.etag:
            self.count("etag_mismatch")
            raise OneViewError(412, "RESOURCE_ETAG_MISMATCH",
                               f"The resource {doc.uri} was changed since it was read: If-Match "
                               f"{if_match} does not match its eTag {doc.etag}.",
                               actions=("Get the resource again, re-apply the change and retry.",))
        if doc.task is not None:
            raise OneViewError(409, "RESOURCE_LOCKED",
                               f"The server profile {pid} is locked in a transitory state (applying a "
                               f"profile: task {self.tasks[doc.task].uri}).",
                               actions=("Wait for the task to end, then retry.",))
        moves = (target.id if target else None) != (source.id if source else None)
        if moves:
            for s in (source, target):
                if s is not None and s.power != "Off":
                    raise OneViewError(
                        409, "ServerNotOffWithCauseForNoServerChange",
                        "Some server profile attributes cannot be changed while the server hardware is "
                        f"powered on. {self.hw_name(s)} is {s.power}.",
                        details="* Server hardware assignment",
                        actions=("Power off the server or adjust the settings and retry.",))
            if target is not None:
                assert target.product is not None
                if self.sht_uri[target.product] != doc.sht:
                    raise OneViewError(400, "SERVER_HARDWARE_TYPE_MISMATCH",
                                       f"{self.hw_name(target)} is a {target.product}; the profile needs "
                                       f"{self.sht_by_uri[doc.sht]}.")
                if self.eg_uri[target.domain_group] != doc.eg:
                    raise OneViewError(400, "ENCLOSURE_GROUP_MISMATCH",
                                       f"{self.hw_name(target)} is not in the profile's enclosure group.")
        quirk = False
        if moves and source is not None:
            # Kept enclosureUri/enclosureBay of the old bay: accepted, and nothing moves (python-hpOneView
            # #300: the update "succeeds" and the profile stays).
            bay = target.bay if target else None
            enc = self.enc_uri[target.enclosure] if target else None
            quirk = ("enclosureBay" in body and body["enclosureBay"] != bay) or \
                ("enclosureUri" in body and body["enclosureUri"] != enc)
        if isinstance(body.get("description"), str):
            doc.description = body["description"]
        doc.version += 1
        doc.modified = time.time()
        task = Task(id=secrets.token_hex(8), name="Update", kind="profile", owner=self.config.username,
                    resource_uri=doc.uri, resource_name=pid, resource_category="server-profiles",
                    token=token, expected_s=self.durations.profile_move_s if moves else 1.0,
                    profile=pid, source=source.id if source else None, target=target.id if target else None,
                    moves=moves, quirk=quirk)
        task.note("Update server profile: queued")
        self.tasks[task.id] = task
        doc.task, doc.task_uri = task.id, task.uri
        self._later(self.durations.task_start_s, lambda: self._run_profile(task))
        return task

    def _run_profile(self, task: Task) -> None:
        task.state = "Running"
        task.started = _loop_time()
        task.duration = self.durations.profile_move_s if task.moves else 0.0
        what = (f"Assign profile {task.profile} to {self._hw(task.target)}" if task.moves
                else f"Update server profile {task.profile}")
        task.note(f"{what}: running")
        self._later(task.duration, lambda: self._finish_profile(task))

    def _hw(self, sid: str | None) -> str:
        return self.hw_name(self.world.servers[sid]) if sid else "no server hardware"

    def _fault_on(self, name: str, *sids: str | None) -> bool:
        return any(sid is not None and self.world.has_fault(self.world.servers[sid], name) for sid in sids)

    def _finish_profile(self, task: Task) -> None:
        w = self.world
        pid = task.profile
        assert pid is not None
        doc = self.docs[pid]
        if self._fault_on("oneview_task_hangs", task.source, task.target):
            task.frozen = _HUNG_PERCENT
            task.note(f"Assign profile {pid} to {self._hw(task.target)}: waiting for the server hardware")
            return  # stays Running: the appliance never finishes it
        error: tuple[str, str, tuple[str, ...]] | None = None
        if task.moves:
            powered = [w.servers[s] for s in (task.source, task.target) if s and w.servers[s].power != "Off"]
            if self._fault_on("oneview_task_error", task.source, task.target):
                error = ("AssignProfileToDeviceBayError",
                         f"Unable to assign the server profile {pid} to {self._hw(task.target)}: the "
                         "server hardware did not respond (injected oneview_task_error).",
                         ("Verify the server hardware is present and responsive, then retry.",))
            elif powered:
                error = ("ServerNotOffWithCauseForNoServerChange",
                         "Some server profile attributes cannot be changed while the server hardware is "
                         f"powered on: {', '.join(f'{self.hw_name(s)} is {s.power}' for s in powered)}.\n"
                         "* Server hardware assignment",
                         ("Power off the server or adjust the settings and retry.",))
            elif not task.quirk:
                try:
                    if task.source and task.target:
                        w.move(pid, task.source, task.target, task.token, admitted=True)
                    elif task.source:
                        w.unassign(pid, task.source, task.token)
                    elif task.target:
                        w.assign(pid, task.target, task.token)
                except LabError as exc:
                    taken = task.target is not None and w.servers[task.target].profile not in (None, pid)
                    error = ("ProfileAlreadyExistsInServer" if taken else "AssignProfileToDeviceBayError",
                             exc.message, ("Choose other server hardware, or retry.",))
        doc.task = None
        doc.version += 1
        doc.modified = time.time()
        if error is not None:
            code, message, actions = error
            task.errors.append({"errorCode": code, "message": message, "details": "", "data": {},
                                "errorSource": doc.uri, "nestedErrors": [],
                                "recommendedActions": list(actions)})
            task.state = "Error"
            task.note(f"Update server profile {pid}: failed")
        else:
            task.state = "Completed"
            task.note(f"Update server profile {pid}: completed")

    # --- power -------------------------------------------------------------------------------------------

    def put_power(self, s: Server, body: PowerBody, token: FenceToken | None) -> Task:
        w = self.world
        if not w.reported_present(s):
            w.admit(token, "reset", s.id, f"{body.powerState}/{body.powerControl}")
            raise OneViewError(409, "SERVER_HARDWARE_NOT_PRESENT", f"{self.hw_name(s)} is not present.")
        busy = self.active_task_on(s.id)
        if busy is not None:
            w.admit(token, "reset", s.id, f"{body.powerState}/{body.powerControl}")
            raise OneViewError(409, "RESOURCE_LOCKED",
                               f"{self.hw_name(s)} is locked in a transitory state (applying a profile: "
                               f"task {busy.uri}).", actions=("Wait for the task to end, then retry.",))
        restart = body.powerControl in ("ColdBoot", "Reset")
        want = "On" if restart else body.powerState
        reset_type = ("ForceRestart" if restart else
                      "On" if body.powerState == "On" else
                      "ForceOff" if body.powerControl == "PressAndHold" else "GracefulShutdown")
        noop = not restart and s.power == want
        if noop:
            w.admit(token, "reset", s.id, reset_type)
        else:
            try:
                w.reset(s.id, reset_type, token)
            except StaleFence:
                raise
            except LabError as exc:
                raise OneViewError(409, "INVALID_POWER_STATE_CHANGE",
                                   f"{self.hw_name(s)}: {exc.message}") from exc
        name = "Power on" if want == "On" and not restart else "Reset" if restart else "Power off"
        task = Task(id=secrets.token_hex(8), name=name, kind="power", owner=self.config.username,
                    resource_uri=self.sh_uri[s.id], resource_name=self.hw_name(s),
                    resource_category="server-hardware", token=token, expected_s=self.durations.power_s,
                    server=s.id, power=want)
        task.note(f"{name} Server: {self.hw_name(s)}")
        self.tasks[task.id] = task
        self._later(self.durations.task_start_s, lambda: self._run_power(task))
        return task

    def _run_power(self, task: Task) -> None:
        task.state = "Running"
        task.started = _loop_time()
        task.duration = self.durations.power_s
        self._later(_POWER_TICK_S, lambda: self._tick_power(task))

    def _tick_power(self, task: Task) -> None:
        assert task.server is not None and task.started is not None
        s = self.world.servers[task.server]
        elapsed = _loop_time() - task.started
        if self.world.has_fault(s, "oneview_task_hangs"):
            task.frozen = _HUNG_PERCENT
            return
        if self.world.has_fault(s, "oneview_task_error"):
            self._fail_power(task, "PowerStateChangeFailed",
                             f"{task.name} of {self.hw_name(s)} failed (injected oneview_task_error).")
            return
        if elapsed >= task.duration and s.power == task.power:
            task.state = "Completed"
            task.note(f"{task.name} Server: {self.hw_name(s)}: completed")
            return
        if elapsed >= self.durations.power_timeout_s:
            self._fail_power(task, "PowerStateChangeTimeout",
                             f"{self.hw_name(s)} did not reach power state {task.power} within "
                             f"{self.durations.power_timeout_s:g} s (it is {s.power}).")
            return
        self._later(_POWER_TICK_S, lambda: self._tick_power(task))

    def _fail_power(self, task: Task, code: str, message: str) -> None:
        task.errors.append({"errorCode": code, "message": message, "details": "", "data": {},
                            "errorSource": task.resource_uri, "nestedErrors": [],
                            "recommendedActions": ["Check the server hardware and its iLO, then retry."]})
        task.state = "Error"
        task.note(f"{task.name}: failed")

    # --- labels --------------------------------------------------------------------------------------------

    def set_labels(self, uri: str, names: list[str], token: FenceToken | None) -> dict[str, Any]:
        if not self.known_resource(uri):
            raise OneViewError(404, "RESOURCE_NOT_FOUND", f"The resource {uri} was not found.")
        clean: list[str] = []
        for n in names:
            if not n.strip() or len(n) > 64:
                raise OneViewError(400, "INVALID_LABEL",
                                   f"The label {n!r} is not valid (1 to 64 characters).")
            if n not in clean:
                clean.append(n)
        sid = self.sh_by_uri.get(uri)
        spare = self.config.spare_label in clean
        if sid is not None:
            self.world.set_spare(sid, spare, token)
            clean = [n for n in clean if n != self.config.spare_label]
        else:
            self.world.admit(token, "spare", None, f"labels of {uri}")
        if clean:
            self.labels[uri] = clean
        else:
            self.labels.pop(uri, None)
        self.count("labels")
        return self.labels_view(uri)


# --- HTTP ------------------------------------------------------------------------------------------------

FACE = web.AppKey("oneview_face", OneViewFace)
_FILTER = re.compile(r"""^\s*"?\s*([A-Za-z][A-Za-z0-9_.]*)\s*(==|=|!=|<>)\s*'([^']*)'\s*"?\s*$""")
_QUERY = re.compile(r"""^\s*([A-Za-z]+)\s*[=:]\s*'([^']*)'\s*$""")


def _known(index: Mapping[str, object], uri: str) -> None:
    """404 RESOURCE_NOT_FOUND, as the appliance answers, for a URI the face does not hold."""
    if uri not in index:
        raise OneViewError(404, "RESOURCE_NOT_FOUND", f"The resource {uri} was not found.")


def _face(request: web.Request) -> OneViewFace:
    return request.app[FACE]


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def _error(exc: OneViewError) -> web.Response:
    return _json(exc.body(), status=exc.status)


async def _body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise OneViewError(400, "INVALID_JSON", "The request body is not valid JSON.") from None


def _model(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                             for e in exc.errors())
        raise OneViewError(400, "INVALID_REQUEST", f"The request body is not valid: {problems}.") from None


def _token(request: web.Request) -> FenceToken | None:
    try:
        return parse_fence(request.headers.getall(FENCE_HEADER, []))
    except MalformedFence as exc:
        raise OneViewError(400, "INVALID_FENCING_TOKEN", str(exc)) from None


def _dotted(member: dict[str, Any], path: str) -> Any:
    value: Any = member
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def collection(request: web.Request, members: list[dict[str, Any]], category: str,
               type_: str) -> dict[str, Any]:
    """A OneView collection: `filter` (repeated: AND; `field='value'`, `==`, `!=`), `scopeUris`,
    `sort` (`field:ascending|descending`), `start`, `count` (-1: all), `nextPageUri`."""
    face = _face(request)
    q = request.query
    for spec in q.getall("filter", []):
        m = _FILTER.match(spec)
        if m is None:
            raise OneViewError(400, "INVALID_FILTER", f"The filter {spec!r} is not valid: use "
                                                      "field='value'.")
        key, op, value = m.group(1), m.group(2), m.group(3)
        want_equal = op in ("=", "==")
        members = [x for x in members if (_text(_dotted(x, key)) == value) == want_equal]
    scopes = q.get("scopeUris")
    if scopes:
        wanted = {s.strip() for s in scopes.split(",") if s.strip()}
        members = [x for x in members if wanted & set(face.scopes_of(str(x.get("uri"))))]
    sort = q.get("sort")
    if sort:
        key, _, direction = sort.partition(":")
        members = sorted(members, key=lambda x: _text(_dotted(x, key.strip())),
                         reverse=direction.strip().lower().startswith("desc"))
    try:
        start = int(q.get("start", "0"))
        count = int(q.get("count", str(face.config.page_size)))
    except ValueError:
        raise OneViewError(400, "INVALID_QUERY", "start and count must be integers.") from None
    if start < 0:
        raise OneViewError(400, "INVALID_QUERY", "start must be 0 or more.")
    total = len(members)
    page = members[start:] if count < 0 else members[start:start + count]
    base = request.path
    kept = [(k, v) for k, v in q.items() if k not in ("start", "count")]

    def page_uri(first: int) -> str:
        return f"{base}?{urlencode([('start', str(first)), ('count', str(count)), *kept])}"

    more = count >= 0 and start + len(page) < total
    return {
        "type": type_, "category": category, "members": page, "start": start, "count": len(page),
        "total": total, "uri": str(request.rel_url),
        "nextPageUri": page_uri(start + len(page)) if more else None,
        "prevPageUri": page_uri(max(0, start - count)) if start > 0 and count > 0 else None,
    }


# --- middleware ------------------------------------------------------------------------------------------


@web.middleware
async def oneview_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    face = _face(request)
    path = request.path
    if not path.startswith("/rest"):
        return await _answer(request, handler)
    if face.world.manager_fault("oneview_unavailable"):
        unavailable = _error(OneViewError(
            503, "SERVICE_UNAVAILABLE",
            "The appliance is not available (injected fault oneview_unavailable).",
            actions=("Retry later.",)))
        unavailable.headers["Retry-After"] = "30"
        _log(face, request, 503)
        return unavailable
    try:
        if path != "/rest/version":
            _check_version(face, request)
            if not (path == "/rest/login-sessions" and request.method == "POST"):
                face.check_session(request.headers.get("auth"))
    except OneViewError as exc:
        _log(face, request, exc.status)
        return _error(exc)
    response = await _answer(request, handler)
    _log(face, request, response.status)
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except OneViewError as exc:
        return _error(exc)
    except StaleFence as exc:
        return _json(OneViewError(409, "STALE_FENCING_TOKEN", exc.message,
                                  extra={"stale_fence": exc.view()}).body(), status=409)
    except LabError as exc:
        code = {NotFound: "RESOURCE_NOT_FOUND", Conflict: "RESOURCE_CONFLICT", BadRequest: "INVALID_REQUEST",
                InjectedFailure: "INTERNAL_ERROR"}.get(type(exc), "RESOURCE_CONFLICT")
        return _error(OneViewError(exc.status, code, exc.message))
    except web.HTTPNotFound:
        return _error(OneViewError(404, "RESOURCE_NOT_FOUND", f"No such resource: {request.path}."))
    except web.HTTPMethodNotAllowed:
        return _error(OneViewError(405, "METHOD_NOT_ALLOWED",
                                   f"{request.method} is not allowed on {request.path}."))


def _check_version(face: OneViewFace, request: web.Request) -> None:
    raw = request.headers.get("X-API-Version")
    if raw is None:
        return  # the appliance answers at its minimum version (lab/API.md)
    cfg = face.config
    try:
        version = int(raw)
    except ValueError:
        version = -1
    if not cfg.minimum_version <= version <= cfg.current_version:
        raise OneViewError(412, "INVALID_API_VERSION",
                           f"X-API-Version {raw!r} is not supported: {cfg.minimum_version} to "
                           f"{cfg.current_version}.", actions=("Send a supported X-API-Version.",))


def _log(face: OneViewFace, request: web.Request, status: int) -> None:
    """Count the answer; record a mutating request (every one that reached the appliance)."""
    face.count(f"status_{status // 100}xx")
    if request.method not in MUTATING:
        return
    try:
        token = parse_fence(request.headers.getall(FENCE_HEADER, []))
    except MalformedFence:
        token = None
    kind = ("profile_put" if request.method == "PUT" and request.path.startswith("/rest/server-profiles/")
            else "power_put" if request.path.endswith("/powerState")
            else "login" if request.path == "/rest/login-sessions"
            else "labels" if request.path.startswith("/rest/labels")
            else "other")
    face.requests.append({"time": time.time(), "method": request.method, "path": request.path,
                          "kind": kind, "status": status, **token_fields(token)})


# --- handlers --------------------------------------------------------------------------------------------


async def get_version(request: web.Request) -> web.Response:
    cfg = _face(request).config
    return _json({"currentVersion": cfg.current_version, "minimumVersion": cfg.minimum_version})


async def post_login(request: web.Request) -> web.Response:
    body: LoginBody = _model(LoginBody, await _body(request))
    sid = _face(request).login(body)
    return _json({"sessionID": sid, "partnerData": {}})


async def put_login(request: web.Request) -> web.Response:
    return _json({"sessionID": request.headers.get("auth", ""), "partnerData": {}})


async def delete_login(request: web.Request) -> web.Response:
    _face(request).sessions.pop(request.headers.get("auth", ""), None)
    return web.Response(status=204)


async def get_idle_timeout(request: web.Request) -> web.Response:
    face = _face(request)
    sid = request.headers.get("Session-ID") or ""
    if sid not in face.sessions:
        raise OneViewError(404, "RESOURCE_NOT_FOUND", "No such session.")
    return _json({"idleTimeout": int(face.config.session_idle_s * 1000)})


def _server(request: web.Request) -> Server:
    face = _face(request)
    return face.server_at(f"/rest/server-hardware/{request.match_info['id']}")


async def get_hardware_list(request: web.Request) -> web.Response:
    face = _face(request)
    members = [face.hardware_view(face.world.servers[sid]) for sid in face.sh_uri]
    return _json(collection(request, members, "server-hardware", "server-hardware-list-12"))


async def get_hardware(request: web.Request) -> web.Response:
    return _json(_face(request).hardware_view(_server(request)))


async def put_power_state(request: web.Request) -> web.Response:
    face = _face(request)
    face.count("power_put")
    server = _server(request)
    token = _token(request)
    body: PowerBody = _model(PowerBody, await _body(request))
    task = face.put_power(server, body, token)
    return _json(task.view(_loop_time()), status=202, headers={"Location": task.uri})


async def get_types(request: web.Request) -> web.Response:
    face = _face(request)
    members = [face.sht_view(p) for p in face.sht_uri]
    return _json(collection(request, members, "server-hardware-types", "server-hardware-type-list-12"))


async def get_type(request: web.Request) -> web.Response:
    face = _face(request)
    uri = f"/rest/server-hardware-types/{request.match_info['id']}"
    _known(face.sht_by_uri, uri)
    return _json(face.sht_view(face.sht_by_uri[uri]))


async def get_groups(request: web.Request) -> web.Response:
    face = _face(request)
    members = [face.eg_view(g) for g in face.eg_uri]
    return _json(collection(request, members, "enclosure-groups", "EnclosureGroupListV8"))


async def get_group(request: web.Request) -> web.Response:
    face = _face(request)
    uri = f"/rest/enclosure-groups/{request.match_info['id']}"
    _known(face.eg_by_uri, uri)
    return _json(face.eg_view(face.eg_by_uri[uri]))


async def get_enclosures(request: web.Request) -> web.Response:
    face = _face(request)
    members = [face.enclosure_view(e) for e in face.enc_uri]
    return _json(collection(request, members, "enclosures", "EnclosureListV7"))


async def get_enclosure(request: web.Request) -> web.Response:
    face = _face(request)
    uri = f"/rest/enclosures/{request.match_info['id']}"
    _known(face.enc_by_uri, uri)
    return _json(face.enclosure_view(face.enc_by_uri[uri]))


def _read_profile(face: OneViewFace, pid: str) -> dict[str, Any]:
    view = face.profile_view(pid)
    holder = face.world.profiles[pid].server
    if holder is not None and face._fault_on("oneview_etag_conflict", holder):
        face.docs[pid].version += 1  # another client changes the profile right after this read
    return view


async def get_profiles(request: web.Request) -> web.Response:
    face = _face(request)
    members = [_read_profile(face, pid) for pid in face.docs]
    return _json(collection(request, members, "server-profiles", "ServerProfileListV12"))


async def get_profile(request: web.Request) -> web.Response:
    face = _face(request)
    pid = face.profile_at(f"/rest/server-profiles/{request.match_info['id']}")
    return _json(_read_profile(face, pid))


async def put_profile(request: web.Request) -> web.Response:
    face = _face(request)
    face.count("profile_put")  # every PUT that reaches the appliance, refused or not
    pid = face.profile_at(f"/rest/server-profiles/{request.match_info['id']}")
    token = _token(request)
    body = await _body(request)
    if not isinstance(body, dict):
        raise OneViewError(400, "INVALID_REQUEST", "The body must be a server profile object.")
    task = face.put_profile(pid, body, request.headers.get("If-Match"), token)
    delay = face.durations.put_answer_delay_s
    if delay > 0:
        await asyncio.sleep(delay)
    return _json(task.view(_loop_time()), status=202, headers={"Location": task.uri})


async def get_tasks(request: web.Request) -> web.Response:
    face = _face(request)
    now = _loop_time()
    members = [t.view(now) for t in face.tasks.values()]
    return _json(collection(request, members, "tasks", "TaskResourceCollectionV2"))


async def get_task(request: web.Request) -> web.Response:
    face = _face(request)
    task = face.tasks.get(request.match_info["id"])
    if task is None:
        raise OneViewError(404, "RESOURCE_NOT_FOUND", f"The task /rest/tasks/{request.match_info['id']} "
                                                      "was not found.")
    return _json(task.view(_loop_time()))


async def get_labels(request: web.Request) -> web.Response:
    face = _face(request)
    names: list[str] = []
    for uri in [*face.sh_uri.values(), *face.labels]:
        for n in face.labels_of(uri):
            if n not in names:
                names.append(n)
    members = [{"type": "Label", "category": "labels", "name": n,
                "uri": f"/rest/labels/{face._id('label', n)}"} for n in names]
    return _json(collection(request, members, "labels", "LabelCollection"))


async def get_resource_labels(request: web.Request) -> web.Response:
    face = _face(request)
    uri = "/" + request.match_info["uri"]
    if not face.known_resource(uri):
        raise OneViewError(404, "RESOURCE_NOT_FOUND", f"The resource {uri} was not found.")
    return _json(face.labels_view(uri))


async def post_resource_labels(request: web.Request) -> web.Response:
    face = _face(request)
    token = _token(request)
    body: ResourceLabelsBody = _model(ResourceLabelsBody, await _body(request))
    return _json(face.set_labels(body.resourceUri, [lab.name for lab in body.labels], token))


async def put_resource_labels(request: web.Request) -> web.Response:
    face = _face(request)
    token = _token(request)
    body: ResourceLabelsBody = _model(ResourceLabelsBody, await _body(request))
    uri = "/" + request.match_info["uri"]
    if body.resourceUri != uri:
        raise OneViewError(400, "INVALID_REQUEST", f"resourceUri {body.resourceUri} is not {uri}.")
    return _json(face.set_labels(uri, [lab.name for lab in body.labels], token))


async def delete_resource_labels(request: web.Request) -> web.Response:
    face = _face(request)
    token = _token(request)
    face.set_labels("/" + request.match_info["uri"], [], token)
    return web.Response(status=204)


async def get_index(request: web.Request) -> web.Response:
    """`/rest/index/resources?category=C&query=labels='X'` (or `scopeUris='U'`): the resources found."""
    face = _face(request)
    category = request.query.get("category")
    views: list[dict[str, Any]] = []
    if category in (None, "server-hardware"):
        views += [face.hardware_view(face.world.servers[sid]) for sid in face.sh_uri]
    if category in (None, "server-profiles"):
        views += [face.profile_view(pid) for pid in face.docs]
    if category in (None, "enclosures"):
        views += [face.enclosure_view(e) for e in face.enc_uri]
    query = request.query.get("query")
    if query:
        m = _QUERY.match(query)
        if m is None or m.group(1) not in ("labels", "scopeUris"):
            raise OneViewError(400, "INVALID_QUERY", f"The query {query!r} is not valid: use labels='NAME' "
                                                     "or scopeUris='URI'.")
        key, value = m.group(1), m.group(2)
        if key == "labels":
            views = [v for v in views if value in face.labels_of(v["uri"])]
        else:
            views = [v for v in views if value in face.scopes_of(v["uri"])]
    members = [{"uri": v["uri"], "name": v["name"], "category": v["category"], "type": v["type"],
                "attributes": {"name": v["name"]}} for v in views]
    return _json(collection(request, members, "index-resources", "IndexResourceList"))


async def get_scopes(request: web.Request) -> web.Response:
    face = _face(request)
    members = [face.scope_view(g) for g in face.scope_uri]
    return _json(collection(request, members, "scopes", "ScopeCollectionV3"))


async def get_scope(request: web.Request) -> web.Response:
    face = _face(request)
    uri = f"/rest/scopes/{request.match_info['id']}"
    _known(face.scope_by_uri, uri)
    return _json(face.scope_view(face.scope_by_uri[uri]))


async def get_resource_scopes(request: web.Request) -> web.Response:
    face = _face(request)
    uri = "/" + request.match_info["uri"]
    if not face.known_resource(uri):
        raise OneViewError(404, "RESOURCE_NOT_FOUND", f"The resource {uri} was not found.")
    return _json({"type": "ScopedResource", "category": "scoped-resources", "resourceUri": uri,
                  "uri": f"/rest/scopes/resources{uri}", "scopeUris": face.scopes_of(uri)})


# --- control (the lab's, never OneView's) ---------------------------------------------------------------


async def get_control(request: web.Request) -> web.Response:
    face = _face(request)
    now = _loop_time()
    return _json({"requests": face.requests, "counts": face.counts, "sessions": len(face.sessions),
                  "tasks": [t.view(now) for t in face.tasks.values()]})


async def delete_control_requests(request: web.Request) -> web.Response:
    face = _face(request)
    cleared = len(face.requests)
    face.requests.clear()
    face.counts.clear()
    return _json({"cleared": cleared})


async def get_durations(request: web.Request) -> web.Response:
    return _json(_face(request).durations.model_dump())


async def put_durations(request: web.Request) -> web.Response:
    face = _face(request)
    data = await _body(request)
    if not isinstance(data, dict):
        raise OneViewError(400, "INVALID_REQUEST", "expected an object of durations")
    try:
        face.durations = OneViewDurations.model_validate({**face.durations.model_dump(), **data})
    except ValidationError as exc:
        raise OneViewError(400, "INVALID_REQUEST", str(exc.errors()[0]["msg"])) from None
    return _json(face.durations.model_dump())


def create_oneview_app(face: OneViewFace) -> web.Application:
    app = web.Application(middlewares=[oneview_middleware])
    app[FACE] = face
    r = app.router
    r.add_get("/rest/version", get_version)
    r.add_post("/rest/login-sessions", post_login)
    r.add_put("/rest/login-sessions", put_login)
    r.add_delete("/rest/login-sessions", delete_login)
    r.add_get("/rest/sessions/idle-timeout", get_idle_timeout)
    r.add_get("/rest/server-hardware", get_hardware_list)
    r.add_get("/rest/server-hardware/{id}", get_hardware)
    r.add_put("/rest/server-hardware/{id}/powerState", put_power_state)
    r.add_get("/rest/server-hardware-types", get_types)
    r.add_get("/rest/server-hardware-types/{id}", get_type)
    r.add_get("/rest/enclosure-groups", get_groups)
    r.add_get("/rest/enclosure-groups/{id}", get_group)
    r.add_get("/rest/enclosures", get_enclosures)
    r.add_get("/rest/enclosures/{id}", get_enclosure)
    r.add_get("/rest/server-profiles", get_profiles)
    r.add_get("/rest/server-profiles/{id}", get_profile)
    r.add_put("/rest/server-profiles/{id}", put_profile)
    r.add_get("/rest/tasks", get_tasks)
    r.add_get("/rest/tasks/{id}", get_task)
    r.add_get("/rest/labels", get_labels)
    r.add_post("/rest/labels/resources", post_resource_labels)
    r.add_get("/rest/labels/resources/{uri:.+}", get_resource_labels)
    r.add_put("/rest/labels/resources/{uri:.+}", put_resource_labels)
    r.add_delete("/rest/labels/resources/{uri:.+}", delete_resource_labels)
    r.add_get("/rest/index/resources", get_index)
    r.add_get("/rest/scopes", get_scopes)
    r.add_get("/rest/scopes/resources/{uri:.+}", get_resource_scopes)
    r.add_get("/rest/scopes/{id}", get_scope)
    r.add_get("/lab/v1/oneview", get_control)
    r.add_delete("/lab/v1/oneview/requests", delete_control_requests)
    r.add_get("/lab/v1/oneview/durations", get_durations)
    r.add_put("/lab/v1/oneview/durations", put_durations)
    return app
