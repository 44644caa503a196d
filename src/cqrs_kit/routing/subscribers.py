"""Routed subscribers: one queue, one retry loop and one dead-letter path per subscriber.

A `Subscriber` is a handler plus the patterns that select its events.
A `SubscriberRuntime` runs one subscriber as a
`Consumer` over the event log, with its own
checkpoint (its "queue") and its own lease, so a slow or failing subscriber
never holds back another.

Delivery
--------
Matching events (their `RecordedEvent.to_document` against the
subscriber's patterns) are delivered at least once. An idempotency record
``{_id: "<subscriber>:<event id>", state: started|done|dead}`` is claimed
before the handler runs and marked ``done`` after, so a redelivery of a
finished event skips the handler; a crash between the effect and ``done``
reruns it with the same ``idempotency_key`` (see ``docs/routing.md``).

Failures and ordering
---------------------
A failed event is not retried in place, which would stall every stream
behind it. It is *parked*: written to the ``subscriber_parked`` collection
with its attempt count and due time, and the log checkpoint moves on. A
retry loop (in the same lease) re-attempts due parked events with
exponential backoff and jitter; after ``max_attempts`` the event goes to the
dead-letter queue.

With ``ordering: per-stream`` parked events are grouped by stream: while a
stream has a parked event, later events of *that* stream are parked behind it
(not attempted) in position order, other streams proceed. When the head
succeeds or is dead-lettered, the next one becomes the head and is attempted
at once, so the stream drains in order and then unblocks. With ``ordering:
none`` every parked event is its own group and holds back nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from cqrs_kit._mongo import DuplicateKey, MongoDatabase, adapt
from cqrs_kit.checkpoints import CheckpointStore, ConsumerState
from cqrs_kit.errors import TransientStoreError, UsageError
from cqrs_kit.events import RecordedEvent
from cqrs_kit.leases import LeaseManager
from cqrs_kit.logs import event_context
from cqrs_kit.metrics import get_metrics
from cqrs_kit.routing.dlq import DeadLetter, DeadLetterQueue, recorded_from_document
from cqrs_kit.routing.handlers import (
    MISSING,
    Delivery,
    RequestKind,
    compile_path,
    extract,
    inspect_handler,
)
from cqrs_kit.store import EventStore
from cqrs_kit.subscriptions import Subscription

log = logging.getLogger("cqrs_kit.routing.subscribers")

Handler = Callable[..., Awaitable[Any]]
#: ``(error type, message, traceback)`` of a failed attempt.
Failure = tuple[str, str, str]


class Matcher(Protocol):
    """What a subscriber needs from a pattern (``EventPattern`` satisfies it)."""

    def matches(self, document: Mapping[str, Any]) -> bool:
        """Whether ``document`` matches."""
        ...


class Ordering(StrEnum):
    """How a subscriber orders events around a failure."""

    PER_STREAM = "per-stream"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, and how far apart, a failing event is attempted.

    Attributes:
        max_attempts: Attempts before dead-lettering (1 means no retry).
        initial_delay: Seconds before the first retry.
        max_delay: Upper bound of any delay.
        multiplier: Growth of the delay per attempt.
        jitter: Fraction of each delay that is randomised (0 none, 1 "full jitter").
    """

    max_attempts: int = 5
    initial_delay: float = 1.0
    max_delay: float = 300.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise UsageError("max_attempts must be at least 1", code="bad-retry-policy")
        if not 0.0 <= self.jitter <= 1.0:
            raise UsageError("jitter must be between 0 and 1", code="bad-retry-policy")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** max(0, attempt - 1))
        return base - base * self.jitter * random.random()


class Subscriber:
    """A handler and the patterns that route events to it.

    Args:
        id: Unique subscriber id (its checkpoint, lease and idempotency scope).
        handler: ``async def handler(request[, delivery])``; see `inspect_handler`.
        patterns: The event patterns of the routes that name this subscriber;
            an event is delivered when any of them matches.
        routes: Names of those routes (for display).
        input: Request field → JSON path into the event document, like an
            EventBridge input transformer. Paths that are absent in an event
            leave the field out (so the model's default applies).
        retry: Retry policy.
        timeout: Seconds one attempt may take, or ``None`` for no limit.
        ordering: See `Ordering`.
        ordering_key: Overrides the per-stream grouping key (process managers
            group by correlation key).
    """

    def __init__(
        self,
        id: str,
        handler: Handler,
        *,
        patterns: Sequence[Matcher],
        routes: Sequence[str] = (),
        input: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = 30.0,
        ordering: Ordering | str = Ordering.PER_STREAM,
        ordering_key: Callable[[RecordedEvent], str] | None = None,
    ) -> None:
        if not id or ":" in id:
            raise UsageError(f"subscriber id {id!r} must be non-empty without ':'", code="bad-id")
        self.id = id
        self.handler = handler
        self.plan = inspect_handler(handler)
        self.patterns = tuple(patterns)
        self.routes = tuple(routes)
        self.input = dict(input) if input is not None else None
        self._input_steps = {k: compile_path(v) for k, v in (input or {}).items()}
        if self.plan.model is not None and self.input is not None:
            unknown = sorted(set(self.input) - set(self.plan.model.model_fields))
            if unknown:
                raise UsageError(
                    f"input fields {unknown} are not fields of {self.plan.model.__qualname__}",
                    code="bad-input-mapping",
                )
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.ordering = Ordering(ordering)
        self._ordering_key = ordering_key

    def matches(self, document: Mapping[str, Any]) -> bool:
        """Whether any of the subscriber's patterns matches the event document."""
        return any(p.matches(document) for p in self.patterns)

    def group_of(self, event: RecordedEvent) -> str:
        """The parking group: events in one group are delivered in order."""
        if self.ordering is Ordering.NONE:
            return f"event:{event.event_id}"
        if self._ordering_key is not None:
            return self._ordering_key(event)
        return event.stream_id

    def request_for(self, event: RecordedEvent) -> Any:
        """Build the handler's request from the event (raises when it cannot)."""
        kind = self.plan.kind
        if kind is RequestKind.RECORDED:
            return event
        payload: dict[str, Any] = dict(event.data)
        if self.input is not None:
            document = event.to_document()
            values = {name: extract(document, steps) for name, steps in self._input_steps.items()}
            payload = {name: value for name, value in values.items() if value is not MISSING}
        if kind is RequestKind.EVENT and self.input is None:
            decoded = event.event
            assert self.plan.model is not None
            if not isinstance(decoded, self.plan.model):
                raise TypeError(
                    f"{self.id}: handler expects {self.plan.model.__qualname__}, got "
                    f"{type(decoded).__qualname__} ({event.event_type})"
                )
            return decoded
        if self.plan.model is not None:
            return self.plan.model.model_validate(payload)
        return payload

    async def invoke(self, event: RecordedEvent, delivery: Delivery) -> None:
        """Run the handler once, within the timeout."""
        request = self.request_for(event)
        args = (request, delivery) if self.plan.wants_delivery else (request,)
        async with asyncio.timeout(self.timeout):  # None: no limit
            await self.handler(*args)


class ClaimState(StrEnum):
    """State of a (subscriber, event) idempotency record."""

    STARTED = "started"
    DONE = "done"
    DEAD = "dead"


class IdempotencyStore:
    """One record per (subscriber, event): ``started``, ``done`` or ``dead``.

    Args:
        database: A driver database object or an adapted one.
        collection: Collection name.
    """

    def __init__(self, database: Any, *, collection: str = "subscriber_deliveries") -> None:
        self.database: MongoDatabase = adapt(database)
        self._coll = self.database.collection(collection)

    async def ensure_indexes(self) -> None:
        """Create the index `prune` uses (idempotent)."""
        await self._coll.create_index([("state", 1), ("updated_at", 1)], name="state_time")

    async def claim(self, key: str, *, subscriber: str, event_id: str) -> tuple[ClaimState, int]:
        """Start an attempt; returns the record's state and the attempt number.

        ``DONE`` or ``DEAD`` means: do not run the handler.
        """
        now = time.time()
        try:
            doc = await self._coll.find_one_and_update(
                {"_id": key, "state": ClaimState.STARTED.value},
                {
                    "$set": {"state": ClaimState.STARTED.value, "updated_at": now},
                    "$inc": {"attempts": 1},
                    "$setOnInsert": {"subscriber": subscriber, "event_id": event_id},
                },
                upsert=True,
            )
        except DuplicateKey:
            doc = None  # the record exists but is finished: the upsert collided with it
        if doc is None:
            existing = await self._coll.find_one({"_id": key})
            if existing is None:  # pragma: no cover - deleted in between; try once more
                return await self.claim(key, subscriber=subscriber, event_id=event_id)
            return ClaimState(existing["state"]), int(existing.get("attempts", 0))
        return ClaimState.STARTED, int(doc["attempts"])

    async def finish(self, key: str, state: ClaimState) -> None:
        """Mark the record ``done`` or ``dead``."""
        await self._coll.update_one(
            {"_id": key}, {"$set": {"state": state.value, "updated_at": time.time()}}
        )

    async def reopen(self, key: str) -> bool:
        """Turn a ``dead`` record back into ``started`` (for an operator retry)."""
        matched, _, _ = await self._coll.update_one(
            {"_id": key, "state": ClaimState.DEAD.value},
            {"$set": {"state": ClaimState.STARTED.value, "updated_at": time.time()}},
        )
        return matched > 0

    async def state(self, key: str) -> ClaimState | None:
        """The record's state, or ``None`` when there is none."""
        doc = await self._coll.find_one({"_id": key}, projection={"state": 1})
        return ClaimState(doc["state"]) if doc else None

    async def prune(self, *, older_than: float) -> int:
        """Delete ``done`` records last touched before ``older_than`` (Unix seconds).

        Safe once no replay from a checkpoint older than that is expected.
        """
        return await self._coll.delete_many(
            {"state": ClaimState.DONE.value, "updated_at": {"$lt": older_than}}
        )


class SubscriberRuntime:
    """Runs one `Subscriber` over the event log; a ``Consumer``.

    Args:
        store: The event store to follow.
        subscriber: What to run.
        checkpoints: Where the subscriber's position and status live.
        leases: If given, only the lease holder runs this subscriber.
        dead_letters: The dead-letter queue (default: ``dead_letters`` collection).
        idempotency: The idempotency records (default: ``subscriber_deliveries``).
        parked_collection: Collection of parked (retrying or held back) events.
        batch_size: Events read from the log at once.
        poll_interval: Longest sleep of the log follower and of the retry loop.
    """

    def __init__(
        self,
        store: EventStore,
        subscriber: Subscriber,
        *,
        checkpoints: CheckpointStore | None = None,
        leases: LeaseManager | None = None,
        dead_letters: DeadLetterQueue | None = None,
        idempotency: IdempotencyStore | None = None,
        parked_collection: str = "subscriber_parked",
        batch_size: int = 50,
        poll_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.subscriber = subscriber
        db = store.database
        self.checkpoints = checkpoints or CheckpointStore(db)
        self.leases = leases
        self.dead_letters = dead_letters or DeadLetterQueue(db)
        self.idempotency = idempotency or IdempotencyStore(db)
        self._parked = db.collection(parked_collection)
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        # Groups (streams) with parked events. Loaded from the database when the
        # runtime takes over and kept in step by this runtime alone, which is safe
        # because only the lease holder parks or unparks this subscriber's events.
        self._blocked: set[str] = set()
        # Serialises "is the group blocked? then park behind" (the log follower)
        # with "head resolved: promote the next or unblock" (the retry loop); without
        # it an event could be parked behind a head that was just resolved and never
        # be promoted.
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._metrics = get_metrics()

    # -- Consumer protocol -----------------------------------------------------------------

    @property
    def name(self) -> str:
        """Checkpoint and lease name: ``subscriber:<id>``."""
        return f"subscriber:{self.subscriber.id}"

    @property
    def event_types(self) -> frozenset[str] | None:
        """All types: the patterns decide."""
        return None

    async def start_position(self) -> int:
        """The subscriber's checkpoint."""
        return await self.checkpoints.position(self.name)

    async def handle(self, events: Sequence[RecordedEvent], *, up_to: int) -> None:
        """Deliver matching events (or park them), then advance the checkpoint to ``up_to``."""
        for event in events:
            document = event.to_document()
            if not self.subscriber.matches(document):
                continue
            group = self.subscriber.group_of(event)
            async with self._lock:
                if group in self._blocked:
                    # Held back behind an earlier failing event of the same group.
                    await self._park(event, document, group, head=False, attempts=0, error=None)
                    continue
            await self._deliver_fresh(event, document, group)
        # Every matching event up to here is done, dead-lettered or durably parked,
        # so the log position can move on; a crash before this line replays the batch,
        # which the idempotency records and the parked _ids make harmless.
        await self.checkpoints.advance(self.name, up_to)

    # -- running ---------------------------------------------------------------------------

    async def ensure_indexes(self) -> None:
        """Create the indexes of the parked, idempotency and dead-letter collections."""
        await self._parked.create_index(
            [("subscriber", 1), ("head", 1), ("due_at", 1)], name="subscriber_head_due"
        )
        await self._parked.create_index(
            [("subscriber", 1), ("group", 1), ("position", 1)], name="subscriber_group_position"
        )
        await self.idempotency.ensure_indexes()
        await self.dead_letters.ensure_indexes()

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the log and retry parked events until ``stop`` (holding the lease, if any)."""
        if self.leases is None:
            await self._run_owned(stop, None)
            return
        async with self.leases.hold(self.name, stop=stop) as lost:
            if lost is None:
                return
            await self.checkpoints.set_status(
                self.name, state=ConsumerState.CATCHING_UP, owner=self.leases.owner
            )
            await self._run_owned(stop, lost)

    async def _run_owned(self, stop: asyncio.Event, lost: asyncio.Event | None) -> None:
        await self.load_blocked()
        halt = asyncio.Event()
        watchers = [asyncio.ensure_future(stop.wait())]
        if lost is not None:
            watchers.append(asyncio.ensure_future(lost.wait()))

        async def relay() -> None:
            await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
            halt.set()

        subscription = Subscription(
            self.store,
            self,
            checkpoints=self.checkpoints,
            batch_size=self.batch_size,
            poll_interval=self.poll_interval,
        )
        relay_task = asyncio.create_task(relay())
        loops = [
            asyncio.create_task(subscription.run(halt)),
            asyncio.create_task(self._retry_loop(halt)),
        ]
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # re-raise a crash (the worker restarts the runtime)
        finally:
            # Both loops must be over before this returns: a restarted runtime must
            # never overlap a follower of the previous one.
            halt.set()
            await asyncio.gather(*loops, return_exceptions=True)
            helpers: list[asyncio.Future[Any]] = [relay_task, *watchers]
            for helper in helpers:
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper

    async def load_blocked(self) -> None:
        """Read which groups have parked events (done when the runtime takes over)."""
        docs = await self._parked.find_list(
            {"subscriber": self.subscriber.id}, projection={"group": 1}
        )
        self._blocked = {d["group"] for d in docs}

    async def _retry_loop(self, halt: asyncio.Event) -> None:
        while not halt.is_set():
            self._wakeup.clear()
            try:
                handled = await self.retry_due()
                if handled:
                    continue
                wait = await self._seconds_to_next_due()
            except TransientStoreError as exc:
                log.warning("%s: database unavailable in retry loop (%s)", self.name, exc)
                wait = self.poll_interval
            waiters = [
                asyncio.ensure_future(self._wakeup.wait()),
                asyncio.ensure_future(halt.wait()),
            ]
            _, pending = await asyncio.wait(
                waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                waiter.cancel()

    async def _seconds_to_next_due(self) -> float:
        nxt = await self._parked.find_one(
            {"subscriber": self.subscriber.id, "head": True},
            sort=[("due_at", 1)],
            projection={"due_at": 1},
        )
        if nxt is None:
            return self.poll_interval
        return min(self.poll_interval, max(0.0, float(nxt["due_at"]) - time.time()))

    async def retry_due(self) -> int:
        """Attempt every parked head that is due now; returns how many were attempted."""
        attempted = 0
        while True:
            head = await self._parked.find_one(
                {"subscriber": self.subscriber.id, "head": True, "due_at": {"$lte": time.time()}},
                sort=[("due_at", 1)],
            )
            if head is None:
                return attempted
            attempted += 1
            try:
                await self._retry_parked(head)
            except TransientStoreError:
                raise
            except Exception:
                # Not the handler failing (that is recorded as an attempt) but the
                # entry itself: do not spin on it, and do not stop the other groups.
                log.exception("%s: cannot retry parked entry %s", self.name, head["_id"])
                await self._parked.update_one(
                    {"_id": head["_id"]},
                    {"$set": {"due_at": time.time() + self.subscriber.retry.max_delay}},
                )

    async def parked(self) -> list[dict[str, Any]]:
        """This subscriber's parked events, in position order (for status and tests)."""
        return await self._parked.find_list(
            {"subscriber": self.subscriber.id}, sort=[("position", 1)]
        )

    # -- delivery --------------------------------------------------------------------------

    def _key(self, event: RecordedEvent) -> str:
        return f"{self.subscriber.id}:{event.event_id}"

    async def _attempt(self, event: RecordedEvent) -> tuple[ClaimState, int, Failure | None]:
        """Claim, run the handler once, record the outcome.

        Returns the claim state before the attempt, the attempt number and the
        failure (``None`` on success or when the record was already finished).
        """
        key = self._key(event)
        state, attempt = await self.idempotency.claim(
            key, subscriber=self.subscriber.id, event_id=str(event.event_id)
        )
        if state is not ClaimState.STARTED:
            log.info("%s: event %s already %s; not delivered again", self.name, key, state.value)
            return state, attempt, None
        delivery = Delivery(self.subscriber.id, event, attempt, key)
        with event_context(event, consumer=self.name):
            try:
                await self.subscriber.invoke(event, delivery)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                tb = "".join(traceback.format_exception(exc))
                if isinstance(exc, TimeoutError):
                    exc_text = f"attempt timed out after {self.subscriber.timeout}s"
                else:
                    exc_text = str(exc)
                log.warning(
                    "%s: attempt %d on %s failed: %s: %s",
                    self.name,
                    attempt,
                    key,
                    type(exc).__name__,
                    exc_text,
                )
                self._metrics.record_retry(self.name)
                return state, attempt, (type(exc).__name__, exc_text, tb)
        await self.idempotency.finish(key, ClaimState.DONE)
        return state, attempt, None

    async def _deliver_fresh(
        self, event: RecordedEvent, document: dict[str, Any], group: str
    ) -> None:
        _, attempt, failure = await self._attempt(event)
        if failure is None:
            return
        if attempt >= self.subscriber.retry.max_attempts:
            await self._bury(event, document, failure, attempt, first_failed_at=time.time())
            return
        async with self._lock:
            await self._park(event, document, group, head=True, attempts=attempt, error=failure)
            self._blocked.add(group)
        self._wakeup.set()

    async def _park(
        self,
        event: RecordedEvent,
        document: dict[str, Any],
        group: str,
        *,
        head: bool,
        attempts: int,
        error: Failure | None,
    ) -> None:
        now = time.time()
        doc: dict[str, Any] = {
            "_id": self._key(event),
            "subscriber": self.subscriber.id,
            "group": group,
            "position": event.position,
            "head": head,
            "attempts": attempts,
            "due_at": now + self.subscriber.retry.delay(attempts) if head else None,
            "first_failed_at": now if error is not None else None,
            "error": f"{error[0]}: {error[1]}" if error is not None else None,
            "event": document,
        }
        # A duplicate _id means it was parked before a crash and is now replayed
        # from the log: it is already queued.
        with contextlib.suppress(DuplicateKey):
            await self._parked.insert_one(doc)

    async def _retry_parked(self, entry: Mapping[str, Any]) -> None:
        event = recorded_from_document(entry["event"], self.store.registry)
        state, attempt, failure = await self._attempt(event)
        if failure is None:
            if state is ClaimState.STARTED:
                log.info("%s: %s succeeded on attempt %d", self.name, entry["_id"], attempt)
            await self._resolve(entry)
            return
        if attempt >= self.subscriber.retry.max_attempts:
            first = entry.get("first_failed_at") or time.time()
            await self._bury(event, entry["event"], failure, attempt, first_failed_at=first)
            await self._resolve(entry)
            return
        update: dict[str, Any] = {
            "attempts": attempt,
            "due_at": time.time() + self.subscriber.retry.delay(attempt),
            "error": f"{failure[0]}: {failure[1]}",
        }
        if entry.get("first_failed_at") is None:
            update["first_failed_at"] = time.time()
        await self._parked.update_one({"_id": entry["_id"]}, {"$set": update})

    async def _resolve(self, entry: Mapping[str, Any]) -> None:
        """Remove a finished head; promote the next event of its group, or unblock the group."""
        group = entry["group"]
        async with self._lock:
            await self._parked.delete_one({"_id": entry["_id"]})
            following = await self._parked.find_one(
                {"subscriber": self.subscriber.id, "group": group}, sort=[("position", 1)]
            )
            if following is None:
                self._blocked.discard(group)
                return
            # Held-back events have not failed themselves: attempt the next one now.
            await self._parked.update_one(
                {"_id": following["_id"]}, {"$set": {"head": True, "due_at": time.time()}}
            )

    async def _bury(
        self,
        event: RecordedEvent,
        document: Mapping[str, Any],
        failure: Failure,
        attempts: int,
        *,
        first_failed_at: float,
    ) -> None:
        error_type, message, tb = failure
        await self.dead_letters.add(
            subscriber=self.subscriber.id,
            event=document,
            error_type=error_type,
            error=message,
            traceback=tb,
            attempts=attempts,
            first_failed_at=first_failed_at,
        )
        await self.idempotency.finish(self._key(event), ClaimState.DEAD)
        self._metrics.record_dead_letter(self.name)
        with event_context(event, consumer=self.name, traced=False):
            log.error(
                "%s: event %s (%s) dead-lettered after %d attempts: %s: %s",
                self.name,
                event.event_id,
                event.event_type,
                attempts,
                error_type,
                message,
            )

    async def redeliver(self, entry: DeadLetter) -> Failure | None:
        """Deliver a dead letter's event once more; ``None`` on success.

        The event goes to the handler outside the stream order (later events of
        its stream were delivered after it was dead-lettered).
        """
        event = entry.recorded(self.store.registry)
        key = self._key(event)
        await self.idempotency.reopen(key)
        state, _, failure = await self._attempt(event)
        if failure is not None:
            await self.idempotency.finish(key, ClaimState.DEAD)
            return failure
        if state is ClaimState.DEAD:  # pragma: no cover - reopen raced with a second retry
            return ("RoutingError", "the dead letter is being retried elsewhere", "")
        return None
