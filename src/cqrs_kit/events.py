"""Domain events, their metadata, the type registry and upcasting.

An `Event` is an immutable pydantic model with a stable type name and a
schema version. Events are stored in pydantic's JSON form (``Decimal`` and
``datetime`` as strings, ``UUID`` as text, enums as values), which keeps every
value exact through BSON: a BSON datetime would drop microseconds and the UTC
offset, and not every server speaks ``Decimal128``. The registry maps stored
type names back to classes and runs upcasters that lift an older stored
version to the current model on read.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cqrs_kit.errors import (
    EventDecodingError,
    EventEncodingError,
    UnknownEventTypeError,
    UsageError,
)

E = TypeVar("E", bound="Event")
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class Event(BaseModel):
    """Base class for domain events.

    Subclasses set ``event_type`` to a stable name (it is what is stored, so it
    must survive class renames) and bump ``schema_version`` when the payload
    shape changes, registering an upcaster for the old version:

        class ItemAdded(Event):
            event_type: ClassVar[str] = "inventory.ItemAdded"
            schema_version: ClassVar[int] = 2
            sku: str
            price: Decimal

    When ``event_type`` is not set, the class name is used.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str] = ""
    schema_version: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "event_type" not in cls.__dict__ or not cls.__dict__["event_type"]:
            cls.event_type = cls.__name__


class EventMetadata(BaseModel):
    """Context recorded with every event.

    Attributes:
        correlation_id: Ties together everything caused by one user action.
        causation_id: The id of the command or event that directly caused this one.
        principal: Who issued the command that produced the event (audit trail).
        headers: Free-form string headers (trace context, tenant, ...).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    correlation_id: str | None = None
    causation_id: str | None = None
    principal: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event about to be appended, with the id that makes retries idempotent.

    Appending the same ``event_id`` twice stores it once: pass the same
    ``NewEvent`` objects when retrying an append after a timeout.
    """

    event: Event
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    metadata: EventMetadata = field(default_factory=EventMetadata)


class RecordedEvent:
    """An event as stored: its payload plus where and when it was recorded.

    ``event`` decodes the payload with the registry the event was read with,
    upcasting older schema versions; decoding happens once, on first access.
    """

    __slots__ = (
        "_decoded",
        "_registry",
        "data",
        "event_id",
        "event_type",
        "metadata",
        "position",
        "recorded_at",
        "schema_version",
        "stream_id",
        "stream_version",
    )

    def __init__(
        self,
        *,
        event_id: uuid.UUID,
        stream_id: str,
        stream_version: int,
        position: int,
        event_type: str,
        schema_version: int,
        recorded_at: datetime,
        metadata: EventMetadata,
        data: dict[str, Any],
        registry: EventRegistry,
    ) -> None:
        self.event_id = event_id
        self.stream_id = stream_id
        self.stream_version = stream_version
        self.position = position
        self.event_type = event_type
        self.schema_version = schema_version
        self.recorded_at = recorded_at
        self.metadata = metadata
        self.data = data
        self._registry = registry
        self._decoded: Event | None = None

    @property
    def event(self) -> Event:
        """The decoded (and upcast) domain event.

        Raises:
            UnknownEventTypeError: The type has no registered class.
            EventDecodingError: The payload does not validate.
        """
        if self._decoded is None:
            self._decoded = self._registry.decode(
                self.event_type,
                self.schema_version,
                self.data,
                stream_id=self.stream_id,
                position=self.position,
            )
        return self._decoded

    def to_document(self) -> dict[str, Any]:
        """Render as a plain document, the shape event patterns are matched against."""
        return {
            "id": str(self.event_id),
            "type": self.event_type,
            "schema_version": self.schema_version,
            "stream_id": self.stream_id,
            "version": self.stream_version,
            "position": self.position,
            "time": self.recorded_at.isoformat(),
            "metadata": self.metadata.model_dump(),
            "data": self.data,
        }

    def __repr__(self) -> str:
        return (
            f"RecordedEvent(type={self.event_type!r}, stream_id={self.stream_id!r}, "
            f"version={self.stream_version}, position={self.position})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordedEvent):
            return NotImplemented
        return (self.event_id, self.position) == (other.event_id, other.position)

    def __hash__(self) -> int:
        return hash((self.event_id, self.position))


class EventRegistry:
    """Maps stored event type names to classes, and old schema versions to new.

    Registration is explicit so that reading never imports code by name:

        registry = EventRegistry()
        registry.register(ItemAdded)

        @registry.upcaster("inventory.ItemAdded", from_version=1)
        def add_currency(data: dict[str, Any]) -> dict[str, Any]:
            return {**data, "currency": "JPY"}
    """

    def __init__(self, *classes: type[Event]) -> None:
        self._classes: dict[str, type[Event]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        for cls in classes:
            self.register(cls)

    def register(self, cls: type[E]) -> type[E]:
        """Register an event class; usable as a decorator.

        Raises:
            UsageError: Another class is already registered under the same name.
        """
        if not (isinstance(cls, type) and issubclass(cls, Event)):
            raise UsageError(f"{cls!r} is not an Event subclass", code="not-an-event")
        existing = self._classes.get(cls.event_type)
        if existing is not None and existing is not cls:
            raise UsageError(
                f"event type {cls.event_type!r} is already registered to "
                f"{existing.__module__}.{existing.__qualname__}; give "
                f"{cls.__qualname__} a distinct event_type",
                code="duplicate-event-type",
            )
        self._classes[cls.event_type] = cls
        return cls

    def upcaster(self, event_type: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register a function that lifts a stored payload from ``from_version`` to the next.

        Raises:
            UsageError: An upcaster for that type and version already exists.
        """

        def decorator(fn: Upcaster) -> Upcaster:
            key = (event_type, from_version)
            if key in self._upcasters:
                raise UsageError(
                    f"an upcaster for {event_type!r} v{from_version} is already registered",
                    code="duplicate-upcaster",
                )
            self._upcasters[key] = fn
            return fn

        return decorator

    def __contains__(self, event_type: object) -> bool:
        return event_type in self._classes

    def resolve(self, event_type: str) -> type[Event]:
        """Return the class registered under ``event_type``.

        Raises:
            UnknownEventTypeError: Nothing is registered under that name.
        """
        try:
            return self._classes[event_type]
        except KeyError:
            raise UnknownEventTypeError(event_type) from None

    @property
    def types(self) -> tuple[str, ...]:
        """The registered type names, sorted."""
        return tuple(sorted(self._classes))

    def encode(self, event: Event, *, stream_id: str) -> dict[str, Any]:
        """Return the stored (JSON-compatible) form of an event's payload.

        Raises:
            UnknownEventTypeError: The event's class is not registered.
            EventEncodingError: The payload cannot be represented.
        """
        cls = self._classes.get(event.event_type)
        if cls is not type(event):
            if cls is None:
                raise UnknownEventTypeError(event.event_type)
            raise UsageError(
                f"event type {event.event_type!r} is registered to {cls.__qualname__}, "
                f"not {type(event).__qualname__}",
                code="event-class-mismatch",
            )
        try:
            data = event.model_dump(mode="json")
        except (
            ValueError,
            TypeError,
        ) as exc:  # pydantic's PydanticSerializationError is a ValueError
            raise EventEncodingError(
                stream_id=stream_id, event_type=event.event_type, reason=str(exc)
            ) from exc
        _check_bson_ints(data, stream_id=stream_id, event_type=event.event_type, path="")
        return data

    def decode(
        self,
        event_type: str,
        schema_version: int,
        data: Mapping[str, Any],
        *,
        stream_id: str = "",
        position: int = 0,
    ) -> Event:
        """Turn a stored payload back into its current event class, upcasting as needed.

        Raises:
            UnknownEventTypeError: The type is not registered.
            EventDecodingError: An upcaster is missing or the payload does not validate.
        """
        cls = self._classes.get(event_type)
        if cls is None:
            raise UnknownEventTypeError(event_type, stream_id=stream_id, position=position)
        payload = dict(data)
        version = schema_version
        while version < cls.schema_version:
            step = self._upcasters.get((event_type, version))
            if step is None:
                raise EventDecodingError(
                    event_type=event_type,
                    schema_version=schema_version,
                    stream_id=stream_id,
                    position=position,
                    reason=f"no upcaster registered from v{version} to v{version + 1}",
                )
            payload = step(payload)
            version += 1
        if version > cls.schema_version:
            raise EventDecodingError(
                event_type=event_type,
                schema_version=schema_version,
                stream_id=stream_id,
                position=position,
                reason=f"stored version is newer than the code's v{cls.schema_version}",
            )
        try:
            return cls.model_validate(payload)
        except ValidationError as exc:
            raise EventDecodingError(
                event_type=event_type,
                schema_version=schema_version,
                stream_id=stream_id,
                position=position,
                reason=str(exc),
            ) from exc


_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def _check_bson_ints(value: Any, *, stream_id: str, event_type: str, path: str) -> None:
    """Reject integers BSON cannot hold, naming the field, before anything is written."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise EventEncodingError(
                stream_id=stream_id,
                event_type=event_type,
                reason=f"integer at {path or '<root>'} does not fit in 64 bits",
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_bson_ints(
                item, stream_id=stream_id, event_type=event_type, path=f"{path}.{key}".lstrip(".")
            )
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_bson_ints(
                item, stream_id=stream_id, event_type=event_type, path=f"{path}[{index}]"
            )
