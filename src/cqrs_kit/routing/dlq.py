"""Dead letters: events a subscriber gave up on, kept for a person to look at.

When a subscriber has failed on an event ``max_attempts`` times, the event
goes to the ``dead_letters`` collection, one document per (subscriber,
event):

    {_id: "<subscriber>:<event id>", subscriber, event_id, event_type,
     stream_id, position, event: {<RecordedEvent.to_document()>},
     error_type, error, traceback, attempts, retries,
     first_failed_at, last_failed_at, dead_lettered_at}

Times are Unix seconds. ``event`` is the whole document the subscriber's
patterns matched, so the entry can be redelivered without the log.

The subscriber's idempotency record for the event is marked ``dead`` at the
same time, so a replay of the log does not deliver it again behind the
operator's back. `DeadLetterQueue.retry` redelivers it to the same
subscriber once (and deletes the entry on success); `discard`
deletes it and logs that it did.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cqrs_kit._mongo import MongoDatabase, adapt
from cqrs_kit.errors import DeadLetterNotFoundError, RoutingError
from cqrs_kit.events import EventMetadata, EventRegistry, RecordedEvent

if TYPE_CHECKING:
    from cqrs_kit.routing.subscribers import SubscriberRuntime

log = logging.getLogger("cqrs_kit.routing.dlq")

#: Longest traceback kept in an entry, in characters (the tail is kept).
MAX_TRACEBACK = 8000


def recorded_from_document(doc: Mapping[str, Any], registry: EventRegistry) -> RecordedEvent:
    """Rebuild a `RecordedEvent` from its `to_document` form."""
    return RecordedEvent(
        event_id=uuid.UUID(str(doc["id"])),
        stream_id=doc["stream_id"],
        stream_version=int(doc["version"]),
        position=int(doc["position"]),
        event_type=doc["type"],
        schema_version=int(doc["schema_version"]),
        recorded_at=datetime.fromisoformat(doc["time"]),
        metadata=EventMetadata.model_construct(**(doc.get("metadata") or {})),
        data=dict(doc.get("data") or {}),
        registry=registry,
    )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One event a subscriber gave up on.

    Attributes:
        id: ``<subscriber>:<event id>``.
        subscriber: The subscriber (or process manager) id.
        event_id: The event's id.
        event_type: The event's type.
        stream_id: The event's stream.
        position: The event's global position.
        event: The event document, as patterns see it.
        error_type: Class name of the last error.
        error: Message of the last error.
        traceback: Formatted traceback of the last error (tail, bounded).
        attempts: Delivery attempts before it was dead-lettered.
        retries: Operator retries that failed since.
        first_failed_at: First failure (Unix seconds).
        last_failed_at: Last failure (Unix seconds).
        dead_lettered_at: When it was dead-lettered (Unix seconds).
    """

    id: str
    subscriber: str
    event_id: str
    event_type: str
    stream_id: str
    position: int
    event: Mapping[str, Any]
    error_type: str
    error: str
    traceback: str
    attempts: int
    retries: int
    first_failed_at: float
    last_failed_at: float
    dead_lettered_at: float

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> DeadLetter:
        """Build from a stored document."""
        return cls(
            id=str(doc["_id"]),
            subscriber=doc["subscriber"],
            event_id=doc["event_id"],
            event_type=doc["event_type"],
            stream_id=doc["stream_id"],
            position=int(doc["position"]),
            event=doc["event"],
            error_type=doc.get("error_type", ""),
            error=doc.get("error", ""),
            traceback=doc.get("traceback", ""),
            attempts=int(doc.get("attempts", 0)),
            retries=int(doc.get("retries", 0)),
            first_failed_at=float(doc.get("first_failed_at", 0.0)),
            last_failed_at=float(doc.get("last_failed_at", 0.0)),
            dead_lettered_at=float(doc.get("dead_lettered_at", 0.0)),
        )

    def recorded(self, registry: EventRegistry) -> RecordedEvent:
        """The event, rebuilt for redelivery."""
        return recorded_from_document(self.event, registry)


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    """The result of retrying one dead letter.

    Attributes:
        entry_id: The dead letter retried.
        ok: Whether the subscriber handled it (the entry is then deleted).
        error: ``ExceptionType: message`` when it failed again.
    """

    entry_id: str
    ok: bool
    error: str | None = None


def _since(value: float | datetime | None) -> float | None:
    if value is None or isinstance(value, float | int):
        return None if value is None else float(value)
    return value.timestamp()


class DeadLetterQueue:
    """The dead-letter collection shared by every subscriber.

    Args:
        database: A driver database object or an adapted one.
        collection: Collection name.
    """

    def __init__(self, database: Any, *, collection: str = "dead_letters") -> None:
        self.database: MongoDatabase = adapt(database)
        self._coll = self.database.collection(collection)

    async def ensure_indexes(self) -> None:
        """Create the indexes the list filters use (idempotent)."""
        await self._coll.create_index(
            [("subscriber", 1), ("dead_lettered_at", 1)], name="subscriber_time"
        )
        await self._coll.create_index(
            [("event_type", 1), ("dead_lettered_at", 1)], name="type_time"
        )

    async def add(
        self,
        *,
        subscriber: str,
        event: Mapping[str, Any],
        error_type: str,
        error: str,
        traceback: str,
        attempts: int,
        first_failed_at: float,
    ) -> DeadLetter:
        """Store (or replace) the entry for ``subscriber`` and the event document ``event``."""
        now = time.time()
        doc = {
            "_id": f"{subscriber}:{event['id']}",
            "subscriber": subscriber,
            "event_id": str(event["id"]),
            "event_type": event["type"],
            "stream_id": event["stream_id"],
            "position": int(event["position"]),
            "event": dict(event),
            "error_type": error_type,
            "error": error,
            "traceback": traceback[-MAX_TRACEBACK:],
            "attempts": attempts,
            "retries": 0,
            "first_failed_at": first_failed_at,
            "last_failed_at": now,
            "dead_lettered_at": now,
        }
        # Replace, not insert: an event can come back here after a failed operator
        # retry, and the entry should then show the newest error.
        await self._coll.replace_one({"_id": doc["_id"]}, doc, upsert=True)
        return DeadLetter.from_document(doc)

    def _query(
        self,
        subscriber: str | None,
        event_type: str | None,
        since: float | datetime | None,
    ) -> dict[str, Any]:
        query: dict[str, Any] = {}
        if subscriber is not None:
            query["subscriber"] = subscriber
        if event_type is not None:
            query["event_type"] = event_type
        start = _since(since)
        if start is not None:
            query["dead_lettered_at"] = {"$gte": start}
        return query

    async def list(
        self,
        *,
        subscriber: str | None = None,
        event_type: str | None = None,
        since: float | datetime | None = None,
        limit: int = 100,
    ) -> list[DeadLetter]:
        """Entries matching every filter given, oldest first."""
        docs = await self._coll.find_list(
            self._query(subscriber, event_type, since),
            sort=[("dead_lettered_at", 1), ("_id", 1)],
            limit=limit,
        )
        return [DeadLetter.from_document(d) for d in docs]

    async def count(
        self,
        *,
        subscriber: str | None = None,
        event_type: str | None = None,
        since: float | datetime | None = None,
    ) -> int:
        """How many entries match."""
        return await self._coll.count(self._query(subscriber, event_type, since))

    async def get(self, entry_id: str) -> DeadLetter | None:
        """The entry with ``entry_id``, or ``None``."""
        doc = await self._coll.find_one({"_id": entry_id})
        return DeadLetter.from_document(doc) if doc else None

    async def require(self, entry_id: str) -> DeadLetter:
        """The entry with ``entry_id``.

        Raises:
            DeadLetterNotFoundError: There is none.
        """
        entry = await self.get(entry_id)
        if entry is None:
            raise DeadLetterNotFoundError(entry_id)
        return entry

    async def discard(self, entry_id: str, *, reason: str | None = None) -> DeadLetter:
        """Delete an entry for good, logging what was dropped.

        The subscriber's idempotency record stays ``dead``, so the event is not
        delivered again by a replay.

        Raises:
            DeadLetterNotFoundError: There is no such entry.
        """
        entry = await self.require(entry_id)
        await self._coll.delete_one({"_id": entry_id})
        log.warning(
            "discarded dead letter %s (subscriber %s, event %s %s at position %d)%s",
            entry_id,
            entry.subscriber,
            entry.event_type,
            entry.event_id,
            entry.position,
            f": {reason}" if reason else "",
        )
        return entry

    async def retry(
        self,
        entry_id: str,
        runtimes: SubscriberRuntime | Mapping[str, SubscriberRuntime],
    ) -> RetryOutcome:
        """Deliver the entry's event to its subscriber once more.

        On success the entry is deleted; on failure it stays, with the new error
        and ``retries`` incremented.

        Args:
            entry_id: The entry to retry.
            runtimes: The subscriber's runtime, or runtimes by subscriber id.

        Raises:
            DeadLetterNotFoundError: There is no such entry.
            RoutingError: No runtime is given for the entry's subscriber.
        """
        entry = await self.require(entry_id)
        if isinstance(runtimes, Mapping):
            runtime = runtimes.get(entry.subscriber)
        else:
            runtime = runtimes if runtimes.subscriber.id == entry.subscriber else None
        if runtime is None:
            raise RoutingError(
                f"dead letter {entry_id!r} belongs to subscriber {entry.subscriber!r}, which "
                "is not in the routing configuration given"
            )
        failure = await runtime.redeliver(entry)
        if failure is None:
            await self._coll.delete_one({"_id": entry_id})
            log.info("dead letter %s redelivered to %s and removed", entry_id, entry.subscriber)
            return RetryOutcome(entry_id, ok=True)
        error_type, message, tb = failure
        await self._coll.update_one(
            {"_id": entry_id},
            {
                "$set": {
                    "error_type": error_type,
                    "error": message,
                    "traceback": tb[-MAX_TRACEBACK:],
                    "last_failed_at": time.time(),
                },
                "$inc": {"retries": 1},
            },
        )
        log.warning("dead letter %s failed again: %s: %s", entry_id, error_type, message)
        return RetryOutcome(entry_id, ok=False, error=f"{error_type}: {message}")
