"""One status model for every consumer of the event log, shared by the CLI, HTTP and metrics.

A *consumer* is a projection (run by a
`ProjectionRunner`) or a routed subscriber (run
by a `Worker`). Both keep their position, state,
owner and last error in the ``checkpoints`` collection and their lease in
``leases``, so their status is read from the database alone: a process that
runs nothing (the CLI, an HTTP app) sees what the runners are doing.

Each status says where the consumer is (``position``), where the log is
(``head``), how far behind it is in events and in seconds (the age of the
oldest event it has not handled yet; 0 when caught up), its state, which
process holds its lease, the error it is stuck on, and how many of its
events wait in the dead-letter queue (subscribers; projections never
dead-letter, they stop at a failing event).

``cqrs-kit projections status``, ``cqrs-kit worker status``, the ``/status``
and ``/health/ready`` routes of `cqrs_kit.fastapi.operations_router` and
the lag gauges of `cqrs_kit.metrics` all read them through this module.
Pass a clock (anything with ``now() -> datetime``, such as
`ManualClock`) to measure lag against a time of
your choosing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict

from cqrs_kit.checkpoints import CheckpointStore, ConsumerState
from cqrs_kit.errors import TransientStoreError
from cqrs_kit.leases import LeaseManager
from cqrs_kit.metrics import Metrics, get_metrics
from cqrs_kit.subscriptions import measure_lag

if TYPE_CHECKING:
    from cqrs_kit.projections import ProjectionRunner
    from cqrs_kit.routing.worker import Worker
    from cqrs_kit.store import EventStore

log = logging.getLogger("cqrs_kit.status")

#: Prefix of a subscriber's checkpoint and lease key.
SUBSCRIBER_PREFIX = "subscriber:"
#: Where subscribers park failing events, and where dead letters go (the defaults).
PARKED_COLLECTION = "subscriber_parked"
DEAD_LETTER_COLLECTION = "dead_letters"
_LIVE = (ConsumerState.RUNNING, ConsumerState.CATCHING_UP)


class Clock(Protocol):
    """Where lag gets the current time (``scheduling.SystemClock`` and ``ManualClock`` fit)."""

    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...


# -- the model ----------------------------------------------------------------------------


class ConsumerFault(BaseModel):
    """The last error of a consumer.

    Attributes:
        message: ``ExceptionType: message``.
        position: Global position of the event it failed on.
        event_id: That event's id.
        attempts: How many times handling it has failed.
        at: When it failed (for a parked subscriber event: when it first failed).
    """

    model_config = ConfigDict(frozen=True)

    message: str
    position: int
    event_id: str | None
    attempts: int
    at: datetime


class RebuildStatus(BaseModel):
    """A rebuild in progress (or abandoned: ``owner`` is ``None`` when nobody holds it)."""

    model_config = ConfigDict(frozen=True)

    version: int
    collection: str
    position: int
    state: str
    owner: str | None


class ConsumerStatus(BaseModel):
    """What an operator asks about one projection or subscriber.

    Attributes:
        name: Projection name, or subscriber id.
        kind: ``pipeline`` or ``handler`` (projections), ``subscriber``.
        state: ``stopped``, ``catching_up``, ``running``, ``faulted`` or ``rebuilding``.
        position: Last position handled.
        head: The event log's head position.
        lag_events: ``head - position``.
        lag_seconds: Age of the oldest event not handled yet (0 when caught up).
        owner: The runner holding the lease (``host:pid:random``), if any.
        last_error: The error it is stuck on (projections) or last met (subscribers).
        dead_letters: Its events waiting in the dead-letter queue.
        updated_at: When a runner last recorded anything.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    kind: str
    state: ConsumerState
    position: int
    head: int
    lag_events: int
    lag_seconds: float
    owner: str | None
    last_error: ConsumerFault | None = None
    dead_letters: int = 0
    updated_at: datetime | None = None

    @property
    @abstractmethod
    def key(self) -> str:
        """The checkpoint, lease and metrics label name (``projection:<name>`` ...)."""


class ProjectionStatus(ConsumerStatus):
    """The status of one projection (see `ConsumerStatus`).

    Attributes:
        read_model: The physical collection readers are served from.
        version: Its version number.
        rebuild: A rebuild in progress, if any.
    """

    read_model: str
    version: int
    rebuild: RebuildStatus | None = None

    @property
    def key(self) -> str:
        """``projection:<name>``."""
        return f"projection:{self.name}"


class SubscriberStatus(ConsumerStatus):
    """The status of one routed subscriber (see `ConsumerStatus`).

    Attributes:
        parked: Events parked for a retry, or held back behind one in their stream.
    """

    kind: str = "subscriber"
    parked: int = 0

    @property
    def key(self) -> str:
        """``subscriber:<id>``."""
        return f"{SUBSCRIBER_PREFIX}{self.name}"


class SystemStatus(BaseModel):
    """Every consumer's status at one moment (the ``/status`` document).

    Attributes:
        head: The event log's head position.
        checked_at: When the status was read.
        projections: One entry per projection, by name.
        subscribers: One entry per subscriber, by id.
    """

    model_config = ConfigDict(frozen=True)

    head: int
    checked_at: datetime
    projections: list[ProjectionStatus]
    subscribers: list[SubscriberStatus]

    def consumers(self) -> list[ConsumerStatus]:
        """Projections, then subscribers."""
        return [*self.projections, *self.subscribers]


# -- reading it ---------------------------------------------------------------------------


def _ts(seconds: Any) -> datetime | None:
    return datetime.fromtimestamp(float(seconds), UTC) if seconds else None


def _now(clock: Clock | None) -> datetime:
    return clock.now() if clock is not None else datetime.now(UTC)


def _fault(error: Mapping[str, Any], fallback: datetime) -> ConsumerFault:
    return ConsumerFault(
        message=str(error["message"]),
        position=int(error["position"]),
        event_id=error.get("event_id"),
        attempts=int(error.get("attempts", 0)),
        at=_ts(error.get("at")) or fallback,
    )


async def projection_statuses(
    runner: ProjectionRunner,
    names: Iterable[str] | None = None,
    *,
    clock: Clock | None = None,
    head: int | None = None,
) -> list[ProjectionStatus]:
    """The status of ``runner``'s projections (all, or ``names``), read from the database.

    A state recorded as running by a runner that no longer holds the lease is
    reported as ``stopped``: a killed runner cannot say goodbye.

    Raises:
        UsageError: A name is not one of the runner's projections.
    """
    from cqrs_kit.projections import locate, projection_key

    now = _now(clock)
    if head is None:
        head = await runner.store.head_position()
    checkpoints, leases = runner.checkpoints, runner.leases
    out: list[ProjectionStatus] = []
    for name in names if names is not None else sorted(runner.projections):
        projection = runner.get(name)
        key = projection_key(name)
        location = await locate(checkpoints, key, name, create=False)
        doc = await checkpoints.collection.find_one({"_id": key}) or {}
        lease = await leases.holder(key)
        state = ConsumerState(doc.get("state", ConsumerState.STOPPED))
        if lease is None and state in _LIVE:
            state = ConsumerState.STOPPED
        lag = await measure_lag(runner.store, location.position, head=head, now=now.timestamp())
        error = doc.get("error")
        rebuild = None
        shadow = await checkpoints.collection.find_one({"_id": f"{key}:rebuild"})
        if shadow and shadow.get("read_model"):
            holder = await leases.holder(f"{key}:rebuild")
            rebuild = RebuildStatus(
                version=int(shadow["read_model"]["version"]),
                collection=str(shadow["read_model"]["collection"]),
                position=int(shadow.get("position", 0)),
                state=str(shadow.get("state", ConsumerState.REBUILDING.value)),
                owner=holder.owner if holder else None,
            )
            if holder is not None and state is not ConsumerState.FAULTED and lease is None:
                state = ConsumerState.REBUILDING
        out.append(
            ProjectionStatus(
                name=name,
                kind=projection.kind,
                state=state,
                position=location.position,
                head=lag.head,
                lag_events=lag.events,
                lag_seconds=round(lag.seconds, 3),
                owner=lease.owner if lease else None,
                read_model=location.collection,
                version=location.version,
                last_error=_fault(error, now) if error else None,
                rebuild=rebuild,
                updated_at=_ts(doc.get("updated_at")),
            )
        )
    return out


async def subscriber_ids(checkpoints: CheckpointStore) -> list[str]:
    """Ids of every subscriber that has a checkpoint (ran at least once), sorted."""
    found = await checkpoints.list(SUBSCRIBER_PREFIX)
    return [c.name.removeprefix(SUBSCRIBER_PREFIX) for c in found]


async def subscriber_statuses(
    store: EventStore,
    ids: Iterable[str],
    *,
    checkpoints: CheckpointStore | None = None,
    leases: LeaseManager | None = None,
    parked_collection: str = PARKED_COLLECTION,
    dead_letter_collection: str = DEAD_LETTER_COLLECTION,
    clock: Clock | None = None,
    head: int | None = None,
) -> list[SubscriberStatus]:
    """The status of the subscribers ``ids``, read from the database.

    ``last_error`` is the most recent of: the error the subscriber's log
    follower is stuck on, the error of a parked event, the error of a dead
    letter. A recorded running state is reported as ``stopped`` when the
    subscriber ran under a lease and nobody holds it any more.
    """
    database = store.database
    checkpoints = checkpoints or CheckpointStore(database)
    leases = leases or LeaseManager(database)
    parked_coll = database.collection(parked_collection)
    dead_coll = database.collection(dead_letter_collection)
    now = _now(clock)
    if head is None:
        head = await store.head_position()
    out: list[SubscriberStatus] = []
    for sid in ids:
        key = f"{SUBSCRIBER_PREFIX}{sid}"
        doc = await checkpoints.collection.find_one({"_id": key}) or {}
        lease = await leases.holder(key)
        state = ConsumerState(doc.get("state", ConsumerState.STOPPED))
        if lease is None and state in _LIVE and doc.get("owner"):
            state = ConsumerState.STOPPED
        position = int(doc.get("position", 0))
        lag = await measure_lag(store, position, head=head, now=now.timestamp())
        faults: list[ConsumerFault] = []
        if doc.get("error"):
            faults.append(_fault(doc["error"], now))
        entry = await parked_coll.find_one(
            {"subscriber": sid, "error": {"$ne": None}}, sort=[("first_failed_at", -1)]
        )
        if entry is not None:
            faults.append(
                ConsumerFault(
                    message=str(entry["error"]),
                    position=int(entry["position"]),
                    event_id=str((entry.get("event") or {}).get("id")),
                    attempts=int(entry.get("attempts", 0)),
                    at=_ts(entry.get("first_failed_at")) or now,
                )
            )
        dead = await dead_coll.find_one({"subscriber": sid}, sort=[("dead_lettered_at", -1)])
        if dead is not None:
            faults.append(
                ConsumerFault(
                    message=f"{dead.get('error_type', '')}: {dead.get('error', '')}",
                    position=int(dead["position"]),
                    event_id=str(dead["event_id"]),
                    attempts=int(dead.get("attempts", 0)) + int(dead.get("retries", 0)),
                    at=_ts(dead.get("last_failed_at")) or now,
                )
            )
        out.append(
            SubscriberStatus(
                name=sid,
                state=state,
                position=position,
                head=lag.head,
                lag_events=lag.events,
                lag_seconds=round(lag.seconds, 3),
                owner=lease.owner if lease else None,
                last_error=max(faults, key=lambda f: f.at) if faults else None,
                dead_letters=await dead_coll.count({"subscriber": sid}) if dead else 0,
                parked=await parked_coll.count({"subscriber": sid}),
                updated_at=_ts(doc.get("updated_at")),
            )
        )
    return out


class StatusReader:
    """Reads the status of a set of projections and subscribers, and publishes it as metrics.

    Args:
        store: The event store.
        projections: The runner whose projections to report (it need not be running).
        subscribers: A `Worker`, or subscriber ids.
        clock: Where lag gets the current time (default: the system clock).
    """

    def __init__(
        self,
        store: EventStore,
        *,
        projections: ProjectionRunner | None = None,
        subscribers: Worker | Iterable[str] | None = None,
        clock: Clock | None = None,
    ) -> None:
        from cqrs_kit.routing.worker import Worker

        self.store = store
        self.runner = projections
        self.clock = clock
        self.checkpoints: CheckpointStore | None = None
        self.leases: LeaseManager | None = None
        if subscribers is None:
            self.subscriber_ids: list[str] = []
        elif isinstance(subscribers, Worker):  # its own checkpoint and lease stores
            self.subscriber_ids = sorted(subscribers.runtimes)
            self.checkpoints = subscribers.checkpoints
            self.leases = subscribers.leases
        else:
            self.subscriber_ids = sorted(subscribers)

    @property
    def projection_names(self) -> list[str]:
        """The projections reported, sorted."""
        return sorted(self.runner.projections) if self.runner is not None else []

    async def read(
        self,
        *,
        projections: Sequence[str] | None = None,
        subscribers: Sequence[str] | None = None,
    ) -> SystemStatus:
        """Everything's status now (or only the ``projections`` and ``subscribers`` named)."""
        checked_at = _now(self.clock)
        head = await self.store.head_position()
        names = self.projection_names if projections is None else list(projections)
        ids = self.subscriber_ids if subscribers is None else list(subscribers)
        found_projections: list[ProjectionStatus] = []
        if self.runner is not None and names:
            found_projections = await projection_statuses(
                self.runner, names, clock=self.clock, head=head
            )
        found_subscribers = await subscriber_statuses(
            self.store,
            ids,
            checkpoints=self.checkpoints,
            leases=self.leases,
            clock=self.clock,
            head=head,
        )
        return SystemStatus(
            head=head,
            checked_at=checked_at,
            projections=found_projections,
            subscribers=found_subscribers,
        )

    async def publish(self, metrics: Metrics | None = None) -> SystemStatus:
        """Read the status and set the lag, state, dead-letter and parked gauges from it."""
        status = await self.read()
        publish(status, metrics)
        return status

    async def report(
        self, stop: asyncio.Event, *, interval: float = 5.0, metrics: Metrics | None = None
    ) -> None:
        """Publish every ``interval`` seconds until ``stop`` is set (database errors are logged)."""
        while not stop.is_set():
            try:
                await self.publish(metrics)
            except TransientStoreError as exc:
                log.warning("status: database unavailable (%s); lag gauges not updated", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


def publish(status: SystemStatus, metrics: Metrics | None = None) -> None:
    """Set the per-consumer gauges of ``metrics`` (default: the process-wide ones)."""
    metrics = metrics or get_metrics()
    for consumer in status.consumers():
        metrics.record_lag(consumer.key, consumer.lag_events, consumer.lag_seconds)
        parked = consumer.parked if isinstance(consumer, SubscriberStatus) else 0
        metrics.record_status(
            consumer.key,
            consumer.state.value,
            position=consumer.position,
            dead_letters=consumer.dead_letters,
            parked=parked,
        )
