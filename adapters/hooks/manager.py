"""A ProfileManager whose move is the site's own automation (a playbook, a ticket), reached through a hook.

The inventory (domains, servers, profiles, spares) is the inventory source's manager, wrapped. The move is
a task of the hook (`ports.TaskedMoves`): `move` answers the task's id (or `{"done": true}` when the move
was made at once), `task` its state, `find_move` the task a request started. Which task moves which
profile where is kept in the store (kind `hook_move`), so that any monitor following the task after a
crash or a takeover can apply it: when the hook says the task completed, the wrapped manager's own move
puts the profile on the target (the static inventory's assignment in the store), and only then is the
task reported completed.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from adapters.hooks.transport import CommandHook, Hook, WebhookHook
from monitor.core.clock import Clock, SystemClock
from monitor.core.config import ManagerConfig
from monitor.core.errors import AdapterError
from monitor.core.model import Domain, Inventory, Profile, Server
from monitor.core.ports import ProfileManager, TaskState, TaskStatus
from monitor.store import Store

log = logging.getLogger(__name__)

KIND = "hook_move"  # store state: task ref -> {"profile", "target", "state", "message"}
_SYNC = "done:"


def _text(value: Any, limit: int = 500) -> str:
    return value[:limit] if isinstance(value, str) else ""


class HookManager:
    def __init__(self, wrapped: ProfileManager, hook: Hook, store: Store, *,
                 spare: Literal["inventory", "hook"] = "inventory", name: str = "manager hook") -> None:
        self._inner = wrapped
        self._hook = hook
        self._store = store
        self._spare = spare
        self._name = name

    # --- the inventory: the wrapped manager's -------------------------------------------------------

    async def inventory(self) -> Inventory:
        return await self._inner.inventory()

    async def domain(self, domain_id: str) -> Domain:
        return await self._inner.domain(domain_id)

    async def server(self, server_id: str) -> Server:
        return await self._inner.server(server_id)

    async def group_servers(self, group: str) -> list[Server]:
        return await self._inner.group_servers(group)

    async def profile(self, profile_id: str) -> Profile:
        """The profile's place, after any of its recorded moves the hook has completed since was applied
        (an error when such a task cannot be read: the place is then unknown)."""
        for ref, rec in (await self._store.get_state(KIND)).items():
            if rec.get("profile") == profile_id and rec.get("state") == "running":
                await self.task(ref)
        return await self._inner.profile(profile_id)

    async def move_profile(self, profile_id: str, source: str, target: str) -> None:
        """The move as one call (outside the flow's tasked path): start it, and it must be done at once."""
        ref = await self.start_move(profile_id, source, target, intent="")
        status = await self.task(ref)
        if status.state is not TaskState.COMPLETED:
            raise AdapterError(f"{self._name}: move of {profile_id} is task {ref} ({status.state.value}); "
                               "only the flow follows a task")

    async def set_spare(self, server_id: str, spare: bool) -> None:
        if self._spare == "hook":
            await self._hook.call({"action": "spare", "server": server_id, "spare": spare})
        await self._inner.set_spare(server_id, spare)

    async def close(self) -> None:
        await self._hook.close()

    # --- the move: the hook's task ----------------------------------------------------------------------

    async def _record(self, ref: str, profile: str, target: str, state: str, message: str = "") -> None:
        await self._store.set_state(KIND, ref, {"profile": profile, "target": target, "state": state,
                                                "message": message})

    async def _apply(self, profile: str, target: str) -> None:
        """Make the wrapped manager's view say what the hook did: the profile on the target."""
        where = (await self._inner.profile(profile)).server
        if where == target:
            return
        if where is None:
            raise AdapterError(f"{self._name}: profile {profile} is on no server; cannot put it on {target}")
        await self._inner.move_profile(profile, where, target)

    async def _task_id(self, answer: dict[str, Any], what: str, profile: str, target: str,
                       intent: str) -> str | None:
        if answer.get("done") is True:
            ref = _SYNC + (intent or profile)
            await self._apply(profile, target)
            await self._record(ref, profile, target, TaskState.COMPLETED.value, "done at once")
            return ref
        task = answer.get("task")
        if task is None:
            return None
        if not isinstance(task, str | int) or isinstance(task, bool) or not str(task).strip():
            raise AdapterError(f"{self._name} {what}: 'task' must be a non-empty string, got {task!r}")
        ref = str(task)
        await self._record(ref, profile, target, TaskState.RUNNING.value)
        return ref

    async def start_move(self, profile_id: str, source: str, target: str, *, intent: str) -> str:
        answer = await self._hook.call({"action": "move", "profile": profile_id, "source": source,
                                        "target": target, "intent": intent})
        ref = await self._task_id(answer, "move", profile_id, target, intent)
        if ref is None:
            raise AdapterError(f"{self._name} move answered neither a task nor done: {str(answer)[:200]}")
        return ref

    async def find_move(self, profile_id: str, target: str, *, intent: str) -> str | None:
        answer = await self._hook.call({"action": "find_move", "profile": profile_id, "target": target,
                                        "intent": intent})
        return await self._task_id(answer, "find_move", profile_id, target, intent)

    async def task(self, ref: str) -> TaskStatus:
        rec = (await self._store.get_state(KIND)).get(ref)
        if rec is not None and rec.get("state") != TaskState.RUNNING.value:
            return TaskStatus(ref, TaskState(rec["state"]), 100, rec.get("message") or "")
        if ref.startswith(_SYNC):
            raise AdapterError(f"{self._name}: no record of the move {ref}")
        answer = await self._hook.call({"action": "task", "task": ref})
        try:
            state = TaskState(str(answer.get("state")))
        except ValueError:
            raise AdapterError(f"{self._name} task {ref}: state must be running, completed or failed, got "
                               f"{answer.get('state')!r}") from None
        percent = answer.get("percent")
        pct = int(percent) if isinstance(percent, int | float) and not isinstance(percent, bool) else None
        message = _text(answer.get("message"))
        if state is TaskState.RUNNING:
            return TaskStatus(ref, state, pct, message)
        if rec is None:
            # Without the record the monitor cannot tell which move this is: not reported ended, so nothing
            # is undone while the hook's move may have taken effect.
            raise AdapterError(f"{self._name}: task {ref} ended {state.value} but the monitor holds no "
                               "record of the move it makes")
        if state is TaskState.COMPLETED:
            await self._apply(rec["profile"], rec["target"])
        await self._record(ref, rec["profile"], rec["target"], state.value, message)
        log.info("%s: task %s %s%s", self._name, ref, state.value, f" ({message})" if message else "")
        return TaskStatus(ref, state, pct, message)


def build_hook_manager(cfg: ManagerConfig, wrapped: ProfileManager, store: Store, *,
                       resolve: Any = None, clock: Clock | None = None) -> HookManager:
    """The hook manager of `manager.kind: webhook | command` over the inventory source's manager."""
    clock = clock or SystemClock()
    hook: Hook
    if cfg.kind == "webhook" and cfg.webhook is not None:
        ca = cfg.webhook.ca_file
        hook = WebhookHook(cfg.webhook, clock, ca_file=str(resolve(ca)) if ca and resolve else ca)
        return HookManager(wrapped, hook, store, spare=cfg.webhook.spare, name="manager webhook")
    if cfg.kind == "command" and cfg.command is not None:
        hook = CommandHook(cfg.command, clock)
        return HookManager(wrapped, hook, store, spare=cfg.command.spare, name="manager command")
    raise AdapterError(f"manager kind {cfg.kind} is not a hook, or its section is missing")
