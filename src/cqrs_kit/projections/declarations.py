"""How projections are declared: pipelines with accumulators, handler projections with ``@on``."""

from __future__ import annotations

import inspect
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Literal, TypeVar

from cqrs_kit.errors import UsageError
from cqrs_kit.events import Event, RecordedEvent
from cqrs_kit.projections.read_models import ReadModel, _validate_name
from cqrs_kit.projections.updates import Delete, Update, Upsert

F = TypeVar("F", bound=Callable[..., Any])
_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

# -- pipeline accumulators ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accumulator(ABC):
    """How one read-model field is computed per batch and combined with the stored value.

    Attributes:
        expression: An aggregation expression evaluated per event document.
    """

    expression: Any
    #: The ``$group`` accumulator.
    group_op: ClassVar[str] = ""
    #: The update operator that combines a batch value with the stored one.
    update_op: ClassVar[str] = ""

    @abstractmethod
    def combine(self, field_name: str) -> Any:
        """An expression combining the stored ``$<field>`` with the batch's ``$$new.<field>``."""


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

    Subclass `PipelineProjection` or `HandlerProjection`.

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

    Declare it with class attributes or constructor arguments:

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
    """Mark a `HandlerProjection` method as the handler of ``event_types``.

    The method is called as ``handler(event)`` or ``handler(event, recorded)``
    and returns an `Upsert`, a `Delete`, several of them, or
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

    For example:

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
