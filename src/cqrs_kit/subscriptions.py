"""Subscriptions: follow the event log from a checkpoint, forever, one runner at a time.

A `Subscription` feeds a `Consumer` (a projector, a routed
subscriber) every event after the consumer's stored position, in global
order, then keeps following new events live.

Order and completeness come from the store alone: the runtime always reads
``read_all(after=position)``, whose positions are contiguous and become
visible in commit order. The change stream on the event collection is only a
*doorbell* that says "something was appended"; its arrival order and
contents are never trusted. That is why a lost resume token (history rolled
off the oplog), an invalidated stream (collection dropped or renamed) or a
backend without change streams (mongomock-motor) costs latency, never
events: the runtime catches up by position and, where it can, reopens the
stream. It also polls every ``poll_interval`` as a safety net.

The doorbell is opened *before* each catch-up, so an append that lands
between the end of a catch-up and the next wait still rings it.

When the consumer fails on a batch, the runtime retries event by event to
find the failing one, records the error (message, position, event id) in the
checkpoint document for ``status`` readers, and retries that event with
exponential backoff. It never skips it: a consumer that wants to give up on
an event (dead-letter it) does so itself and returns normally.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cqrs_kit.checkpoints import CheckpointStore, ConsumerError, ConsumerState
from cqrs_kit.errors import ChangeStreamHistoryLostError, TransientStoreError
from cqrs_kit.events import RecordedEvent
from cqrs_kit.leases import LeaseManager
from cqrs_kit.logs import log_context
from cqrs_kit.metrics import get_metrics
from cqrs_kit.store import EventStore

log = logging.getLogger("cqrs_kit.subscriptions")


@runtime_checkable
class Consumer(Protocol):
    """Something that handles events in order and remembers how far it got.

    ``handle`` must make the batch's effects and the new position durable
    together (in one transaction, or with writes that are idempotent per
    position), so that a crash at any point neither loses nor repeats an
    effect. Raising means "not handled": the runtime will retry.
    """

    @property
    def name(self) -> str:
        """Unique name; also the checkpoint and lease key."""
        ...

    @property
    def event_types(self) -> frozenset[str] | None:
        """Types this consumer wants, or ``None`` for all."""
        ...

    async def start_position(self) -> int:
        """The last position already handled (0 when starting fresh)."""
        ...

    async def handle(self, events: Sequence[RecordedEvent], *, up_to: int) -> None:
        """Handle ``events`` and durably record ``up_to`` as the new position.

        ``up_to`` can be past the last event in ``events`` when events of
        other types were skipped over.
        """
        ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter.

    Attributes:
        initial: Delay before the first retry, in seconds.
        maximum: Upper bound for any delay.
        multiplier: Growth factor per attempt.
    """

    initial: float = 0.2
    maximum: float = 30.0
    multiplier: float = 2.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        ceiling = min(self.maximum, self.initial * self.multiplier ** max(0, attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True, slots=True)
class Lag:
    """How far a consumer is behind the head of the log.

    Attributes:
        position: The consumer's position.
        head: The log's head position.
        events: ``head - position``.
        seconds: Age of the oldest event not yet handled (0 when caught up).
    """

    position: int
    head: int
    events: int
    seconds: float


async def measure_lag(
    store: EventStore, position: int, *, head: int | None = None, now: float | None = None
) -> Lag:
    """Compute the lag of a consumer at ``position``.

    Args:
        store: The event store.
        position: The consumer's position.
        head: The log's head, when already known (read from the store otherwise).
        now: The current time in Unix seconds (default: the system clock).
    """
    if head is None:
        head = await store.head_position()
    seconds = 0.0
    if head > position:
        async for oldest in store.read_all(after=position, limit=1, strict=False):
            current = time.time() if now is None else now
            seconds = max(0.0, current - oldest.recorded_at.timestamp())
    return Lag(position=position, head=head, events=max(0, head - position), seconds=seconds)


class _Doorbell:
    """Rings when the event collection sees an insert (change stream), if it can."""

    def __init__(self, store: EventStore, checkpoints: CheckpointStore, name: str) -> None:
        self._store = store
        self._checkpoints = checkpoints
        self._name = name
        self.rung = asyncio.Event()
        self.token: Mapping[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._pipeline: list[dict[str, Any]] = [{"$match": {"operationType": "insert"}}]
        scope = json.dumps([store.collection_name, self._pipeline], sort_keys=True)
        self.scope = hashlib.sha256(scope.encode()).hexdigest()[:16]
        self.opened = asyncio.Event()

    async def start(self) -> bool:
        """Start watching; returns False when the backend has no change streams."""
        if not (await self._store.database.capabilities()).change_streams:
            return False
        saved = await self._checkpoints.load(self._name)
        token = None
        if saved is not None and saved.resume_token and saved.token_scope == self.scope:
            token = saved.resume_token
        self._task = asyncio.create_task(self._watch(token), name=f"doorbell:{self._name}")
        # Wait until the stream is open, so nothing appended from now on is missed.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.opened.wait(), 10)
        return True

    async def _watch(self, token: Mapping[str, Any] | None) -> None:
        events = self._store.database.collection(self._store.collection_name)
        while True:
            try:
                async with events.watch(self._pipeline, resume_after=token) as stream:
                    self.opened.set()
                    while True:
                        change = await stream.try_next()
                        if change is None:
                            continue
                        if change.get("operationType") == "invalidate":
                            log.warning(
                                "%s: change stream invalidated (collection dropped or "
                                "renamed); reopening and catching up by position",
                                self._name,
                            )
                            token = None
                            self.rung.set()
                            break
                        token = stream.resume_token
                        self.token = token
                        self.rung.set()
            except ChangeStreamHistoryLostError as exc:
                log.warning(
                    "%s: resume token no longer valid (%s); catching up by position "
                    "from the checkpoint and reopening the change stream",
                    self._name,
                    exc,
                )
                token = None
                self.token = None
                self.rung.set()
            except TransientStoreError as exc:
                log.warning("%s: change stream interrupted (%s); reopening", self._name, exc)
                self.rung.set()
                await asyncio.sleep(1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a driver error we cannot classify: fall back to polling
                log.warning("%s: change stream failed (%r); polling instead", self._name, exc)
                self.opened.set()
                return

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Subscription:
    """Runs one consumer over the event log.

    Args:
        store: The event store to follow.
        consumer: What handles the events.
        checkpoints: Where status (and resume tokens) are recorded.
        leases: If given, only the lease holder runs; others wait to take over.
        batch_size: Events handed to the consumer at once when it keeps up.
        poll_interval: Seconds between safety polls (the only wake-up on
            backends without change streams).
        backoff: Delays between retries of a failing event.
        max_batch_size: Largest batch while catching up (default: ten times
            ``batch_size``). Each full batch doubles the next one up to this, so
            a consumer far behind pays the per-batch round trips and read-model
            rewrites fewer times; the first batch that is not full resets it.
    """

    def __init__(
        self,
        store: EventStore,
        consumer: Consumer,
        *,
        checkpoints: CheckpointStore,
        leases: LeaseManager | None = None,
        batch_size: int = 200,
        poll_interval: float = 1.0,
        backoff: Backoff | None = None,
        max_batch_size: int | None = None,
    ) -> None:
        self.store = store
        self.consumer = consumer
        self.checkpoints = checkpoints
        self.leases = leases
        self.batch_size = batch_size
        self.max_batch_size = max(batch_size, max_batch_size or 10 * batch_size)
        self._limit = batch_size
        self.poll_interval = poll_interval
        self.backoff = backoff or Backoff()
        self.position = 0
        self._failures = 0
        self._faulted_at: int | None = None
        self._metrics = get_metrics()

    @property
    def name(self) -> str:
        """The consumer's name."""
        return self.consumer.name

    async def catch_up(self, *, until: int | None = None, stop: asyncio.Event | None = None) -> int:
        """Handle everything up to the head (or ``until``) once, then return the position.

        A failing event is retried with backoff until it succeeds or ``stop`` is set.
        """
        self.position = await self.consumer.start_position()
        target = until if until is not None else await self.store.head_position()
        while self.position < target and not (stop is not None and stop.is_set()):
            progressed = await self._step(stop)
            if not progressed:
                break
        return self.position

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the log until ``stop`` is set (holding the lease, if configured)."""
        if self.leases is None:
            await self._follow(stop, lost=None)
            return
        async with self.leases.hold(self.name, stop=stop) as lost:
            if lost is None:
                return
            await self.checkpoints.set_status(
                self.name, state=ConsumerState.CATCHING_UP, owner=self.leases.owner
            )
            await self._follow(stop, lost=lost)

    async def _follow(self, stop: asyncio.Event, lost: asyncio.Event | None) -> None:
        doorbell = _Doorbell(self.store, self.checkpoints, self.name)
        live = await doorbell.start()
        interval = self.poll_interval if live else min(self.poll_interval, 0.2)
        self.position = await self.consumer.start_position()
        state = ConsumerState.CATCHING_UP
        await self.checkpoints.set_status(self.name, state=state)
        saved_token: Mapping[str, Any] | None = None
        try:
            while not stop.is_set() and not (lost is not None and lost.is_set()):
                doorbell.rung.clear()
                token = doorbell.token
                progressed = await self._step(stop)
                if progressed:
                    continue
                if token is not None and token != saved_token:
                    # Everything the stream had announced up to `token` is now handled.
                    await self.checkpoints.save_resume_token(self.name, token, scope=doorbell.scope)
                    saved_token = token
                if state is not ConsumerState.RUNNING and self._faulted_at is None:
                    state = ConsumerState.RUNNING
                    await self.checkpoints.set_status(self.name, state=state, clear_error=True)
                waiters = [
                    asyncio.ensure_future(doorbell.rung.wait()),
                    asyncio.ensure_future(stop.wait()),
                ]
                if lost is not None:
                    waiters.append(asyncio.ensure_future(lost.wait()))
                _, pending = await asyncio.wait(
                    waiters, timeout=interval, return_when=asyncio.FIRST_COMPLETED
                )
                for waiter in pending:
                    waiter.cancel()
        finally:
            await doorbell.stop()
            with contextlib.suppress(TransientStoreError):
                final = ConsumerState.STOPPED if self._faulted_at is None else ConsumerState.FAULTED
                await self.checkpoints.set_status(self.name, state=final)

    async def _step(self, stop: asyncio.Event | None) -> bool:
        """Handle one batch after ``self.position``; returns whether anything was read."""
        single = self._faulted_at is not None
        limit = 1 if single else self._limit
        batch: list[RecordedEvent] = []
        # Read unfiltered positions so the checkpoint can move past foreign events too.
        async for recorded in self.store.read_all(after=self.position, limit=limit, strict=False):
            batch.append(recorded)
        # Far behind: grow the next batch; caught up (or isolating a fault): start small.
        full = not single and len(batch) >= limit
        self._limit = min(2 * self._limit, self.max_batch_size) if full else self.batch_size
        if not batch:
            return False
        types = self.consumer.event_types
        wanted = [e for e in batch if types is None or e.event_type in types]
        up_to = batch[-1].position
        try:
            with log_context(consumer=self.name, position=batch[0].position):
                await self.consumer.handle(wanted, up_to=up_to)
        except TransientStoreError as exc:
            log.warning("%s: database unavailable while handling (%s); retrying", self.name, exc)
            await _pause(stop, self.backoff.delay(1))
            return True
        except Exception as exc:
            if not single and len(batch) > 1:
                # Find the failing event by retrying one at a time.
                self._faulted_at = batch[0].position
                return True
            await self._record_fault(batch[0], exc)
            await _pause(stop, self.backoff.delay(self._failures))
            return True
        self.position = up_to
        self._metrics.record_batch(self.name, len(wanted), up_to)
        if self._faulted_at is not None and up_to >= self._faulted_at:
            if self._failures:
                log.info("%s: recovered at position %d", self.name, up_to)
                await self.checkpoints.set_status(
                    self.name, state=ConsumerState.RUNNING, clear_error=True
                )
            self._faulted_at = None
            self._failures = 0
        return True

    async def _record_fault(self, event: RecordedEvent, exc: BaseException) -> None:
        self._failures += 1
        self._faulted_at = event.position
        self._metrics.record_retry(self.name)
        message = f"{type(exc).__name__}: {exc}"
        log.error(
            "%s: failed on event %s (%s) at position %d, attempt %d: %s",
            self.name,
            event.event_id,
            event.event_type,
            event.position,
            self._failures,
            message,
        )
        with contextlib.suppress(TransientStoreError):
            await self.checkpoints.set_status(
                self.name,
                state=ConsumerState.FAULTED,
                error=ConsumerError(
                    message=message,
                    position=event.position,
                    event_id=str(event.event_id),
                    attempts=self._failures,
                    at=time.time(),
                ),
            )


async def _pause(stop: asyncio.Event | None, seconds: float) -> None:
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
