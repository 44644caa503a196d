"""Checkpoints: how far a named consumer of the event log has got, and how it is doing.

One document per consumer (projection or subscriber) in the ``checkpoints``
collection holds its position, the change-stream resume token it last saw,
and its status (state, last error, lease owner). Because the status lives in
the database, ``cqrs-kit projections status`` in another process sees what a
runner is doing without talking to it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cqrs_kit._mongo import DuplicateKey, MongoDatabase, adapt


class ConsumerState(StrEnum):
    """Lifecycle state of a projection or subscriber."""

    STOPPED = "stopped"
    CATCHING_UP = "catching_up"
    RUNNING = "running"
    FAULTED = "faulted"
    REBUILDING = "rebuilding"


@dataclass(frozen=True, slots=True)
class ConsumerError:
    """The error that stopped a consumer at an event.

    Attributes:
        message: ``ExceptionType: message``.
        position: Global position of the event being handled.
        event_id: Id of that event.
        attempts: How many times handling it has failed so far.
        at: When it last failed (Unix seconds).
    """

    message: str
    position: int
    event_id: str | None
    attempts: int
    at: float


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A consumer's stored position and status."""

    name: str
    position: int
    state: ConsumerState
    updated_at: float
    resume_token: Mapping[str, Any] | None = None
    token_scope: str | None = None
    error: ConsumerError | None = None
    owner: str | None = None

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Checkpoint:
        """Build from a stored document."""
        err = doc.get("error")
        return cls(
            name=doc["_id"],
            position=int(doc.get("position", 0)),
            state=ConsumerState(doc.get("state", ConsumerState.STOPPED)),
            updated_at=float(doc.get("updated_at", 0.0)),
            resume_token=doc.get("resume_token"),
            token_scope=doc.get("token_scope"),
            error=ConsumerError(**err) if err else None,
            owner=doc.get("owner"),
        )


class CheckpointStore:
    """Reads and writes checkpoints in one collection.

    Args:
        database: A driver database object or an adapted one.
        collection: Collection name.
    """

    def __init__(self, database: Any, *, collection: str = "checkpoints") -> None:
        self.database: MongoDatabase = adapt(database)
        self._coll = self.database.collection(collection)

    @property
    def collection(self) -> Any:
        """The adapted collection (for consumers that write checkpoints in their own batch)."""
        return self._coll

    async def load(self, name: str) -> Checkpoint | None:
        """Return the checkpoint for ``name``, or ``None`` if it never ran."""
        doc = await self._coll.find_one({"_id": name})
        return Checkpoint.from_document(doc) if doc else None

    async def position(self, name: str) -> int:
        """The stored position for ``name`` (0 if none)."""
        doc = await self._coll.find_one({"_id": name}, projection={"position": 1})
        return int(doc["position"]) if doc else 0

    async def list(self, prefix: str = "") -> list[Checkpoint]:
        """All checkpoints whose name starts with ``prefix``, sorted by name."""
        docs = await self._coll.find_list({}, sort=[("_id", 1)])
        return [Checkpoint.from_document(d) for d in docs if str(d["_id"]).startswith(prefix)]

    async def advance(self, name: str, position: int, *, session: Any = None) -> bool:
        """Move ``name`` forward to ``position``; never backwards.

        Returns ``False`` (and changes nothing) when the stored position is
        already at or past ``position``, which makes replays harmless.
        """
        try:
            matched, _, upserted = await self._coll.update_one(
                {"_id": name, "position": {"$lt": position}},
                {"$set": {"position": position, "updated_at": time.time()}},
                upsert=True,
                session=session,
            )
        except DuplicateKey:
            # The upsert found the document but the guard excluded it: already ahead.
            return False
        return bool(matched or upserted is not None)

    async def set_status(
        self,
        name: str,
        *,
        state: ConsumerState,
        error: ConsumerError | None = None,
        owner: str | None = None,
        clear_error: bool = False,
    ) -> None:
        """Record the consumer's state (and error, if any) for status readers."""
        update: dict[str, Any] = {"state": state.value, "updated_at": time.time()}
        if owner is not None:
            update["owner"] = owner
        if error is not None:
            update["error"] = {
                "message": error.message,
                "position": error.position,
                "event_id": error.event_id,
                "attempts": error.attempts,
                "at": error.at,
            }
        doc: dict[str, Any] = {"$set": update, "$setOnInsert": {"position": 0}}
        if clear_error and error is None:
            doc["$unset"] = {"error": ""}
        await self._coll.update_one({"_id": name}, doc, upsert=True)

    async def save_resume_token(
        self, name: str, token: Mapping[str, Any] | None, *, scope: str
    ) -> None:
        """Remember the change-stream resume token, tagged with the stream it came from.

        ``scope`` identifies the collection and pipeline: a token is only
        reused by a stream with the same scope, since MongoDB resume tokens are
        not portable across pipelines.
        """
        await self._coll.update_one(
            {"_id": name},
            {
                "$set": {"resume_token": dict(token) if token else None, "token_scope": scope},
                "$setOnInsert": {"position": 0},
            },
            upsert=True,
        )

    async def reset(self, name: str, position: int = 0) -> None:
        """Set ``name`` back to ``position`` and forget its token and error."""
        await self._coll.update_one(
            {"_id": name},
            {
                "$set": {
                    "position": position,
                    "updated_at": time.time(),
                    "state": ConsumerState.STOPPED.value,
                    "resume_token": None,
                },
                "$unset": {"error": ""},
            },
            upsert=True,
        )

    async def delete(self, name: str) -> None:
        """Remove the checkpoint entirely."""
        await self._coll.delete_one({"_id": name})
