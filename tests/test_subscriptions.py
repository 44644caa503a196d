"""The subscription runtime on every backend: catch-up, live follow, faults, leases."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import pytest
from pymongo import AsyncMongoClient
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

from cqrs_kit import Event, EventRegistry, EventStore, RecordedEvent
from cqrs_kit.checkpoints import CheckpointStore, ConsumerState
from cqrs_kit.leases import LeaseManager
from cqrs_kit.subscriptions import Backoff, Subscription, measure_lag
from cqrs_kit.testing import EmbeddedServer


class Pinged(Event):
    event_type: ClassVar[str] = "test.Pinged"
    n: int


class Other(Event):
    event_type: ClassVar[str] = "test.Other"


@pytest.fixture
def event_registry() -> EventRegistry:
    return EventRegistry(Pinged, Other)


class Recorder:
    """A consumer that remembers what it saw and keeps its position in the checkpoint store."""

    def __init__(self, checkpoints: CheckpointStore, name: str = "recorder") -> None:
        self.checkpoints = checkpoints
        self._name = name
        self.seen: list[int] = []
        self.fail_on: set[int] = set()
        self.failures = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def event_types(self) -> frozenset[str] | None:
        return frozenset({"test.Pinged"})

    async def start_position(self) -> int:
        return await self.checkpoints.position(self.name)

    async def handle(self, events: Sequence[RecordedEvent], *, up_to: int) -> None:
        for e in events:
            n = e.event.n  # type: ignore[attr-defined]
            if n in self.fail_on:
                self.failures += 1
                raise RuntimeError(f"cannot handle {n}")
        self.seen.extend(e.event.n for e in events)  # type: ignore[attr-defined]
        await self.checkpoints.advance(self.name, up_to)


async def wait_until(predicate: Any, limit: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(sub: Subscription) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(sub.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_catch_up_then_follow_live(event_store: EventStore, mongo_database: Any) -> None:
    checkpoints = CheckpointStore(mongo_database)
    for n in range(5):
        await event_store.append(f"s-{n % 2}", [Pinged(n=n), Other()])
    consumer = Recorder(checkpoints)
    sub = Subscription(
        event_store, consumer, checkpoints=checkpoints, batch_size=3, poll_interval=0.5
    )
    async with running(sub):
        await wait_until(lambda: len(consumer.seen) == 5)
        for n in range(5, 8):
            await event_store.append("s-live", [Pinged(n=n)])
        await wait_until(lambda: len(consumer.seen) == 8)
    assert consumer.seen == list(range(8))
    assert await checkpoints.position("recorder") == await event_store.head_position()
    lag = await measure_lag(event_store, await checkpoints.position("recorder"))
    assert (lag.events, lag.seconds) == (0, 0.0)


async def test_restart_resumes_without_repeats(
    event_store: EventStore, mongo_database: Any
) -> None:
    checkpoints = CheckpointStore(mongo_database)
    for n in range(3):
        await event_store.append("s", [Pinged(n=n)])
    first = Recorder(checkpoints)
    await Subscription(event_store, first, checkpoints=checkpoints).catch_up()
    for n in range(3, 6):
        await event_store.append("s", [Pinged(n=n)])
    second = Recorder(checkpoints)
    await Subscription(event_store, second, checkpoints=checkpoints).catch_up()
    assert first.seen == [0, 1, 2]
    assert second.seen == [3, 4, 5]


async def test_fault_stops_at_event_then_recovers(
    event_store: EventStore, mongo_database: Any
) -> None:
    checkpoints = CheckpointStore(mongo_database)
    for n in range(6):
        await event_store.append("s", [Pinged(n=n)])
    consumer = Recorder(checkpoints)
    consumer.fail_on = {3}
    sub = Subscription(
        event_store, consumer, checkpoints=checkpoints, backoff=Backoff(initial=0.05, maximum=0.1)
    )
    async with running(sub):
        status = None
        for _ in range(500):
            status = await checkpoints.load("recorder")
            if status is not None and status.state is ConsumerState.FAULTED:
                break
            await asyncio.sleep(0.02)
        assert status is not None
        assert status.state is ConsumerState.FAULTED
        assert status.error is not None
        assert status.error.position == 4
        assert "cannot handle 3" in status.error.message
        assert status.position == 3  # stopped just before the poison event
        assert consumer.seen == [0, 1, 2]
        consumer.fail_on = set()
        await wait_until(lambda: len(consumer.seen) == 6)
    assert consumer.seen == list(range(6))
    final = await checkpoints.load("recorder")
    assert final is not None
    assert final.error is None


async def test_lease_lets_one_runner_progress_and_hands_over(
    event_store: EventStore, mongo_database: Any
) -> None:
    checkpoints = CheckpointStore(mongo_database)
    await event_store.append("s", [Pinged(n=0)])
    a, b = Recorder(checkpoints), Recorder(checkpoints)
    lease_a = LeaseManager(mongo_database, owner="runner-a", ttl=0.6)
    lease_b = LeaseManager(mongo_database, owner="runner-b", ttl=0.6)
    sub_a = Subscription(event_store, a, checkpoints=checkpoints, leases=lease_a, poll_interval=0.1)
    sub_b = Subscription(event_store, b, checkpoints=checkpoints, leases=lease_b, poll_interval=0.1)
    stop_b = asyncio.Event()
    async with running(sub_a):
        await wait_until(lambda: a.seen == [0])
        task_b = asyncio.create_task(sub_b.run(stop_b))
        await event_store.append("s", [Pinged(n=1)])
        await wait_until(lambda: a.seen == [0, 1])
        assert b.seen == []
        holder = await lease_a.holder("recorder")
        assert holder is not None
        assert holder.owner == "runner-a"
    # a stopped (released); b takes over and continues from a's checkpoint.
    await event_store.append("s", [Pinged(n=2)])
    await wait_until(lambda: b.seen == [2])
    stop_b.set()
    await asyncio.wait_for(task_b, 15)


class BatchSizes(Recorder):
    """Also remembers how many log positions each batch covered."""

    def __init__(self, checkpoints: CheckpointStore) -> None:
        super().__init__(checkpoints)
        self.spans: list[int] = []

    async def handle(self, events: Sequence[RecordedEvent], *, up_to: int) -> None:
        self.spans.append(up_to - await self.checkpoints.position(self.name))
        await super().handle(events, up_to=up_to)


async def test_catch_up_batches_grow_while_full_and_reset_when_caught_up(
    event_store: EventStore, mongo_database: Any
) -> None:
    checkpoints = CheckpointStore(mongo_database)
    consumer = BatchSizes(checkpoints)
    for n in range(40):
        await event_store.append(f"s-{n % 4}", [Pinged(n=n)])
    sub = Subscription(
        event_store, consumer, checkpoints=checkpoints, batch_size=2, max_batch_size=12
    )
    assert await sub.catch_up() == 40
    assert consumer.spans == [2, 4, 8, 12, 12, 2]
    assert consumer.seen == list(range(40))
    consumer.spans.clear()
    await event_store.append("s-0", [Pinged(n=40)])
    assert await sub.catch_up() == 41
    assert consumer.spans == [1], "a consumer that keeps up starts small again"


class _GetMores(CommandListener):
    def __init__(self) -> None:
        self.count = 0

    def started(self, event: CommandStartedEvent) -> None:
        if event.command_name == "getMore":
            self.count += 1

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


async def test_an_idle_live_subscription_does_not_poll_in_a_busy_loop(
    nx_server: EmbeddedServer, event_registry: EventRegistry
) -> None:
    # nx-27017 answers an empty getMore at once instead of holding it for
    # maxAwaitTimeMS; the change stream must pace itself (at most one empty poll
    # per 20 ms) rather than hammer the server.
    listener = _GetMores()
    client: AsyncMongoClient[Any] = AsyncMongoClient(nx_server.uri, event_listeners=[listener])
    database = client[f"idle_{uuid.uuid4().hex[:8]}"]
    try:
        store = EventStore(database, event_registry)
        await store.ensure_indexes()
        checkpoints = CheckpointStore(database)
        consumer = Recorder(checkpoints)
        sub = Subscription(store, consumer, checkpoints=checkpoints, poll_interval=30)
        async with running(sub):
            await store.append("s", [Pinged(n=1)])
            await wait_until(lambda: consumer.seen == [1])
            before, started = listener.count, time.monotonic()
            await asyncio.sleep(0.5)  # an idle window to observe, not a wait for a result
            polls, elapsed = listener.count - before, time.monotonic() - started
        assert polls <= elapsed / 0.02 + 2, f"{polls} getMores in {elapsed:.2f}s"
    finally:
        await client.drop_database(database.name)
        await client.close()
