"""The application object and the runner that keeps every projection live."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from cqrs_kit.checkpoints import CheckpointStore
from cqrs_kit.errors import TransientStoreError, UsageError
from cqrs_kit.events import EventRegistry
from cqrs_kit.leases import LeaseManager
from cqrs_kit.projections.declarations import HandlerProjection, PipelineProjection, Projection
from cqrs_kit.projections.projector import Projector, _HandoverRequested
from cqrs_kit.projections.read_models import ReadModel, locate, projection_key
from cqrs_kit.status import Clock, projection_statuses
from cqrs_kit.status import ProjectionStatus as ProjectionStatus  # re-exported
from cqrs_kit.store import EventStore
from cqrs_kit.subscriptions import Backoff, Subscription

if TYPE_CHECKING:
    from cqrs_kit.rebuild import RebuildResult


log = logging.getLogger("cqrs_kit.projections")

# -- the application object and the runner ------------------------------------------------


@dataclass
class ProjectionApp:
    """What ``cqrs-kit projections --app module:attr`` loads.

    ``attr`` may be an instance or a zero-argument factory returning one; any
    object with ``registry`` and ``projections`` attributes (and optionally
    ``database_name`` and ``events_collection``) works.

    Attributes:
        registry: The event classes, to decode events for handler projections.
        projections: The projections to run.
        database_name: Default database when neither ``--database`` nor
            ``MONGODB_DATABASE`` is given.
        events_collection: The event store's collection.
    """

    registry: EventRegistry
    projections: Sequence[Projection]
    database_name: str | None = None
    events_collection: str = "events"


class ProjectionRunner:
    """Runs projections concurrently, one subscription and one lease each.

    Start one runner per process on as many processes as you like: each
    projection runs in exactly one of them at a time (its lease), and another
    takes over within ``lease_ttl`` seconds when that process dies.

    Args:
        store: The event store.
        projections: The projections (names must be unique).
        checkpoints: Checkpoint store (default: ``checkpoints`` in the store's database).
        leases: Lease manager (default: one with ``lease_ttl``).
        lease_ttl: Seconds before a dead runner's lease can be taken over.
        batch_size: Events per batch when a projection keeps up.
        max_batch_size: Largest batch while catching up (see `Subscription`).
        poll_interval: Safety poll period (the wake-up without change streams).
        backoff: Retry delays of a failing event.
        handover_poll: How often a running projection checks whether a rebuild
            asked it to hand over.
        write_path: See `Projector`.
    """

    def __init__(
        self,
        store: EventStore,
        projections: Sequence[Projection],
        *,
        checkpoints: CheckpointStore | None = None,
        leases: LeaseManager | None = None,
        lease_ttl: float = 10.0,
        batch_size: int = 500,
        max_batch_size: int | None = None,
        poll_interval: float = 1.0,
        backoff: Backoff | None = None,
        handover_poll: float = 1.0,
        write_path: Literal["auto", "merge", "bulk"] = "auto",
    ) -> None:
        self.store = store
        self.projections: dict[str, Projection] = {}
        for projection in projections:
            if not isinstance(projection, PipelineProjection | HandlerProjection):
                raise UsageError(
                    f"{projection!r} is not a PipelineProjection or HandlerProjection",
                    code="bad-projection",
                )
            if projection.name in self.projections:
                raise UsageError(
                    f"two projections are named {projection.name!r}", code="duplicate-projection"
                )
            self.projections[projection.name] = projection
        self.checkpoints = checkpoints or CheckpointStore(store.database)
        self.leases = leases or LeaseManager(store.database, ttl=lease_ttl)
        self.batch_size = batch_size
        self.max_batch_size = max_batch_size
        self.poll_interval = poll_interval
        self.backoff = backoff or Backoff()
        self.handover_poll = handover_poll
        self.write_path = write_path
        self.subscriptions: dict[str, Subscription] = {}

    def get(self, name: str) -> Projection:
        """The projection called ``name``.

        Raises:
            UsageError: No such projection; the message lists the known names.
        """
        try:
            return self.projections[name]
        except KeyError:
            known = ", ".join(sorted(self.projections)) or "(none)"
            raise UsageError(
                f"unknown projection {name!r}; known projections: {known}",
                code="unknown-projection",
            ) from None

    def read_model(self, name: str, *, max_age: float = 1.0) -> ReadModel:
        """A `ReadModel` handle on projection ``name``'s read model."""
        self.get(name)
        return ReadModel(self.store.database, name, max_age=max_age)

    def projector(self, name: str, **options: Any) -> Projector:
        """A `Projector` for projection ``name`` on its live read model."""
        options.setdefault("write_path", self.write_path)
        return Projector(self.get(name), self.store, self.checkpoints, **options)

    async def catch_up(self, names: Iterable[str] | None = None) -> dict[str, int]:
        """Bring projections up to the head once, without leases (tests, scripts).

        Returns:
            Each projection's position afterwards.
        """
        positions: dict[str, int] = {}
        for name in names if names is not None else list(self.projections):
            sub = Subscription(
                self.store,
                self.projector(name),
                checkpoints=self.checkpoints,
                batch_size=self.batch_size,
                max_batch_size=self.max_batch_size,
                backoff=self.backoff,
            )
            positions[name] = await sub.catch_up()
        return positions

    async def run(self, stop: asyncio.Event, names: Iterable[str] | None = None) -> None:
        """Run projections (all, or ``names``) until ``stop`` is set."""
        selected = [self.get(n) for n in (names if names is not None else self.projections)]
        await asyncio.gather(*(self._run_one(p, stop) for p in selected))

    async def _handover_requested(self, name: str) -> bool:
        """Whether a live rebuild (or reset) asked the runners of ``name`` to stand aside."""
        key = projection_key(name)
        doc = await self.checkpoints.collection.find_one({"_id": key}, projection={"handover": 1})
        if not doc or not doc.get("handover"):
            return False
        # A handover request outlives a rebuild that was killed: honour it only while
        # the rebuild still holds its lease.
        return await self.leases.holder(f"{key}:rebuild") is not None

    async def _run_one(self, projection: Projection, stop: asyncio.Event) -> None:
        name = projection.name
        failures = 0

        async def refuse_during_handover() -> None:
            # Runs after the lease is taken, before the first read-model write: a
            # standby that won the lease while a rebuild waits for it backs off.
            if await self._handover_requested(name):
                raise _HandoverRequested(f"{name}: a rebuild asked for a handover")

        while not stop.is_set():
            try:
                if await self._handover_requested(name):
                    await _pause(stop, self.handover_poll)
                    continue
                projector = self.projector(name, before_start=refuse_during_handover)
                sub = Subscription(
                    self.store,
                    projector,
                    checkpoints=self.checkpoints,
                    leases=self.leases,
                    batch_size=self.batch_size,
                    max_batch_size=self.max_batch_size,
                    poll_interval=self.poll_interval,
                    backoff=self.backoff,
                )
                self.subscriptions[name] = sub
                sub_stop = asyncio.Event()
                watcher = asyncio.create_task(self._watch(projector, stop, sub_stop))
                try:
                    await sub.run(sub_stop)
                finally:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
                failures = 0
            except asyncio.CancelledError:
                raise
            except _HandoverRequested:
                await _pause(stop, self.handover_poll)
            except Exception as exc:
                failures += 1
                delay = self.backoff.delay(failures)
                log.warning("%s: runner stopped (%s); restarting in %.1fs", name, exc, delay)
                await _pause(stop, delay)

    async def _watch(
        self, projector: Projector, stop: asyncio.Event, sub_stop: asyncio.Event
    ) -> None:
        """Stop the subscription on ``stop``, or when a rebuild wants the projection."""
        name = projector.projection.name
        while not stop.is_set():
            await _pause(stop, self.handover_poll)
            if stop.is_set():
                break
            bound = projector.location
            with contextlib.suppress(TransientStoreError):
                if await self._handover_requested(name):
                    log.info("%s: handing over to a rebuild", name)
                    break
                if bound is not None:
                    now = await locate(self.checkpoints, projector.key, name, create=False)
                    if now.version != bound.version:
                        log.info("%s: read model moved to %s", name, now.collection)
                        break
        sub_stop.set()

    async def status(
        self, names: Iterable[str] | None = None, *, clock: Clock | None = None
    ) -> list[ProjectionStatus]:
        """The status of projections (all, or ``names``), read from the database.

        See `cqrs_kit.status.projection_statuses`; ``clock`` is where lag
        gets the current time (default: the system clock).
        """
        return await projection_statuses(self, names, clock=clock)

    async def rebuild(self, name: str, **options: Any) -> RebuildResult:
        """Rebuild ``name`` without downtime (see `cqrs_kit.rebuild.rebuild`)."""
        from cqrs_kit.rebuild import rebuild

        return await rebuild(self, name, **options)

    async def reset(self, name: str, **options: Any) -> RebuildResult:
        """Restart ``name`` from 0 on an empty model (see `cqrs_kit.rebuild.reset`)."""
        from cqrs_kit.rebuild import reset

        return await reset(self, name, **options)


async def _pause(stop: asyncio.Event | None, seconds: float) -> None:
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
