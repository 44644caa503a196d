"""Where a projection's read model lives: keys, physical collections, the alias, and the reader."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cqrs_kit._mongo import DuplicateKey, MongoCollection, MongoDatabase, adapt
from cqrs_kit.checkpoints import CheckpointStore
from cqrs_kit.errors import UsageError

#: Prefix of the checkpoint, status and lease key of a projection.
KEY_PREFIX = "projection:"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")


def projection_key(name: str) -> str:
    """The checkpoint/status/lease key of projection ``name``."""
    return f"{KEY_PREFIX}{name}"


def physical_name(name: str, version: int) -> str:
    """The physical collection holding version ``version`` of ``name``'s read model."""
    return f"{name}__v{version}"


def _validate_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or "__v" in name:
        raise UsageError(
            f"invalid projection name {name!r}: use letters, digits, '_', '.' or '-', "
            "start with a letter, at most 100 characters, and no '__v'",
            code="bad-projection-name",
        )
    return name


# -- where a read model lives -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadModelLocation:
    """The physical collection behind a read model, and the position it reflects.

    Attributes:
        name: The projection (logical read-model) name.
        version: The physical version number.
        collection: The physical collection name, ``<name>__v<version>``.
        position: The checkpoint stored with it.
    """

    name: str
    version: int
    collection: str
    position: int


async def locate(
    checkpoints: CheckpointStore, key: str, name: str, *, create: bool = True
) -> ReadModelLocation:
    """Where the read model of checkpoint ``key`` lives (recorded on first use if ``create``)."""
    doc = await checkpoints.collection.find_one(
        {"_id": key}, projection={"read_model": 1, "position": 1}
    )
    if (doc is None or "read_model" not in doc) and not create:
        position = int(doc.get("position", 0)) if doc else 0
        return ReadModelLocation(name, 1, physical_name(name, 1), position)
    if doc is None or "read_model" not in doc:
        first = {"version": 1, "collection": physical_name(name, 1)}
        with contextlib.suppress(DuplicateKey):  # a concurrent first run created it
            await checkpoints.collection.update_one(
                {"_id": key, "read_model": {"$exists": False}},
                {
                    "$set": {"read_model": first},
                    "$max": {"last_version": 1},
                    "$setOnInsert": {"position": 0},
                },
                upsert=True,
            )
        doc = await checkpoints.collection.find_one(
            {"_id": key}, projection={"read_model": 1, "position": 1}
        )
        assert doc is not None
    model = doc["read_model"]
    return ReadModelLocation(
        name, int(model["version"]), str(model["collection"]), int(doc.get("position", 0))
    )


class ReadModel:
    """A reader's handle on a projection's read model, wherever a rebuild moved it.

    The physical collection is looked up in the projection's checkpoint
    document and cached for ``max_age`` seconds; after a rebuild swaps
    collections, readers follow within that time (the rebuild waits a little
    longer than that before dropping the old collection).

    Args:
        database: A driver database object (or an adapted one).
        name: The projection name.
        max_age: Seconds a resolved collection name is trusted before re-reading.
        checkpoints: The checkpoints collection name.
    """

    def __init__(
        self,
        database: Any,
        name: str,
        *,
        max_age: float = 1.0,
        checkpoints: str = "checkpoints",
    ) -> None:
        self.database: MongoDatabase = adapt(database)
        self.name = name
        self.max_age = max_age
        self._checkpoints = self.database.collection(checkpoints)
        self._resolved: str | None = None
        self._resolved_at = 0.0

    async def collection_name(self) -> str:
        """The physical collection name (cached for ``max_age`` seconds)."""
        now = time.monotonic()
        if self._resolved is None or now - self._resolved_at > self.max_age:
            doc = await self._checkpoints.find_one(
                {"_id": projection_key(self.name)}, projection={"read_model": 1}
            )
            model = (doc or {}).get("read_model") or {}
            self._resolved = str(model.get("collection") or physical_name(self.name, 1))
            self._resolved_at = now
        return self._resolved

    async def _coll(self) -> MongoCollection:
        return self.database.collection(await self.collection_name())

    async def collection(self) -> Any:
        """The driver's collection object holding the read model now."""
        return (await self._coll()).raw

    async def get(self, id: Any) -> dict[str, Any] | None:
        """The document with ``_id`` ``id``, or ``None``."""
        return await (await self._coll()).find_one({"_id": id})

    async def find(
        self,
        filter: Mapping[str, Any] | None = None,
        *,
        sort: Sequence[tuple[str, int]] | None = None,
        limit: int = 0,
    ) -> list[dict[str, Any]]:
        """Matching documents (all by default)."""
        return await (await self._coll()).find_list(filter or {}, sort=sort, limit=limit)

    async def count(self, filter: Mapping[str, Any] | None = None) -> int:
        """How many documents match."""
        return await (await self._coll()).count(filter or {})
