"""The event store: one MongoDB collection of immutable commits.

Storage layout
--------------
Each call to `EventStore.append` writes exactly one *commit* document:

    {_id: <first event id>, stream_id, from_version, to_version,
     position, last_position, recorded_at, event_ids: [...], types: [...],
     events: [{id, type, v, version, position, data, meta}, ...]}

One document per append makes a batch atomic on every MongoDB deployment
(single-document writes are atomic; no multi-document transaction is needed).

Global order without gaps
-------------------------
A commit's ``position`` is the previous commit's ``last_position + 1``,
read just before inserting, and a unique index on ``position`` lets exactly
one writer claim it; the losers re-read the head and try again. A writer can
only claim ``p + 1`` after it has *seen* commit ``p``, so a commit becomes
visible only after every commit before it is visible: positions are handed
out in commit order, and a reader tailing ``read_all(after=checkpoint)``
can never observe ``p + 1`` before ``p``. Nothing is skipped, nothing needs
a timer. The cost is that appends serialise on the head of the log (one
winner per position), the same price a relational store pays for its table
lock. ``docs/event-store.md`` discusses it.

Per-stream optimistic concurrency uses the same trick: a unique index on
``(stream_id, from_version)``. Commits of a stream are contiguous, so a
writer that read a stale stream head collides with the commit that
followed it.

Idempotency: the commit's ``_id`` is its first event id, so retrying an
append after a timeout (same ``NewEvent`` objects) hits the ``_id`` index
and returns the original `AppendResult`.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from cqrs_kit._mongo import (
    DocumentTooLargeError,
    DuplicateKey,
    EncodingError,
    MongoDatabase,
    adapt,
)
from cqrs_kit.errors import (
    ConcurrencyError,
    DuplicateEventError,
    EventEncodingError,
    EventTooLargeError,
    IndeterminateCommitError,
    InvalidStreamIdError,
    TransientStoreError,
    UsageError,
)
from cqrs_kit.events import Event, EventMetadata, EventRegistry, NewEvent, RecordedEvent
from cqrs_kit.metrics import get_metrics

#: MongoDB's maximum BSON document size.
MAX_DOCUMENT_SIZE: Final = 16 * 1024 * 1024
MAX_STREAM_ID_LENGTH: Final = 512


class ExpectedVersion:
    """Named values for ``expected_version``.

    ``ANY`` (``None``) accepts the stream in any state; ``NO_STREAM`` (``0``)
    requires that it does not exist yet; any positive ``n`` requires that the
    stream is exactly at version ``n``.
    """

    ANY: Final[None] = None
    NO_STREAM: Final[int] = 0


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What an append stored.

    Attributes:
        stream_id: The stream appended to.
        version: The stream's version after the append (its last event's version).
        position: Global position of the last event appended.
        first_position: Global position of the first event appended.
        replayed: True when the events were already stored by an earlier call
            with the same event ids, and nothing new was written.
    """

    stream_id: str
    version: int
    position: int
    first_position: int
    replayed: bool = False


def validate_stream_id(stream_id: object) -> str:
    """Return ``stream_id`` if it is usable, else raise ``InvalidStreamIdError``."""
    if not isinstance(stream_id, str):
        raise InvalidStreamIdError(stream_id, "must be a string")
    if not stream_id.strip():
        raise InvalidStreamIdError(stream_id, "must not be empty")
    if len(stream_id) > MAX_STREAM_ID_LENGTH:
        raise InvalidStreamIdError(
            stream_id[:40] + "...", f"longer than {MAX_STREAM_ID_LENGTH} characters"
        )
    if "\x00" in stream_id:
        raise InvalidStreamIdError(stream_id, "must not contain NUL characters")
    return stream_id


def _validate_expected(expected_version: object) -> int | None:
    if expected_version is None:
        return None
    if isinstance(expected_version, bool) or not isinstance(expected_version, int):
        raise UsageError(
            f"expected_version must be None, 0 or a positive int, not {expected_version!r}",
            code="bad-expected-version",
        )
    if expected_version < 0:
        raise UsageError(
            f"expected_version must not be negative (got {expected_version})",
            code="bad-expected-version",
        )
    return expected_version


def _utcnow_ms() -> datetime:
    """Now in UTC, truncated to the millisecond that BSON can store."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class EventStore:
    """Append-only event store over one MongoDB collection.

    Args:
        database: An async database object: PyMongo's ``AsyncMongoClient()[name]``,
            a Motor database, or a mongomock-motor database.
        registry: The event classes this store can encode and decode.
        collection: Name of the collection holding the commits.
        max_append_attempts: How often an append retries after losing the race
            for the next global position before giving up.
    """

    def __init__(
        self,
        database: Any,
        registry: EventRegistry,
        *,
        collection: str = "events",
        max_append_attempts: int = 200,
    ) -> None:
        self.database: MongoDatabase = adapt(database)
        self.registry = registry
        self.collection_name = collection
        self._commits = self.database.collection(collection)
        self._max_attempts = max_append_attempts
        # Hints for the next append: the highest position and stream versions this
        # store has seen committed (see _plan). Bounded, least recently used first out.
        self._log_hint = 0
        self._stream_hints: OrderedDict[str, int] = OrderedDict()
        self._max_hints = 10_000
        self._metrics = get_metrics()
        # Whether the server enforces the unique multikey index on event_ids; probed
        # on first need (see _server_refuses_reused_ids).
        self._refuses_reused_ids: bool | None = None
        # Appends through one store take their positions in turn: concurrent ones
        # would all aim at the same next position, and all but one would collide and
        # pay a re-read. Other processes still race, and the unique index decides.
        self._writer = asyncio.Lock()

    async def ensure_indexes(self) -> None:
        """Create the indexes the store's guarantees rest on (idempotent)."""
        await self._commits.create_index([("position", 1)], name="position_unique", unique=True)
        await self._commits.create_index(
            [("stream_id", 1), ("from_version", 1)], name="stream_version_unique", unique=True
        )
        # Unique across commits on MongoDB, so a reused event id anywhere in a batch
        # is refused by the server, not only a reused first id.
        await self._commits.create_index([("event_ids", 1)], name="event_ids_unique", unique=True)
        await self._commits.create_index([("types", 1), ("position", 1)], name="types_position")
        # Learn now, not on the first append, whether the server enforces that index.
        await self._server_refuses_reused_ids()

    # -- writing -------------------------------------------------------------------------

    async def append(
        self,
        stream_id: str,
        events: Iterable[Event | NewEvent],
        *,
        expected_version: int | None = ExpectedVersion.ANY,
    ) -> AppendResult:
        """Append events to a stream, atomically.

        Args:
            stream_id: The stream to append to.
            events: Events, or ``NewEvent`` wrappers carrying ids and metadata.
                Pass the same ``NewEvent`` objects to retry idempotently.
            expected_version: ``None`` for any state, ``0`` if the stream must not
                exist, ``n`` if it must be exactly at version ``n``.

        Returns:
            The new stream version and the global positions written.

        Raises:
            ConcurrencyError: The stream is not at ``expected_version``.
            DuplicateEventError: An event id is already stored in another append.
            EventEncodingError: A payload cannot be stored.
            EventTooLargeError: The append exceeds the 16 MiB document limit.
            IndeterminateCommitError: The connection failed mid-write; retry.
            TransientStoreError: The database is unreachable.
        """
        validate_stream_id(stream_id)
        expected = _validate_expected(expected_version)
        items = list(events)
        # Ids the caller made (NewEvent) may be reused: a retry, or a mistake. Ids made
        # here for bare events are fresh uuid4s and need no duplicate check.
        caller_ids = any(isinstance(e, NewEvent) for e in items)
        pending = [e if isinstance(e, NewEvent) else NewEvent(e) for e in items]
        for item in pending:
            if not isinstance(item.event, Event):
                raise UsageError(
                    f"append() takes Event or NewEvent objects, not {type(item.event).__name__}",
                    code="not-an-event",
                )
        if not pending:
            return await self._empty_append(stream_id, expected)

        ids = [str(item.event_id) for item in pending]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise DuplicateEventError(dup, stream_id=stream_id)
        bodies = [
            {
                "id": ids[n],
                "type": item.event.event_type,
                "v": item.event.schema_version,
                "data": self.registry.encode(item.event, stream_id=stream_id),
                "meta": item.metadata.model_dump(exclude_defaults=True),
            }
            for n, item in enumerate(pending)
        ]

        if caller_ids and not await self._server_refuses_reused_ids():
            # The _id index catches a retried append by its first id. Any other reused
            # id (a later one of a batch, or a single event's id stored inside another
            # batch) is refused by the unique index on event_ids where the server
            # enforces unique multikey indexes (MongoDB does), and the collision is
            # then told apart below, after the insert. This check is for backends that
            # do not enforce it (nx-27017, mongomock).
            original = await self._find_original(stream_id, ids)
            if original is not None:
                return original

        started = time.perf_counter()
        async with self._writer:
            return await self._insert(stream_id, expected, ids, bodies, started)

    async def _insert(
        self,
        stream_id: str,
        expected: int | None,
        ids: Sequence[str],
        bodies: list[dict[str, Any]],
        started: float,
    ) -> AppendResult:
        """Claim the next position and insert the commit, retrying lost races."""
        fresh = False  # whether to re-read both heads instead of trusting the hints
        for attempt in range(self._max_attempts):
            actual, first_position = await self._plan(stream_id, expected, fresh)
            if expected is not None and actual != expected:
                original = await self._find_original(stream_id, ids)
                if original is not None:
                    return original
                raise ConcurrencyError(stream_id, expected=expected, actual=actual)
            doc = self._commit_document(stream_id, bodies, actual + 1, first_position)
            try:
                await self._commits.insert_encoded(doc, max_size=MAX_DOCUMENT_SIZE)
            except DuplicateKey:
                # Lost the race for the position or the stream version, or this is a
                # retry of an append that already landed: find out which.
                original = await self._find_original(stream_id, ids)
                if original is not None:
                    return original
                if fresh:
                    await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** min(attempt, 6))))
                fresh = True
                continue
            except DocumentTooLargeError as exc:
                size = int(str(exc).split()[0]) if str(exc).split()[0].isdigit() else -1
                raise EventTooLargeError(
                    stream_id=stream_id, size=size, limit=MAX_DOCUMENT_SIZE
                ) from None
            except EncodingError as exc:
                raise EventEncodingError(
                    stream_id=stream_id, event_type=str(bodies[0]["type"]), reason=str(exc)
                ) from exc
            except TransientStoreError as exc:
                raise IndeterminateCommitError(stream_id=stream_id, reason=str(exc)) from exc
            self._observe(stream_id, doc["to_version"], doc["last_position"])
            self._metrics.record_append(stream_id, len(bodies), time.perf_counter() - started)
            return AppendResult(
                stream_id=stream_id,
                version=doc["to_version"],
                position=doc["last_position"],
                first_position=first_position,
            )
        raise TransientStoreError(
            f"append to {stream_id!r} lost the race for the next position "
            f"{self._max_attempts} times; the log is under heavy contention, retry later"
        )

    async def _plan(self, stream_id: str, expected: int | None, fresh: bool) -> tuple[int, int]:
        """Return (the stream's version, the next global position) to try an insert with.

        Both come from hints where that is safe, saving the reads: a hint is a value
        this store has seen committed, and since the log is immutable and contiguous
        a seen value is always a lower bound of the truth. Inserting at a stale
        (too low) position or version collides with the commit already there, and
        the retry then reads the heads. Only an ``expected_version`` above the
        hint needs a read, because a too-high version would not collide.
        """
        hinted = None if fresh else self._stream_hints.get(stream_id)
        if expected == 0 and not fresh:
            version: int | None = 0  # collides with version 1 if the stream exists
        elif hinted is not None and (expected is None or expected <= hinted):
            version = hinted
            self._stream_hints.move_to_end(stream_id)
        else:
            version = None
        log_hint = 0 if fresh else self._log_hint
        if version is not None and log_hint > 0:
            return version, log_hint + 1
        if version is None and log_hint > 0:
            head = await self._stream_head(stream_id)
            return (head["to_version"] if head else 0), log_hint + 1
        stream_head, log_head = await asyncio.gather(self._stream_head(stream_id), self._log_head())
        actual = stream_head["to_version"] if stream_head else 0
        last = log_head["last_position"] if log_head else 0
        self._observe(stream_id if stream_head else None, actual, last)
        return (actual if version is None else version), last + 1

    def _observe(self, stream_id: str | None, version: int, last_position: int) -> None:
        """Remember committed values as hints for the next append."""
        self._log_hint = max(self._log_hint, last_position)
        if stream_id is None:
            return
        if version > self._stream_hints.get(stream_id, 0):
            self._stream_hints[stream_id] = version
        self._stream_hints.move_to_end(stream_id)
        if len(self._stream_hints) > self._max_hints:
            self._stream_hints.popitem(last=False)

    @staticmethod
    def _commit_document(
        stream_id: str, bodies: Sequence[Mapping[str, Any]], from_version: int, position: int
    ) -> dict[str, Any]:
        events = [
            {**body, "version": from_version + n, "position": position + n}
            for n, body in enumerate(bodies)
        ]
        return {
            "_id": bodies[0]["id"],
            "stream_id": stream_id,
            "from_version": from_version,
            "to_version": from_version + len(bodies) - 1,
            "position": position,
            "last_position": position + len(bodies) - 1,
            "recorded_at": _utcnow_ms(),
            # Flat copies of what readers filter on, so that queries need no
            # path into the array of sub-documents.
            "event_ids": [body["id"] for body in bodies],
            "types": sorted({body["type"] for body in bodies}),
            "events": events,
        }

    async def _empty_append(self, stream_id: str, expected: int | None) -> AppendResult:
        head = await self._stream_head(stream_id)
        actual = head["to_version"] if head else 0
        if expected is not None and actual != expected:
            raise ConcurrencyError(stream_id, expected=expected, actual=actual)
        position = head["last_position"] if head else 0
        return AppendResult(stream_id, actual, position, position, replayed=True)

    async def _server_refuses_reused_ids(self) -> bool:
        """Whether a unique index on an array field refuses a value repeated across documents.

        MongoDB's unique multikey indexes do; nx-27017's and mongomock's do not, and
        there a single-event append would otherwise store an id that is already
        inside another batch. Probed once per store, in a scratch collection.
        """
        if self._refuses_reused_ids is None:
            probe = self.database.collection(
                f"{self.collection_name}_unique_probe_{uuid.uuid4().hex[:12]}"
            )
            try:
                await probe.create_index([("ids", 1)], name="ids_unique", unique=True)
                await probe.insert_one({"_id": 1, "ids": ["a", "b"]})
                try:
                    await probe.insert_one({"_id": 2, "ids": ["b"]})
                except DuplicateKey:
                    self._refuses_reused_ids = True
                else:
                    self._refuses_reused_ids = False
            finally:
                await probe.drop()
        return self._refuses_reused_ids

    async def _find_original(self, stream_id: str, ids: Sequence[str]) -> AppendResult | None:
        """Return the result of an earlier append of exactly these ids, if there was one.

        Raises:
            DuplicateEventError: Some of the ids are stored, but as a different append.
        """
        commit = await self._commits.find_one({"_id": ids[0]})
        if commit is None:
            commit = await self._commits.find_one({"event_ids": {"$in": list(ids)}})
            if commit is None:
                return None
        stored_ids = list(commit["event_ids"])
        if stored_ids != list(ids) or commit["stream_id"] != stream_id:
            clash = next(i for i in ids if i in stored_ids)
            raise DuplicateEventError(clash, stream_id=stream_id)
        return AppendResult(
            stream_id=stream_id,
            version=commit["to_version"],
            position=commit["last_position"],
            first_position=commit["position"],
            replayed=True,
        )

    async def find_commit(self, event_id: uuid.UUID, *, first: bool = False) -> AppendResult | None:
        """Return the result of the append that stored ``event_id``, if one did.

        The answer has ``replayed=True`` and describes the whole append the event
        was part of. A command bus uses it to recognise a command it already
        applied: the ids of a command's events are derived from the command id.

        Args:
            event_id: The event to look for.
            first: The caller knows ``event_id`` can only have been stored as the
                first event of an append (as a command's first event is); one
                primary-key read then answers.
        """
        key = str(event_id)
        fields = {"stream_id": 1, "to_version": 1, "position": 1, "last_position": 1}
        commit = await self._commits.find_one({"_id": key}, projection=fields)
        if commit is None and first:
            return None
        if commit is None:
            # $in rather than plain equality: the same on MongoDB, and some
            # wire-compatible servers do not match equality on a multikey index.
            commit = await self._commits.find_one({"event_ids": {"$in": [key]}}, projection=fields)
            if commit is None:
                return None
        return AppendResult(
            stream_id=commit["stream_id"],
            version=commit["to_version"],
            position=commit["last_position"],
            first_position=commit["position"],
            replayed=True,
        )

    # -- reading -------------------------------------------------------------------------

    async def _stream_head(self, stream_id: str) -> dict[str, Any] | None:
        # $match + $sort + $limit coalesce into one index probe on
        # (stream_id, from_version) on MongoDB; the pipeline form is used because some
        # wire-compatible servers only plan compound-index sorts for aggregations.
        async for head in self._commits.aggregate_iter(
            [
                {"$match": {"stream_id": stream_id}},
                {"$sort": {"from_version": -1}},
                {"$limit": 1},
                {"$project": {"to_version": 1, "last_position": 1}},
            ]
        ):
            return head
        return None

    async def _log_head(self) -> dict[str, Any] | None:
        return await self._commits.find_one(
            {}, sort=[("position", -1)], projection={"last_position": 1}
        )

    async def head_position(self) -> int:
        """The global position of the last stored event (0 for an empty store)."""
        head = await self._log_head()
        return int(head["last_position"]) if head else 0

    async def stream_version(self, stream_id: str) -> int:
        """The current version of a stream (0 if it does not exist)."""
        validate_stream_id(stream_id)
        head = await self._stream_head(stream_id)
        return int(head["to_version"]) if head else 0

    async def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int = 1,
        limit: int | None = None,
        strict: bool = True,
    ) -> AsyncIterator[RecordedEvent]:
        """Yield a stream's events in version order, starting at ``from_version``.

        Args:
            stream_id: The stream to read.
            from_version: First version to return (1 is the first event).
            limit: Stop after this many events.
            strict: Decode every event as it is read, so an unknown type or an
                invalid payload raises here; with ``False`` decoding is deferred
                to ``RecordedEvent.event``.
        """
        validate_stream_id(stream_id)
        query: dict[str, Any] = {"stream_id": stream_id}
        if from_version > 1:
            # The commit holding from_version may start before it.
            async for holder in self._commits.aggregate_iter(
                [
                    {"$match": {"stream_id": stream_id, "from_version": {"$lte": from_version}}},
                    {"$sort": {"from_version": -1}},
                    {"$limit": 1},
                    {"$project": {"from_version": 1}},
                ]
            ):
                query["from_version"] = {"$gte": holder["from_version"]}
        produced = 0
        pipeline = [{"$match": query}, {"$sort": {"from_version": 1}}]
        async for commit in self._commits.aggregate_iter(pipeline, batch_size=500):
            for recorded in self._unpack(commit, strict):
                if recorded.stream_version < from_version:
                    continue
                yield recorded
                produced += 1
                if limit is not None and produced >= limit:
                    return

    async def read_stream_backwards(
        self,
        stream_id: str,
        *,
        from_version: int | None = None,
        limit: int | None = None,
        strict: bool = True,
    ) -> AsyncIterator[RecordedEvent]:
        """Yield a stream's events newest first, starting at ``from_version`` (default: last)."""
        validate_stream_id(stream_id)
        query: dict[str, Any] = {"stream_id": stream_id}
        if from_version is not None:
            query["from_version"] = {"$lte": from_version}
        produced = 0
        pipeline = [{"$match": query}, {"$sort": {"from_version": -1}}]
        async for commit in self._commits.aggregate_iter(pipeline, batch_size=500):
            for recorded in reversed(self._unpack(commit, strict)):
                if from_version is not None and recorded.stream_version > from_version:
                    continue
                yield recorded
                produced += 1
                if limit is not None and produced >= limit:
                    return

    async def read_all(
        self,
        *,
        after: int = 0,
        limit: int | None = None,
        event_types: Iterable[str] | None = None,
        strict: bool = True,
        batch_size: int = 500,
    ) -> AsyncIterator[RecordedEvent]:
        """Yield every event with a global position above ``after``, in position order.

        Positions are contiguous and become visible in order (see the module
        docstring), so a reader that stores the last position it handled and
        passes it back as ``after`` sees each committed event exactly once.

        Args:
            after: The last position already handled (0 reads from the start).
            limit: Stop after this many events.
            event_types: Only yield events of these types (positions of other
                events are skipped over, not yielded).
            strict: As for `read_stream`.
            batch_size: Commits fetched per round trip.
        """
        types = frozenset(event_types) if event_types is not None else None
        query: dict[str, Any] = {"position": {"$gt": after}}
        if after > 0:
            # A reader may have stopped in the middle of a multi-event commit.
            holder = await self._commits.find_one(
                {"position": {"$lte": after}},
                sort=[("position", -1)],
                projection={"position": 1, "last_position": 1},
            )
            if holder is not None and holder["last_position"] > after:
                query = {"position": {"$gte": holder["position"]}}
        if types is not None:
            query["types"] = {"$in": sorted(types)}
        elif limit is not None:
            # Positions are contiguous, so the next `limit` events lie at or below
            # after + limit. The bound keeps the server from lining up the whole
            # rest of the log for a reader that wants one batch.
            query["position"]["$lte"] = after + limit
        produced = 0
        async for commit in self._commits.find(
            query, sort=[("position", 1)], batch_size=batch_size
        ):
            for recorded in self._unpack(commit, strict, types):
                if recorded.position <= after:
                    continue
                yield recorded
                produced += 1
                if limit is not None and produced >= limit:
                    return

    def _unpack(
        self,
        commit: Mapping[str, Any],
        strict: bool,
        types: frozenset[str] | None = None,
    ) -> list[RecordedEvent]:
        stream_id = commit["stream_id"]
        recorded_at = commit["recorded_at"]
        if recorded_at.tzinfo is None:
            recorded_at = recorded_at.replace(tzinfo=UTC)
        out: list[RecordedEvent] = []
        for body in commit["events"]:
            if types is not None and body["type"] not in types:
                continue
            recorded = RecordedEvent(
                event_id=uuid.UUID(body["id"]),
                stream_id=stream_id,
                stream_version=body["version"],
                position=body["position"],
                event_type=body["type"],
                schema_version=body["v"],
                recorded_at=recorded_at,
                metadata=EventMetadata.model_construct(**body.get("meta", {})),
                data=body["data"],
                registry=self.registry,
            )
            if strict:
                _ = recorded.event
            out.append(recorded)
        return out
