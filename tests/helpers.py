"""Small helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

# The gateway's CLI as a user runs it: the *installed* package. -P keeps the working
# directory (often the checkout) off sys.path, so that a test run against the compiled
# wheel (`make test`'s second pass) runs the compiled modules, not the sources beside it.
GATEWAY_CLI = (sys.executable, "-P", "-m", "gateway")


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll a condition, bounded in time: a test waits for state, never for a fixed delay."""
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.01)
