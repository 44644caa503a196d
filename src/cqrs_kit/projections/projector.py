"""The projector: applies one projection's batches to its read model, effectively once."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cqrs_kit._mongo import MongoCollection, MongoDatabase, WriteOp
from cqrs_kit.checkpoints import CheckpointStore
from cqrs_kit.errors import ProjectionError, TransientStoreError, UsageError
from cqrs_kit.events import RecordedEvent
from cqrs_kit.logs import event_context
from cqrs_kit.projections.declarations import HandlerProjection, PipelineProjection, Projection
from cqrs_kit.projections.read_models import ReadModelLocation, locate, projection_key
from cqrs_kit.projections.updates import Update, _Change, _freeze
from cqrs_kit.store import EventStore

log = logging.getLogger("cqrs_kit.projections")

#: Marker in the server error a ``$merge`` raises on a straddling batch (see _merge_stage).
_STRADDLE = "cqrs-kit-straddle"
_MAX_CAS_ATTEMPTS = 5

# -- the projector ------------------------------------------------------------------------

_merge_support: weakref.WeakKeyDictionary[MongoDatabase, bool] = weakref.WeakKeyDictionary()


async def _merge_pipelines_honoured(database: MongoDatabase) -> bool:
    """Whether ``$merge`` runs ``whenMatched`` update pipelines as MongoDB documents.

    MongoDB 4.2+ does. nx-27017 accepts the stage but silently keeps the
    stored document, and mongomock has no ``$merge``: a probe in scratch
    collections tells, once per database object.
    """
    if database in _merge_support:
        return _merge_support[database]
    honoured = False
    if (await database.capabilities()).merge_stage:
        suffix = f"{time.time_ns():x}"
        source = database.collection(f"cqrs_kit_merge_probe_src_{suffix}")
        target = database.collection(f"cqrs_kit_merge_probe_dst_{suffix}")
        try:
            await source.insert_one({"_id": 1, "n": 2})
            await target.insert_one({"_id": 1, "n": 1})
            await source.aggregate(
                [
                    {
                        "$merge": {
                            "into": target.name,
                            "on": "_id",
                            "whenMatched": [{"$set": {"n": {"$add": ["$n", "$$new.n"]}}}],
                            "whenNotMatched": "insert",
                        }
                    }
                ]
            )
            doc = await target.find_one({"_id": 1})
            honoured = doc is not None and doc.get("n") == 3
        except TransientStoreError:
            raise
        except Exception as exc:  # the server refused the stage: not honoured
            log.debug("$merge probe failed: %r", exc)
        finally:
            await source.drop()
            await target.drop()
    _merge_support[database] = honoured
    return honoured


class _Conflict(ProjectionError):
    """A compare-and-set write found a document changed since it was read."""


class _HandoverRequested(ProjectionError):
    """A rebuild asked the runners of a projection to stand aside."""


@dataclass(frozen=True, slots=True)
class BatchApplied:
    """Reported to ``on_batch`` after each batch.

    Attributes:
        events: Events of the projection's types in the batch.
        position: The checkpoint after the batch.
    """

    events: int
    position: int


class Projector:
    """Applies one projection to one physical read model, as a subscription consumer.

    Args:
        projection: What to compute.
        store: The event store (its collection is aggregated by pipeline projections).
        checkpoints: Where the position (and the read model's location) is kept.
        key: The checkpoint document (default ``projection:<name>``; a rebuild
            uses its own).
        consumer_name: Status and lease name (default: ``key``).
        use_transactions: Write read model and checkpoint in one transaction;
            ``None`` means wherever the server has transactions.
        write_path: ``"auto"`` uses ``$merge`` for pipeline projections where
            the server honours it, ``"bulk"`` always uses the bulk upsert,
            ``"merge"`` insists on ``$merge``.
        on_batch: Called after every applied batch (progress reporting).
        on_failure: Called with the error whenever a batch fails.
        before_start: Awaited by ``start_position`` before it binds, so a runner
            can refuse to start (by raising).
    """

    def __init__(
        self,
        projection: Projection,
        store: EventStore,
        checkpoints: CheckpointStore,
        *,
        key: str | None = None,
        consumer_name: str | None = None,
        use_transactions: bool | None = None,
        write_path: Literal["auto", "merge", "bulk"] = "auto",
        on_batch: Callable[[BatchApplied], None] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
        before_start: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.projection = projection
        self.store = store
        self.checkpoints = checkpoints
        self.key = key or projection_key(projection.name)
        self._consumer_name = consumer_name or self.key
        self._use_transactions = use_transactions
        self._write_path = write_path
        self._on_batch = on_batch
        self._on_failure = on_failure
        self.location: ReadModelLocation | None = None
        self._target: MongoCollection | None = None
        self._events = store.database.collection(store.collection_name)
        self._transactions = False
        self._merge = False
        self._before_start = before_start

    @property
    def name(self) -> str:
        """Status and lease name."""
        return self._consumer_name

    @property
    def event_types(self) -> frozenset[str] | None:
        """The projection's event type names."""
        return self.projection.type_names

    async def start_position(self) -> int:
        """Bind to the read model's current physical collection; return its position."""
        if self._before_start is not None:
            await self._before_start()
        self.location = await locate(self.checkpoints, self.key, self.projection.name)
        database = self.store.database
        self._target = database.collection(self.location.collection)
        await self._target.create_index([("_position", -1)], name="_position")
        for spec in self.projection.indexes:
            index_name = "_".join(f"{f}_{d}" for f, d in spec)
            await self._target.create_index(list(spec), name=index_name)
        caps = await database.capabilities()
        self._transactions = (
            caps.transactions if self._use_transactions is None else self._use_transactions
        )
        self._merge = False
        if isinstance(self.projection, PipelineProjection) and self._write_path != "bulk":
            self._merge = await _merge_pipelines_honoured(database)
            if self._write_path == "merge" and not self._merge:
                raise UsageError(
                    f"the {database.flavour} backend does not run $merge update pipelines; "
                    "use write_path='auto' or 'bulk'",
                    code="no-merge",
                )
        return self.location.position

    @property
    def target(self) -> MongoCollection:
        """The physical collection this projector writes (after ``start_position``)."""
        if self._target is None:
            raise UsageError("call start_position() first", code="projector-not-started")
        return self._target

    async def handle(self, events: Sequence[RecordedEvent], *, up_to: int) -> None:
        """Apply ``events`` to the read model and advance the checkpoint to ``up_to``."""
        if self._target is None:
            await self.start_position()
        try:
            if self._transactions and not (self._merge and events):
                await self._handle_in_transaction(events, up_to)
            else:
                if events:
                    await self._apply(events, session=None)
                # Only now: a crash before this line replays the batch, whose effects
                # the per-document guard makes harmless.
                await self.checkpoints.advance(self.key, up_to)
        except BaseException as exc:
            if self._on_failure is not None and isinstance(exc, Exception):
                self._on_failure(exc)
            raise
        if events and log.isEnabledFor(logging.DEBUG):
            for recorded in events:
                with event_context(recorded, consumer=self.name, traced=False):
                    log.debug("%s: applied %s", self.name, recorded.event_type)
        if self._on_batch is not None:
            self._on_batch(BatchApplied(len(events), up_to))

    async def _handle_in_transaction(self, events: Sequence[RecordedEvent], up_to: int) -> None:
        async with self.store.database.transaction() as session:
            doc = await self.checkpoints.collection.find_one(
                {"_id": self.key}, projection={"position": 1}, session=session
            )
            stored = int(doc.get("position", 0)) if doc else 0
            if stored >= up_to:
                return  # a duplicate delivery: the batch committed before
            fresh = [e for e in events if e.position > stored]
            if fresh:
                await self._apply(fresh, session=session)
            await self.checkpoints.advance(self.key, up_to, session=session)

    async def _apply(self, events: Sequence[RecordedEvent], *, session: Any) -> None:
        if isinstance(self.projection, PipelineProjection):
            await self._apply_pipeline(self.projection, events, session)
        elif isinstance(self.projection, HandlerProjection):
            await self._apply_handlers(self.projection, events, session)
        else:  # pragma: no cover - guarded by the runner
            raise UsageError(f"unsupported projection {self.projection!r}", code="bad-projection")

    # -- guarded writes --

    async def _stored_positions(
        self, keys: Sequence[Any], session: Any
    ) -> dict[Hashable, int | None]:
        """``_position`` of the documents among ``keys`` that exist (``None``: no field)."""
        found: dict[Hashable, int | None] = {}
        for start in range(0, len(keys), 1000):
            chunk = list(keys[start : start + 1000])
            docs = await self.target.aggregate(
                [{"$match": {"_id": {"$in": chunk}}}, {"$project": {"_position": 1}}],
                session=session,
            )
            for doc in docs:
                stored = doc.get("_position")
                found[_freeze(doc["_id"])] = int(stored) if stored is not None else None
        return found

    @staticmethod
    def _guard(key: Any, stored: int | None, present: bool) -> dict[str, Any]:
        # Compare-and-set on the position read just before: the write applies only
        # if nobody has written the document since.
        if present and stored is not None:
            return {"_id": key, "_position": stored}
        return {"_id": key, "_position": {"$exists": False}}

    async def _write(self, ops: list[WriteOp], expected_deletes: int, session: Any) -> None:
        if not ops:
            return
        summary = await self.target.write_many(ops, ordered=False, session=session)
        updates = sum(1 for op in ops if op.kind != "delete")
        if (
            summary.duplicates
            or summary.matched + summary.upserted != updates
            or summary.deleted != expected_deletes
        ):
            raise _Conflict(
                f"{self.projection.name}: {len(summary.duplicates)} upserts refused, "
                f"{summary.matched + summary.upserted}/{updates} updates and "
                f"{summary.deleted}/{expected_deletes} deletes applied"
            )

    async def _with_retries(
        self, attempt_once: Callable[[], Awaitable[None]], session: Any
    ) -> None:
        for attempt in range(1, _MAX_CAS_ATTEMPTS + 1):
            try:
                await attempt_once()
                return
            except _Conflict as exc:
                if session is not None or attempt == _MAX_CAS_ATTEMPTS:
                    raise ProjectionError(
                        f"{exc}; the read model {self.target.name!r} keeps changing under "
                        "the projector: is another runner writing it without the lease?"
                    ) from exc
                log.warning("%s: %s; re-reading and retrying", self.projection.name, exc)

    async def _apply_handlers(
        self, projection: HandlerProjection, events: Sequence[RecordedEvent], session: Any
    ) -> None:
        # Handlers run once per batch; the guarded write may be retried.
        per_doc: dict[Hashable, tuple[Any, list[tuple[int, Update]]]] = {}
        for recorded in events:
            # The handler runs in the event's context: its log records and spans
            # join the trace of the command that recorded the event.
            with event_context(recorded, consumer=self.name):
                updates = await projection.updates_for(recorded)
            for update in updates:
                entry = per_doc.setdefault(_freeze(update.id), (update.id, []))
                entry[1].append((recorded.position, update))
        if not per_doc:
            return

        async def attempt() -> None:
            stored = await self._stored_positions([k for k, _ in per_doc.values()], session)
            ops: list[WriteOp] = []
            deletes = 0
            for frozen, (key, updates) in per_doc.items():
                present = frozen in stored
                floor = stored.get(frozen) or 0
                change = _Change()
                for position, update in updates:
                    if position > floor:  # skip what this document has already seen
                        change.apply(update, position)
                if change.position == 0:
                    continue
                guard = self._guard(key, stored.get(frozen), present)
                if change.exists and (change.deleted or not present):
                    # A new document: write it whole, exactly as the updates one by one
                    # would have built it (the first upsert inserts, the rest update).
                    # (_id spelled out: nx-27017 does not copy it from the filter.)
                    doc = {"_id": key, **change.fresh_document(), "_position": change.position}
                    ops.append(WriteOp("replace", guard, doc, upsert=not present))
                elif change.exists:
                    ops.append(WriteOp("update", guard, change.operators()))
                elif present:
                    ops.append(WriteOp("delete", guard))
                    deletes += 1
            await self._write(ops, deletes, session)

        await self._with_retries(attempt, session)

    def _prefix(self, start: int, lo: int, hi: int) -> list[dict[str, Any]]:
        """Select the batch's events from the commits and reshape them, in position order."""
        types = sorted(self.projection.type_names)
        return [
            {"$match": {"position": {"$gte": start, "$lte": hi}, "types": {"$in": types}}},
            {"$sort": {"position": 1}},
            {"$unwind": "$events"},
            {
                "$match": {
                    "events.position": {"$gte": lo, "$lte": hi},
                    "events.type": {"$in": types},
                }
            },
            {
                "$project": {
                    "_id": 0,
                    "event_id": "$events.id",
                    "type": "$events.type",
                    "stream_id": "$stream_id",
                    "version": "$events.version",
                    "position": "$events.position",
                    "recorded_at": "$recorded_at",
                    "data": "$events.data",
                    "meta": "$events.meta",
                }
            },
        ]

    async def _commit_start(self, lo: int, session: Any) -> int:
        # The commit holding `lo` may start before it (a batch can begin mid-commit).
        holder = await self._events.find_one(
            {"position": {"$lte": lo}},
            sort=[("position", -1)],
            projection={"position": 1},
            session=session,
        )
        return int(holder["position"]) if holder else lo

    def _merge_stage(self, projection: PipelineProjection, lo: int) -> dict[str, Any]:
        # The whenMatched pipeline decides per document, atomically on the server:
        #  * stored _position >= the group's last position: every event of the group
        #    was applied before (a replayed batch) -> keep the document;
        #  * stored _position < lo (the batch's first position): none was -> combine;
        #  * in between, the document saw some of the batch's events but not all
        #    (possible only after a checkpoint moved back): no single combination is
        #    right, so fail the stage with a recognisable conversion error; the
        #    projector then redoes the batch on the bulk path, which filters events
        #    per document. ($toInt of a computed string, so it cannot fold to a
        #    constant error at parse time.)
        stored = {"$ifNull": ["$_position", -1]}
        combined = {name: acc.combine(name) for name, acc in projection.fields.items()}
        combined["_position"] = "$$new._position"
        straddle = {
            "$toInt": {"$concat": [f"{_STRADDLE} at _position ", {"$toString": "$_position"}]}
        }
        return {
            "$merge": {
                "into": self.target.name,
                "on": "_id",
                "let": {"new": "$$ROOT", "lo": {"$literal": lo}},
                "whenMatched": [
                    {
                        "$replaceWith": {
                            "$switch": {
                                "branches": [
                                    {
                                        "case": {"$gte": [stored, "$$new._position"]},
                                        "then": "$$ROOT",
                                    },
                                    {
                                        "case": {"$lt": [stored, "$$lo"]},
                                        "then": {"$mergeObjects": ["$$ROOT", combined]},
                                    },
                                ],
                                "default": straddle,
                            }
                        }
                    }
                ],
                "whenNotMatched": "insert",
            }
        }

    async def _apply_pipeline(
        self, projection: PipelineProjection, events: Sequence[RecordedEvent], session: Any
    ) -> None:
        lo, hi = events[0].position, events[-1].position
        start = await self._commit_start(lo, session)
        prefix = [*self._prefix(start, lo, hi), *(dict(s) for s in projection.stages)]
        if self._merge and session is None:
            try:
                await self._events.aggregate(
                    [
                        *prefix,
                        projection.group_stage(with_min=False),
                        self._merge_stage(projection, lo),
                    ]
                )
                return
            except Exception as exc:
                if _STRADDLE not in str(exc):
                    raise
                log.info(
                    "%s: batch %d-%d straddles documents' positions; applying it per document",
                    projection.name,
                    lo,
                    hi,
                )
        results = await self._events.aggregate(
            [*prefix, projection.group_stage(with_min=True)], session=session
        )
        if not results:
            return

        async def attempt() -> None:
            stored = await self._stored_positions([r["_id"] for r in results], session)
            ops: list[WriteOp] = []
            straddling: list[tuple[Any, int]] = []
            for result in results:
                frozen = _freeze(result["_id"])
                present = frozen in stored
                floor = stored.get(frozen) or 0
                if present and floor >= result["_position"]:
                    continue  # all of it applied before
                if present and floor >= result["_min_position"]:
                    straddling.append((result["_id"], floor))
                    continue
                guard = self._guard(result["_id"], stored.get(frozen), present)
                ops.append(
                    WriteOp("update", guard, projection.update_for(result), upsert=not present)
                )
            if straddling:
                # Regroup those documents over only the events they have not seen.
                keyed = [*prefix, {"$addFields": {"__cqrs_key": projection.group_by}}]
                keyed.append(
                    {
                        "$match": {
                            "$or": [
                                {"__cqrs_key": key, "position": {"$gt": floor}}
                                for key, floor in straddling
                            ]
                        }
                    }
                )
                regroup = projection.group_stage(with_min=True)
                regroup["$group"]["_id"] = "$__cqrs_key"
                for result in await self._events.aggregate([*keyed, regroup], session=session):
                    frozen = _freeze(result["_id"])
                    guard = self._guard(result["_id"], stored.get(frozen), True)
                    ops.append(WriteOp("update", guard, projection.update_for(result)))
            await self._write(ops, 0, session)

        await self._with_retries(attempt, session)
