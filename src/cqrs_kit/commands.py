"""Commands and the command bus: load an aggregate, run the handler, append, once.

A `Command` is a pydantic model with a ``command_id`` and
`CommandMetadata`. A `CommandBus` maps each command class to one
handler; dispatching loads the aggregate the command addresses through a
`Repository`, runs the handler (which calls the
aggregate's command methods), and appends the recorded events with the
version the aggregate was loaded at as ``expected_version``:

    bus = CommandBus(store)

    @bus.handles(Deposit, aggregate=Account, aggregate_id=lambda c: c.account_id)
    async def deposit(command: Deposit, account: Account) -> None:
        account.deposit(command.amount)

    result = await bus.dispatch(Deposit(account_id="a-1", amount=Decimal(5)))

Idempotency without a second write
----------------------------------
The ids of a command's events are derived from the command id
(``uuid5(command_id, index)``, see `derive_event_id`). Before running the
handler, the bus asks the store for the commit holding the first derived id:
when there is one, the command was applied before (by this process or
another, however long ago, however far the stream has moved since), and the
bus answers with that commit's events without running the handler against
today's state. Two copies of one command racing each other both miss that
check, but they append the same event ids: the store keeps the first commit
and answers the second append with ``replayed=True``. A command that records
no events leaves no trace, so a repeat of it runs again.

Retries
-------
A `ConcurrencyError` means another writer appended to
the stream between load and append. The bus reloads and runs the handler
again, up to ``max_retries`` times, sleeping a random ("full jitter") delay
that doubles per attempt so that colliding writers spread out. A
`DomainError` is the domain's answer, not a
transient condition, and is never retried.

Metadata
--------
Every event gets ``causation_id`` = the command id, ``correlation_id`` = the
command's correlation id (or the command id when it starts a conversation),
``principal`` and the headers of the command, plus the current trace context.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from cqrs_kit.aggregates import Aggregate, Decider
from cqrs_kit.errors import (
    ConcurrencyError,
    DomainError,
    DuplicateEventError,
    HandlerNotFoundError,
    UsageError,
)
from cqrs_kit.events import Event, EventMetadata, NewEvent
from cqrs_kit.logs import log_context
from cqrs_kit.metrics import get_metrics
from cqrs_kit.repository import Repository, StreamStore
from cqrs_kit.snapshots import SnapshotStore
from cqrs_kit.store import AppendResult
from cqrs_kit.tracing import TRACEPARENT, current_trace

log = logging.getLogger("cqrs_kit.commands")

C = TypeVar("C", bound="Command")
A = TypeVar("A", bound=Aggregate[Any])
S = TypeVar("S")

#: A handler for an aggregate command: ``(command, aggregate) -> None``, sync or async.
AggregateHandler = Callable[[C, A], Awaitable[None] | None]


class CommandMetadata(BaseModel):
    """Who sent a command, and in which conversation.

    Attributes:
        correlation_id: Ties together everything caused by one user action;
            defaults to the command id in the events when not set.
        causation_id: The id of the event or command that caused this command.
        principal: The user or service on whose behalf the command runs.
        headers: Free-form string headers copied into every event (tenant,
            trace context, ...).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    correlation_id: str | None = None
    causation_id: str | None = None
    principal: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)


class Command(BaseModel):
    """Base class for commands: a request to change one aggregate.

    ``command_id`` identifies the *intent*: a client retrying a request sends the
    same id, and the bus applies it once. Leave it out to get a fresh one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    metadata: CommandMetadata = Field(default_factory=CommandMetadata)


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What a dispatched command did.

    Attributes:
        command_id: The command's id.
        stream_id: The stream the command addressed.
        version: The stream's version after the command's events (the current
            version when it recorded none).
        position: Global position of the command's last event; ``None`` when it
            recorded none. Read models at or past it reflect the command.
        events: The events the command recorded, in order.
        replayed: True when the command had been applied before and this is the
            first result, returned again.
    """

    command_id: uuid.UUID
    stream_id: str
    version: int
    position: int | None
    events: tuple[Event, ...]
    replayed: bool = False


def derive_event_id(command_id: uuid.UUID, index: int) -> uuid.UUID:
    """The id of the ``index``-th event (from 0) recorded by command ``command_id``."""
    return uuid.uuid5(command_id, f"event-{index}")


@dataclass(frozen=True, slots=True)
class _AggregateRoute:
    aggregate_type: type[Aggregate[Any]]
    aggregate_id: Callable[[Any], str]
    handler: Callable[[Any, Any], Awaitable[None] | None]

    def stream_id(self, command: Command) -> str:
        return self.aggregate_type.stream_id_for(self.aggregate_id(command))


@dataclass(frozen=True, slots=True)
class _DeciderRoute:
    decider: Decider[Any, Any]
    stream_of: Callable[[Any], str]

    def stream_id(self, command: Command) -> str:
        return self.stream_of(command)


_Route = _AggregateRoute | _DeciderRoute


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One run of a handler: what it recorded and, if anything, what the append stored."""

    stream_id: str
    version: int
    events: list[Event]
    appended: AppendResult | None


class CommandBus:
    """Dispatches commands to their handlers, once each.

    Args:
        store: The event store (or any `StreamStore`).
        snapshots: Where aggregates that set ``snapshot_every`` keep snapshots.
        max_retries: How often a handler is re-run after a concurrency conflict
            before the ``ConcurrencyError`` is raised.
        retry_delay: Base of the random backoff between retries, in seconds.
    """

    #: Upper bound of one backoff sleep, in seconds.
    max_retry_delay: ClassVar[float] = 0.5

    def __init__(
        self,
        store: StreamStore,
        *,
        snapshots: SnapshotStore | None = None,
        max_retries: int = 3,
        retry_delay: float = 0.005,
    ) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise UsageError(
                f"max_retries must be an int >= 0, not {max_retries!r}", code="bad-retry-policy"
            )
        if retry_delay < 0:
            raise UsageError(
                f"retry_delay must not be negative (got {retry_delay})", code="bad-retry-policy"
            )
        self.store = store
        self.snapshots = snapshots
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self._routes: dict[type[Command], _Route] = {}
        self._repositories: dict[type[Aggregate[Any]], Repository[Any]] = {}
        self._metrics = get_metrics()

    # -- registration ----------------------------------------------------------------------

    def register(
        self,
        command_type: type[C],
        handler: AggregateHandler[C, A],
        *,
        aggregate: type[A],
        aggregate_id: Callable[[C], str] | None = None,
    ) -> None:
        """Route ``command_type`` to ``handler``, which acts on one ``aggregate``.

        Args:
            command_type: The command class.
            handler: ``(command, aggregate) -> None``, a function or a coroutine function.
            aggregate: The aggregate class the command addresses.
            aggregate_id: Returns the aggregate id from a command; by default the
                command's ``aggregate_id`` field or property.

        Raises:
            UsageError: The command type already has a handler, is not a
                ``Command``, or names no aggregate id.
        """
        self._check_new(command_type)
        if not (isinstance(aggregate, type) and issubclass(aggregate, Aggregate)):
            raise UsageError(
                f"aggregate= takes an Aggregate subclass, not {aggregate!r}",
                code="not-an-aggregate",
            )
        try:
            signature = inspect.signature(handler)
        except (TypeError, ValueError):  # some builtins and C callables have none
            signature = None
        if signature is not None:
            try:
                signature.bind(None, None)
            except TypeError:
                raise UsageError(
                    f"the handler for {command_type.__name__} must take (command, aggregate), "
                    f"not {signature}",
                    code="bad-handler-signature",
                ) from None
        self._routes[command_type] = _AggregateRoute(
            aggregate, aggregate_id or _default_aggregate_id(command_type), handler
        )

    def handles(
        self,
        command_type: type[C],
        *,
        aggregate: type[A],
        aggregate_id: Callable[[C], str] | None = None,
    ) -> Callable[[AggregateHandler[C, A]], AggregateHandler[C, A]]:
        """Decorator form of `register`."""

        def decorator(handler: AggregateHandler[C, A]) -> AggregateHandler[C, A]:
            self.register(command_type, handler, aggregate=aggregate, aggregate_id=aggregate_id)
            return handler

        return decorator

    def register_decider(
        self,
        command_type: type[C],
        decider: Decider[C, S],
        *,
        stream_id: Callable[[C], str],
    ) -> None:
        """Route ``command_type`` to a functional `Decider`.

        Args:
            command_type: The command class.
            decider: Decides the events from the command and the stream's state.
            stream_id: Returns the stream the command addresses.

        Raises:
            UsageError: The command type already has a handler or is not a ``Command``.
        """
        self._check_new(command_type)
        self._routes[command_type] = _DeciderRoute(decider, stream_id)

    def _check_new(self, command_type: type[Any]) -> None:
        if not (isinstance(command_type, type) and issubclass(command_type, Command)):
            raise UsageError(
                f"{command_type!r} is not a Command subclass; derive command classes "
                "from cqrs_kit.Command",
                code="not-a-command",
            )
        if command_type in self._routes:
            raise UsageError(
                f"{command_type.__qualname__} already has a handler; a command type has "
                "exactly one (remove the second registration)",
                code="duplicate-command-handler",
            )

    def with_store(
        self, store: StreamStore, *, snapshots: SnapshotStore | None = None
    ) -> CommandBus:
        """A bus with this bus's handlers and retry settings over another store (tests)."""
        other = CommandBus(
            store, snapshots=snapshots, max_retries=self.max_retries, retry_delay=self.retry_delay
        )
        other._routes = dict(self._routes)
        return other

    def repository(self, aggregate_type: type[A]) -> Repository[A]:
        """The repository this bus loads and saves ``aggregate_type`` with."""
        repository = self._repositories.get(aggregate_type)
        if repository is None:
            repository = Repository(self.store, aggregate_type, snapshots=self.snapshots)
            self._repositories[aggregate_type] = repository
        return repository

    def stream_id_for(self, command: Command) -> str:
        """The stream ``command`` addresses.

        Raises:
            HandlerNotFoundError: No handler is registered for the command's type.
        """
        return self._route(command).stream_id(command)

    def _route(self, command: Command) -> _Route:
        if not isinstance(command, Command):
            raise UsageError(
                f"dispatch() takes a Command, not {type(command).__qualname__}",
                code="not-a-command",
            )
        route = self._routes.get(type(command))
        if route is None:
            raise HandlerNotFoundError(type(command).__qualname__)
        return route

    # -- dispatching -----------------------------------------------------------------------

    async def dispatch(self, command: Command) -> CommandResult:
        """Handle ``command`` once: run its handler and store the events it records.

        Returns:
            The stream, version, position and events of the command; the first
            result again (``replayed=True``) when the command id was applied before.

        Raises:
            HandlerNotFoundError: No handler is registered for the command's type.
            DomainError: The handler refused the command (never retried).
            ConcurrencyError: The stream kept changing through ``max_retries`` retries.
        """
        route = self._route(command)
        name = type(command).__qualname__
        metadata = self._event_metadata(command)
        started = time.perf_counter()
        outcome = "error"
        try:
            with log_context(
                correlation_id=metadata.correlation_id,
                causation_id=metadata.causation_id,
                command_type=name,
                stream_id=route.stream_id(command),
            ):
                result = await self._dispatch(route, command, metadata)
            outcome = "replayed" if result.replayed else "ok"
            return result
        except DomainError:
            outcome = "rejected"
            raise
        finally:
            self._metrics.record_command(name, outcome, time.perf_counter() - started)

    async def _dispatch(
        self, route: _Route, command: Command, metadata: EventMetadata
    ) -> CommandResult:
        first_id = derive_event_id(command.command_id, 0)
        # Applied before? Then answer with that result, whatever the stream looks like
        # now: running the handler again against newer state could decide differently.
        # A command's events are stored as one append, so its first event id is the
        # commit's primary key.
        earlier = await self.store.find_commit(first_id, first=True)
        if earlier is not None:
            return await self._replay(command, earlier)
        attempt = 0
        while True:
            try:
                run = await self._attempt(route, command, metadata)
            except DomainError:
                raise
            except ConcurrencyError as exc:
                if attempt >= self.max_retries:
                    raise
                attempt += 1
                delay = random.uniform(0, min(self.max_retry_delay, self.retry_delay * 2**attempt))
                log.debug("%s; retry %d of %d", exc, attempt, self.max_retries)
                await asyncio.sleep(delay)
                continue
            except DuplicateEventError:
                # A concurrent copy of this command stored a batch that differs from
                # ours (a handler that is not deterministic); the first one stands.
                earlier = await self.store.find_commit(first_id, first=True)
                if earlier is None:
                    raise
                return await self._replay(command, earlier)
            if run.appended is not None and run.appended.replayed:
                # A concurrent copy of this command won; return what it stored.
                return await self._replay(command, run.appended)
            return CommandResult(
                command_id=command.command_id,
                stream_id=run.stream_id,
                version=run.appended.version if run.appended else run.version,
                position=run.appended.position if run.appended else None,
                events=tuple(run.events),
            )

    async def _attempt(self, route: _Route, command: Command, metadata: EventMetadata) -> _Attempt:
        if isinstance(route, _AggregateRoute):
            repository = self.repository(route.aggregate_type)
            aggregate = await repository.load(route.aggregate_id(command))
            returned = route.handler(command, aggregate)
            if inspect.isawaitable(returned):
                await returned
            events = list(aggregate.pending_events)
            if not events:
                return _Attempt(aggregate.stream_id, aggregate.version, events, None)
            ids = [derive_event_id(command.command_id, n) for n in range(len(events))]
            appended = await repository.save(aggregate, event_ids=ids, metadata=metadata)
            return _Attempt(aggregate.stream_id, appended.version, events, appended)

        stream_id = route.stream_id(command)
        decider = route.decider
        state = decider.initial_state
        version = 0
        async for recorded in self.store.read_stream(stream_id):
            state = decider.evolve(state, recorded.event)
            version = recorded.stream_version
        events = list(decider.decide(command, state))
        if not events:
            return _Attempt(stream_id, version, events, None)
        batch = [
            NewEvent(event, event_id=derive_event_id(command.command_id, n), metadata=metadata)
            for n, event in enumerate(events)
        ]
        appended = await self.store.append(stream_id, batch, expected_version=version)
        return _Attempt(stream_id, appended.version, events, appended)

    async def _replay(self, command: Command, earlier: AppendResult) -> CommandResult:
        """The result of an earlier run, rebuilt from the commit it stored."""
        # Positions within one commit are contiguous, so the commit's size is known.
        count = earlier.position - earlier.first_position + 1
        first_version = earlier.version - count + 1
        events = tuple(
            [
                recorded.event
                async for recorded in self.store.read_stream(
                    earlier.stream_id, from_version=first_version, limit=count
                )
            ]
        )
        log.debug("command %s was applied before; returning its result", command.command_id)
        return CommandResult(
            command_id=command.command_id,
            stream_id=earlier.stream_id,
            version=earlier.version,
            position=earlier.position,
            events=events,
            replayed=True,
        )

    @staticmethod
    def _event_metadata(command: Command) -> EventMetadata:
        command_meta = command.metadata
        headers = dict(command_meta.headers)
        trace = current_trace()
        if trace is not None and TRACEPARENT not in {key.lower() for key in headers}:
            headers.update(trace.headers())
        return EventMetadata(
            correlation_id=command_meta.correlation_id or str(command.command_id),
            causation_id=str(command.command_id),
            principal=command_meta.principal,
            headers=headers,
        )


def _default_aggregate_id(command_type: type[Command]) -> Callable[[Any], str]:
    """``command.aggregate_id``, after checking the command type has one."""
    if "aggregate_id" not in command_type.model_fields and not isinstance(
        getattr(command_type, "aggregate_id", None), property
    ):
        raise UsageError(
            f"{command_type.__qualname__} has no aggregate_id field or property; pass "
            f"aggregate_id=lambda command: command.<id field> when registering its handler",
            code="no-aggregate-id",
        )

    def aggregate_id(command: Any) -> str:
        return str(command.aggregate_id)

    return aggregate_id
