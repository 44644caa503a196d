"""Loading and saving aggregates: their events, their expected version, their snapshots.

A `Repository` is the only code that turns a stream into an aggregate
and back. ``load`` replays the stream (after the latest usable snapshot, if
the aggregate type takes snapshots) and ``save`` appends the recorded events
with ``expected_version`` set to the version the aggregate was loaded at, so
two writers that loaded the same version cannot both save: the second gets a
`ConcurrencyError`.

Repositories (and the command bus) need only a small part of an event store,
spelled out by the `StreamStore` protocol. `cqrs_kit.EventStore`
satisfies it, and so does the in-memory store of the test harness
(`cqrs_kit.testing.InMemoryEventStore`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from pydantic import ValidationError

from cqrs_kit.aggregates import Aggregate
from cqrs_kit.errors import UsageError
from cqrs_kit.events import Event, EventMetadata, NewEvent, RecordedEvent
from cqrs_kit.snapshots import Snapshot, SnapshotStore
from cqrs_kit.store import AppendResult

log = logging.getLogger("cqrs_kit.repository")

A = TypeVar("A", bound=Aggregate[Any])


class StreamStore(Protocol):
    """The part of an event store that repositories and the command bus use."""

    async def append(
        self,
        stream_id: str,
        events: Iterable[Event | NewEvent],
        *,
        expected_version: int | None = None,
    ) -> AppendResult:
        """Append events atomically, idempotently by event id (see ``EventStore.append``)."""
        ...

    def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int = 1,
        limit: int | None = None,
        strict: bool = True,
    ) -> AsyncIterator[RecordedEvent]:
        """Yield a stream's events in version order from ``from_version``."""
        ...

    async def find_commit(self, event_id: uuid.UUID, *, first: bool = False) -> AppendResult | None:
        """The result of the append that stored ``event_id``, if any.

        ``first=True`` promises that ``event_id`` can only have been stored as the
        first event of an append, which lets a store answer with a key lookup.
        """
        ...


class Repository(Generic[A]):
    """Loads and saves aggregates of one type.

    Args:
        store: Where the events are (an ``EventStore`` or any ``StreamStore``).
        aggregate_type: The aggregate class.
        snapshots: Where snapshots are; used only when the aggregate type sets
            ``snapshot_every``.
    """

    def __init__(
        self,
        store: StreamStore,
        aggregate_type: type[A],
        *,
        snapshots: SnapshotStore | None = None,
    ) -> None:
        if not (isinstance(aggregate_type, type) and issubclass(aggregate_type, Aggregate)):
            raise UsageError(
                f"Repository() takes an Aggregate subclass, not {aggregate_type!r}",
                code="not-an-aggregate",
            )
        self.store = store
        self.aggregate_type = aggregate_type
        self.snapshots = snapshots if aggregate_type.snapshot_every is not None else None

    async def load(self, aggregate_id: str) -> A:
        """Load an aggregate; one whose stream does not exist yet comes back new (version 0).

        Raises:
            UsageError: A stored event has no handler in the aggregate.
            UnknownEventTypeError: A stored event's type is not registered.
            EventDecodingError: A stored payload does not validate.
        """
        aggregate = await self._restore(aggregate_id)
        if aggregate is None:
            aggregate = self.aggregate_type(aggregate_id)
        async for recorded in self.store.read_stream(
            aggregate.stream_id, from_version=aggregate.version + 1
        ):
            aggregate.replay((recorded.event,))
        return aggregate

    async def save(
        self,
        aggregate: A,
        *,
        event_ids: Sequence[uuid.UUID] | None = None,
        metadata: EventMetadata | None = None,
    ) -> AppendResult:
        """Append the aggregate's pending events, expecting its original version.

        Args:
            aggregate: The aggregate to save.
            event_ids: Ids for the pending events, in order (fresh ones by
                default). Fixed ids make the save idempotent: the command bus
                derives them from the command id.
            metadata: Metadata recorded with every event.

        Returns:
            What the append stored (``replayed=True`` if the ids were stored before).

        Raises:
            ConcurrencyError: The stream moved on since the aggregate was loaded.
            UsageError: ``event_ids`` does not have one id per pending event.
        """
        pending = aggregate.pending_events
        if event_ids is not None and len(event_ids) != len(pending):
            raise UsageError(
                f"save() got {len(event_ids)} event ids for {len(pending)} pending events "
                f"of {aggregate!r}; pass one id per event",
                code="event-id-count",
            )
        meta = metadata if metadata is not None else EventMetadata()
        batch = [
            NewEvent(event, metadata=meta)
            if event_ids is None
            else NewEvent(event, event_id=event_ids[n], metadata=meta)
            for n, event in enumerate(pending)
        ]
        result = await self.store.append(
            aggregate.stream_id, batch, expected_version=aggregate.original_version
        )
        aggregate._mark_saved(result.version)
        # A replayed append stored nothing new, and the stored events may even come
        # from a concurrent run of the same command: this state is no snapshot source.
        if batch and not result.replayed:
            await self._maybe_snapshot(aggregate)
        return result

    async def _restore(self, aggregate_id: str) -> A | None:
        """The aggregate as of its latest usable snapshot, or ``None``."""
        if self.snapshots is None:
            return None
        aggregate_type = self.aggregate_type
        stream_id = aggregate_type.stream_id_for(aggregate_id)
        snapshot = await self.snapshots.load(
            stream_id, schema_version=aggregate_type.snapshot_version
        )
        if snapshot is None:
            return None
        try:
            state = aggregate_type.state_from_snapshot(snapshot.state)
        except ValidationError as exc:
            # The state model changed without a snapshot_version bump. The events are
            # the truth, so replaying them all is always correct, only slower.
            log.warning(
                "ignoring snapshot of %s at version %d: it does not fit %s (%d errors); "
                "bump %s.snapshot_version when the state model changes",
                stream_id,
                snapshot.version,
                aggregate_type.__qualname__,
                exc.error_count(),
                aggregate_type.__qualname__,
            )
            return None
        return aggregate_type.restore(aggregate_id, state, snapshot.version)

    async def _maybe_snapshot(self, aggregate: A) -> None:
        every = type(aggregate).snapshot_every
        if self.snapshots is None or every is None:
            return
        # Counting from the snapshot this instance was restored from (0 for a full
        # replay) also covers a schema bump: the first save after it snapshots at once.
        if aggregate.version - aggregate._snapshot_at < every:
            return
        try:
            snapshot = Snapshot(
                stream_id=aggregate.stream_id,
                version=aggregate.version,
                schema_version=type(aggregate).snapshot_version,
                state=aggregate.snapshot_state(),
                aggregate=type(aggregate).__qualname__,
            )
            await self.snapshots.save(snapshot)
        except Exception:
            # The events are already committed: failing the save now would report a
            # stored change as failed. A missing snapshot only costs replay time.
            log.warning(
                "could not store a snapshot of %s at version %d",
                aggregate.stream_id,
                aggregate.version,
                exc_info=True,
            )
            return
        aggregate._snapshot_at = aggregate.version
