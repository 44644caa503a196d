"""Process managers (sagas): long-running reactions that keep state and issue commands.

A `ProcessManager` declares which events it reacts to and how each
event names the *instance* it belongs to (its correlation key):

    class Reservations(ProcessManager):
        state_type = ReservationState

        @reacts_to("rental.Reserved", correlate="$.data.rental_id", starts=True)
        async def reserved(self, state, event, ctx):
            ctx.send(ChargeDeposit(rental_id=event.rental_id))
            ctx.schedule(ReleaseReservation(rental_id=event.rental_id),
                         after=timedelta(minutes=15), key="payment-timeout")

        @reacts_to("payment.Received", correlate="$.data.rental_id")
        async def paid(self, state, event, ctx):
            ctx.cancel("payment-timeout")
            ctx.complete()

A `ProcessManagerRunner` runs it as a routed subscriber (same
at-least-once delivery, retries, dead letters and lease), with its events
ordered per instance rather than per stream.

State and effects in one write
------------------------------
Each instance is one document in ``process_states``:

    {_id: "<manager>:<correlation>", version, state, completed,
     applied: [<recent event ids>], outbox: [<commands to send, schedule, cancel>]}

Handling an event computes the new state and the commands to issue, then
writes both in *one* document update guarded by ``version`` (optimistic
concurrency; a single-document write is atomic on every deployment, so no
transaction is needed). Only then are the outbox entries carried out and the
outbox cleared. A crash at any point is repaired by redelivery: an event
already in ``applied`` does not change the state again, and a leftover
outbox is carried out again, where every entry is idempotent. Commands carry
a ``command_id`` derived from the manager, the event and their index, so the
command bus answers a repeat with the original result; scheduled commands
have ids derived the same way, so scheduling twice stores one.

Commands are stamped with ``causation_id`` = the triggering event's id and
``correlation_id`` = the event's correlation id, where the command class has
those fields (directly or in a ``metadata`` model).
"""

from __future__ import annotations

import inspect
import logging
import time
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from cqrs_kit._mongo import DuplicateKey, MongoDatabase, adapt
from cqrs_kit.errors import DomainError, RoutingError, UsageError
from cqrs_kit.events import RecordedEvent
from cqrs_kit.routing.handlers import Delivery, compile_path, extract
from cqrs_kit.routing.subscribers import Ordering, RetryPolicy, Subscriber
from cqrs_kit.scheduling import (
    ScheduledCommandStore,
    command_type_name,
    derived_id,
    resolve_command_type,
)

log = logging.getLogger("cqrs_kit.routing.process_managers")

S = TypeVar("S", bound=BaseModel)
Correlate = str | Callable[[RecordedEvent], Any]
Dispatch = Callable[[Any], Awaitable[Any]]

#: How many applied event ids an instance remembers for deduplication.
APPLIED_HISTORY = 200
_REACTION_ATTR = "__cqrs_kit_reaction__"


@dataclass(frozen=True, slots=True)
class Reaction:
    """What a ``@reacts_to`` method declared."""

    event_type: str
    method: str
    correlate: Callable[[RecordedEvent], Any]
    starts: bool


def _correlator(correlate: Correlate) -> Callable[[RecordedEvent], Any]:
    if callable(correlate):
        return correlate
    steps = compile_path(correlate)

    def by_path(event: RecordedEvent) -> Any:
        value = extract(event.to_document(), steps)
        if value is None or not isinstance(value, str | int):
            raise RoutingError(
                f"event {event.event_type} ({event.event_id}) has no usable correlation key "
                f"at {correlate}"
            )
        return value

    return by_path


def reacts_to(
    event_type: str, *, correlate: Correlate, starts: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a process-manager method as the reaction to ``event_type``.

    Args:
        event_type: The event type handled.
        correlate: A JSON path into the event document (``$.data.order_id``) or
            a function of the ``RecordedEvent``; its value names the instance.
        starts: Whether this event may start a new instance. Events for an
            instance that does not exist are ignored otherwise.

    The method is ``async def m(self, state, event, ctx) -> state | None``;
    ``event`` is the decoded domain event unless annotated ``RecordedEvent``.
    It must only compute: effects go through ``ctx`` (it may run again when
    two deliveries race on one instance).
    """
    fn = _correlator(correlate)

    def decorator(method: Callable[..., Any]) -> Callable[..., Any]:
        setattr(method, _REACTION_ATTR, (event_type, fn, starts))
        return method

    return decorator


class ProcessManager(Generic[S]):
    """Base class for process managers; see the module docstring.

    Attributes:
        state_type: The pydantic model of an instance's state; it must be
            constructible with no arguments (the state of a new instance).
        name: Default id when none is given by the routing file.
    """

    state_type: ClassVar[type[BaseModel]]
    name: ClassVar[str] = ""
    _reactions: ClassVar[dict[str, Reaction]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        reactions: dict[str, Reaction] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                declared = getattr(value, _REACTION_ATTR, None)
                if declared is None:
                    continue
                event_type, fn, starts = declared
                previous = reactions.get(event_type)
                if previous is not None and previous.method != attr and klass is cls:
                    raise UsageError(
                        f"{cls.__qualname__} reacts to {event_type!r} twice "
                        f"({previous.method} and {attr})",
                        code="duplicate-reaction",
                    )
                reactions[event_type] = Reaction(event_type, attr, fn, starts)
        cls._reactions = reactions
        if not cls.__dict__.get("name"):
            cls.name = cls.__name__

    @classmethod
    def handled_types(cls) -> frozenset[str]:
        """The event types this manager reacts to."""
        return frozenset(cls._reactions)

    @classmethod
    def handler_names(cls) -> dict[str, str]:
        """Method name by event type."""
        return {t: r.method for t, r in sorted(cls._reactions.items())}

    @classmethod
    def reaction(cls, event_type: str) -> Reaction | None:
        """The reaction declared for ``event_type``."""
        return cls._reactions.get(event_type)


class ProcessContext:
    """What a reaction uses to issue commands; effects happen after the state is saved.

    Attributes:
        manager: The process manager id.
        correlation: The instance's correlation key.
        event: The event being handled.
        now: The scheduler clock's time when the event was handled.
    """

    def __init__(self, manager: str, correlation: str, event: RecordedEvent, now: datetime) -> None:
        self.manager = manager
        self.correlation = correlation
        self.event = event
        self.now = now
        self.completed = False
        self.ops: list[dict[str, Any]] = []

    @property
    def instance_id(self) -> str:
        """``<manager>:<correlation>``."""
        return f"{self.manager}:{self.correlation}"

    def _stamped(self, command: BaseModel, command_id: str) -> dict[str, Any]:
        if not isinstance(command, BaseModel):
            raise UsageError("commands must be pydantic models", code="not-a-command")
        data = command.model_dump(mode="json")
        causation = str(self.event.event_id)
        correlation = self.event.metadata.correlation_id or causation
        if "command_id" in data:
            data["command_id"] = command_id
        # model_dump lists every field, so a key present here is a field of the model.
        for target in (data, data.get("metadata")):
            if isinstance(target, dict):
                if "causation_id" in target:
                    target["causation_id"] = causation
                if "correlation_id" in target:
                    target["correlation_id"] = correlation
        type(command).model_validate(data)  # fail now, not when the outbox runs
        return {"type": command_type_name(type(command)), "command": data}

    def send(self, command: BaseModel) -> None:
        """Dispatch ``command`` through the command bus once the state is saved."""
        command_id = derived_id(self.manager, str(self.event.event_id), "send", str(len(self.ops)))
        self.ops.append({"op": "send", **self._stamped(command, command_id)})

    def schedule(
        self,
        command: BaseModel,
        *,
        key: str,
        after: timedelta | float | None = None,
        at: datetime | None = None,
    ) -> None:
        """Schedule ``command`` (a timeout, a reminder) under ``key`` for later cancellation."""
        if (after is None) == (at is None):
            raise UsageError("pass exactly one of after= or at=", code="schedule-when")
        if at is None:
            seconds = after.total_seconds() if isinstance(after, timedelta) else float(after or 0)
            at = self.now + timedelta(seconds=seconds)
        ident = f"{self.instance_id}:{key}:{self.event.event_id}"
        self.ops.append(
            {
                "op": "schedule",
                "id": ident,
                "key": key,
                "due_at": at.timestamp(),
                **self._stamped(command, derived_id(ident)),
            }
        )

    def cancel(self, key: str) -> None:
        """Cancel this instance's pending scheduled commands under ``key``."""
        self.ops.append({"op": "cancel", "key": key})

    def complete(self) -> None:
        """Finish the instance: later events are ignored and pending schedules cancelled."""
        self.completed = True


@dataclass(frozen=True, slots=True)
class ProcessInstance:
    """A stored process-manager instance."""

    id: str
    correlation: str
    version: int
    state: Mapping[str, Any]
    completed: bool
    pending_ops: int


class _TypeMatcher:
    def __init__(self, types: frozenset[str]) -> None:
        self.types = types

    def matches(self, document: Mapping[str, Any]) -> bool:
        return document.get("type") in self.types


class ProcessManagerRunner:
    """Runs a `ProcessManager` against its state collection and the command bus.

    Args:
        manager: The process manager.
        database: Where ``process_states`` lives.
        dispatch: The command bus's dispatch callable.
        scheduled: Where timeouts are scheduled.
        id: The manager's id (default: ``manager.name``).
        retry: Retry policy of its deliveries.
        timeout: Seconds one delivery may take.
        collection: State collection name.
    """

    def __init__(
        self,
        manager: ProcessManager[Any],
        database: Any,
        *,
        dispatch: Dispatch,
        scheduled: ScheduledCommandStore,
        id: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = 30.0,
        collection: str = "process_states",
    ) -> None:
        self.manager = manager
        self.retry = retry
        self.timeout = timeout
        self.id = id or manager.name
        self.database: MongoDatabase = adapt(database)
        self.dispatch = dispatch
        self.scheduled = scheduled
        self._coll = self.database.collection(collection)
        self._wants_recorded: dict[str, bool] = {}

    def subscriber(self) -> Subscriber:
        """This manager as a routed subscriber, ordered per instance."""
        return Subscriber(
            self.id,
            self.handle,
            patterns=[_TypeMatcher(self.manager.handled_types())],
            routes=["(process manager)"],
            retry=self.retry,
            timeout=self.timeout,
            ordering=Ordering.PER_STREAM,
            ordering_key=self._group,
        )

    def _group(self, event: RecordedEvent) -> str:
        # Events of one instance are delivered in order. An event whose key cannot
        # be read falls back to its stream; its delivery then fails with the reason.
        reaction = self.manager.reaction(event.event_type)
        try:
            assert reaction is not None
            return f"{self.id}:{reaction.correlate(event)}"
        except Exception:
            return f"stream:{event.stream_id}"

    async def load(self, correlation: str) -> ProcessInstance | None:
        """The stored instance for ``correlation``, if any."""
        doc = await self._coll.find_one({"_id": f"{self.id}:{correlation}"})
        if doc is None:
            return None
        return ProcessInstance(
            id=doc["_id"],
            correlation=doc["correlation"],
            version=int(doc["version"]),
            state=doc["state"],
            completed=bool(doc.get("completed")),
            pending_ops=len(doc.get("outbox") or []),
        )

    async def handle(self, event: RecordedEvent, delivery: Delivery) -> None:
        """Apply one event to its instance, save, then carry out the outbox."""
        reaction = self.manager.reaction(event.event_type)
        if reaction is None:
            return
        correlation = str(reaction.correlate(event))
        instance_id = f"{self.id}:{correlation}"
        event_id = str(event.event_id)
        for _ in range(10):
            doc = await self._coll.find_one({"_id": instance_id})
            if doc is not None and doc.get("outbox"):
                await self._flush(doc)  # effects of the previous event first, in order
            if doc is not None and event_id in doc.get("applied", []):
                return  # applied before a crash or by a racing delivery; effects flushed
            if doc is not None and doc.get("completed"):
                log.info("%s: %s is completed; ignoring %s", self.id, instance_id, event_id)
                return
            if doc is None and not reaction.starts:
                log.info("%s: no instance %s; ignoring %s", self.id, instance_id, event_id)
                return
            ctx = ProcessContext(self.id, correlation, event, self.scheduled.clock.now())
            state_type = type(self.manager).state_type
            state = state_type.model_validate(doc["state"]) if doc else state_type()
            result = await getattr(self.manager, reaction.method)(
                state, self._event_argument(reaction, event), ctx
            )
            new_state = result if isinstance(result, BaseModel) else state
            ops = list(ctx.ops)
            if ctx.completed:
                ops.append({"op": "cancel", "key": None})
            version = int(doc["version"]) + 1 if doc else 1
            applied = [*(doc.get("applied", []) if doc else []), event_id][-APPLIED_HISTORY:]
            fields = {
                "version": version,
                "state": new_state.model_dump(mode="json"),
                "completed": ctx.completed,
                "applied": applied,
                "outbox": ops,
                "updated_at": time.time(),
            }
            if doc is None:
                try:
                    await self._coll.insert_one(
                        {
                            "_id": instance_id,
                            "manager": self.id,
                            "correlation": correlation,
                            **fields,
                        }
                    )
                except DuplicateKey:
                    continue  # another delivery started the instance: re-read and re-apply
            else:
                matched, _, _ = await self._coll.update_one(
                    {"_id": instance_id, "version": doc["version"]}, {"$set": fields}
                )
                if not matched:
                    continue  # changed since we read it: re-read and re-apply
            await self._flush({"_id": instance_id, "version": version, "outbox": ops})
            return
        raise RoutingError(f"{self.id}: instance {instance_id} kept changing; will retry")

    def _event_argument(self, reaction: Reaction, event: RecordedEvent) -> Any:
        wants = self._wants_recorded.get(reaction.method)
        if wants is None:
            method = getattr(self.manager, reaction.method)
            params = list(inspect.signature(method).parameters)
            try:
                hints = typing.get_type_hints(method)
            except Exception:
                hints = {}
            wants = len(params) >= 2 and hints.get(params[1]) is RecordedEvent
            self._wants_recorded[reaction.method] = wants
        return event if wants else event.event

    async def _flush(self, doc: Mapping[str, Any]) -> None:
        instance_id = doc["_id"]
        for op in doc.get("outbox") or []:
            kind = op["op"]
            if kind == "cancel":
                await self.scheduled.cancel_group(instance_id, key=op.get("key"))
                continue
            command = resolve_command_type(op["type"]).model_validate(op["command"])
            if kind == "schedule":
                await self.scheduled.schedule(
                    command,
                    at=datetime.fromtimestamp(float(op["due_at"]), UTC),
                    id=op["id"],
                    group=instance_id,
                    key=op["key"],
                )
                continue
            try:
                await self.dispatch(command)
            except DomainError as exc:
                # A rejection is an answer, not a fault: retrying gets the same answer.
                log.warning("%s: %s rejected %s: %s", self.id, instance_id, op["type"], exc)
        await self._coll.update_one(
            {"_id": instance_id, "version": doc["version"]}, {"$set": {"outbox": []}}
        )

    async def ensure_indexes(self) -> None:
        """Create the index used to list a manager's instances (idempotent)."""
        await self._coll.create_index([("manager", 1), ("completed", 1)], name="manager_completed")
