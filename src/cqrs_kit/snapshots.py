"""Snapshots: an aggregate's state at a stream version, so loading need not replay everything.

A snapshot is an optimisation and never the source of truth: the events are.
Loading an aggregate with snapshots takes the latest snapshot of its stream
and replays only the events after it
(``read_stream(stream_id, from_version=snapshot.version + 1)``), which must
give exactly the state a full replay gives; the test suite checks that law
over random event sequences.

Storage layout
--------------
Snapshots live in their own collection (``snapshots`` by default), one
document per stream *and state schema version*:

    {_id: "<stream id>@<schema version>", stream_id, schema_version, version,
     aggregate, state, taken_at}

Keying by schema version means a snapshot taken with an older state model is
simply never found by code that expects a newer one, so it cannot be
misread; during a rolling deploy old and new processes each keep using their
own. A write only replaces a snapshot at a *lower* stream version, so two
processes snapshotting one stream concurrently cannot move it backwards.
Snapshots of a schema version no longer in use can be removed with
`SnapshotStore.prune` once no process runs the old code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cqrs_kit._mongo import DuplicateKey, MongoCollection, MongoDatabase, adapt
from cqrs_kit.errors import UsageError
from cqrs_kit.store import validate_stream_id


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state of one aggregate at one stream version.

    Attributes:
        stream_id: The aggregate's stream.
        version: The stream version the state reflects (every event up to it applied).
        schema_version: The aggregate's ``snapshot_version`` when it was taken.
        state: The state in JSON-compatible form.
        aggregate: The aggregate type's name, for people reading the collection.
        taken_at: When it was taken (UTC).
    """

    stream_id: str
    version: int
    schema_version: int
    state: dict[str, Any]
    aggregate: str = ""
    taken_at: datetime = field(default_factory=_now)


def _key(stream_id: str, schema_version: int) -> str:
    # The schema version is always the last "@" part, so no two pairs share a key
    # even when stream ids contain "@".
    return f"{stream_id}@{schema_version}"


class SnapshotStore:
    """Stores and loads aggregate snapshots in one MongoDB collection.

    Args:
        database: An async database object (PyMongo async, Motor or mongomock-motor).
        collection: Name of the snapshot collection.
    """

    def __init__(self, database: Any, *, collection: str = "snapshots") -> None:
        self.database: MongoDatabase = adapt(database)
        self.collection_name = collection
        self._snapshots: MongoCollection = self.database.collection(collection)

    async def ensure_indexes(self) -> None:
        """Create the index `delete` uses (idempotent)."""
        await self._snapshots.create_index([("stream_id", 1)], name="stream_id")

    async def load(self, stream_id: str, *, schema_version: int) -> Snapshot | None:
        """The latest snapshot of ``stream_id`` taken with ``schema_version``, if any.

        Snapshots taken with any other schema version are not returned.
        """
        validate_stream_id(stream_id)
        doc = await self._snapshots.find_one({"_id": _key(stream_id, schema_version)})
        # The key already fixes the schema version; checking the field as well guards
        # against documents written by hand or by another tool.
        if doc is None or doc.get("schema_version") != schema_version:
            return None
        taken_at = doc.get("taken_at")
        if not isinstance(taken_at, datetime):
            taken_at = datetime.fromtimestamp(0, UTC)
        elif taken_at.tzinfo is None:
            taken_at = taken_at.replace(tzinfo=UTC)
        return Snapshot(
            stream_id=doc["stream_id"],
            version=int(doc["version"]),
            schema_version=int(doc["schema_version"]),
            state=dict(doc["state"]),
            aggregate=str(doc.get("aggregate", "")),
            taken_at=taken_at,
        )

    async def save(self, snapshot: Snapshot) -> bool:
        """Store ``snapshot`` unless one at the same or a later version is stored already.

        Returns:
            Whether the snapshot was written.

        Raises:
            UsageError: The snapshot's version or schema version is not positive.
        """
        validate_stream_id(snapshot.stream_id)
        if snapshot.version < 1 or snapshot.schema_version < 1:
            raise UsageError(
                f"snapshot of {snapshot.stream_id!r} has version {snapshot.version} and schema "
                f"version {snapshot.schema_version}; both must be positive",
                code="bad-snapshot",
            )
        doc = {
            "stream_id": snapshot.stream_id,
            "schema_version": snapshot.schema_version,
            "version": snapshot.version,
            "aggregate": snapshot.aggregate,
            "state": snapshot.state,
            "taken_at": snapshot.taken_at,
        }
        key = _key(snapshot.stream_id, snapshot.schema_version)
        try:
            # Matches only an older snapshot. When a newer one exists, the filter
            # matches nothing and the upsert's insert collides on _id: that is the
            # "keep the newer one" outcome, not an error.
            await self._snapshots.update_one(
                {"_id": key, "version": {"$lt": snapshot.version}}, {"$set": doc}, upsert=True
            )
        except DuplicateKey:
            return False
        return True

    async def delete(self, stream_id: str, *, schema_version: int | None = None) -> int:
        """Delete the snapshots of a stream (of one schema version, or all).

        Returns:
            How many were deleted.
        """
        validate_stream_id(stream_id)
        if schema_version is not None:
            return await self._snapshots.delete_one({"_id": _key(stream_id, schema_version)})
        return await self._snapshots.delete_many({"stream_id": stream_id})

    async def prune(self, stream_prefix: str, *, keep_schema_version: int) -> int:
        """Delete the snapshots of one aggregate type except those of ``keep_schema_version``.

        ``stream_prefix`` is the aggregate type's prefix. Run it after a deploy that
        bumped the aggregate's ``snapshot_version``, once no process running the old
        code is left.

        Returns:
            How many were deleted.

        Raises:
            UsageError: ``stream_prefix`` is empty (that would match every stream).
        """
        if not stream_prefix:
            raise UsageError(
                "prune() needs the aggregate's stream_prefix; an empty prefix would "
                "delete the snapshots of every aggregate type",
                code="bad-snapshot",
            )
        return await self._snapshots.delete_many(
            {
                "stream_id": {"$regex": "^" + re.escape(stream_prefix)},
                "schema_version": {"$ne": keep_schema_version},
            }
        )
