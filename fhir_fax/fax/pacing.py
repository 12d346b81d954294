"""How fast one worker may hand faxes to its carrier: the carrier's declared limits, enforced.

A carrier declares (``Capabilities``) how many attempts it accepts in flight at once and how many submissions
a second; the worker takes no more jobs at once than the smaller of that and ``FHIR_FAX_WORKER_CONCURRENCY``
(``slots``), and spaces its submissions by the declared rate (``Pace``). Both hold per worker process: several
workers on one carrier account share its limits, so give each its part.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .transports.base import Capabilities


def slots(concurrency: int, capabilities: Capabilities) -> int:
    """Attempts one worker has in hand at once."""
    declared = capabilities.max_concurrency
    return max(1, min(concurrency, declared)) if declared is not None else max(1, concurrency)


class Pace:
    """Submissions spaced at least ``1 / rate`` seconds apart, in the order they asked (no limit when None)."""

    def __init__(
        self,
        rate_per_second: float | None,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.interval = 1.0 / rate_per_second if rate_per_second else 0.0
        self.clock = clock
        self.sleep = sleep
        self._next: float | None = None
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        """Return when the next submission may go."""
        if not self.interval:
            return
        clock = self.clock or asyncio.get_running_loop().time
        async with self._lock:
            if self._next is not None and self._next > clock():
                await self.sleep(self._next - clock())
            self._next = clock() + self.interval
