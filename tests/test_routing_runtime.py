"""The subscriber runtime on every backend: retries, dead letters, idempotency, ordering, leases."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from cqrs_kit import Event, EventRegistry, EventStore, RecordedEvent
from cqrs_kit.checkpoints import CheckpointStore
from cqrs_kit.leases import LeaseManager
from cqrs_kit.routing.dlq import DeadLetterQueue
from cqrs_kit.routing.handlers import Delivery
from cqrs_kit.routing.subscribers import (
    ClaimState,
    IdempotencyStore,
    Ordering,
    RetryPolicy,
    Subscriber,
)
from cqrs_kit.routing.worker import Worker

FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.05, jitter=0.5)


class Placed(Event):
    event_type: ClassVar[str] = "orders.Placed"
    order: str
    n: int


class Shipped(Event):
    event_type: ClassVar[str] = "orders.Shipped"
    order: str


class Mystery(Event):
    event_type: ClassVar[str] = "orders.Mystery"


@pytest.fixture
def event_registry() -> EventRegistry:
    return EventRegistry(Placed, Shipped, Mystery)


class OrderRequest(BaseModel):
    order: str
    amount: int  # never present in the payloads below: validation fails


class TypeIs:
    """A stand-in pattern: the runtime only needs ``matches``."""

    def __init__(self, *types: str) -> None:
        self.types = types

    def matches(self, document: Mapping[str, Any]) -> bool:
        return document["type"] in self.types


class Recorder:
    """A handler that remembers deliveries and fails on demand."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.attempts: list[int] = []
        self.fail: Callable[[RecordedEvent, Delivery], bool] = lambda e, d: False
        self.gate: asyncio.Event | None = None

    async def handle(self, event: RecordedEvent, delivery: Delivery) -> None:
        self.attempts.append(delivery.attempt)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail(event, delivery):
            raise RuntimeError(f"cannot handle {event.stream_id}/{event.data.get('n')}")
        self.seen.append((event.stream_id, event.data.get("n", 0)))


async def wait_until(predicate: Callable[[], bool], limit: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def wait_for_async(predicate: Callable[[], Any], limit: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def subscriber(
    recorder: Recorder,
    *,
    id: str = "rec",
    types: tuple[str, ...] = ("orders.Placed",),
    retry: RetryPolicy = FAST,
    ordering: Ordering = Ordering.PER_STREAM,
    timeout: float | None = 5.0,
) -> Subscriber:
    return Subscriber(
        id, recorder.handle, patterns=[TypeIs(*types)], retry=retry, ordering=ordering,
        timeout=timeout,
    )  # fmt: skip


def worker(store: EventStore, *subs: Subscriber, **options: Any) -> Worker:
    return Worker(store, subs, poll_interval=0.05, **options)


async def test_retries_then_success(event_store: EventStore) -> None:
    rec = Recorder()
    rec.fail = lambda e, d: d.attempt < 3
    await event_store.append("o-1", [Placed(order="o-1", n=1)])
    async with worker(event_store, subscriber(rec, retry=RetryPolicy(5, 0.01, 0.05))) as w:
        await wait_until(lambda: rec.seen == [("o-1", 1)])
        await wait_for_async(lambda: _nothing_parked(w, "rec"))
    assert rec.attempts == [1, 2, 3]
    assert await w.dead_letters.count() == 0


async def test_retries_then_dead_letter_then_retry_succeeds(
    event_store: EventStore, mongo_database: Any
) -> None:
    rec = Recorder()
    rec.fail = lambda e, d: True
    result = await event_store.append("o-1", [Placed(order="o-1", n=1)])
    async with worker(event_store, subscriber(rec)) as w:
        await wait_for_async(lambda: _has_dead_letters(w, 1))
    assert rec.attempts == [1, 2, 3]
    (entry,) = await w.dead_letters.list(subscriber="rec")
    assert entry.attempts == 3
    assert entry.error_type == "RuntimeError"
    assert entry.error == "cannot handle o-1/1"
    assert "Traceback" in entry.traceback
    assert "cannot handle o-1/1" in entry.traceback
    assert entry.event["type"] == "orders.Placed"
    assert entry.event["data"] == {"order": "o-1", "n": 1}
    assert entry.position == result.position
    assert entry.first_failed_at <= entry.dead_lettered_at
    assert await w.idempotency.state(entry.id) is ClaimState.DEAD

    # Still broken: the entry stays, with the retry counted.
    outcome = await w.retry_dead_letter(entry.id)
    assert (outcome.ok, outcome.error) == (False, "RuntimeError: cannot handle o-1/1")
    again = await w.dead_letters.get(entry.id)
    assert again is not None
    assert again.retries == 1

    rec.fail = lambda e, d: False
    outcome = await DeadLetterQueue(mongo_database).retry(entry.id, w.runtimes)
    assert outcome.ok
    assert rec.seen == [("o-1", 1)]
    assert await w.dead_letters.count() == 0
    assert await w.idempotency.state(entry.id) is ClaimState.DONE


async def _nothing_parked(w: Worker, sid: str) -> bool:
    return await w.runtime(sid).parked() == []


async def _has_dead_letters(w: Worker, n: int) -> bool:
    return await w.dead_letters.count() >= n


async def test_redelivery_after_a_crash_does_not_repeat_the_effect(
    event_store: EventStore, mongo_database: Any
) -> None:
    effects = mongo_database["effects"]
    calls: list[str] = []

    class Charger:
        async def charge(self, event: RecordedEvent, delivery: Delivery) -> None:
            calls.append(delivery.idempotency_key)
            # The effect is keyed by the idempotency key, so running it twice is harmless.
            await effects.update_one(
                {"_id": delivery.idempotency_key},
                {"$inc": {"applied": 1} if delivery.attempt == 1 else {"retried": 1}},
                upsert=True,
            )
            if delivery.attempt == 1 and event.data["n"] == 2:
                raise RuntimeError("crashed after the effect, before acknowledging it")

    charger = Charger()
    sub = Subscriber("charge", charger.charge, patterns=[TypeIs("orders.Placed")], retry=FAST)
    for n in (1, 2, 3):
        await event_store.append(f"o-{n}", [Placed(order=f"o-{n}", n=n)])
    async with worker(event_store, sub):
        await wait_for_async(lambda: _count(effects, 3))
        await wait_until(lambda: len(calls) == 4)
    assert await effects.count_documents({}) == 3  # one effect per event

    # Replay everything, as after a crash between effect and checkpoint.
    checkpoints = CheckpointStore(mongo_database)
    await checkpoints.reset("subscriber:charge", 0)
    async with worker(event_store, sub) as w:
        await wait_for_async(lambda: _position(checkpoints, "subscriber:charge", 3))
        assert await w.runtime("charge").parked() == []
    assert len(calls) == 4  # nothing delivered again
    assert await effects.count_documents({}) == 3


async def _count(coll: Any, n: int) -> bool:
    return bool(await coll.count_documents({}) >= n)


async def _position(checkpoints: CheckpointStore, name: str, at_least: int) -> bool:
    return await checkpoints.position(name) >= at_least


async def test_per_stream_ordering_holds_back_only_the_failing_stream(
    event_store: EventStore, mongo_database: Any
) -> None:
    rec = Recorder()
    poison = {("a", 1)}
    rec.fail = lambda e, d: (e.stream_id, e.data["n"]) in poison
    retry = RetryPolicy(max_attempts=1000, initial_delay=0.01, max_delay=0.02)
    for stream, n in [("a", 1), ("a", 2), ("b", 1), ("a", 3), ("b", 2)]:
        await event_store.append(stream, [Placed(order=stream, n=n)])
    async with worker(event_store, subscriber(rec, retry=retry)) as w:
        runtime = w.runtime("rec")
        await wait_until(lambda: rec.seen == [("b", 1), ("b", 2)])
        await wait_until(lambda: len(rec.attempts) >= 6)  # a/1 keeps being retried
        parked = await runtime.parked()
        assert [(p["event"]["stream_id"], p["event"]["data"]["n"]) for p in parked] == [
            ("a", 1),
            ("a", 2),
            ("a", 3),
        ]
        assert [p["head"] for p in parked] == [True, False, False]
        # The log checkpoint moved past the held-back events.
        assert await w.checkpoints.position("subscriber:rec") == 5
        await event_store.append("b", [Placed(order="b", n=3)])
        await event_store.append("a", [Placed(order="a", n=4)])
        await wait_until(lambda: ("b", 3) in rec.seen)
        assert [s for s in rec.seen if s[0] == "a"] == []
        poison.clear()
        await wait_until(lambda: len(rec.seen) == 7)
        await wait_for_async(lambda: _nothing_parked(w, "rec"))
    assert [s for s in rec.seen if s[0] == "a"] == [("a", 1), ("a", 2), ("a", 3), ("a", 4)]


async def test_per_stream_order_continues_after_the_poison_event_is_dead_lettered(
    event_store: EventStore,
) -> None:
    rec = Recorder()
    rec.fail = lambda e, d: (e.stream_id, e.data["n"]) == ("a", 1)
    for stream, n in [("a", 1), ("a", 2), ("b", 1), ("a", 3)]:
        await event_store.append(stream, [Placed(order=stream, n=n)])
    async with worker(event_store, subscriber(rec)) as w:
        await wait_until(lambda: len(rec.seen) == 3)
        await event_store.append("a", [Placed(order="a", n=4)])
        await wait_until(lambda: len(rec.seen) == 4)
        await wait_for_async(lambda: _nothing_parked(w, "rec"))
    assert rec.seen == [("b", 1), ("a", 2), ("a", 3), ("a", 4)]
    (entry,) = await w.dead_letters.list()
    assert (entry.stream_id, entry.event["data"]["n"], entry.attempts) == ("a", 1, 3)


async def test_a_blocked_stream_stays_blocked_across_a_restart(event_store: EventStore) -> None:
    rec = Recorder()
    poison = {("a", 1)}
    rec.fail = lambda e, d: (e.stream_id, e.data["n"]) in poison
    retry = RetryPolicy(max_attempts=1000, initial_delay=0.01, max_delay=0.02)
    await event_store.append("a", [Placed(order="a", n=1)])
    async with worker(event_store, subscriber(rec, retry=retry)):
        await wait_until(lambda: len(rec.attempts) >= 2)
    # While no worker runs, more events arrive for the blocked stream.
    await event_store.append("a", [Placed(order="a", n=2)])
    await event_store.append("b", [Placed(order="b", n=1)])
    async with worker(event_store, subscriber(rec, retry=retry)) as w:
        await wait_until(lambda: rec.seen == [("b", 1)])
        parked = await w.runtime("rec").parked()
        assert [(p["event"]["data"]["n"], p["head"]) for p in parked] == [(1, True), (2, False)]
        poison.clear()
        await wait_until(lambda: len(rec.seen) == 3)
        await wait_for_async(lambda: _nothing_parked(w, "rec"))
    assert rec.seen == [("b", 1), ("a", 1), ("a", 2)]


async def test_unordered_subscriber_is_not_held_back(event_store: EventStore) -> None:
    rec = Recorder()
    rec.fail = lambda e, d: e.data["n"] == 1
    retry = RetryPolicy(max_attempts=1000, initial_delay=0.01, max_delay=0.02)
    for n in (1, 2, 3):
        await event_store.append("a", [Placed(order="a", n=n)])
    async with worker(event_store, subscriber(rec, retry=retry, ordering=Ordering.NONE)) as w:
        await wait_until(lambda: rec.seen == [("a", 2), ("a", 3)])
        assert len(await w.runtime("rec").parked()) == 1


async def test_poison_events_are_dead_lettered_not_skipped(
    event_store: EventStore, mongo_database: Any
) -> None:
    await event_store.append("m", [Mystery()])
    await event_store.append("p", [Placed(order="p", n=1)])
    # Read the log with a registry that has never heard of orders.Mystery.
    reader = EventStore(mongo_database, EventRegistry(Placed, Shipped))
    seen: list[Any] = []

    class Typed:
        async def on_event(self, event: Placed) -> None:  # decoded through the registry
            seen.append(event)

    async def on_order(request: OrderRequest) -> None:
        seen.append(request)

    typed = Subscriber(
        "typed", Typed().on_event, patterns=[TypeIs("orders.Mystery", "orders.Placed")], retry=FAST
    )
    mapped = Subscriber(
        "mapped", on_order, patterns=[TypeIs("orders.Placed")], retry=FAST,
        input={"order": "$.data.order", "amount": "$.data.amount"},
    )  # fmt: skip
    async with worker(reader, typed, mapped) as w:
        await wait_for_async(lambda: _has_dead_letters(w, 2))
        await wait_until(lambda: len(seen) == 1)
    by_subscriber = {e.subscriber: e for e in await w.dead_letters.list()}
    assert by_subscriber["typed"].error_type == "UnknownEventTypeError"
    assert by_subscriber["typed"].event_type == "orders.Mystery"
    assert by_subscriber["mapped"].error_type == "ValidationError"
    assert "amount" in by_subscriber["mapped"].error
    assert seen == [Placed(order="p", n=1)]


async def test_attempts_time_out(event_store: EventStore) -> None:
    rec = Recorder()
    rec.gate = asyncio.Event()  # never opened
    await event_store.append("a", [Placed(order="a", n=1)])
    sub = subscriber(rec, retry=RetryPolicy(2, 0.01, 0.01), timeout=0.05)
    async with worker(event_store, sub) as w:
        await wait_for_async(lambda: _has_dead_letters(w, 1))
    (entry,) = await w.dead_letters.list()
    assert (entry.error_type, entry.error) == ("TimeoutError", "attempt timed out after 0.05s")


async def test_a_stuck_subscriber_does_not_block_another(event_store: EventStore) -> None:
    slow, fast = Recorder(), Recorder()
    slow.gate = asyncio.Event()
    for n in range(5):
        await event_store.append(f"s-{n}", [Placed(order="x", n=n)])
    subs = (subscriber(slow, id="slow", timeout=None), subscriber(fast, id="fast"))
    async with worker(event_store, *subs):
        await wait_until(lambda: len(fast.seen) == 5)
        assert slow.seen == []
        slow.gate.set()
        await wait_until(lambda: len(slow.seen) == 5)


async def test_two_workers_share_subscribers_without_double_processing(
    event_store: EventStore, mongo_database: Any
) -> None:
    recs = {"one": Recorder(), "two": Recorder()}
    seen: dict[str, list[str]] = {"one": [], "two": []}

    def handler(sid: str, owner: str) -> Callable[[RecordedEvent, Delivery], Any]:
        async def handle(event: RecordedEvent, delivery: Delivery) -> None:
            seen[sid].append(f"{delivery.idempotency_key}@{owner}")

        return handle

    def build(owner: str) -> Worker:
        subs = []
        for sid in recs:
            subs.append(
                Subscriber(sid, handler(sid, owner), patterns=[TypeIs("orders.Placed")], retry=FAST)
            )
        leases = LeaseManager(mongo_database, owner=owner, ttl=0.6)
        return worker(event_store, *subs, leases=leases)

    for n in range(10):
        await event_store.append(f"s-{n % 3}", [Placed(order="x", n=n)])
    first, second = build("worker-a"), build("worker-b")
    await first.start()
    await second.start()
    try:
        await wait_until(lambda: len(seen["one"]) == 10 and len(seen["two"]) == 10)
        for n in range(10, 20):
            await event_store.append(f"s-{n % 3}", [Placed(order="x", n=n)])
        await wait_until(lambda: len(seen["one"]) == 20 and len(seen["two"]) == 20)
        await asyncio.sleep(0.2)  # give a double delivery the chance to show up
        for sid in recs:
            assert len({s.split("@")[1] for s in seen[sid]}) == 1, sid  # one runner each
        # The first worker stops; the second takes over whatever it held.
        await first.stop()
        for n in range(20, 30):
            await event_store.append(f"s-{n % 3}", [Placed(order="x", n=n)])
        await wait_until(lambda: len(seen["one"]) == 30 and len(seen["two"]) == 30)
    finally:
        await first.stop()
        await second.stop()
    for sid in recs:
        keys = [s.split("@")[0] for s in seen[sid]]
        assert len(keys) == len(set(keys)) == 30, sid
        assert {s.split("@")[1] for s in seen[sid][20:]} == {"worker-b"}, sid


async def test_idempotency_records_can_be_pruned(mongo_database: Any) -> None:
    records = IdempotencyStore(mongo_database)
    assert await records.claim("s:1", subscriber="s", event_id="1") == (ClaimState.STARTED, 1)
    assert await records.claim("s:1", subscriber="s", event_id="1") == (ClaimState.STARTED, 2)
    await records.finish("s:1", ClaimState.DONE)
    assert await records.claim("s:1", subscriber="s", event_id="1") == (ClaimState.DONE, 2)
    assert await records.prune(older_than=0) == 0
    assert await records.prune(older_than=10**12) == 1
    assert await records.state("s:1") is None
