"""Small helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll a condition, bounded in time: a test waits for state, never for a fixed delay."""
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.01)
