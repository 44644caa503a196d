"""Zero-downtime rebuilds and resets of projections.

A rebuild computes a projection again from position 0 into a *shadow*
collection while the live projection keeps serving and updating the current
one, then swaps the two and lets the live runner continue on the new one.

The protocol
------------
Every projection has a checkpoint document ``projection:<name>`` holding its
position and ``read_model: {version, collection}``, the alias readers resolve
(see `ReadModel`). A rebuild:

1. takes the lease ``projection:<name>:rebuild`` (one rebuild or reset of a
   projection at a time), drops the shadow of an earlier rebuild that died,
   and allocates a new version ``V`` (a counter in the alias document, so a
   rebuild never reuses the collection of an abandoned one that a zombie
   process might still write);
2. projects every event into ``<name>__v<V>``, keeping its own position in the
   checkpoint ``projection:<name>:rebuild``, until it is within one batch of
   the head;
3. asks the live runners to hand over (``handover`` in the alias document) and
   waits for the projection's lease. A live runner polls for that request,
   stops after the batch it is writing, and releases the lease; a standby that
   wins the lease meanwhile sees the request before its first write and lets
   go again. A runner that died needs no asking: its lease expires;
4. holding the lease, catches the shadow up to the head, then swaps with
   **one single-document update** of the alias: ``read_model`` and
   ``position`` change together, atomically on any MongoDB, with no
   ``renameCollection`` (unavailable on sharded collections and on some
   wire-compatible servers);
5. releases the lease; the live runner takes it again, resolves the alias and
   continues on the new collection from the swapped-in position;
6. after ``drop_grace`` seconds (readers cache the alias for about a second),
   drops the old collection.

The race with the live runner: the swap happens only while the rebuild holds
the projection's lease, and a live runner only gives the lease up *after* its
last write has returned, so no live write reaches the old collection after
the swap. The one exception is a runner frozen longer than the lease ttl (a
stopped VM): its late write lands in the old collection, which nobody reads
any more, and its checkpoint advance is a no-op because the swapped-in
position is already past anything it read before the handover.

A rebuild killed half way leaves its shadow behind; the next rebuild drops it
and starts over. A rebuild stopped cleanly withdraws its handover request and
drops its shadow. ``reset`` runs the same handover with an empty collection at
position 0: the live runner then rebuilds in place (with downtime).

Side-effecting subscribers (``cqrs_kit.routing``) are not projections: a
rebuild never re-runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from cqrs_kit.checkpoints import ConsumerState
from cqrs_kit.errors import LeaseLostError, ProjectionError, TransientStoreError
from cqrs_kit.leases import LeaseManager, default_owner
from cqrs_kit.projections import (
    BatchApplied,
    ProjectionRunner,
    Projector,
    ReadModelLocation,
    locate,
    physical_name,
    projection_key,
)
from cqrs_kit.subscriptions import Backoff, Subscription

log = logging.getLogger("cqrs_kit.rebuild")

Phase = Literal["building", "handover", "swapped", "done"]


@dataclass(frozen=True, slots=True)
class RebuildProgress:
    """How far a rebuild has got.

    Attributes:
        name: The projection.
        phase: ``building``, ``handover`` (waiting for the live runner),
            ``swapped`` or ``done`` (old collection dropped).
        position: The shadow's position in the log.
        head: The log's head when last looked at.
        events: Events of the projection's types applied so far.
        elapsed: Seconds since the rebuild started.
    """

    name: str
    phase: Phase
    position: int
    head: int
    events: int
    elapsed: float

    @property
    def rate(self) -> float:
        """Log positions processed per second."""
        return self.position / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until the head at the current rate (``None`` before any progress)."""
        if self.rate <= 0:
            return None
        return max(0.0, (self.head - self.position) / self.rate)


@dataclass(frozen=True, slots=True)
class RebuildResult:
    """What a rebuild or reset did.

    Attributes:
        name: The projection.
        version: The new physical version.
        collection: The new physical collection, now live.
        position: The position swapped in with it.
        previous: The collection it replaced (dropped).
        seconds: How long it took.
    """

    name: str
    version: int
    collection: str
    position: int
    previous: str
    seconds: float


class _Guard:
    """Counts failures of the shadow projector and stops the build after too many."""

    def __init__(self, limit: int, stop: asyncio.Event) -> None:
        self.limit = limit
        self.stop = stop
        self.failures = 0
        self.error: BaseException | None = None

    def __call__(self, exc: BaseException) -> None:
        self.failures += 1
        self.error = exc
        if self.failures >= self.limit:
            self.stop.set()


async def _allocate_version(runner: ProjectionRunner, key: str) -> int:
    doc = await runner.checkpoints.collection.find_one_and_update(
        {"_id": key}, {"$inc": {"last_version": 1}}
    )
    assert doc is not None  # locate() created the document
    return int(doc["last_version"])


async def _discard_abandoned(runner: ProjectionRunner, rebuild_key: str, live: str) -> None:
    """Drop the shadow of a rebuild that died (its lease is ours now, so it is dead)."""
    doc = await runner.checkpoints.collection.find_one({"_id": rebuild_key})
    model = (doc or {}).get("read_model") or {}
    shadow = model.get("collection")
    if shadow and shadow != live:
        log.info("dropping %s left behind by an unfinished rebuild", shadow)
        await runner.store.database.collection(shadow).drop()
    await runner.checkpoints.delete(rebuild_key)


async def _swap(
    runner: ProjectionRunner, key: str, live: ReadModelLocation, version: int, position: int
) -> None:
    # One document: readers resolve the alias from it and the live runner resumes
    # from its position, so both change at the same instant.
    matched, _, _ = await runner.checkpoints.collection.update_one(
        {"_id": key, "read_model.version": live.version},
        {
            "$set": {
                "read_model": {"version": version, "collection": physical_name(live.name, version)},
                "position": position,
                "updated_at": time.time(),
            },
            "$unset": {"handover": "", "error": ""},
        },
    )
    if not matched:
        raise ProjectionError(
            f"{live.name}: the read model moved away from {live.collection} during the "
            "rebuild; was another rebuild run without its lease?"
        )


async def _handover_and_swap(
    runner: ProjectionRunner,
    name: str,
    leases: LeaseManager,
    stop: asyncio.Event,
    final: Callable[[], Awaitable[int]],
    version: int,
) -> tuple[ReadModelLocation, int]:
    """Ask the live runner to stand aside, take its lease, run ``final``, swap."""
    key = projection_key(name)
    await runner.checkpoints.collection.update_one(
        {"_id": key}, {"$set": {"handover": {"owner": leases.owner, "at": time.time()}}}
    )
    async with leases.hold(key, stop=stop) as live_lost:
        if live_lost is None:
            raise ProjectionError(f"{key}: stopped while waiting for the live runner")
        position = await final()
        if live_lost.is_set():
            raise LeaseLostError(key, owner=None)
        live = await locate(runner.checkpoints, key, name)
        await _swap(runner, key, live, version, position)
    return live, position


async def _withdraw(runner: ProjectionRunner, key: str, rebuild_key: str, shadow: str) -> None:
    with contextlib.suppress(TransientStoreError):
        await runner.checkpoints.collection.update_one({"_id": key}, {"$unset": {"handover": ""}})
        await runner.store.database.collection(shadow).drop()
        await runner.checkpoints.delete(rebuild_key)


def _rebuild_leases(runner: ProjectionRunner, leases: LeaseManager | None) -> LeaseManager:
    # Never the runner's own manager: with the same owner, "taking" the live lease
    # would silently renew the live runner's hold instead of waiting for it.
    return leases or LeaseManager(
        runner.store.database, owner=f"{default_owner()}:rebuild", ttl=runner.leases.ttl
    )


@dataclass(frozen=True, slots=True)
class _Claim:
    """What a rebuild or reset holds once it owns the projection's rebuild lease."""

    key: str
    rebuild_key: str
    live: ReadModelLocation
    version: int
    shadow: str
    lost: asyncio.Event


@contextlib.asynccontextmanager
async def _claim(
    runner: ProjectionRunner, name: str, leases: LeaseManager, stop: asyncio.Event, verb: str
) -> AsyncIterator[_Claim]:
    """Hold ``<key>:rebuild``, clear what a dead predecessor left, and allocate a shadow."""
    key = projection_key(name)
    rebuild_key = f"{key}:rebuild"
    holder = await leases.holder(rebuild_key)
    if holder is not None:
        raise ProjectionError(f"a rebuild or reset of {name!r} is already running ({holder.owner})")
    async with leases.hold(rebuild_key, stop=stop) as lost:
        if lost is None:
            raise ProjectionError(f"{verb} of {name!r} stopped before it started")
        live = await locate(runner.checkpoints, key, name)
        await _discard_abandoned(runner, rebuild_key, live.collection)
        await runner.checkpoints.collection.update_one({"_id": key}, {"$unset": {"handover": ""}})
        version = await _allocate_version(runner, key)
        shadow = physical_name(name, version)
        await runner.store.database.collection(shadow).drop()
        yield _Claim(key, rebuild_key, live, version, shadow, lost)


async def rebuild(
    runner: ProjectionRunner,
    name: str,
    *,
    progress: Callable[[RebuildProgress], None] | None = None,
    stop: asyncio.Event | None = None,
    drop_grace: float = 5.0,
    max_failures: int = 5,
    leases: LeaseManager | None = None,
) -> RebuildResult:
    """Rebuild projection ``name`` from position 0 without taking its read model offline.

    Args:
        runner: Supplies the projection, store, checkpoints and batch size.
        name: The projection to rebuild.
        progress: Called after every batch, and at each phase change.
        stop: Set it to abandon the rebuild (the live model is untouched).
        drop_grace: Seconds between the swap and dropping the old collection.
        max_failures: Give up after this many failed batches in a row.
        leases: Lease manager for the rebuild (default: a new owner identity).

    Returns:
        The new collection and the position it went live at.

    Raises:
        ProjectionError: Another rebuild or reset is running, the projection
            fails, or the rebuild was stopped.
        UsageError: Unknown projection name.
    """
    projection = runner.get(name)
    leases = _rebuild_leases(runner, leases)
    stop = stop or asyncio.Event()
    started = time.monotonic()
    async with _claim(runner, name, leases, stop, "rebuild") as claim:
        key, rebuild_key, live = claim.key, claim.rebuild_key, claim.live
        version, shadow, lost = claim.version, claim.shadow, claim.lost
        await runner.checkpoints.collection.update_one(
            {"_id": rebuild_key},
            {
                "$set": {
                    "position": 0,
                    "read_model": {"version": version, "collection": shadow},
                    "state": ConsumerState.REBUILDING.value,
                    "owner": leases.owner,
                    "updated_at": time.time(),
                }
            },
            upsert=True,
        )
        build_stop = asyncio.Event()
        guard = _Guard(max_failures, build_stop)
        counters = {"events": 0, "head": await runner.store.head_position()}
        phase: list[Phase] = ["building"]

        def report(position: int) -> None:
            counters["head"] = max(counters["head"], position)
            if progress is not None:
                progress(
                    RebuildProgress(
                        name,
                        phase[0],
                        position,
                        counters["head"],
                        counters["events"],
                        time.monotonic() - started,
                    )
                )

        def on_batch(batch: BatchApplied) -> None:
            guard.failures = 0
            counters["events"] += batch.events
            report(batch.position)

        projector = Projector(
            projection,
            runner.store,
            runner.checkpoints,
            key=rebuild_key,
            write_path=runner.write_path,
            on_batch=on_batch,
            on_failure=guard,
        )
        sub = Subscription(
            runner.store,
            projector,
            checkpoints=runner.checkpoints,
            batch_size=runner.batch_size,
            max_batch_size=runner.max_batch_size,
            backoff=Backoff(initial=0.05, maximum=1.0),
        )

        async def catch_up() -> int:
            forward = asyncio.create_task(_forward(stop, build_stop))
            try:
                position = await sub.catch_up(stop=build_stop)
            finally:
                forward.cancel()
            if guard.failures >= max_failures:
                raise ProjectionError(
                    f"rebuild of {name!r} failed at position {position + 1}: {guard.error!r}"
                ) from guard.error
            if stop.is_set() or lost.is_set():
                raise ProjectionError(f"rebuild of {name!r} stopped at position {position}")
            return position

        try:
            while True:
                position = await catch_up()
                counters["head"] = await runner.store.head_position()
                report(position)
                if counters["head"] - position <= runner.batch_size:
                    break
            phase[0] = "handover"
            report(position)
            live, position = await _handover_and_swap(runner, name, leases, stop, catch_up, version)
        except BaseException:
            await _withdraw(runner, key, rebuild_key, shadow)
            raise
        phase[0] = "swapped"
        report(position)
        await runner.checkpoints.delete(rebuild_key)
        log.info("%s: %s is live at position %d", name, shadow, position)
    await _sleep_unless(stop, drop_grace)
    if live.collection != shadow:
        await runner.store.database.collection(live.collection).drop()
    phase[0] = "done"
    report(position)
    return RebuildResult(
        name, version, shadow, position, live.collection, time.monotonic() - started
    )


async def reset(
    runner: ProjectionRunner,
    name: str,
    *,
    stop: asyncio.Event | None = None,
    leases: LeaseManager | None = None,
) -> RebuildResult:
    """Point projection ``name`` at a new, empty read model at position 0.

    The live runner (if any) hands over as for a rebuild and then projects
    everything again into the empty collection, so readers see an empty or
    partial model until it has caught up. Use `rebuild` to avoid that.

    Raises:
        ProjectionError: Another rebuild or reset is running, or it was stopped.
        UsageError: Unknown projection name.
    """
    runner.get(name)
    leases = _rebuild_leases(runner, leases)
    stop = stop or asyncio.Event()
    started = time.monotonic()
    async with _claim(runner, name, leases, stop, "reset") as claim:
        key, rebuild_key, live = claim.key, claim.rebuild_key, claim.live
        version, shadow = claim.version, claim.shadow

        async def at_zero() -> int:
            return 0

        try:
            live, _ = await _handover_and_swap(runner, name, leases, stop, at_zero, version)
        except BaseException:
            await _withdraw(runner, key, rebuild_key, shadow)
            raise
        await runner.checkpoints.set_status(key, state=ConsumerState.STOPPED, clear_error=True)
    if live.collection != shadow:
        await runner.store.database.collection(live.collection).drop()
    return RebuildResult(name, version, shadow, 0, live.collection, time.monotonic() - started)


async def _forward(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    if seconds <= 0 or stop.is_set():
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
