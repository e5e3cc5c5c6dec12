"""`eventually`: the one way the tests wait for a condition they cannot be told about (another process,
a peer, a task of the code under test), with a deadline. Where the code under test can signal (an
asyncio.Condition, an event, the fake clock's sleepers), the tests wait on that instead."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(predicate: Callable[[], Any | Awaitable[Any]], timeout: float,
                     what: str = "the condition", *, interval: float = 0.01) -> Any:
    """Call `predicate` (plain or async) until it returns something truthy, and return that; an
    AssertionError naming `what` once `timeout` seconds have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
