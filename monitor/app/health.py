"""`GET /healthz`: each part of the daemon says whether it is well."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from monitor.core.errors import StoreError
from monitor.jobs import JobRunner
from monitor.pipeline.inventory import InventoryView
from monitor.store import Store

PING_TIMEOUT = 5.0


async def health(*, instance: str, store: Store, tasks: Mapping[str, asyncio.Task[Any]],
                 runner: JobRunner | None, inventory: InventoryView) -> dict[str, Any]:
    """{"ok": all parts ok, "instance": ..., part: {"ok": bool, ...}, ...}"""
    parts: dict[str, Any] = {}
    try:
        async with asyncio.timeout(PING_TIMEOUT):
            await store.ping()
        parts["store"] = {"ok": True}
    except (StoreError, TimeoutError, OSError) as exc:
        parts["store"] = {"ok": False, "error": str(exc)}
    for name, task in tasks.items():
        parts[name] = {"ok": not task.done()}
    if runner is not None:
        parts["cluster"] = {"ok": runner.ready and runner.lease_valid(), "instance": instance,
                            "lease_left": round(max(runner.membership.left(), 0.0), 1)}
    inv = inventory.current()
    parts["inventory"] = {"ok": inv is not None, "servers": len(inv.servers) if inv else 0,
                          "error": inventory.error}
    return {"ok": all(p["ok"] for p in parts.values()), "instance": instance, **parts}
