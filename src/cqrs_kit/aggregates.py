"""Aggregates: consistency boundaries whose state is rebuilt from their own events.

An `Aggregate` owns a pydantic *state* model and a stream of events.
Command methods check the rules against the state and, when they decide that
something happened, ``record`` an event; recording applies the event to the
state at once and queues it for saving. Loading replays the stored events
through the same handlers, so the state is only ever changed by events:

    class AccountState(BaseModel):
        opened: bool = False
        balance: Decimal = Decimal(0)


    class Account(Aggregate[AccountState]):
        stream_prefix = "account-"

        def deposit(self, amount: Decimal) -> None:
            if not self.state.opened:
                raise AccountNotOpen(self.id)
            self.record(MoneyDeposited(amount=amount))

        @applies(MoneyDeposited)
        def _deposited(self, event: MoneyDeposited) -> None:
            self.state.balance += event.amount

Each event class has exactly one handler, found by the ``@applies`` decorator
when the class is created (two handlers for one event is a `UsageError`
right there; a missing one is a `UsageError` naming the method to add
when such an event is applied). Because ``applies(E)`` types the handler as
``(self, E) -> None``, mypy rejects a handler whose parameter is another
event class.

The state model doubles as the snapshot format (``model_dump(mode="json")``
and back), so an aggregate's state must consist of fields; bump
``snapshot_version`` whenever the state's shape or meaning changes.

For those who prefer plain functions, `Decider` is the functional
form of the same idea: ``decide(command, state) -> events`` and
``evolve(state, event) -> state`` from an ``initial_state``.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

from pydantic import BaseModel, ValidationError

from cqrs_kit.errors import UsageError
from cqrs_kit.events import Event
from cqrs_kit.store import validate_stream_id

S = TypeVar("S", bound=BaseModel)
E = TypeVar("E", bound=Event)
A = TypeVar("A", bound="Aggregate[Any]")
T = TypeVar("T")
C_contra = TypeVar("C_contra", contravariant=True)

_APPLIES_ATTR = "__cqrs_kit_applies__"
Applier = Callable[[Any, Any], None]


def applies(event_type: type[E]) -> Callable[[Callable[[A, E], None]], Callable[[A, E], None]]:
    """Mark an aggregate method as the handler that applies ``event_type`` to the state.

    Args:
        event_type: The event class the method handles; the method's ``event``
            parameter must accept it (mypy checks this).

    Raises:
        UsageError: ``event_type`` is not an `Event` subclass, or the
            method already applies another event type.
    """
    if not (isinstance(event_type, type) and issubclass(event_type, Event)):
        raise UsageError(
            f"@applies() takes an Event subclass, not {event_type!r}", code="not-an-event"
        )

    def decorator(method: Callable[[A, E], None]) -> Callable[[A, E], None]:
        existing = getattr(method, _APPLIES_ATTR, None)
        if existing is not None:
            raise UsageError(
                f"{getattr(method, '__qualname__', method)!r} already applies "
                f"{existing.__qualname__}; write one method per event type",
                code="duplicate-event-handler",
            )
        setattr(method, _APPLIES_ATTR, event_type)
        return method

    return decorator


def _state_type_of(cls: type[Any]) -> type[BaseModel] | None:
    """The state model named in ``class X(Aggregate[State])``, if the class names one."""
    for base in cls.__dict__.get("__orig_bases__", ()):
        origin = typing.get_origin(base)
        if isinstance(origin, type) and issubclass(origin, Aggregate):
            args = typing.get_args(base)
            if args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
                return args[0]
    return None


def _collect_appliers(cls: type[Any]) -> dict[type[Event], Applier]:
    """Map each event class to the one method that applies it, walking bases first."""
    names: dict[type[Event], tuple[str, str]] = {}  # event class -> (method name, owner)
    for klass in reversed(cls.__mro__):
        for name, member in vars(klass).items():
            event_type = getattr(member, _APPLIES_ATTR, None)
            if event_type is None:
                continue
            previous = names.get(event_type)
            # Overriding the same method in a subclass is fine; a second method
            # for the same event would make the outcome depend on lookup order.
            if previous is not None and previous[0] != name:
                raise UsageError(
                    f"{cls.__qualname__}: {event_type.__qualname__} is applied by both "
                    f"{previous[1]}.{previous[0]} and {klass.__qualname__}.{name}; keep one "
                    f"(override {previous[0]} to change it in a subclass)",
                    code="duplicate-event-handler",
                )
            names[event_type] = (name, klass.__qualname__)
    return {event_type: getattr(cls, name) for event_type, (name, _) in names.items()}


class Aggregate(Generic[S]):
    """Base class for event-sourced aggregates.

    Subclasses name their state model as the type argument and set
    ``stream_prefix``; the stream of aggregate ``id`` is ``stream_prefix + id``.

    Class attributes:
        stream_prefix: Prefix of every stream id of this aggregate type (for
            example ``"account-"``). It is part of the stored data, so it must
            not change when the class is renamed; it is therefore required.
        snapshot_every: Take a snapshot after this many events have been
            replayed or recorded since the last one (``None``: never).
        snapshot_version: Schema version of the state; bump it when the state
            model changes so that older snapshots are ignored.
        state_type: The state model, taken from ``Aggregate[State]``.

    Attributes:
        id: The aggregate id.
        stream_id: The stream holding its events.
        state: The current state, changed only by event handlers.
    """

    stream_prefix: ClassVar[str] = ""
    snapshot_every: ClassVar[int | None] = None
    snapshot_version: ClassVar[int] = 1
    state_type: ClassVar[type[BaseModel] | None] = None
    _appliers: ClassVar[dict[type[Event], Applier]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        state_type = _state_type_of(cls)
        if state_type is not None:
            cls.state_type = state_type
        cls._appliers = _collect_appliers(cls)
        every = cls.snapshot_every
        if every is not None and (
            isinstance(every, bool) or not isinstance(every, int) or every < 1
        ):
            raise UsageError(
                f"{cls.__qualname__}.snapshot_every must be a positive int or None, not {every!r}",
                code="bad-snapshot-policy",
            )
        version = cls.snapshot_version
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise UsageError(
                f"{cls.__qualname__}.snapshot_version must be a positive int, not {version!r}",
                code="bad-snapshot-policy",
            )

    def __init__(self, aggregate_id: str) -> None:
        cls = type(self)
        if not cls.stream_prefix:
            raise UsageError(
                f"{cls.__qualname__} has no stream_prefix; set e.g. "
                f'stream_prefix = "{cls.__name__.lower()}-" on the class (it is stored in '
                "every stream id, so it must not follow class renames)",
                code="no-stream-prefix",
            )
        if not isinstance(aggregate_id, str) or not aggregate_id:
            raise UsageError(
                f"aggregate ids are non-empty strings, not {aggregate_id!r}; convert UUIDs "
                "with str()",
                code="bad-aggregate-id",
            )
        self.id = aggregate_id
        self.stream_id = validate_stream_id(cls.stream_id_for(aggregate_id))
        self.state: S = cls.initial_state()
        self._version = 0
        self._original_version = 0
        self._pending: list[Event] = []
        # Version of the snapshot this instance was restored from (0: none); the
        # repository compares it with ``snapshot_every`` to decide when to take one.
        self._snapshot_at = 0

    # -- construction ------------------------------------------------------------------

    @classmethod
    def stream_id_for(cls, aggregate_id: str) -> str:
        """The stream id of the aggregate with ``aggregate_id``."""
        return f"{cls.stream_prefix}{aggregate_id}"

    @classmethod
    def initial_state(cls) -> S:
        """The state of an aggregate before its first event.

        The default builds the state model with no arguments; override this when
        some field has no default.

        Raises:
            UsageError: No state model is declared, or it needs arguments.
        """
        state_type = cls.state_type
        if state_type is None:
            raise UsageError(
                f"{cls.__qualname__} declares no state model; write "
                f"class {cls.__name__}(Aggregate[{cls.__name__}State])",
                code="no-state-type",
            )
        try:
            return cast(S, state_type())
        except ValidationError as exc:
            raise UsageError(
                f"{state_type.__qualname__}() needs arguments: {exc.error_count()} field(s) "
                f"have no default; give them defaults or override "
                f"{cls.__qualname__}.initial_state()",
                code="no-initial-state",
            ) from exc

    @classmethod
    def restore(cls, aggregate_id: str, state: S, version: int) -> Self:
        """Build an aggregate from a snapshot of its state taken at ``version``."""
        aggregate = cls(aggregate_id)
        aggregate.state = state
        aggregate._version = aggregate._original_version = version
        aggregate._snapshot_at = version
        return aggregate

    def snapshot_state(self) -> dict[str, Any]:
        """The state in the JSON-compatible form a snapshot stores.

        Override together with `state_from_snapshot` when the state needs
        a custom stored form.
        """
        return self.state.model_dump(mode="json")

    @classmethod
    def state_from_snapshot(cls, data: Mapping[str, Any]) -> S:
        """Rebuild the state from what `snapshot_state` returned.

        Raises:
            pydantic.ValidationError: The data does not fit the current state model.
        """
        state_type = cls.state_type or type(cls.initial_state())  # the latter raises
        return cast(S, state_type.model_validate(data))

    # -- what the outside sees -----------------------------------------------------------

    @property
    def version(self) -> int:
        """Number of events applied so far, including recorded ones not yet saved."""
        return self._version

    @property
    def original_version(self) -> int:
        """The stream version the aggregate was loaded at (the expected version for saving)."""
        return self._original_version

    @property
    def pending_events(self) -> tuple[Event, ...]:
        """Events recorded since the aggregate was loaded or last saved, oldest first."""
        return tuple(self._pending)

    @property
    def is_new(self) -> bool:
        """True when the aggregate has no events at all, stored or recorded."""
        return self._version == 0

    # -- changing state --------------------------------------------------------------------

    def record(self, event: Event) -> None:
        """Apply a new event to the state and queue it for saving.

        Call it from command methods once the rules allow the change.

        Raises:
            UsageError: The aggregate has no handler for the event's class.
        """
        self._apply(event)
        self._pending.append(event)
        self._version += 1

    def replay(self, events: Iterable[Event]) -> None:
        """Apply events that are already stored (what repositories do when loading).

        Raises:
            UsageError: Events were recorded and not saved yet, or an event has no handler.
        """
        if self._pending:
            raise UsageError(
                f"{type(self).__qualname__} {self.id!r} has unsaved events; replay stored "
                "events before recording new ones",
                code="replay-after-record",
            )
        for event in events:
            self._apply(event)
            self._version += 1
            self._original_version += 1

    def _apply(self, event: Event) -> None:
        applier = type(self)._appliers.get(type(event))
        if applier is None:
            event_name = type(event).__name__
            raise UsageError(
                f"{type(self).__qualname__} has no handler for {event_name} "
                f"({event.event_type!r}); add a method decorated with @applies({event_name})",
                code="no-event-handler",
            )
        applier(self, event)

    def _mark_saved(self, version: int) -> None:
        """Called by the repository once the pending events are stored at ``version``."""
        self._pending.clear()
        self._version = self._original_version = version

    def __repr__(self) -> str:
        return (
            f"{type(self).__qualname__}(id={self.id!r}, version={self._version}, "
            f"pending={len(self._pending)})"
        )


@dataclass(frozen=True, slots=True)
class Decider(Generic[C_contra, T]):
    """The functional form of an aggregate: three values instead of a class.

    ``decide`` turns a command and the current state into new events (raising a
    ``DomainError`` to refuse), ``evolve`` folds one event into the state, and
    ``initial_state`` is the state of an empty stream. All three must be pure:
    the command bus may call ``decide`` again after a concurrency conflict.
    Register one with `cqrs_kit.CommandBus.register_decider`. Deciders are
    not snapshotted.

    Attributes:
        initial_state: State before the first event (treated as immutable).
        decide: ``(command, state) -> events``.
        evolve: ``(state, event) -> new state``.
    """

    initial_state: T
    decide: Callable[[C_contra, T], Sequence[Event]]
    evolve: Callable[[T, Event], T]

    def fold(self, events: Iterable[Event]) -> T:
        """The state after ``events``, starting from ``initial_state``."""
        state = self.initial_state
        for event in events:
            state = self.evolve(state, event)
        return state
