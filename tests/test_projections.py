"""Projections on every backend: catch-up, live, restart, faults, leases, replays, rebuilds.

mongomock-motor exercises the polling path (no change streams, no $merge), the
nx-27017 backends the change-stream path; both use the guarded bulk upsert,
since neither runs $merge update pipelines. A real MongoDB (when configured)
adds the $merge path and transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import pytest

from _projector_worker import (
    ItemDiscontinued,
    ItemsPerCategory,
    Noise,
    StockAdded,
    StockLevels,
    StockRemoved,
    registry,
)
from cqrs_kit import Event, EventRegistry, EventStore, RecordedEvent, UsageError
from cqrs_kit.checkpoints import ConsumerState
from cqrs_kit.leases import LeaseManager
from cqrs_kit.projections import (
    Count,
    Delete,
    HandlerProjection,
    PipelineProjection,
    Projection,
    ProjectionRunner,
    ReadModel,
    Sum,
    Upsert,
    on,
    projection_key,
)
from cqrs_kit.subscriptions import Backoff
from cqrs_kit.testing import Backend

History = list[tuple[int, Event]]


@pytest.fixture
def event_registry() -> EventRegistry:
    reg = registry()
    reg.register(FieldOp)
    return reg


# -- the oracle: what the read models must contain ----------------------------------------


def expected_categories(history: History) -> list[dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for position, event in history:
        if not isinstance(event, StockAdded | StockRemoved):
            continue
        doc = docs.setdefault(
            event.category,
            {
                "_id": event.category,
                "available": 0,
                "movements": 0,
                "first_sku": event.sku,
                "largest_movement": event.quantity,
            },
        )
        doc["available"] += event.quantity if isinstance(event, StockAdded) else -event.quantity
        doc["movements"] += 1
        doc["last_sku"] = event.sku
        doc["largest_movement"] = max(doc["largest_movement"], event.quantity)
        doc["_position"] = position
    return sorted(docs.values(), key=lambda d: d["_id"])


def expected_levels(history: History) -> list[dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for position, event in history:
        if isinstance(event, StockAdded):
            doc = docs.setdefault(
                event.sku, {"_id": event.sku, "available": 0, "first_quantity": event.quantity}
            )
            doc["available"] += event.quantity
            doc["category"] = event.category
        elif isinstance(event, StockRemoved):
            doc = docs.setdefault(event.sku, {"_id": event.sku, "available": 0})
            doc["available"] -= event.quantity
        elif isinstance(event, ItemDiscontinued):
            docs.pop(event.sku, None)
            continue
        else:
            continue
        doc["_position"] = position
    return sorted(docs.values(), key=lambda d: d["_id"])


EXPECTED: dict[str, Callable[[History], list[dict[str, Any]]]] = {
    "items_per_category": expected_categories,
    "stock_levels": expected_levels,
}


async def append_random(
    store: EventStore, rnd: random.Random, commits: int, history: History
) -> None:
    for _ in range(commits):
        sku = f"sku-{rnd.randrange(10)}"
        category = f"cat-{rnd.randrange(4)}"
        events: list[Event] = []
        for _ in range(rnd.randrange(1, 4)):
            r = rnd.random()
            if r < 0.55:
                events.append(StockAdded(sku=sku, category=category, quantity=rnd.randrange(1, 9)))
            elif r < 0.8:
                events.append(
                    StockRemoved(sku=sku, category=category, quantity=rnd.randrange(1, 4))
                )
            elif r < 0.88:
                events.append(ItemDiscontinued(sku=sku))
            else:
                events.append(Noise())
        result = await store.append(f"item-{sku}", events)
        history.extend((result.first_position + i, e) for i, e in enumerate(events))


async def snapshot(database: Any, name: str) -> list[dict[str, Any]]:
    return await ReadModel(database, name, max_age=0).find(sort=[("_id", 1)])


async def assert_matches(database: Any, history: History, *names: str) -> None:
    for name in names or tuple(EXPECTED):
        assert await snapshot(database, name) == EXPECTED[name](history), name


async def wait_until(predicate: Callable[[], Awaitable[bool]], limit: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def matches(database: Any, history: History, *names: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        for name in names or tuple(EXPECTED):
            if await snapshot(database, name) != EXPECTED[name](history):
                return False
        return True

    return check


def make_runner(
    store: EventStore, projections: list[Projection], **options: Any
) -> ProjectionRunner:
    options.setdefault("batch_size", 7)  # small and odd: batches end mid-commit
    options.setdefault("poll_interval", 0.2)
    options.setdefault("handover_poll", 0.1)
    options.setdefault("lease_ttl", 1.0)
    options.setdefault("backoff", Backoff(initial=0.05, maximum=0.2))
    return ProjectionRunner(store, projections, **options)


@contextlib.asynccontextmanager
async def running(runner: ProjectionRunner) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def both() -> list[Projection]:
    return [ItemsPerCategory(), StockLevels()]


# -- catch-up, live, restart ----------------------------------------------------------------


async def test_catch_up_builds_both_kinds_of_read_model(
    event_store: EventStore, mongo_database: Any
) -> None:
    history: History = []
    await append_random(event_store, random.Random(1), 40, history)
    runner = make_runner(event_store, both())
    positions = await runner.catch_up()
    head = await event_store.head_position()
    assert positions == {"items_per_category": head, "stock_levels": head}
    await assert_matches(mongo_database, history)
    statuses = {s.name: s for s in await runner.status()}
    assert statuses["items_per_category"].kind == "pipeline"
    assert statuses["stock_levels"].read_model == "stock_levels__v1"
    assert all(s.position == head and s.lag_events == 0 for s in statuses.values())


async def test_live_follow_then_restart_resumes_without_repeats(
    event_store: EventStore, mongo_database: Any
) -> None:
    history: History = []
    rnd = random.Random(2)
    await append_random(event_store, rnd, 10, history)
    async with running(make_runner(event_store, both())):
        await wait_until(matches(mongo_database, history))
        await append_random(event_store, rnd, 8, history)  # live
        await wait_until(matches(mongo_database, history))
        status = await make_runner(event_store, both()).status()
        assert {s.state for s in status} == {"running"}
        assert all(s.owner is not None for s in status)
    await append_random(event_store, rnd, 8, history)  # while nothing runs
    async with running(make_runner(event_store, both())):
        await wait_until(matches(mongo_database, history))
    head = await event_store.head_position()
    for status in await make_runner(event_store, both()).status():
        assert (status.position, status.state, status.owner) == (head, "stopped", None)


# -- effectively once -----------------------------------------------------------------------


async def test_duplicate_delivery_and_replay_from_older_checkpoint_change_nothing(
    event_store: EventStore, mongo_database: Any
) -> None:
    history: History = []
    rnd = random.Random(3)
    await append_random(event_store, rnd, 30, history)
    runner = make_runner(event_store, both())
    await runner.catch_up()
    before = {name: await snapshot(mongo_database, name) for name in EXPECTED}
    head = await event_store.head_position()
    events = [e async for e in event_store.read_all(strict=False)]

    for name in EXPECTED:  # duplicate delivery: the same batches again, directly
        projector = runner.projector(name)
        await projector.start_position()
        for start in range(0, len(events), 11):
            batch = events[start : start + 11]
            wanted = [e for e in batch if e.event_type in projector.projection.type_names]
            await projector.handle(wanted, up_to=batch[-1].position)
        assert await snapshot(mongo_database, name) == before[name]

    for older in (0, head // 3, head - 2):  # replay from an older checkpoint
        for name in EXPECTED:
            await runner.checkpoints.reset(projection_key(name), older)
        await runner.catch_up()
        for name in EXPECTED:
            assert await snapshot(mongo_database, name) == before[name], (older, name)

    # An older checkpoint and new events: batches now hold events that documents have
    # seen and events they have not; each must be applied exactly once.
    for name in EXPECTED:
        await runner.checkpoints.reset(projection_key(name), head // 2)
    await append_random(event_store, rnd, 15, history)
    for batch_size in (50, 500):
        runner.batch_size = batch_size
        await runner.catch_up()
    await assert_matches(mongo_database, history)


class FieldOp(Event):
    """A generic update, to check that a batch's updates fold like one-by-one writes."""

    event_type: ClassVar[str] = "test.FieldOp"
    doc: str
    op: str
    path: str = ""
    value: int = 0


class Folding(HandlerProjection):
    name = "folding"

    @on(FieldOp)
    def apply(self, event: FieldOp) -> Upsert | Delete:
        if event.op == "delete":
            return Delete(event.doc)
        if event.op == "set":
            return Upsert(event.doc, set={event.path: event.value})
        if event.op == "set_doc":
            return Upsert(event.doc, set={event.path: {"x": event.value, "y": 1}})
        if event.op == "unset":
            return Upsert(event.doc, unset=[event.path])
        if event.op == "insert":
            return Upsert(event.doc, set_on_insert={event.path: event.value})
        return Upsert(event.doc, inc={event.path: event.value})


async def test_a_batch_folds_updates_like_one_at_a_time(
    event_store: EventStore, mongo_database: Any
) -> None:
    rnd = random.Random(4)
    ops = ["inc", "inc", "set", "unset", "delete", "insert", "set_doc"]
    paths = ["a", "b", "c.x", "c.z"]
    for _ in range(60):
        op = rnd.choice(ops)
        path = rnd.choice(paths[:2] if op == "set_doc" else paths)
        if op == "set_doc":
            path = "c"
        await event_store.append(
            "ops", [FieldOp(doc=f"d{rnd.randrange(3)}", op=op, path=path, value=rnd.randrange(9))]
        )
    one = make_runner(event_store, [Folding()], batch_size=1)
    await one.catch_up()
    expected = await snapshot(mongo_database, "folding")
    whole = make_runner(event_store, [Folding(name="folding_batched")], batch_size=500)
    await whole.catch_up()
    assert await snapshot(mongo_database, "folding_batched") == expected
    assert expected  # the sequence left some documents behind


async def test_pipeline_result_does_not_depend_on_batching(
    backend: Backend, event_store: EventStore, mongo_database: Any
) -> None:
    history: History = []
    await append_random(event_store, random.Random(5), 40, history)
    for batch_size, name in ((1, "per_event"), (13, "small"), (10_000, "one_batch")):
        runner = make_runner(event_store, [ItemsPerCategory(name=name)], batch_size=batch_size)
        await runner.catch_up()
        docs = await snapshot(mongo_database, name)
        assert docs == expected_categories(history), name


async def test_merge_and_bulk_paths_agree(
    backend: Backend, event_store: EventStore, mongo_database: Any
) -> None:
    history: History = []
    await append_random(event_store, random.Random(6), 40, history)
    bulk = make_runner(event_store, [ItemsPerCategory(name="via_bulk")], write_path="bulk")
    await bulk.catch_up()
    assert await snapshot(mongo_database, "via_bulk") == expected_categories(history)
    merge = make_runner(event_store, [ItemsPerCategory(name="via_merge")], write_path="merge")
    if backend.name != "mongodb":
        # nx-27017 accepts $merge but ignores update pipelines, mongomock has no $merge:
        # the projector refuses rather than silently writing wrong counts.
        with pytest.raises(UsageError, match="does not run \\$merge update pipelines"):
            await merge.projector("via_merge").start_position()
        return
    await merge.catch_up()
    assert await snapshot(mongo_database, "via_merge") == expected_categories(history)


# -- faults ---------------------------------------------------------------------------------


class Picky(HandlerProjection):
    name = "picky"

    def __init__(self) -> None:
        super().__init__()
        self.poisoned: set[str] = set()

    @on(StockAdded)
    def added(self, event: StockAdded, recorded: RecordedEvent) -> Upsert:
        if event.sku in self.poisoned:
            raise RuntimeError(f"cannot project {event.sku}")
        return Upsert(event.sku, inc={"seen": 1})


async def test_fault_stops_one_projection_at_the_event_and_recovers(
    event_store: EventStore, mongo_database: Any
) -> None:
    picky = Picky()
    picky.poisoned = {"sku-bad"}
    history: History = []
    rnd = random.Random(7)
    await append_random(event_store, rnd, 5, history)
    bad = await event_store.append(
        "item-bad", [StockAdded(sku="sku-bad", category="c", quantity=1)]
    )
    history.append((bad.position, StockAdded(sku="sku-bad", category="c", quantity=1)))
    await append_random(event_store, rnd, 5, history)
    runner = make_runner(event_store, [picky, ItemsPerCategory()])
    async with running(runner):
        await wait_until(matches(mongo_database, history, "items_per_category"))

        async def faulted() -> bool:
            (status,) = await runner.status(["picky"])
            return status.state == ConsumerState.FAULTED and status.last_error is not None

        await wait_until(faulted)
        (status,) = await runner.status(["picky"])
        assert status.last_error is not None
        assert status.last_error.position == bad.position
        assert "cannot project sku-bad" in status.last_error.message
        recorded = [e async for e in event_store.read_all(after=bad.position - 1, limit=1)]
        assert status.last_error.event_id == str(recorded[0].event_id)
        assert status.position == bad.position - 1  # stopped just before the poison event
        assert await ReadModel(mongo_database, "picky").get("sku-bad") is None

        await append_random(event_store, rnd, 3, history)  # the other one keeps going
        await wait_until(matches(mongo_database, history, "items_per_category"))

        picky.poisoned.clear()

        async def recovered() -> bool:
            (status,) = await runner.status(["picky"])
            head = await event_store.head_position()
            return status.position == head and status.state == "running"

        await wait_until(recovered)
        (status,) = await runner.status(["picky"])
        assert status.last_error is None
        assert await ReadModel(mongo_database, "picky").get("sku-bad") == {
            "_id": "sku-bad",
            "seen": 1,
            "_position": bad.position,
        }


async def test_an_undecodable_stored_event_stops_the_projection_until_repaired(
    event_store: EventStore, mongo_database: Any
) -> None:
    await event_store.append("item-a", [StockAdded(sku="a", category="c", quantity=2)])
    bad = await event_store.append("item-b", [StockAdded(sku="b", category="c", quantity=3)])
    await event_store.append("item-a", [StockAdded(sku="a", category="c", quantity=4)])
    commits = mongo_database[event_store.collection_name]
    stored = await commits.find_one({"position": bad.position})

    async def store_quantity(quantity: Any) -> None:
        # Rewrite the stored payload, as a bad migration or a hand edit would.
        stored["events"][0]["data"]["quantity"] = quantity
        await commits.replace_one({"_id": stored["_id"]}, stored)

    await store_quantity("x")
    runner = make_runner(event_store, [StockLevels()])
    async with running(runner):

        async def faulted() -> bool:
            (status,) = await runner.status()
            return status.state == ConsumerState.FAULTED

        await wait_until(faulted)
        (status,) = await runner.status()
        assert status.last_error is not None
        assert status.last_error.position == bad.position
        assert "EventDecodingError" in status.last_error.message
        assert status.position == bad.position - 1, "never skipped"
        assert await ReadModel(mongo_database, "stock_levels").get("b") is None

        await store_quantity(3)

        async def caught_up() -> bool:
            (status,) = await runner.status()
            return status.position == 3 and status.state == ConsumerState.RUNNING

        await wait_until(caught_up)
    levels = await snapshot(mongo_database, "stock_levels")
    assert [(d["_id"], d["available"]) for d in levels] == [("a", 6), ("b", 3)]


# -- leases ---------------------------------------------------------------------------------


async def test_standby_takes_over_when_the_lease_holder_dies(
    event_store: EventStore, mongo_database: Any
) -> None:
    history: History = []
    rnd = random.Random(8)
    await append_random(event_store, rnd, 5, history)
    ttl = 0.6
    first = make_runner(
        event_store, both(), leases=LeaseManager(mongo_database, owner="first", ttl=ttl)
    )
    second = make_runner(
        event_store, both(), leases=LeaseManager(mongo_database, owner="second", ttl=ttl)
    )
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    task_first = asyncio.create_task(first.run(stop_first))
    await wait_until(matches(mongo_database, history))
    task_second = asyncio.create_task(second.run(stop_second))
    await append_random(event_store, rnd, 3, history)
    await wait_until(matches(mongo_database, history))
    assert {s.owner for s in await first.status()} == {"first"}

    # Crash the first runner: it stops without releasing its leases (as a killed
    # process would), so the second must wait for them to expire.
    async def no_release(name: str) -> None:
        return None

    first.leases.release = no_release  # type: ignore[method-assign]
    task_first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task_first
    killed_at = asyncio.get_running_loop().time()
    await append_random(event_store, rnd, 3, history)

    async def taken_over() -> bool:
        return {s.owner for s in await second.status()} == {"second"}

    await wait_until(taken_over, limit=ttl + 5)
    assert asyncio.get_running_loop().time() - killed_at < ttl + 3
    await wait_until(matches(mongo_database, history))
    stop_second.set()
    await asyncio.wait_for(task_second, 20)


# -- change-stream failures -----------------------------------------------------------------


async def test_invalid_resume_token_falls_back_without_missing_events(
    backend: Backend,
    event_store: EventStore,
    mongo_database: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if not (await event_store.database.capabilities()).change_streams:
        pytest.skip(f"{backend.name} has no change streams (polling only)")
    history: History = []
    rnd = random.Random(9)
    runner = make_runner(event_store, [StockLevels()], poll_interval=0.3)
    key = projection_key("stock_levels")
    async with running(runner):
        await append_random(event_store, rnd, 3, history)
        await wait_until(matches(mongo_database, history, "stock_levels"))

        async def token_saved() -> bool:
            # Tokens come from the stream, which may have opened after those appends.
            saved = await runner.checkpoints.load(key)
            if saved is not None and saved.resume_token is not None:
                return True
            await append_random(event_store, rnd, 1, history)
            await asyncio.sleep(0.2)
            return False

        await wait_until(token_saved)
    saved = await runner.checkpoints.load(key)
    assert saved is not None
    assert saved.token_scope is not None
    # A token the server cannot resume from: well-formed for MongoDB (a cluster time
    # long gone from the oplog), and one nx-27017 never issued.
    bogus = (
        {"_data": "nx:999999999"}
        if backend.name != "mongodb"
        else {"_data": "8200000001" + "0" * 20 + "04"}
    )
    await runner.checkpoints.save_resume_token(key, bogus, scope=saved.token_scope)
    caplog.set_level(logging.WARNING, logger="cqrs_kit.subscriptions")
    async with running(make_runner(event_store, [StockLevels()], poll_interval=0.3)):
        await append_random(event_store, rnd, 5, history)
        await wait_until(matches(mongo_database, history, "stock_levels"))
    if backend.name == "mongodb":  # nx-27017 just yields nothing: polling covers it
        assert "resume token no longer valid" in caplog.text or "change stream" in caplog.text


async def test_events_collection_dropped_and_restored_is_followed(
    event_store: EventStore, mongo_database: Any
) -> None:
    """Scenario 10: the watched collection disappears (restore from backup)."""
    history: History = []
    rnd = random.Random(10)
    await append_random(event_store, rnd, 6, history)
    async with running(make_runner(event_store, both(), poll_interval=0.3)):
        await wait_until(matches(mongo_database, history))
        commits = event_store.database.collection(event_store.collection_name)
        backup = await commits.find_list({}, sort=[("position", 1)])
        await commits.drop()  # invalidates a MongoDB change stream
        await commits.insert_many(backup)
        await event_store.ensure_indexes()
        await append_random(event_store, rnd, 6, history)
        await wait_until(matches(mongo_database, history))


# -- rebuild --------------------------------------------------------------------------------


async def test_rebuild_under_write_swaps_atomically_and_live_continues(
    event_store: EventStore, mongo_database: Any
) -> None:
    history: History = []
    rnd = random.Random(11)
    await append_random(event_store, rnd, 30, history)
    runner = make_runner(event_store, both())
    reader = ReadModel(mongo_database, "stock_levels", max_age=0)
    async with running(runner):
        await wait_until(matches(mongo_database, history))
        writing = asyncio.Event()
        stop_writing = asyncio.Event()

        async def writer() -> None:
            while not stop_writing.is_set():
                await append_random(event_store, rnd, 1, history)
                writing.set()
                await asyncio.sleep(0.01)

        writer_task = asyncio.create_task(writer())
        await writing.wait()
        served: list[int] = []
        debug: list[Any] = []

        async def read_while_rebuilding() -> None:  # the live model keeps serving
            while not stop_writing.is_set():
                name = await reader.collection_name()
                t0 = asyncio.get_running_loop().time()
                served.append(await reader.count())
                debug.append((name, served[-1], round(asyncio.get_running_loop().time() - t0, 3)))
                await asyncio.sleep(0.02)

        reader_task = asyncio.create_task(read_while_rebuilding())
        phases: list[str] = []
        # The grace only has to outlast one read: this reader re-resolves every time.
        result = await runner.rebuild(
            "stock_levels", drop_grace=0.5, progress=lambda p: phases.append(p.phase)
        )
        await append_random(event_store, rnd, 3, history)
        stop_writing.set()
        await writer_task
        await reader_task
        assert result.collection == "stock_levels__v2"
        assert result.previous == "stock_levels__v1"
        assert {"building", "handover", "swapped", "done"} <= set(phases)
        assert served
        assert min(served) > 0, str(debug)  # never an empty or missing read model
        await wait_until(matches(mongo_database, history))  # the live runner continues
    assert await reader.collection_name() == "stock_levels__v2"
    names = await event_store.database.collection_names()
    assert "stock_levels__v1" not in names
    (status,) = await runner.status(["stock_levels"])
    assert (status.version, status.rebuild) == (2, None)
    fresh = make_runner(event_store, [StockLevels(name="stock_levels_fresh")])
    await fresh.catch_up()
    assert await snapshot(mongo_database, "stock_levels") == await snapshot(
        mongo_database, "stock_levels_fresh"
    )


async def test_rebuild_after_a_killed_rebuild_starts_over(
    event_store: EventStore, mongo_database: Any
) -> None:
    history: History = []
    await append_random(event_store, random.Random(12), 20, history)
    runner = make_runner(event_store, both())
    await runner.catch_up()
    # What a rebuild killed half way leaves behind: a half-built shadow, its
    # checkpoint, and a handover request nobody will withdraw.
    key = projection_key("items_per_category")
    shadow = event_store.database.collection("items_per_category__v7")
    await shadow.insert_one({"_id": "cat-0", "available": -999, "_position": 3})
    await runner.checkpoints.collection.update_one(
        {"_id": f"{key}:rebuild"},
        {"$set": {"position": 3, "read_model": {"version": 7, "collection": shadow.name}}},
        upsert=True,
    )
    await runner.checkpoints.collection.update_one(
        {"_id": key},
        {"$set": {"handover": {"owner": "dead", "at": 0}}, "$max": {"last_version": 7}},
    )
    (status,) = await runner.status(["items_per_category"])
    assert status.rebuild is not None
    assert status.rebuild.owner is None
    async with running(runner):  # a stale handover request does not block the runner
        await append_random(event_store, random.Random(13), 3, history)
        await wait_until(matches(mongo_database, history))
    result = await runner.rebuild("items_per_category", drop_grace=0)
    assert result.version == 8
    assert "items_per_category__v7" not in await event_store.database.collection_names()
    await assert_matches(mongo_database, history)


async def test_stopped_rebuild_leaves_the_live_model_alone(
    event_store: EventStore, mongo_database: Any
) -> None:
    history: History = []
    await append_random(event_store, random.Random(14), 30, history)
    runner = make_runner(event_store, both(), batch_size=3)
    await runner.catch_up()
    stop = asyncio.Event()

    def stop_soon(progress: Any) -> None:
        if progress.position > 10:
            stop.set()

    with pytest.raises(Exception, match="stopped"):
        await runner.rebuild("stock_levels", stop=stop, progress=stop_soon, drop_grace=0)
    (status,) = await runner.status(["stock_levels"])
    assert (status.read_model, status.rebuild) == ("stock_levels__v1", None)
    assert not [n for n in await event_store.database.collection_names() if "__v2" in n]
    await assert_matches(mongo_database, history)


async def test_reset_starts_over_from_an_empty_read_model(
    event_store: EventStore, mongo_database: Any
) -> None:
    history: History = []
    await append_random(event_store, random.Random(15), 10, history)
    runner = make_runner(event_store, both())
    await runner.catch_up()
    result = await runner.reset("stock_levels")
    assert (result.collection, result.position) == ("stock_levels__v2", 0)
    assert await ReadModel(mongo_database, "stock_levels", max_age=0).count() == 0
    (status,) = await runner.status(["stock_levels"])
    assert status.position == 0
    await runner.catch_up(["stock_levels"])
    await assert_matches(mongo_database, history)


# -- declarations ---------------------------------------------------------------------------


def test_declarations_are_checked() -> None:
    with pytest.raises(UsageError, match="not allowed before grouping"):
        ItemsPerCategory(stages=[{"$group": {"_id": 1}}])
    with pytest.raises(UsageError, match="no group_by"):
        PipelineProjection(name="x", event_types=[StockAdded], fields={"n": Count()})
    with pytest.raises(UsageError, match="needs Sum"):
        PipelineProjection(name="x", event_types=[StockAdded], group_by="$a", fields={"n": 1})  # type: ignore[dict-item]
    with pytest.raises(UsageError, match="invalid projection name"):
        ItemsPerCategory(name="bad__v2")
    with pytest.raises(UsageError, match="managed by the projector"):
        Upsert("x", set={"_position": 1})
    with pytest.raises(UsageError, match="handled by both"):

        class Twice(HandlerProjection):
            @on(StockAdded)
            def one(self, event: StockAdded) -> None: ...

            @on(StockAdded)
            def two(self, event: StockAdded) -> None: ...

    from mongomock_motor import AsyncMongoMockClient

    store = EventStore(AsyncMongoMockClient()["declarations"], registry())
    with pytest.raises(UsageError, match="two projections are named"):
        ProjectionRunner(store, [StockLevels(), StockLevels()])
    runner = ProjectionRunner(store, [StockLevels()])
    with pytest.raises(UsageError, match="known projections: stock_levels"):
        runner.get("nope")
    assert PipelineProjection(
        name="n", event_types=["t"], group_by="$data.k", fields={"total": Sum("$data.v")}
    ).type_names == frozenset({"t"})
