"""`manager.kind: oneview`: the profile manager over HPE OneView (ports.ProfileManager, TaskedMoves,
ManagerPower).

How OneView's resources become the monitor's inventory:

- server id: `<enclosure name>-bay<position>` of a server-hardware (`enc1-bay3`; "Encl1, bay 3" in the
  enclosure Encl1 is `Encl1-bay3`).
- domain group: the server's enclosure group (`serverGroupUri`), or with `group_by: scope` its scope
  (the first by name); a server in no scope is left out.
- domain: the enclosure (`locationUri`), `ok` while its state is Configured or Monitored and its status
  is not Critical or Disabled (else the state, lowercased).
- product and model: the server-hardware-type's `model` (the spare rules ignore the generation).
- spare: the server-hardware carries the configured label (`/rest/labels`); `set_spare` adds or removes it.
- profile: a server profile, by name; where it is: `serverHardwareUri` (while a task changes it the place
  is unknown: `ProfileInTransition`).
- power and health: `powerState`, `status`; the BMC: `https://<mpIpAddress>:<bmc.port>` with the
  configured iLO account (the flow's power goes through the BMC; `ManagerPower` through OneView).

Host records are the discovery service's (none here).

The move (`start_move`): the profile is read with its eTag, `serverHardwareUri` set to the spare,
`enclosureUri`/`enclosureBay` removed (left in, OneView accepts the update and moves nothing), a marker
with the request's intent appended to its `description`, and the whole body PUT with `If-Match: eTag`;
the answer's task (Location, else the body) is returned. `find_move` looks for that marker in the
profile (then its `taskUri` is the move's task), else for a task still running on the profile.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, ValidationError

from adapters.oneview.client import OneViewClient
from monitor.core.clock import Clock
from monitor.core.errors import AdapterError, NotFound, OperationRejected
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
    identify_product,
)
from monitor.core.ports import TaskState, TaskStatus

log = logging.getLogger(__name__)

GroupBy = Literal["enclosure_group", "scope"]
RUNNING = frozenset({"New", "Starting", "Pending", "Running", "Suspended", "Stopping", "Unknown"})
"""taskState values of a task still going (Unknown: read again)."""
SUCCEEDED = frozenset({"Completed", "Warning"})
"""The SDK treats Warning as success."""
GONE_STATES = frozenset({"Removed", "Removing", "RemoveFailed"})
NORMAL_ENCLOSURE_STATES = frozenset({"Configured", "Monitored"})
_MARK = re.compile(r"\s*\[failover-monitor move [0-9a-fA-F-]{36}\]")
TASK_SEARCH = 20
"""Tasks of a profile read by find_move (newest first)."""


def marker(intent: str) -> str:
    return f"[failover-monitor move {intent}]"


class ProfileInTransition(AdapterError):
    """A task is changing the profile now (`inProgress`): where it ends up is not known yet."""


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class HardwareIn(_In):
    uri: str
    name: str
    position: int | None = None
    model: str | None = None
    powerState: str | None = None
    state: str | None = None
    status: str | None = None
    serverProfileUri: str | None = None
    serverHardwareTypeUri: str | None = None
    serverGroupUri: str | None = None
    locationUri: str | None = None
    mpIpAddress: str | None = None
    serialNumber: str | None = None
    uuid: str | None = None
    formFactor: str | None = None


class ProfileIn(_In):
    uri: str
    name: str
    eTag: str | None = None
    serverHardwareUri: str | None = None
    inProgress: bool = False
    taskUri: str | None = None
    description: str | None = None


class TaskErrorIn(_In):
    errorCode: str | None = None
    message: str | None = None
    details: str | None = None
    recommendedActions: list[str] = []


class AssociatedIn(_In):
    resourceUri: str | None = None


class TaskIn(_In):
    uri: str
    name: str | None = None
    taskState: str
    taskStatus: str | None = None
    percentComplete: int | None = None
    taskErrors: list[TaskErrorIn] = []
    associatedResource: AssociatedIn | None = None
    created: str | None = None


class NamedIn(_In):
    uri: str
    name: str
    model: str | None = None
    state: str | None = None
    status: str | None = None
    enclosureGroupUri: str | None = None
    deviceBayCount: int | None = None
    activeOaPreferredIP: str | None = None


class LabelsIn(_In):
    labels: list[dict[str, Any]] = []


M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], data: Any, what: str, endpoint: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise AdapterError(f"OneView {what}: malformed ({'.'.join(str(p) for p in err['loc'])}: "
                           f"{err['msg']})", endpoint=endpoint) from exc


def _filter(field: str, value: str) -> str:
    if "'" in value:
        raise AdapterError(f"OneView filters cannot carry a quote: {value!r}")
    return "filter=" + quote(f"\"{field}='{value}'\"", safe="")


def task_status(task: TaskIn) -> TaskStatus:
    """A OneView task as the flow reads it: Completed and Warning succeed; Error, Terminated, Killed,
    Interrupted fail (with the task's errors); anything else is still running."""
    if task.taskState in SUCCEEDED:
        state = TaskState.COMPLETED
    elif task.taskState in RUNNING:
        state = TaskState.RUNNING
    else:
        state = TaskState.FAILED
    message = task.taskStatus or ""
    if state is TaskState.FAILED:
        errors = []
        for e in task.taskErrors:
            text = f"{e.message or 'no message'}" + (f" [{e.errorCode}]" if e.errorCode else "")
            if e.recommendedActions:
                text += "; recommended: " + " ".join(e.recommendedActions)
            errors.append(text)
        message = f"{task.taskState}: " + ("; ".join(errors) or message or "no reason given")
    elif state is TaskState.COMPLETED and task.taskState == "Warning":
        message = f"Warning: {message}"
    return TaskStatus(task.uri, state, task.percentComplete, message)


@dataclass(frozen=True, slots=True)
class BmcAccess:
    """How to reach each blade's BMC (OneView gives its address, `mpIpAddress`)."""

    username: str
    password: str
    port: int = 443
    verify_tls: bool = True
    ca_file: str | None = None


@dataclass
class _Catalogue:
    groups: dict[str, NamedIn]
    types: dict[str, NamedIn]
    enclosures: dict[str, NamedIn]
    scopes: dict[str, NamedIn]


class OneViewManager:
    """ProfileManager, TaskedMoves and ManagerPower over one OneView appliance."""

    def __init__(self, client: OneViewClient, clock: Clock, *, spare_label: str = "spare",
                 group_by: GroupBy = "enclosure_group", bmc: BmcAccess | None = None,
                 poll_interval: float = 1.0, move_timeout: float = 1800.0) -> None:
        self._c = client
        self._clock = clock
        self.spare_label = spare_label
        self.group_by = group_by
        self._bmc = bmc
        self._poll = poll_interval
        self._move_timeout = move_timeout
        self._cat: _Catalogue | None = None
        self._hw_uri: dict[str, str] = {}
        """server id -> server-hardware URI."""
        self._hw_id: dict[str, str] = {}
        self._profile_uri: dict[str, str] = {}
        """profile name -> URI."""
        self._profile_name: dict[str, str] = {}
        self._scope_of: dict[str, str] = {}
        """server-hardware URI -> scope name (group_by: scope)."""

    @property
    def client(self) -> OneViewClient:
        return self._c

    async def close(self) -> None:
        await self._c.close()

    # --- the catalogue: enclosure groups, types, enclosures, scopes --------------------------------------

    async def _catalogue(self, refresh: bool = False) -> _Catalogue:
        if self._cat is not None and not refresh:
            return self._cat
        c = self._c

        async def named(path: str) -> dict[str, NamedIn]:
            items = [_parse(NamedIn, m, path, c.address + path) for m in await c.get_all(path)]
            return {i.uri: i for i in items}

        cat = _Catalogue(await named("/rest/enclosure-groups"), await named("/rest/server-hardware-types"),
                         await named("/rest/enclosures"),
                         await named("/rest/scopes") if self.group_by == "scope" else {})
        if self.group_by == "scope":
            scope_of: dict[str, str] = {}
            for scope in sorted(cat.scopes.values(), key=lambda s: s.name):
                path = f"/rest/server-hardware?scopeUris={quote(scope.uri, safe='')}"
                for m in await c.get_all(path):
                    uri = m.get("uri")
                    if isinstance(uri, str):
                        scope_of.setdefault(uri, scope.name)
            self._scope_of = scope_of
        self._cat = cat
        return cat

    async def _known(self, uris: Iterable[str | None]) -> _Catalogue:
        """The catalogue, read again when it lacks one of `uris` (a resource added since)."""
        cat = await self._catalogue()
        known = {**cat.groups, **cat.types, **cat.enclosures}
        if any(u and u not in known for u in uris):
            cat = await self._catalogue(refresh=True)
        return cat

    # --- mapping ---------------------------------------------------------------------------------------

    def _server_id(self, hw: HardwareIn, cat: _Catalogue) -> str:
        enc = cat.enclosures.get(hw.locationUri or "")
        if enc is not None and hw.position is not None:
            return f"{enc.name}-bay{hw.position}"
        return re.sub(r"[^A-Za-z0-9._-]+", "-", hw.name).strip("-")

    def _group(self, hw: HardwareIn, cat: _Catalogue) -> str | None:
        if self.group_by == "scope":
            return self._scope_of.get(hw.uri)
        eg = cat.groups.get(hw.serverGroupUri or "")
        return eg.name if eg is not None else None

    def _to_server(self, hw: HardwareIn, cat: _Catalogue, spare: bool, group: str,
                   profile: str | None) -> Server:
        sid = self._server_id(hw, cat)
        self._hw_uri[sid] = hw.uri
        self._hw_id[hw.uri] = sid
        sht = cat.types.get(hw.serverHardwareTypeUri or "")
        product = (sht.model if sht and sht.model else None) or hw.model or ""
        info = identify_product(product)
        enc = cat.enclosures.get(hw.locationUri or "")
        enclosure = enc.name if enc else sid
        bmc = None
        if self._bmc is not None and hw.mpIpAddress:
            host = f"[{hw.mpIpAddress}]" if ":" in hw.mpIpAddress else hw.mpIpAddress
            b = self._bmc
            bmc = BmcEndpoint(f"https://{host}:{b.port}", b.username, b.password, verify_tls=b.verify_tls,
                              ca_file=b.ca_file)
        return Server(
            id=sid, domain_group=group, domain=enclosure, enclosure=enclosure, bay=hw.position or 0,
            product=product, span=(info.span if info and info.span else 1),
            present=(hw.state or "") not in GONE_STATES, power=PowerState.parse(hw.powerState),
            health=Health.parse(hw.status), profile=profile, spare=spare, host=None,
            management_addresses=(hw.mpIpAddress,) if hw.mpIpAddress else (), bmc=bmc,
            serial=hw.serialNumber or None, uuid=hw.uuid or None,
            hardware_type=hw.serverHardwareTypeUri or None)

    async def _profile_name_of(self, uri: str | None) -> str | None:
        if not uri:
            return None
        name = self._profile_name.get(uri)
        if name is None:
            p = _parse(ProfileIn, await self._c.get(uri), f"GET {uri}", self._c.address + uri)
            self._remember_profile(p)
            name = p.name
        return name

    def _remember_profile(self, p: ProfileIn) -> None:
        self._profile_uri[p.name] = p.uri
        self._profile_name[p.uri] = p.name

    async def _spare_uris(self) -> set[str]:
        label = self.spare_label.replace("'", "")
        query = quote(f"labels='{label}'", safe="")
        path = f"/rest/index/resources?category=server-hardware&query={query}"
        return {m["uri"] for m in await self._c.get_all(path) if isinstance(m.get("uri"), str)}

    async def _servers(self, members: list[dict[str, Any]]) -> list[Server]:
        hws = [_parse(HardwareIn, m, "server-hardware", self._c.address + "/rest/server-hardware")
               for m in members]
        cat = await self._known(u for hw in hws for u in (hw.serverGroupUri, hw.serverHardwareTypeUri,
                                                        hw.locationUri))
        if self.group_by == "scope" and any(hw.uri not in self._scope_of for hw in hws):
            cat = await self._catalogue(refresh=True)
        spares = await self._spare_uris()
        servers = []
        for hw in hws:
            group = self._group(hw, cat)
            if group is None:
                log.warning("OneView server-hardware %s (%s) is in no %s: left out of the inventory",
                            hw.name, hw.uri, self.group_by.replace("_", " "))
                continue
            profile = await self._profile_name_of(hw.serverProfileUri)
            servers.append(self._to_server(hw, cat, hw.uri in spares, group, profile))
        return servers

    async def _hardware_uri(self, server_id: str) -> str:
        uri = self._hw_uri.get(server_id)
        if uri is None:
            await self._servers(await self._c.get_all("/rest/server-hardware"))
            uri = self._hw_uri.get(server_id)
        if uri is None:
            raise NotFound(f"OneView has no server-hardware {server_id}", endpoint=self._c.address)
        return uri

    async def _profile_uri_of(self, profile_id: str) -> str:
        uri = self._profile_uri.get(profile_id)
        if uri is None:
            path = f"/rest/server-profiles?{_filter('name', profile_id)}"
            found = [_parse(ProfileIn, m, path, self._c.address + path) for m in await self._c.get_all(path)]
            for p in found:
                self._remember_profile(p)
            uri = self._profile_uri.get(profile_id)
        if uri is None:
            raise NotFound(f"OneView has no server profile {profile_id}", endpoint=self._c.address)
        return uri

    def _domain(self, enc: NamedIn, group: str) -> Domain:
        state, status = enc.state or "Unknown", enc.status or "Unknown"
        if state in NORMAL_ENCLOSURE_STATES and status not in ("Critical", "Disabled"):
            word = "ok"
        elif state not in NORMAL_ENCLOSURE_STATES:
            word = state.lower()
        else:
            word = f"status {status.lower()}"
        return Domain(enc.name, group, word)

    # --- ProfileManager ----------------------------------------------------------------------------------

    async def inventory(self) -> Inventory:
        cat = await self._catalogue(refresh=True)
        profiles_raw = await self._c.get_all("/rest/server-profiles")
        profiles_in = [_parse(ProfileIn, m, "server-profiles", self._c.address + "/rest/server-profiles")
                       for m in profiles_raw]
        for p in profiles_in:
            self._remember_profile(p)
        servers = await self._servers(await self._c.get_all("/rest/server-hardware"))
        by_id = {s.id: s for s in servers}
        groups = {s.domain_group: DomainGroup(s.domain_group) for s in servers}
        enclosures: dict[str, Enclosure] = {}
        domains: dict[str, Domain] = {}
        for enc in cat.enclosures.values():
            members = sorted((s for s in servers if s.enclosure == enc.name), key=lambda s: s.bay)
            if not members:
                continue
            domains[enc.name] = self._domain(enc, members[0].domain_group)
            enclosures[enc.name] = Enclosure(
                enc.name, enc.name, enc.deviceBayCount or 16,
                (enc.activeOaPreferredIP,) if enc.activeOaPreferredIP else ())
        profiles = {p.name: Profile(p.name, self._hw_id.get(p.serverHardwareUri or "")) for p in profiles_in}
        return Inventory(groups, domains, enclosures, by_id, profiles)

    async def domain(self, domain_id: str) -> Domain:
        path = f"/rest/enclosures?{_filter('name', domain_id)}"
        found = [_parse(NamedIn, m, path, self._c.address + path) for m in await self._c.get_all(path)]
        if not found:
            raise NotFound(f"OneView has no enclosure {domain_id}", endpoint=self._c.address + path)
        enc = found[0]
        if self.group_by == "enclosure_group":
            cat = await self._known([enc.enclosureGroupUri])
            eg = cat.groups.get(enc.enclosureGroupUri or "")
            group = eg.name if eg else ""
        else:
            hw_path = f"/rest/server-hardware?{_filter('locationUri', enc.uri)}"
            members = await self._servers(await self._c.get_all(hw_path))
            group = min(members, key=lambda s: s.bay).domain_group if members else ""
        return self._domain(enc, group)

    async def server(self, server_id: str) -> Server:
        uri = await self._hardware_uri(server_id)
        servers = await self._servers([await self._c.get(uri)])
        if not servers:
            raise NotFound(f"OneView server-hardware {server_id} is in no {self.group_by}",
                           endpoint=self._c.address + uri)
        return servers[0]

    async def group_servers(self, group: str) -> list[Server]:
        if self.group_by == "enclosure_group":
            cat = await self._catalogue()
            eg = next((g for g in cat.groups.values() if g.name == group), None)
            if eg is None:
                cat = await self._catalogue(refresh=True)
                eg = next((g for g in cat.groups.values() if g.name == group), None)
            if eg is None:
                raise NotFound(f"OneView has no enclosure group {group}", endpoint=self._c.address)
            path = f"/rest/server-hardware?{_filter('serverGroupUri', eg.uri)}"
        else:
            cat = await self._catalogue(refresh=True)
            scope = next((s for s in cat.scopes.values() if s.name == group), None)
            if scope is None:
                raise NotFound(f"OneView has no scope {group}", endpoint=self._c.address)
            path = f"/rest/server-hardware?scopeUris={quote(scope.uri, safe='')}"
        return [s for s in await self._servers(await self._c.get_all(path)) if s.domain_group == group]

    async def _profile_doc(self, profile_id: str) -> tuple[str, dict[str, Any], ProfileIn]:
        uri = await self._profile_uri_of(profile_id)
        raw = await self._c.get(uri)
        return uri, raw, _parse(ProfileIn, raw, f"GET {uri}", self._c.address + uri)

    async def profile(self, profile_id: str) -> Profile:
        uri, _raw, p = await self._profile_doc(profile_id)
        if p.inProgress:
            raise ProfileInTransition(f"OneView server profile {profile_id} is being changed by task "
                                      f"{p.taskUri or '(unknown)'}: where it ends up is not known yet",
                                      endpoint=self._c.address + uri)
        if p.serverHardwareUri and p.serverHardwareUri not in self._hw_id:
            await self._servers(await self._c.get_all("/rest/server-hardware"))
        server = self._hw_id.get(p.serverHardwareUri or "") if p.serverHardwareUri else None
        if p.serverHardwareUri and server is None:
            raise AdapterError(f"OneView server profile {profile_id} is on {p.serverHardwareUri}, which "
                               "is not in the inventory", endpoint=self._c.address + uri)
        return Profile(p.name, server)

    async def move_profile(self, profile_id: str, source: str, target: str) -> None:
        """The move as one call: start it, then follow its task to the end (failed: OperationRejected)."""
        ref = await self.start_move(profile_id, source, target, intent=str(uuid.uuid4()))
        deadline = self._clock.monotonic() + self._move_timeout
        while True:
            status = await self.task(ref)
            if status.state is TaskState.COMPLETED:
                return
            if status.state is TaskState.FAILED:
                raise OperationRejected(f"OneView task {ref} of the move failed: {status.message}",
                                        endpoint=self._c.address + ref)
            if self._clock.monotonic() >= deadline:
                raise AdapterError(f"OneView task {ref} of the move still runs after "
                                   f"{self._move_timeout:g} s ({status.percent}%)",
                                   endpoint=self._c.address + ref)
            await self._clock.sleep(self._poll)

    async def set_spare(self, server_id: str, spare: bool) -> None:
        uri = await self._hardware_uri(server_id)
        path = f"/rest/labels/resources{uri}"
        current = _parse(LabelsIn, await self._c.get(path), f"GET {path}", self._c.address + path)
        names = [str(lab.get("name")) for lab in current.labels if lab.get("name")]
        has = self.spare_label in names
        if has == spare:
            return
        names = [*names, self.spare_label] if spare else [n for n in names if n != self.spare_label]
        await self._c.request("POST", "/rest/labels/resources",
                              {"resourceUri": uri, "labels": [{"name": n} for n in names]})

    # --- TaskedMoves --------------------------------------------------------------------------------------

    async def start_move(self, profile_id: str, source: str, target: str, *, intent: str) -> str:
        source_uri = await self._hardware_uri(source)
        target_uri = await self._hardware_uri(target)
        uri, raw, p = await self._profile_doc(profile_id)
        if p.serverHardwareUri != source_uri:
            where = self._hw_id.get(p.serverHardwareUri or "", p.serverHardwareUri or "no server hardware")
            raise OperationRejected(f"OneView server profile {profile_id} is on {where}, not on {source}: "
                                    "not moved", endpoint=self._c.address + uri, status=409)
        if not p.eTag:
            raise AdapterError(f"OneView server profile {profile_id} has no eTag: a conditional update "
                               "is not possible", endpoint=self._c.address + uri)
        body = dict(raw)
        body["serverHardwareUri"] = target_uri
        body.pop("enclosureUri", None)  # left in, OneView accepts the update and changes nothing
        body.pop("enclosureBay", None)
        description = _MARK.sub("", str(raw.get("description") or "")).rstrip()
        body["description"] = f"{description} {marker(intent)}".strip()
        reply = await self._c.request("PUT", uri, body, headers={"If-Match": p.eTag})
        ref = reply.headers.get("Location")
        if not ref and isinstance(reply.data, dict) and str(reply.data.get("category")) == "tasks":
            ref = reply.data.get("uri")
        if not isinstance(ref, str) or "/rest/tasks/" not in ref:
            raise AdapterError(f"OneView PUT {uri} answered {reply.status} without a task",
                               endpoint=self._c.address + uri)
        path = ref.split("://", 1)[-1]
        return path[path.index("/rest/"):]

    async def find_move(self, profile_id: str, target: str, *, intent: str) -> str | None:
        uri, _raw, p = await self._profile_doc(profile_id)
        tasks_path = (f"/rest/tasks?{_filter('associatedResource.resourceUri', uri)}"
                      f"&sort=created:descending&count={TASK_SEARCH}")
        page = await self._c.get(tasks_path)
        tasks = [_parse(TaskIn, m, tasks_path, self._c.address + tasks_path)
                 for m in page.get("members") or [] if isinstance(m, dict)]
        if intent and marker(intent) in (p.description or ""):
            if p.taskUri:
                return p.taskUri
            if tasks:
                return tasks[0].uri
        running = [t for t in tasks if t.taskState in RUNNING]
        if running:
            log.warning("OneView profile %s: task %s runs on it; followed as the move to %s", profile_id,
                        running[0].uri, target)
            return running[0].uri
        return None

    async def task(self, ref: str) -> TaskStatus:
        return task_status(_parse(TaskIn, await self._c.get(ref), f"GET {ref}", self._c.address + ref))

    # --- ManagerPower ---------------------------------------------------------------------------------------

    async def _hardware(self, server_id: str) -> HardwareIn:
        uri = await self._hardware_uri(server_id)
        return _parse(HardwareIn, await self._c.get(uri), f"GET {uri}", self._c.address + uri)

    async def manager_power_state(self, server_id: str) -> PowerState:
        return PowerState.parse((await self._hardware(server_id)).powerState)

    async def _power(self, server_id: str, state: str, control: str) -> str | None:
        hw = await self._hardware(server_id)
        if PowerState.parse(hw.powerState).value == state:
            return None  # already there: nothing sent (as the SDKs do)
        reply = await self._c.request("PUT", f"{hw.uri}/powerState",
                                      {"powerState": state, "powerControl": control})
        ref = reply.headers.get("Location")
        if not ref and isinstance(reply.data, dict):
            ref = reply.data.get("uri")
        return ref if isinstance(ref, str) and ref else None

    async def manager_force_off(self, server_id: str) -> str | None:
        return await self._power(server_id, "Off", "PressAndHold")

    async def manager_power_on(self, server_id: str) -> str | None:
        return await self._power(server_id, "On", "MomentaryPress")
