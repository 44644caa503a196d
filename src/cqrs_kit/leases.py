"""Leases: at most one runner per projection or subscriber, across processes.

A lease is a document ``{_id: name, owner, expires_at_ms, fence}``. A runner
takes it when it is free or expired, renews it every ``ttl / 3``, and gives it
up on a clean stop. If the holder dies, its lease expires after ``ttl`` and a
waiting runner takes over, so takeover happens within ``ttl`` plus one retry
interval. ``fence`` increases on every change of owner; a runner that sees a
different fence on renewal knows it lost the lease and stops writing.

Expiry compares wall clocks of the runners' machines: keep them in sync
(NTP), and keep ``ttl`` well above the worst clock skew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from cqrs_kit._mongo import DuplicateKey, MongoDatabase, adapt
from cqrs_kit.errors import LeaseLostError, TransientStoreError
from cqrs_kit.metrics import get_metrics

log = logging.getLogger("cqrs_kit.leases")


def default_owner() -> str:
    """A runner identity that is unique per process: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """Who holds a lease and until when."""

    name: str
    owner: str
    expires_at: float
    fence: int


class LeaseManager:
    """Takes, renews and releases named leases in one collection.

    Args:
        database: A driver database object or an adapted one.
        owner: This runner's identity (unique per process by default).
        ttl: Seconds a lease lasts without renewal.
        collection: Collection name.
    """

    def __init__(
        self,
        database: Any,
        *,
        owner: str | None = None,
        ttl: float = 10.0,
        collection: str = "leases",
    ) -> None:
        self.database: MongoDatabase = adapt(database)
        self.owner = owner or default_owner()
        self.ttl = ttl
        self._coll = self.database.collection(collection)

    async def try_acquire(self, name: str) -> LeaseInfo | None:
        """Take or renew ``name`` if it is free, expired or already ours; else ``None``."""
        now_ms = time.time() * 1000
        expires = now_ms + self.ttl * 1000
        doc = await self._coll.find_one_and_update(
            {"_id": name, "owner": self.owner}, {"$set": {"expires_at_ms": expires}}
        )
        if doc is None:
            try:
                doc = await self._coll.find_one_and_update(
                    {"_id": name, "expires_at_ms": {"$lt": now_ms}},
                    {"$set": {"owner": self.owner, "expires_at_ms": expires}, "$inc": {"fence": 1}},
                    upsert=True,
                )
            except DuplicateKey:
                return None  # held by someone else: the upsert collided with their document
        if doc is None:
            return None
        return LeaseInfo(name, doc["owner"], doc["expires_at_ms"] / 1000, int(doc["fence"]))

    async def release(self, name: str) -> None:
        """Give the lease up if we hold it."""
        await self._coll.update_one(
            {"_id": name, "owner": self.owner}, {"$set": {"expires_at_ms": 0}}
        )

    async def holder(self, name: str) -> LeaseInfo | None:
        """Who holds ``name`` now (``None`` if nobody or expired)."""
        doc = await self._coll.find_one({"_id": name})
        if doc is None or doc.get("expires_at_ms", 0) < time.time() * 1000:
            return None
        return LeaseInfo(name, doc["owner"], doc["expires_at_ms"] / 1000, int(doc.get("fence", 0)))

    @asynccontextmanager
    async def hold(
        self, name: str, *, stop: asyncio.Event | None = None
    ) -> AsyncIterator[asyncio.Event | None]:
        """Wait until ``name`` is ours, keep it renewed while the body runs.

        Yields an event that is set if the lease is lost mid-way (the body
        should stop writing), or ``None`` if ``stop`` was set before the lease
        could be taken.
        """
        lease = await self._wait_for(name, stop)
        if lease is None:
            yield None
            return
        lost = asyncio.Event()
        renewer = asyncio.create_task(self._renew_loop(name, lease.fence, lost))
        try:
            yield lost
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            if not lost.is_set():
                with contextlib.suppress(TransientStoreError):
                    await self.release(name)
                    get_metrics().record_lease_change(name, "released")

    async def _wait_for(self, name: str, stop: asyncio.Event | None) -> LeaseInfo | None:
        announced = False
        while stop is None or not stop.is_set():
            try:
                lease = await self.try_acquire(name)
            except TransientStoreError as exc:
                log.warning("lease %s: database unreachable (%s); retrying", name, exc)
                lease = None
            if lease is not None:
                log.info("lease %s acquired by %s (fence %d)", name, self.owner, lease.fence)
                get_metrics().record_lease_change(name, "acquired")
                return lease
            if not announced:
                current = await self.holder(name)
                log.info(
                    "lease %s is held by %s; waiting to take over",
                    name,
                    current.owner if current else "?",
                )
                announced = True
            await _wait(stop, self.ttl / 3)
        return None

    async def _renew_loop(self, name: str, fence: int, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                lease = await self.try_acquire(name)
            except TransientStoreError as exc:
                log.warning("lease %s: renewal failed (%s); will retry", name, exc)
                continue
            if lease is None or lease.fence != fence:
                log.error("lease %s lost by %s", name, self.owner)
                get_metrics().record_lease_change(name, "lost")
                lost.set()
                return

    def lost_error(self, name: str) -> LeaseLostError:
        """The error to raise when a lease was lost mid-work."""
        return LeaseLostError(name, owner=None)


async def _wait(stop: asyncio.Event | None, seconds: float) -> None:
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
