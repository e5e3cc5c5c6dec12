"""`manager.kind: webhook | command`: the profile move (and, configurable, the spare designation) sent to the
site's own automation; the inventory stays the inventory source's (README "Profile managers")."""

from adapters.hooks.manager import HookManager, build_hook_manager
from adapters.hooks.transport import CommandHook, WebhookHook

__all__ = ["CommandHook", "HookManager", "WebhookHook", "build_hook_manager"]
