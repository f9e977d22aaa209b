"""The stop sequence a rolling update needs: signals counted, and what /readyz says meanwhile.

Kubernetes sends SIGTERM and, at the same moment, starts removing the pod from its
Service's endpoints; kube-proxy, ingress controllers and cloud load balancers learn of it
seconds later and keep sending requests until then. A listener that closed at SIGTERM would
refuse those requests (502s at the ingress). So the first signal only turns readiness off;
the listener keeps serving for the shutdown delay, then stops accepting and drains. Each
further signal skips a step (an operator pressing Ctrl-C again wants out): the second ends
the delay, the third ends the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

Readiness = Callable[[], tuple[bool, str]]


class Shutdown:
    """How many stop signals have arrived; the signal handler calls `signal`."""

    def __init__(self) -> None:
        self.signals = 0
        self._arrived = asyncio.Event()

    def signal(self) -> None:
        self.signals += 1
        self._arrived.set()

    async def until(self, signals: int, within_s: float | None = None) -> bool:
        """Wait until `signals` signals have arrived (True) or `within_s` passed (False)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                while self.signals < signals:
                    # the handler runs on this loop: nothing can arrive between the check
                    # and the wait
                    self._arrived.clear()
                    await self._arrived.wait()
                return True
        return False

    def readiness(self, inner: Readiness) -> Readiness:
        """`inner`, except that from the first signal on the answer is "shutting-down"."""

        def ready() -> tuple[bool, str]:
            if self.signals:
                return False, "shutting-down"
            return inner()

        return ready
