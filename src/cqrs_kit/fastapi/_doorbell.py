"""A change-stream doorbell shared by the requests of one router.

Long-polling requests (read-your-writes waits, the live feed) need to know
when to look again. Correctness never depends on the bell: every waiter
re-reads the database after a bounded timeout anyway. The bell only makes the
wake-up prompt where the backend has change streams. One change stream serves
all the waiters of a router, and it is open only while someone waits, so an
idle process holds no cursor and leaves no task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from cqrs_kit._mongo import MongoDatabase
from cqrs_kit.errors import ChangeStreamHistoryLostError, TransientStoreError

log = logging.getLogger("cqrs_kit.fastapi")

# Cancelled watch tasks still closing their cursor; kept so they are not collected early.
_closing: set[asyncio.Task[None]] = set()


class Doorbell:
    """Rings every listener when a collection sees a matching change.

    Args:
        database: The database holding the collection.
        collection: The collection to watch.
        pipeline: Change-stream pipeline selecting the changes that ring.
    """

    def __init__(
        self, database: MongoDatabase, collection: str, pipeline: Sequence[Mapping[str, Any]]
    ) -> None:
        self._database = database
        self._collection = collection
        self._pipeline = [dict(stage) for stage in pipeline]
        self._listeners: set[asyncio.Event] = set()
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def listen(self) -> AsyncIterator[asyncio.Event]:
        """Yield an event that is set on every matching change while the block runs.

        Clear it *before* re-reading the database and wait on it afterwards:
        a change that lands in between then still wakes the waiter.
        """
        rung = asyncio.Event()
        self._listeners.add(rung)
        try:
            await self._ensure_watching()
            yield rung
        finally:
            self._listeners.discard(rung)
            if not self._listeners and self._task is not None:
                task, self._task = self._task, None
                task.cancel()
                _closing.add(task)
                task.add_done_callback(_closing.discard)

    async def _ensure_watching(self) -> None:
        if self._task is not None and not self._task.done():
            return
        try:
            live = (await self._database.capabilities()).change_streams
        except TransientStoreError:
            return  # the waiters' own reads will report the outage
        # Another listener may have started it while this one asked the server.
        if live and self._listeners and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._watch(), name=f"doorbell:{self._collection}")

    def _ring(self) -> None:
        for rung in self._listeners:
            rung.set()

    async def _watch(self) -> None:
        collection = self._database.collection(self._collection)
        while True:
            try:
                async with collection.watch(self._pipeline, max_await_ms=1000) as stream:
                    # Changes before the stream opened were not seen: ring once.
                    self._ring()
                    while True:
                        change = await stream.try_next()
                        if change is None:
                            continue
                        self._ring()
                        if change.get("operationType") == "invalidate":
                            break  # collection dropped or renamed: reopen
            except (TransientStoreError, ChangeStreamHistoryLostError) as exc:
                log.debug("doorbell on %s interrupted (%s); reopening", self._collection, exc)
                self._ring()
                await asyncio.sleep(1.0)
            except Exception as exc:  # a driver error we cannot classify: waiters poll
                log.debug("doorbell on %s failed (%r); waiters poll", self._collection, exc)
                return
