"""One small surface over PyMongo's async API, Motor and mongomock-motor.

The three drivers agree on most calls but differ in which ones must be
awaited (PyMongo's ``aggregate``/``watch``/``start_transaction`` are
coroutines, Motor's return objects directly) and in what the server behind
them can do. Everything above this module talks to `MongoDatabase`
and `MongoCollection` only, and asks `Capabilities` instead of
sniffing drivers.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import bson
import bson.errors
from bson.raw_bson import RawBSONDocument
from pymongo import ReturnDocument
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from cqrs_kit._mongo.translate import DocumentTooLargeError, translate_errors
from cqrs_kit.errors import UsageError

Flavour = Literal["pymongo", "motor", "mongomock"]
Document = dict[str, Any]
SortSpec = Sequence[tuple[str, int]]


async def _resolve(value: Any) -> Any:
    """Await ``value`` if the driver handed back an awaitable, else return it."""
    if inspect.isawaitable(value):
        return await value
    return value


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the server behind a database can do.

    Attributes:
        change_streams: ``watch()`` is available.
        transactions: Multi-document transactions are available.
        merge_stage: The ``$merge`` aggregation stage is available.
    """

    change_streams: bool
    transactions: bool
    merge_stage: bool


class EncodingError(Exception):
    """Internal marker: a value has no BSON representation."""


@dataclass(frozen=True, slots=True)
class WriteOp:
    """One write of a batch, in driver-neutral form (see `MongoCollection.write_many`).

    Attributes:
        kind: ``update`` (``document`` holds update operators), ``replace``
            (``document`` is the new document) or ``delete``.
        filter: Which document the write applies to.
        document: Update operators or the replacement; ``None`` for deletes.
        upsert: Insert when nothing matches (updates and replaces only).
    """

    kind: Literal["update", "replace", "delete"]
    filter: Mapping[str, Any]
    document: Mapping[str, Any] | None = None
    upsert: bool = False


@dataclass(frozen=True, slots=True)
class WriteSummary:
    """What a `MongoCollection.write_many` batch did.

    Attributes:
        matched: Documents matched by updates and replaces.
        upserted: Documents inserted by upserts.
        deleted: Documents deleted.
        duplicates: Indexes (into the batch) of writes a unique index refused,
            such as an upsert whose filter did not match an existing ``_id``.
    """

    matched: int
    upserted: int
    deleted: int
    duplicates: tuple[int, ...] = ()


def _detect_flavour(db: Any) -> Flavour:
    module = type(db).__module__
    if module.startswith("pymongo.asynchronous"):
        return "pymongo"
    if module.startswith("motor"):
        delegate = getattr(db, "delegate", None)
        if delegate is not None and type(delegate).__module__.startswith("mongomock"):
            return "mongomock"
        return "motor"
    if module.startswith("mongomock"):
        return "mongomock"
    raise UsageError(
        f"unsupported database object {type(db).__qualname__} from {module}; pass a "
        "pymongo AsyncMongoClient database, a Motor database or a mongomock-motor database",
        code="unsupported-database",
    )


class MongoCollection:
    """A collection with the driver differences smoothed over and errors translated."""

    __slots__ = ("_coll", "flavour", "name")

    def __init__(self, coll: Any, flavour: Flavour) -> None:
        self._coll = coll
        self.flavour = flavour
        self.name: str = coll.name

    @property
    def raw(self) -> Any:
        """The driver's collection object (for benchmarks and escape hatches)."""
        return self._coll

    async def find_one(
        self,
        filter: Mapping[str, Any],
        *,
        sort: SortSpec | None = None,
        projection: Mapping[str, Any] | None = None,
        session: Any = None,
    ) -> Document | None:
        """Return the first matching document, or ``None``."""
        with translate_errors(f"find_one on {self.name}"):
            kwargs: dict[str, Any] = {}
            if sort:
                kwargs["sort"] = list(sort)
            if projection is not None:
                kwargs["projection"] = dict(projection)
            if session is not None:
                kwargs["session"] = session
            result: Document | None = await self._coll.find_one(dict(filter), **kwargs)
            return result

    async def find(
        self,
        filter: Mapping[str, Any],
        *,
        sort: SortSpec | None = None,
        limit: int = 0,
        skip: int = 0,
        projection: Mapping[str, Any] | None = None,
        batch_size: int = 0,
    ) -> AsyncIterator[Document]:
        """Iterate matching documents in ``sort`` order."""
        with translate_errors(f"find on {self.name}"):
            cursor = self._coll.find(dict(filter), projection=projection)
            if sort:
                cursor = cursor.sort(list(sort))
            if skip:
                cursor = cursor.skip(skip)
            if limit:
                cursor = cursor.limit(limit)
            if batch_size:
                cursor = cursor.batch_size(batch_size)
            async for doc in cursor:
                yield doc

    async def find_list(
        self,
        filter: Mapping[str, Any],
        *,
        sort: SortSpec | None = None,
        limit: int = 0,
        skip: int = 0,
        projection: Mapping[str, Any] | None = None,
    ) -> list[Document]:
        """Return matching documents as a list (one round trip for small results)."""
        return [
            doc
            async for doc in self.find(
                filter, sort=sort, limit=limit, skip=skip, projection=projection
            )
        ]

    async def count(self, filter: Mapping[str, Any]) -> int:
        """Count matching documents."""
        with translate_errors(f"count on {self.name}"):
            n: int = await self._coll.count_documents(dict(filter))
            return n

    async def insert_one(self, doc: Mapping[str, Any], *, session: Any = None) -> None:
        """Insert one document."""
        with translate_errors(f"insert into {self.name}"):
            await self._coll.insert_one(doc, session=session)

    async def insert_encoded(self, doc: Mapping[str, Any], *, max_size: int) -> int:
        """Encode ``doc`` to BSON once, refuse it above ``max_size`` bytes, insert it.

        Returns the encoded size. The driver is handed the already encoded bytes
        (``RawBSONDocument``), so the size check costs no second encoding.

        Raises:
            DocumentTooLargeError: The document is above ``max_size``.
            EncodingError: A value has no BSON representation.
        """
        try:
            raw = bson.encode(doc)
        except (bson.errors.InvalidDocument, OverflowError, TypeError) as exc:
            raise EncodingError(str(exc)) from exc
        if len(raw) > max_size:
            raise DocumentTooLargeError(f"{len(raw)} bytes")
        payload: Mapping[str, Any] = RawBSONDocument(raw) if self.flavour != "mongomock" else doc
        await self.insert_one(payload)
        return len(raw)

    async def insert_many(
        self, docs: Sequence[Mapping[str, Any]], *, ordered: bool = True, session: Any = None
    ) -> None:
        """Insert documents in one batch."""
        if not docs:
            return
        with translate_errors(f"insert_many into {self.name}"):
            await self._coll.insert_many(list(docs), ordered=ordered, session=session)

    async def update_one(
        self,
        filter: Mapping[str, Any],
        update: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        upsert: bool = False,
        session: Any = None,
    ) -> tuple[int, int, Any]:
        """Update one document; returns (matched, modified, upserted id)."""
        with translate_errors(f"update on {self.name}"):
            res = await self._coll.update_one(
                dict(filter),
                update if isinstance(update, Mapping) else list(update),
                upsert=upsert,
                session=session,
            )
            return res.matched_count, res.modified_count, res.upserted_id

    async def update_many(
        self, filter: Mapping[str, Any], update: Mapping[str, Any], *, session: Any = None
    ) -> int:
        """Update all matching documents; returns the modified count."""
        with translate_errors(f"update_many on {self.name}"):
            res = await self._coll.update_many(dict(filter), dict(update), session=session)
            modified: int = res.modified_count
            return modified

    async def replace_one(
        self,
        filter: Mapping[str, Any],
        doc: Mapping[str, Any],
        *,
        upsert: bool = False,
        session: Any = None,
    ) -> int:
        """Replace one document; returns the matched count."""
        with translate_errors(f"replace on {self.name}"):
            res = await self._coll.replace_one(
                dict(filter), dict(doc), upsert=upsert, session=session
            )
            matched: int = res.matched_count
            return matched

    async def find_one_and_update(
        self,
        filter: Mapping[str, Any],
        update: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        upsert: bool = False,
        return_after: bool = True,
        sort: SortSpec | None = None,
        session: Any = None,
    ) -> Document | None:
        """Atomically update one document and return it (after the update by default)."""
        with translate_errors(f"find_one_and_update on {self.name}"):
            kwargs: dict[str, Any] = {}
            if sort:
                kwargs["sort"] = list(sort)
            result: Document | None = await self._coll.find_one_and_update(
                dict(filter),
                update if isinstance(update, Mapping) else list(update),
                upsert=upsert,
                return_document=ReturnDocument.AFTER if return_after else ReturnDocument.BEFORE,
                session=session,
                **kwargs,
            )
            return result

    async def delete_one(self, filter: Mapping[str, Any], *, session: Any = None) -> int:
        """Delete one document; returns the deleted count."""
        with translate_errors(f"delete on {self.name}"):
            res = await self._coll.delete_one(dict(filter), session=session)
            deleted: int = res.deleted_count
            return deleted

    async def delete_many(self, filter: Mapping[str, Any], *, session: Any = None) -> int:
        """Delete matching documents; returns the deleted count."""
        with translate_errors(f"delete_many on {self.name}"):
            res = await self._coll.delete_many(dict(filter), session=session)
            deleted: int = res.deleted_count
            return deleted

    async def bulk_write(
        self, requests: Sequence[Any], *, ordered: bool = True, session: Any = None
    ) -> None:
        """Send pymongo write models (``UpdateOne``, ``ReplaceOne``...) in one batch."""
        if not requests:
            return
        with translate_errors(f"bulk_write on {self.name}"):
            await self._coll.bulk_write(list(requests), ordered=ordered, session=session)

    async def write_many(
        self, ops: Sequence[WriteOp], *, ordered: bool = False, session: Any = None
    ) -> WriteSummary:
        """Apply neutral write models in one batch; duplicate keys are reported, not raised.

        A write refused by a unique index is listed in ``duplicates`` (callers
        use guarded upserts, where such a refusal means "already newer"); any
        other write error is raised. mongomock's bulk API does not accept the
        write models of current PyMongo, so there the writes go one by one,
        with the same result.
        """
        if not ops:
            return WriteSummary(0, 0, 0)
        with translate_errors(f"write_many on {self.name}"):
            if self.flavour == "mongomock":
                return await self._write_one_by_one(ops, ordered=ordered)
            from pymongo import DeleteOne, ReplaceOne, UpdateOne
            from pymongo.errors import BulkWriteError

            models: list[Any] = []
            for op in ops:
                if op.kind == "delete":
                    models.append(DeleteOne(dict(op.filter)))
                elif op.kind == "replace":
                    models.append(ReplaceOne(dict(op.filter), dict(op.document or {}), op.upsert))
                else:
                    models.append(UpdateOne(dict(op.filter), dict(op.document or {}), op.upsert))
            try:
                res = await self._coll.bulk_write(models, ordered=ordered, session=session)
            except BulkWriteError as exc:
                details = exc.details
                errors = details.get("writeErrors", [])
                if not errors or any(err.get("code") != 11000 for err in errors):
                    raise
                return WriteSummary(
                    matched=int(details.get("nMatched", 0)),
                    upserted=int(details.get("nUpserted", 0)),
                    deleted=int(details.get("nRemoved", 0)),
                    duplicates=tuple(int(err["index"]) for err in errors),
                )
            return WriteSummary(res.matched_count, res.upserted_count, res.deleted_count)

    async def _write_one_by_one(self, ops: Sequence[WriteOp], *, ordered: bool) -> WriteSummary:
        from pymongo.errors import DuplicateKeyError

        matched = upserted = deleted = 0
        duplicates: list[int] = []
        for index, op in enumerate(ops):
            try:
                if op.kind == "delete":
                    deleted += (await self._coll.delete_one(dict(op.filter))).deleted_count
                    continue
                if op.kind == "replace":
                    res = await self._coll.replace_one(
                        dict(op.filter), dict(op.document or {}), upsert=op.upsert
                    )
                else:
                    res = await self._coll.update_one(
                        dict(op.filter), dict(op.document or {}), upsert=op.upsert
                    )
            except DuplicateKeyError:
                duplicates.append(index)
                if ordered:
                    break
                continue
            matched += res.matched_count
            upserted += res.upserted_id is not None
        return WriteSummary(matched, upserted, deleted, tuple(duplicates))

    async def aggregate(
        self, pipeline: Sequence[Mapping[str, Any]], *, session: Any = None
    ) -> list[Document]:
        """Run a pipeline and return its results."""
        with translate_errors(f"aggregate on {self.name}"):
            kwargs: dict[str, Any] = {}
            if session is not None:
                kwargs["session"] = session
            cursor = await _resolve(self._coll.aggregate([dict(s) for s in pipeline], **kwargs))
            return [doc async for doc in cursor]

    async def aggregate_iter(
        self, pipeline: Sequence[Mapping[str, Any]], *, batch_size: int = 0
    ) -> AsyncIterator[Document]:
        """Run a pipeline and iterate its results as they arrive."""
        with translate_errors(f"aggregate on {self.name}"):
            kwargs: dict[str, Any] = {"batchSize": batch_size} if batch_size else {}
            cursor = await _resolve(self._coll.aggregate([dict(s) for s in pipeline], **kwargs))
            async for doc in cursor:
                yield doc

    async def create_index(
        self, keys: Sequence[tuple[str, int]], *, name: str, unique: bool = False
    ) -> None:
        """Create an index if it does not exist."""
        with translate_errors(f"create_index on {self.name}"):
            await self._coll.create_index(list(keys), name=name, unique=unique)

    async def drop(self) -> None:
        """Drop the collection."""
        with translate_errors(f"drop {self.name}"):
            await self._coll.drop()

    async def rename(self, new_name: str, *, drop_target: bool = False) -> None:
        """Rename the collection (atomic on MongoDB; ``drop_target`` replaces an existing one)."""
        with translate_errors(f"rename {self.name} to {new_name}"):
            await self._coll.rename(new_name, dropTarget=drop_target)

    @asynccontextmanager
    async def watch(
        self,
        pipeline: Sequence[Mapping[str, Any]],
        *,
        resume_after: Mapping[str, Any] | None = None,
        max_await_ms: int = 1000,
    ) -> AsyncIterator[ChangeStream]:
        """Open a change stream on this collection."""
        with translate_errors(f"watch {self.name}"):
            stream = await _resolve(
                self._coll.watch(
                    [dict(s) for s in pipeline],
                    resume_after=dict(resume_after) if resume_after else None,
                    max_await_time_ms=max_await_ms,
                )
            )
            try:
                yield ChangeStream(stream)
            finally:
                await stream.close()


#: Shortest time between two empty polls of a change stream. MongoDB holds an empty
#: getMore open for up to maxAwaitTimeMS, so this only paces servers that answer at once.
MIN_EMPTY_POLL = 0.02


class ChangeStream:
    """A driver change stream whose empty polls never turn into a busy loop."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    @property
    def resume_token(self) -> Mapping[str, Any] | None:
        """The token to resume after the last change returned."""
        token: Mapping[str, Any] | None = self._stream.resume_token
        return token

    async def try_next(self) -> Document | None:
        """The next change, or ``None`` after one (awaited) empty poll."""
        asked = time.monotonic()
        change: Document | None = await self._stream.try_next()
        if change is None and time.monotonic() - asked < MIN_EMPTY_POLL:
            await asyncio.sleep(MIN_EMPTY_POLL)
        return change


class MongoDatabase:
    """A database handle: collections, sessions and capabilities for one backend."""

    def __init__(self, db: Any, *, capabilities: Capabilities | None = None) -> None:
        self.flavour: Flavour = _detect_flavour(db)
        self._db = db
        self.name: str = db.name
        self._capabilities = capabilities
        if capabilities is None and self.flavour == "mongomock":
            self._capabilities = Capabilities(
                change_streams=False, transactions=False, merge_stage=False
            )

    async def capabilities(self) -> Capabilities:
        """Ask the server what it supports (once; the answer is cached).

        Follows MongoDB's documented rules: transactions need a replica set or a
        sharded cluster, ``$merge`` needs wire version 8 (4.2), and change streams
        are probed by opening one, since a standalone server refuses them.
        """
        if self._capabilities is None:
            with translate_errors("hello"):
                hello = await self._db.command("hello")
            clustered = "setName" in hello or hello.get("msg") == "isdbgrid"
            merge = int(hello.get("maxWireVersion", 0)) >= 8
            self._capabilities = Capabilities(
                change_streams=await self._probe_change_streams(),
                transactions=clustered,
                merge_stage=merge,
            )
        return self._capabilities

    async def _probe_change_streams(self) -> bool:
        from pymongo.errors import PyMongoError

        try:
            stream = await _resolve(self._db.watch([], max_await_time_ms=1))
            await stream.close()
        except PyMongoError:
            return False
        return True

    @property
    def raw(self) -> Any:
        """The driver's database object."""
        return self._db

    def collection(self, name: str, *, durable: bool = True) -> MongoCollection:
        """Return a collection.

        Args:
            name: Collection name.
            durable: Use majority read and write concern (set explicitly so that no
                acknowledged write can roll back and no read sees one that might).
        """
        coll = self._db[name]
        if durable and self.flavour != "mongomock":
            coll = coll.with_options(
                write_concern=WriteConcern("majority"), read_concern=ReadConcern("majority")
            )
        return MongoCollection(coll, self.flavour)

    async def collection_names(self) -> list[str]:
        """List the collections in the database."""
        with translate_errors("list collections"):
            names: list[str] = await self._db.list_collection_names()
            return names

    async def ping(self) -> None:
        """Round-trip to the server (raises ``TransientStoreError`` when unreachable)."""
        with translate_errors("ping"):
            await self._db.command("ping")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        """Run the body in a multi-document transaction; yields the session.

        Raises:
            UsageError: The backend has no transactions.
        """
        if not (await self.capabilities()).transactions:
            raise UsageError(
                f"the {self.flavour} backend has no transactions", code="no-transactions"
            )
        client = self._db.client
        with translate_errors("transaction"):
            session = await _resolve(client.start_session())
            try:
                async with await _resolve(
                    session.start_transaction(
                        read_concern=ReadConcern("snapshot"),
                        write_concern=WriteConcern("majority"),
                    )
                ):
                    yield session
            finally:
                await session.end_session()


def adapt(db: Any) -> MongoDatabase:
    """Wrap a driver database object (or return an already wrapped one)."""
    if isinstance(db, MongoDatabase):
        return db
    return MongoDatabase(db)


def open_client(uri: str, *, timeout_ms: int = 10_000) -> Any:
    """A PyMongo async client for ``uri``, for command-line tools (see `close_client`)."""
    from pymongo import AsyncMongoClient

    return AsyncMongoClient(uri, serverSelectionTimeoutMS=timeout_ms)


async def close_client(client: Any) -> None:
    """Close a client from any of the drivers (PyMongo's ``close`` is a coroutine)."""
    await _resolve(client.close())
