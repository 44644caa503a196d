"""The service's clock: real time plus an offset that tests and demos can move forward.

Everything in the service that needs "now" (due dates, the fraud window, the
scheduler that fires timeouts and reminders) asks this clock, so moving it
forward makes a rental overdue without waiting a fortnight. It satisfies the
clock protocol of cqrs-kit's scheduler (``now()`` and ``sleep()``).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta


class ServiceClock:
    """Wall-clock time, shifted by however far :meth:`advance` has moved it.

    Sleepers wake early when the clock is advanced, so a scheduler waiting for
    a due time notices at once that it has passed.
    """

    def __init__(self) -> None:
        self._offset = timedelta(0)
        self._moved = asyncio.Event()

    @property
    def offset(self) -> timedelta:
        """How far ahead of the wall clock this clock runs."""
        return self._offset

    def now(self) -> datetime:
        """The current time, timezone-aware."""
        return datetime.now(UTC) + self._offset

    def advance(self, delta: timedelta | float) -> datetime:
        """Move forward by ``delta`` (a timedelta or seconds) and wake every sleeper."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        if step < timedelta(0):
            raise ValueError("the clock cannot go backwards")
        self._offset += step
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()
        return self.now()

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the clock is advanced meanwhile."""
        moved = self._moved
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(moved.wait(), max(0.0, seconds))
