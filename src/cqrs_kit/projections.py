"""Projections: read models kept up to date from the event log, effectively once.

Two kinds of projection, both run by a :class:`Projector` inside a
:class:`~cqrs_kit.subscriptions.Subscription` (one per projection, each with
its own checkpoint and lease):

* :class:`PipelineProjection` declares how a batch of events is grouped into
  read-model documents and how a group combines with the stored document
  (``Sum``, ``Last``, ``First``, ``Max``, ``Min``). The server does the work:
  an aggregation over the batch's commits, then ``$merge`` where the server
  honours ``$merge`` update pipelines, else an equivalent bulk upsert.
* :class:`HandlerProjection` maps each event to :class:`Upsert` / :class:`Delete`
  values in Python (``@on(EventType)`` methods); a batch's updates are folded
  into one write per document and sent in one bulk write.

Effectively once
----------------
Every read-model document carries ``_position``: the global position of the
last event applied to it. A write never trusts a plain ``_position < p``
filter alone, because one batch can hold several events for a document: if a
crash left that document half way through an older batch, or a checkpoint was
moved back, a batch could hold events both below and above its
``_position`` ("straddle" it), and a single guarded update would apply them
all or none, double-counting or losing some. So a batch first reads the
``_position`` of every document it touches, drops the events each document
has already seen, and writes with a compare-and-set filter on the position it
read (``{_id, _position: <read>}``). A concurrent writer (a runner that lost
its lease but not its connection) makes the compare fail; the batch is then
recomputed from a fresh read. Only after the writes does the checkpoint
advance (``CheckpointStore.advance`` never moves backwards), so a crash
anywhere replays a batch whose effects are already guarded.

Where the server has multi-document transactions (a replica set), handler
projections and bulk-path pipeline projections write the read model and the
checkpoint in one transaction instead, so readers never see a half-applied
batch. ``$merge`` cannot run inside a transaction, so the ``$merge`` path
always uses the guard.

Aliases
-------
A projection's read model has a stable logical name (the projection name)
that resolves to a physical collection ``<name>__v<N>``. The mapping lives
in the projection's checkpoint document (``projection:<name>`` in the
``checkpoints`` collection), together with its position, so that a rebuild
switches collection *and* position with one single-document update (see
:mod:`cqrs_kit.rebuild`). Readers use :class:`ReadModel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import logging
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from cqrs_kit._mongo import DuplicateKey, MongoCollection, MongoDatabase, WriteOp, adapt
from cqrs_kit.checkpoints import CheckpointStore
from cqrs_kit.errors import ProjectionError, TransientStoreError, UsageError
from cqrs_kit.events import Event, EventRegistry, RecordedEvent
from cqrs_kit.leases import LeaseManager
from cqrs_kit.logs import event_context
from cqrs_kit.status import Clock, projection_statuses
from cqrs_kit.status import ProjectionStatus as ProjectionStatus  # re-exported
from cqrs_kit.store import EventStore
from cqrs_kit.subscriptions import Backoff, Subscription

if TYPE_CHECKING:
    from cqrs_kit.rebuild import RebuildResult

log = logging.getLogger("cqrs_kit.projections")

#: Prefix of the checkpoint, status and lease key of a projection.
KEY_PREFIX = "projection:"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")
_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
#: Marker in the server error a ``$merge`` raises on a straddling batch (see _merge_stage).
_STRADDLE = "cqrs-kit-straddle"
_MAX_CAS_ATTEMPTS = 5

F = TypeVar("F", bound=Callable[..., Any])


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


# -- read-model updates (handler projections) ---------------------------------------------


def _check_paths(paths: Iterable[str], what: str) -> None:
    for path in paths:
        if not isinstance(path, str) or not path or path.startswith("$"):
            raise UsageError(f"{what}: invalid field path {path!r}", code="bad-update")
        if path.split(".", 1)[0] in {"_id", "_position"}:
            raise UsageError(
                f"{what}: {path!r} is managed by the projector and cannot be written",
                code="bad-update",
            )


@dataclass(frozen=True, slots=True)
class Upsert:
    """Create or update one read-model document.

    Attributes:
        id: The document's ``_id``.
        set: Field paths to set (dotted paths reach into sub-documents).
        inc: Field paths to increment (a missing field counts as 0).
        set_on_insert: Fields written only when the document is created.
        unset: Field paths to remove.
    """

    id: Any
    set: Mapping[str, Any] = field(default_factory=dict)
    inc: Mapping[str, int | float] = field(default_factory=dict)
    set_on_insert: Mapping[str, Any] = field(default_factory=dict)
    unset: Sequence[str] = ()

    def __post_init__(self) -> None:
        _check_paths([*self.set, *self.inc, *self.set_on_insert, *self.unset], "Upsert")
        for path, amount in self.inc.items():
            if isinstance(amount, bool) or not isinstance(amount, int | float):
                raise UsageError(
                    f"Upsert.inc[{path!r}] must be a number, not {amount!r}", code="bad-update"
                )


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete one read-model document (``id`` is its ``_id``)."""

    id: Any


#: What an ``@on`` handler may return: one update, several, or ``None``.
Update = Upsert | Delete


def _freeze(value: Any) -> Hashable:
    """A hashable stand-in for a document key (keys may be sub-documents)."""
    if isinstance(value, Mapping):
        return ("__doc__", tuple((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return ("__list__", tuple(_freeze(v) for v in value))
    return value  # type: ignore[no-any-return]


def _is_under(path: str, ancestor: str) -> bool:
    return path.startswith(ancestor + ".")


def _nested(doc: dict[str, Any], path: str, *, create: bool) -> tuple[dict[str, Any], str]:
    """The dict holding the last segment of ``path`` inside ``doc``, and that segment."""
    *parents, leaf = path.split(".")
    node = doc
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            if not create or child is not None:
                raise UsageError(
                    f"cannot write {path!r}: {part!r} is not a sub-document",
                    code="conflicting-update-paths",
                )
            child = node[part] = {}
        node = child
    return node, leaf


class _Change:
    """The folded effect of a batch's updates on one document.

    MongoDB refuses one update that touches a path and its parent twice, so a
    sequence of updates is folded into one: ``set`` then ``inc`` of the same
    path becomes one ``set`` of the sum, a later ``set`` replaces earlier
    writes under it, and a ``Delete`` followed by an ``Upsert`` becomes a
    replacement by a fresh document.
    """

    __slots__ = ("deleted", "exists", "inc", "on_insert", "position", "set", "unset", "upserts")

    def __init__(self) -> None:
        self.deleted = False  # a Delete happened: the stored document is gone or replaced
        self.exists = True  # a document exists after the last update
        self.set: dict[str, Any] = {}
        self.inc: dict[str, int | float] = {}
        self.unset: set[str] = set()
        self.on_insert: dict[str, Any] = {}
        self.position = 0
        self.upserts = 0  # Upserts since the batch began or the last Delete

    def apply(self, update: Update, position: int) -> None:
        self.position = max(self.position, position)
        if isinstance(update, Delete):
            self.deleted, self.exists, self.upserts = True, False, 0
            self.set, self.inc, self.unset, self.on_insert = {}, {}, set(), {}
            return
        self.exists = True
        # Only the first upsert can be the one that inserts the document: later
        # ones find it in place, so their set_on_insert never applies.
        if self.upserts == 0:
            self.on_insert = {p: copy.deepcopy(v) for p, v in update.set_on_insert.items()}
        self.upserts += 1
        for path in update.unset:
            self._drop(path)
            if self._set_ancestor(path) is not None:
                holder, leaf = _nested(self.set, path, create=False)
                holder.pop(leaf, None)
            else:
                self.unset.add(path)
        for path, value in update.set.items():
            self._assign(path, copy.deepcopy(value))
        for path, amount in update.inc.items():
            self._add(path, amount)

    def _set_ancestor(self, path: str) -> str | None:
        return next((p for p in self.set if _is_under(path, p)), None)

    def _drop(self, path: str) -> None:
        for table in (self.set, self.inc):
            for p in [p for p in table if p == path or _is_under(p, path)]:
                del table[p]
        self.unset = {p for p in self.unset if not (p == path or _is_under(p, path))}

    def _conflict(self, path: str) -> None:
        for p in [*self.inc, *self.unset]:
            if _is_under(path, p) or _is_under(p, path):
                raise UsageError(
                    f"updates of {p!r} and {path!r} in one batch cannot be combined; "
                    "write the parent document with set= instead",
                    code="conflicting-update-paths",
                )

    def _assign(self, path: str, value: Any) -> None:
        ancestor = self._set_ancestor(path)
        if ancestor is not None:
            holder, leaf = _nested(self.set, path, create=True)
            holder[leaf] = value
            return
        self._drop(path)
        self._conflict(path)
        self.set[path] = value

    def _add(self, path: str, amount: int | float) -> None:
        ancestor = self._set_ancestor(path)
        if path in self.set or ancestor is not None:
            holder, leaf = _nested(self.set, path, create=True) if ancestor else (self.set, path)
            current = holder.get(leaf, 0)
            if isinstance(current, bool) or not isinstance(current, int | float):
                raise UsageError(
                    f"cannot increment {path!r}: it was set to {current!r} in the same batch",
                    code="conflicting-update-paths",
                )
            holder[leaf] = current + amount
            return
        if path in self.unset:
            self.unset.discard(path)
            self.set[path] = amount
            return
        self._conflict(path)
        self.inc[path] = self.inc.get(path, 0) + amount

    def fresh_document(self) -> dict[str, Any]:
        """The document the batch's updates create when none exists before them.

        The first upsert's ``set_on_insert`` values come first, then ``set``
        (a path is never in both ``set`` and ``inc``: the fold merged them),
        then the increments, added to an inserted value where there is one.
        """
        doc: dict[str, Any] = {}
        for table in (self.on_insert, self.set):
            for path, value in table.items():
                holder, leaf = _nested(doc, path, create=True)
                holder[leaf] = copy.deepcopy(value)
        for path, amount in self.inc.items():
            holder, leaf = _nested(doc, path, create=True)
            current = holder.get(leaf, 0)
            if isinstance(current, bool) or not isinstance(current, int | float):
                raise UsageError(
                    f"cannot increment {path!r}: set_on_insert made it {current!r}",
                    code="conflicting-update-paths",
                )
            holder[leaf] = current + amount
        return doc

    def operators(self) -> dict[str, Any]:
        """Update operators for a document that exists (``set_on_insert`` cannot apply)."""
        ops: dict[str, Any] = {"$set": {**self.set, "_position": self.position}}
        if self.inc:
            ops["$inc"] = dict(self.inc)
        if self.unset:
            ops["$unset"] = {p: "" for p in sorted(self.unset)}
        return ops


# -- pipeline accumulators ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accumulator:
    """How one read-model field is computed per batch and combined with the stored value.

    Attributes:
        expression: An aggregation expression evaluated per event document.
    """

    expression: Any
    #: The ``$group`` accumulator.
    group_op: ClassVar[str] = ""
    #: The update operator that combines a batch value with the stored one.
    update_op: ClassVar[str] = ""

    def combine(self, field_name: str) -> Any:
        """An expression combining the stored ``$<field>`` with the batch's ``$$new.<field>``."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Sum(Accumulator):
    """Add up ``expression`` over all events (``Sum(1)`` counts them)."""

    expression: Any = 1
    group_op: ClassVar[str] = "$sum"
    update_op: ClassVar[str] = "$inc"

    def combine(self, field_name: str) -> Any:
        """Stored value plus the batch's sum."""
        return {"$add": [{"$ifNull": [f"${field_name}", 0]}, f"$$new.{field_name}"]}


def Count() -> Sum:
    """Count the events (``Sum(1)``)."""
    return Sum(1)


@dataclass(frozen=True, slots=True)
class Last(Accumulator):
    """The value of ``expression`` at the latest event."""

    group_op: ClassVar[str] = "$last"
    update_op: ClassVar[str] = "$set"

    def combine(self, field_name: str) -> Any:
        """The batch's value replaces the stored one."""
        return f"$$new.{field_name}"


@dataclass(frozen=True, slots=True)
class First(Accumulator):
    """The value of ``expression`` at the earliest event ever applied."""

    group_op: ClassVar[str] = "$first"
    update_op: ClassVar[str] = "$setOnInsert"

    def combine(self, field_name: str) -> Any:
        """The stored value, unless there is none yet."""
        stored = f"${field_name}"
        return {"$cond": [{"$eq": [{"$type": stored}, "missing"]}, f"$$new.{field_name}", stored]}


@dataclass(frozen=True, slots=True)
class Max(Accumulator):
    """The largest value of ``expression`` (values should never be null)."""

    group_op: ClassVar[str] = "$max"
    update_op: ClassVar[str] = "$max"

    def combine(self, field_name: str) -> Any:
        """The larger of the stored and the batch's value."""
        return {"$max": [f"${field_name}", f"$$new.{field_name}"]}


@dataclass(frozen=True, slots=True)
class Min(Accumulator):
    """The smallest value of ``expression`` (values should never be null)."""

    group_op: ClassVar[str] = "$min"
    update_op: ClassVar[str] = "$min"

    def combine(self, field_name: str) -> Any:
        """The smaller of the stored and the batch's value."""
        return {"$min": [f"${field_name}", f"$$new.{field_name}"]}


# -- declarations -------------------------------------------------------------------------

IndexSpec = Sequence[tuple[str, int]]


def _type_names(types: Iterable[type[Event] | str]) -> frozenset[str]:
    names: set[str] = set()
    for t in types:
        if isinstance(t, str) and t:
            names.add(t)
        elif isinstance(t, type) and issubclass(t, Event):
            names.add(t.event_type)
        else:
            raise UsageError(
                f"{t!r} is neither an Event subclass nor an event type name",
                code="bad-event-type",
            )
    return frozenset(names)


class Projection:
    """What every projection declares: a name, the events it reads, its read model.

    Subclass :class:`PipelineProjection` or :class:`HandlerProjection`.

    Attributes:
        name: Unique name; also the read model's logical collection name.
        event_types: The event classes (or type names) it reads.
        indexes: Extra indexes on the read model, as ``[[("field", 1)], ...]``;
            created on every physical collection, so rebuilt ones have them too.
        type_names: ``event_types`` as stored type names (set by the constructor).
    """

    kind: ClassVar[Literal["pipeline", "handler"]]
    name: str = ""
    event_types: Collection[type[Event] | str] = ()
    indexes: Sequence[IndexSpec] = ()
    type_names: frozenset[str] = frozenset()

    async def read_model_collection(self, database: Any) -> Any:
        """The driver collection currently holding this projection's read model."""
        return await ReadModel(database, self.name).collection()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


_ALLOWED_STAGES = frozenset({"$match", "$set", "$addFields", "$unset", "$unwind"})


class PipelineProjection(Projection):
    """A projection computed by the server: per-event stages, a grouping, a combination.

    Declare it with class attributes or constructor arguments::

        class ItemsPerCategory(PipelineProjection):
            name = "items_per_category"
            event_types = (StockAdded, StockRemoved)
            stages = [{"$set": {"delta": {"$cond": [
                {"$eq": ["$type", "inventory.StockAdded"]},
                "$data.quantity",
                {"$multiply": [-1, "$data.quantity"]},
            ]}}}]
            group_by = "$data.category"
            fields = {"available": Sum("$delta"), "movements": Count()}

    Each event reaches ``stages`` as ``{event_id, type, stream_id, version,
    position, recorded_at, data, meta}`` (payloads in pydantic's JSON form:
    convert decimals with ``$toDecimal``/``$toDouble``). ``stages`` may only
    use per-event stages (``$match``, ``$set``/``$addFields``, ``$unset``,
    ``$unwind``), so that grouping a batch and combining it with the stored
    document gives the same result as grouping all events at once.

    Attributes:
        stages: Per-event stages run before grouping.
        group_by: The expression whose value is the read-model document's ``_id``.
        fields: Read-model fields and how each accumulates.
    """

    kind: ClassVar[Literal["pipeline", "handler"]] = "pipeline"
    stages: Sequence[Mapping[str, Any]] = ()
    group_by: Any = None
    fields: Mapping[str, Accumulator] = MappingProxyType({})

    def __init__(
        self,
        *,
        name: str | None = None,
        event_types: Iterable[type[Event] | str] | None = None,
        stages: Sequence[Mapping[str, Any]] | None = None,
        group_by: Any = None,
        fields: Mapping[str, Accumulator] | None = None,
        indexes: Sequence[IndexSpec] | None = None,
    ) -> None:
        self.name = _validate_name(name if name is not None else self.name)
        self.event_types = tuple(event_types if event_types is not None else self.event_types)
        self.type_names = _type_names(self.event_types)
        if not self.type_names:
            raise UsageError(f"projection {self.name!r} declares no event_types", code="no-events")
        self.stages = list(stages if stages is not None else self.stages)
        for stage in self.stages:
            if not isinstance(stage, Mapping) or len(stage) != 1:
                raise UsageError(f"{self.name}: a stage is a one-key mapping", code="bad-stage")
            (op,) = stage
            if op not in _ALLOWED_STAGES:
                raise UsageError(
                    f"{self.name}: stage {op} is not allowed before grouping; use "
                    f"{', '.join(sorted(_ALLOWED_STAGES))} (per-event stages only)",
                    code="bad-stage",
                )
        self.group_by = group_by if group_by is not None else self.group_by
        if self.group_by is None:
            raise UsageError(f"projection {self.name!r} declares no group_by", code="no-group")
        self.fields = dict(fields if fields is not None else self.fields)
        if not self.fields:
            raise UsageError(f"projection {self.name!r} declares no fields", code="no-fields")
        for field_name, acc in self.fields.items():
            if not _FIELD.match(field_name):
                raise UsageError(
                    f"{self.name}: field name {field_name!r} must be a plain identifier "
                    "not starting with '_'",
                    code="bad-field",
                )
            if not isinstance(acc, Accumulator) or type(acc) is Accumulator:
                raise UsageError(
                    f"{self.name}: field {field_name!r} needs Sum, Count, Last, First, Max "
                    f"or Min, not {acc!r}",
                    code="bad-field",
                )
        self.indexes = list(indexes if indexes is not None else self.indexes)

    def group_stage(self, *, with_min: bool) -> dict[str, Any]:
        """The ``$group`` stage: one document per key with its fields and positions."""
        group: dict[str, Any] = {"_id": self.group_by}
        for field_name, acc in self.fields.items():
            group[field_name] = {acc.group_op: acc.expression}
        group["_position"] = {"$max": "$position"}
        if with_min:
            group["_min_position"] = {"$min": "$position"}
        return {"$group": group}

    def update_for(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """Update operators that combine one group result with the stored document."""
        ops: dict[str, dict[str, Any]] = {"$set": {"_position": result["_position"]}}
        for field_name, acc in self.fields.items():
            ops.setdefault(acc.update_op, {})[field_name] = result.get(field_name)
        return ops


def on(*event_types: type[Event]) -> Callable[[F], F]:
    """Mark a :class:`HandlerProjection` method as the handler of ``event_types``.

    The method is called as ``handler(event)`` or ``handler(event, recorded)``
    and returns an :class:`Upsert`, a :class:`Delete`, several of them, or
    ``None``; it may be ``async``.
    """
    if not event_types:
        raise UsageError("@on() needs at least one event class", code="bad-handler")
    names = _type_names(event_types)

    def decorator(fn: F) -> F:
        existing: frozenset[str] = getattr(fn, "__cqrs_on__", frozenset())
        fn.__cqrs_on__ = existing | names  # type: ignore[attr-defined]
        return fn

    return decorator


class HandlerProjection(Projection):
    """A projection whose ``@on(EventType)`` methods return read-model updates.

    ::

        class StockLevels(HandlerProjection):
            name = "stock_levels"

            @on(StockAdded)
            def added(self, event: StockAdded) -> Upsert:
                return Upsert(event.sku, inc={"available": event.quantity},
                              set_on_insert={"category": event.category})

            @on(ItemDiscontinued)
            def gone(self, event: ItemDiscontinued) -> Delete:
                return Delete(event.sku)

    Handlers must be functions of the event alone (no reads of other state):
    a rebuild or replay calls them again and must get the same updates.
    """

    kind: ClassVar[Literal["pipeline", "handler"]] = "handler"
    _handlers: ClassVar[dict[str, tuple[str, bool]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers: dict[str, tuple[str, bool]] = {}
        for klass in reversed(cls.__mro__):
            for attr, fn in vars(klass).items():
                for type_name in getattr(fn, "__cqrs_on__", ()):
                    if type_name in handlers and handlers[type_name][0] != attr:
                        raise UsageError(
                            f"{cls.__qualname__}: {type_name!r} is handled by both "
                            f"{handlers[type_name][0]}() and {attr}()",
                            code="duplicate-handler",
                        )
                    params = [
                        p
                        for p in inspect.signature(fn).parameters.values()
                        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                    ]
                    handlers[type_name] = (attr, len(params) >= 3)
        cls._handlers = handlers

    def __init__(
        self, *, name: str | None = None, indexes: Sequence[IndexSpec] | None = None
    ) -> None:
        self.name = _validate_name(name if name is not None else self.name)
        if not self._handlers:
            raise UsageError(
                f"{type(self).__qualname__} has no @on(EventType) handlers", code="no-events"
            )
        self.indexes = list(indexes if indexes is not None else self.indexes)
        self.type_names = frozenset(self._handlers)
        self.event_types = tuple(sorted(self.type_names))

    async def updates_for(self, recorded: RecordedEvent) -> list[Update]:
        """Call the handler of ``recorded`` and return its updates as a list."""
        attr, wants_recorded = self._handlers[recorded.event_type]
        method = getattr(self, attr)
        result = method(recorded.event, recorded) if wants_recorded else method(recorded.event)
        if inspect.isawaitable(result):
            result = await result
        if result is None:
            return []
        if isinstance(result, Upsert | Delete):
            return [result]
        if isinstance(result, Iterable) and not isinstance(result, str | bytes | Mapping):
            items = list(result)
            if all(isinstance(i, Upsert | Delete) for i in items):
                return items
        raise UsageError(
            f"{type(self).__qualname__}.{attr}() returned {result!r}; return Upsert, Delete, "
            "a list of them, or None",
            code="bad-handler-result",
        )


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
        batch_size: Events per batch.
        poll_interval: Safety poll period (the wake-up without change streams).
        backoff: Retry delays of a failing event.
        handover_poll: How often a running projection checks whether a rebuild
            asked it to hand over.
        write_path: See :class:`Projector`.
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
        """A :class:`ReadModel` handle on projection ``name``'s read model."""
        self.get(name)
        return ReadModel(self.store.database, name, max_age=max_age)

    def projector(self, name: str, **options: Any) -> Projector:
        """A :class:`Projector` for projection ``name`` on its live read model."""
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

        See :func:`cqrs_kit.status.projection_statuses`; ``clock`` is where lag
        gets the current time (default: the system clock).
        """
        return await projection_statuses(self, names, clock=clock)

    async def rebuild(self, name: str, **options: Any) -> RebuildResult:
        """Rebuild ``name`` without downtime (see :func:`cqrs_kit.rebuild.rebuild`)."""
        from cqrs_kit.rebuild import rebuild

        return await rebuild(self, name, **options)

    async def reset(self, name: str, **options: Any) -> RebuildResult:
        """Restart ``name`` from 0 on an empty model (see :func:`cqrs_kit.rebuild.reset`)."""
        from cqrs_kit.rebuild import reset

        return await reset(self, name, **options)


async def _pause(stop: asyncio.Event | None, seconds: float) -> None:
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
