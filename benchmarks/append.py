"""Event-store appends against the raw driver, on a fresh nx-27017 server.

Run from the repository root::

    .venv/bin/python benchmarks/append.py [--rounds 7] [--profile]

Each figure is ``rounds`` rounds of ``M`` operations, run interleaved (one round
of every operation, then the next round) so that drift in the server, such as
collections growing, falls on all of them alike. A round's time divided by
``M`` is one sample; the table shows the median sample and the spread
(min-max) across rounds, and the library/raw ratio of the medians.

The raw baselines write documents of the same shape into collections with the
same indexes and the same (majority) read and write concern as the store's,
built before the clock starts: they measure what the driver and the server
cost for the write itself. The library figures include everything an append
does: validating, pydantic's JSON dump, building and encoding the commit
document, and any reads it needs.

Round trips per append are counted by a pymongo ``CommandListener`` on a
second client, in a separate pass, so that listening costs nothing in the
timed runs. The breakdown section times the client-side pieces of an append
(pydantic dump, BSON encoding) and the server round trips alone, so that the
overhead can be attributed by measurement. ``--profile`` also prints a
cProfile summary of library appends.

Prints a markdown table and writes ``benchmarks/results/append.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import bson
from pymongo import AsyncMongoClient
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from cqrs_kit import Event, EventMetadata, EventRegistry, EventStore, NewEvent
from cqrs_kit.metrics import get_metrics
from cqrs_kit.testing import EmbeddedServer
from harness import CountingListener, create_commit_indexes, now_ms, own_time_by_package

RESULTS = Path(__file__).with_name("results") / "append.json"
SINGLE_OPS = 200  # operations per round, one-event appends
BATCH_OPS = 20  # operations per round, 100-event appends
BATCH_SIZE = 100
STREAMS = 10


class ItemRented(Event):
    """A realistic small event: ids, money, a timestamp with an offset."""

    event_type: ClassVar[str] = "bench.ItemRented"
    rental_id: uuid.UUID
    member_id: str
    sku: str
    price: Decimal
    quantity: int
    rented_at: datetime


REGISTRY = EventRegistry(ItemRented)
JST = timezone(timedelta(hours=9))


def make_event(n: int) -> ItemRented:
    return ItemRented(
        rental_id=uuid.uuid4(),
        member_id=f"member-{n % 97}",
        sku=f"DRESS-{n % 500:04d}",
        price=Decimal("12800.00"),
        quantity=1 + n % 3,
        rented_at=datetime(2024, 5, 1, 10, 30, 15, 123456, tzinfo=JST) + timedelta(seconds=n),
    )


# -- raw documents of the store's shape ------------------------------------------------------


def raw_event_body(event: Event, event_id: str) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": event.event_type,
        "v": event.schema_version,
        "data": event.model_dump(mode="json"),
        "meta": {},
    }


def raw_commit(
    stream: str, from_version: int, position: int, events: list[Event]
) -> dict[str, Any]:
    ids = [str(uuid.uuid4()) for _ in events]
    bodies = [
        {**raw_event_body(e, i), "version": from_version + n, "position": position + n}
        for n, (e, i) in enumerate(zip(events, ids, strict=True))
    ]
    return {
        "_id": ids[0],
        "stream_id": stream,
        "from_version": from_version,
        "to_version": from_version + len(events) - 1,
        "position": position,
        "last_position": position + len(events) - 1,
        "recorded_at": now_ms(),
        "event_ids": ids,
        "types": sorted({e.event_type for e in events}),
        "events": bodies,
    }


def raw_event_docs(
    stream: str, from_version: int, position: int, events: list[Event]
) -> list[dict[str, Any]]:
    recorded_at = now_ms()
    docs = []
    for n, event in enumerate(events):
        event_id = str(uuid.uuid4())
        body = raw_event_body(event, event_id)
        docs.append(
            {
                "_id": event_id,
                "stream_id": stream,
                "version": from_version + n,
                "position": position + n,
                "type": body["type"],
                "v": body["v"],
                "recorded_at": recorded_at,
                "data": body["data"],
                "meta": body["meta"],
            }
        )
    return docs


# -- measurement -------------------------------------------------------------------------------


@dataclass
class Figure:
    """Samples (ms per operation, one per round) of one operation."""

    name: str
    ops: int
    samples: list[float] = field(default_factory=list)
    #: Client CPU (this process) in ms per operation, one per round.
    cpu_samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_samples)

    def summary(self) -> dict[str, Any]:
        return {
            "ops_per_round": self.ops,
            "median_ms": round(self.median, 4),
            "min_ms": round(min(self.samples), 4),
            "max_ms": round(max(self.samples), 4),
            "samples_ms": [round(s, 4) for s in self.samples],
            "client_cpu_median_ms": round(self.cpu_median, 4),
        }

    def cell(self) -> str:
        return f"{self.median:.3f} ({min(self.samples):.3f}-{max(self.samples):.3f})"


Op = Callable[[int], Awaitable[Any]]


async def timed_round(op: Op, ops: int) -> tuple[float, float]:
    """Run ``op(0..ops-1)``; return wall and client-CPU milliseconds per operation."""
    cpu = time.process_time()
    started = time.perf_counter()
    for n in range(ops):
        await op(n)
    wall = (time.perf_counter() - started) * 1000 / ops
    return wall, (time.process_time() - cpu) * 1000 / ops


async def create_event_indexes(coll: Any) -> None:
    await coll.create_index([("position", 1)], unique=True)
    await coll.create_index([("stream_id", 1), ("version", 1)], unique=True)
    await coll.create_index([("type", 1), ("position", 1)])


def durable(coll: Any) -> Any:
    return coll.with_options(
        write_concern=WriteConcern("majority"), read_concern=ReadConcern("majority")
    )


class Workloads:
    """The operations compared, each over its own collection of one database."""

    def __init__(self, db: Any, *, rounds: int) -> None:
        self.db = db
        self.rounds = rounds
        self.store = EventStore(db, REGISTRY, collection="lib_events")
        # Two stores sharing a collection: appends alternating between them always
        # find the other's commit at the position they hoped for, as writers in
        # several processes do. Separate collections keep the other workloads'
        # hints undisturbed.
        self.pair = (
            EventStore(db, REGISTRY, collection="lib_alternating"),
            EventStore(db, REGISTRY, collection="lib_alternating"),
        )
        self.raw_commits = durable(db["raw_commits"])
        self.raw_events = durable(db["raw_events"])
        self.raw_batches = durable(db["raw_batches"])
        self.raw_positions = {"raw_commits": 0, "raw_events": 0, "raw_batches": 0}
        self.raw_versions: dict[str, Counter[str]] = {k: Counter() for k in self.raw_positions}

    async def setup(self) -> None:
        await self.store.ensure_indexes()
        await self.pair[0].ensure_indexes()
        await EventStore(self.db, REGISTRY, collection="lib_new_store").ensure_indexes()
        await create_commit_indexes(self.raw_commits)
        await create_commit_indexes(self.raw_batches)
        await create_event_indexes(self.raw_events)
        # Warm every path once (connections, collections, hints).
        for n in range(STREAMS):
            await self.store.append(f"lib-{n}", [make_event(n)])

    # Raw documents are built before each round's clock starts.
    def _raw_single(self, ops: int) -> list[dict[str, Any]]:
        docs = []
        for n in range(ops):
            stream = f"raw-{n % STREAMS}"
            self.raw_positions["raw_commits"] += 1
            self.raw_versions["raw_commits"][stream] += 1
            docs.append(
                raw_commit(
                    stream,
                    self.raw_versions["raw_commits"][stream],
                    self.raw_positions["raw_commits"],
                    [make_event(n)],
                )
            )
        return docs

    def _raw_many(self, ops: int, key: str) -> list[Any]:
        out: list[Any] = []
        for n in range(ops):
            stream = f"raw-{n % STREAMS}"
            events: list[Event] = [make_event(n * BATCH_SIZE + k) for k in range(BATCH_SIZE)]
            version = self.raw_versions[key][stream] + 1
            position = self.raw_positions[key] + 1
            if key == "raw_events":
                out.append(raw_event_docs(stream, version, position, events))
            else:
                out.append(raw_commit(stream, version, position, events))
            self.raw_versions[key][stream] += BATCH_SIZE
            self.raw_positions[key] += BATCH_SIZE
        return out

    def _single_events(self, ops: int) -> list[list[Event]]:
        return [[make_event(n)] for n in range(ops)]

    def _batches(self, ops: int) -> list[list[Event]]:
        return [[make_event(n * BATCH_SIZE + k) for k in range(BATCH_SIZE)] for n in range(ops)]

    @staticmethod
    def _wrapped(batches: list[list[Event]]) -> list[list[NewEvent]]:
        """The events in ``NewEvent``s made by the caller, as code that may retry holds them."""
        return [[NewEvent(e) for e in batch] for batch in batches]

    def operations(self) -> dict[str, tuple[int, Callable[[], Op]]]:
        """Name -> (operations per round, a factory that prepares one round's inputs)."""

        def lib_single() -> Op:
            events = self._single_events(SINGLE_OPS)

            async def op(n: int) -> Any:
                return await self.store.append(f"lib-{n % STREAMS}", events[n])

            return op

        def lib_single_new_store() -> Op:
            events = self._single_events(SINGLE_OPS)

            async def op(n: int) -> Any:
                store = EventStore(self.db, REGISTRY, collection="lib_new_store")
                return await store.append(f"lib-{n % STREAMS}", events[n])

            return op

        def lib_single_alternating() -> Op:
            events = self._single_events(SINGLE_OPS)

            async def op(n: int) -> Any:
                return await self.pair[n % 2].append(f"lib-{n % STREAMS}", events[n])

            return op

        def lib_single_new_event() -> Op:
            events = self._wrapped(self._single_events(SINGLE_OPS))

            async def op(n: int) -> Any:
                return await self.store.append(f"lib-{n % STREAMS}", events[n])

            return op

        def raw_insert_one() -> Op:
            docs = self._raw_single(SINGLE_OPS)

            async def op(n: int) -> Any:
                return await self.raw_commits.insert_one(docs[n])

            return op

        def lib_batch() -> Op:
            batches = self._batches(BATCH_OPS)

            async def op(n: int) -> Any:
                return await self.store.append(f"lib-{n % STREAMS}", batches[n])

            return op

        def lib_batch_new_events() -> Op:
            batches = self._wrapped(self._batches(BATCH_OPS))

            async def op(n: int) -> Any:
                return await self.store.append(f"lib-{n % STREAMS}", batches[n])

            return op

        def raw_insert_many() -> Op:
            docs = self._raw_many(BATCH_OPS, "raw_events")

            async def op(n: int) -> Any:
                return await self.raw_events.insert_many(docs[n])

            return op

        def raw_insert_one_batch() -> Op:
            docs = self._raw_many(BATCH_OPS, "raw_batches")

            async def op(n: int) -> Any:
                return await self.raw_batches.insert_one(docs[n])

            return op

        return {
            "lib_append_1": (SINGLE_OPS, lib_single),
            "lib_append_1_new_event": (SINGLE_OPS, lib_single_new_event),
            "lib_append_1_new_store": (SINGLE_OPS, lib_single_new_store),
            "lib_append_1_alternating": (SINGLE_OPS, lib_single_alternating),
            "raw_insert_one_1": (SINGLE_OPS, raw_insert_one),
            "lib_append_100": (BATCH_OPS, lib_batch),
            "lib_append_100_new_events": (BATCH_OPS, lib_batch_new_events),
            "raw_insert_many_100": (BATCH_OPS, raw_insert_many),
            "raw_insert_one_100": (BATCH_OPS, raw_insert_one_batch),
        }

    async def run(self) -> dict[str, Figure]:
        ops = self.operations()
        figures = {name: Figure(name, count) for name, (count, _) in ops.items()}
        for _ in range(self.rounds):
            for name, (count, prepare) in ops.items():
                op = prepare()
                wall, cpu = await timed_round(op, count)
                figures[name].samples.append(wall)
                figures[name].cpu_samples.append(cpu)
        return figures


async def count_round_trips(uri: str, database: str) -> dict[str, dict[str, float]]:
    """Commands per library append, by name, on a listening client."""
    listener = CountingListener()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, event_listeners=[listener])
    try:
        loads = Workloads(client[database], rounds=1)
        ops = loads.operations()
        out: dict[str, dict[str, float]] = {}
        for name in [name for name in ops if name.startswith("lib_")]:
            count, prepare = ops[name]
            count = min(count, 20)
            # One untimed warm-up call per stream, so the counts show the steady state.
            op = prepare()
            for n in range(STREAMS):
                await op(n)
            op = prepare()
            listener.counts.clear()
            for n in range(count):
                await op(n)
            per_op = {k: v / count for k, v in sorted(listener.counts.items())}
            per_op["total"] = sum(listener.counts.values()) / count
            out[name] = per_op
        return out
    finally:
        await client.close()


class _NoOpCollection:
    """Stands in for the driver's collection: every write and lookup returns at once."""

    name = "no-op"

    async def insert_one(self, doc: Any, session: Any = None) -> None:
        return None

    async def find_one(self, *args: Any, **kwargs: Any) -> None:
        return None


async def library_only_cpu(db: Any) -> dict[str, float]:
    """Client CPU of an append with the driver taken out (µs, medians of 5 runs).

    Swaps the store's driver collection for one whose calls return at once. This
    reaches into private attributes on purpose: it isolates cqrs_kit's own work
    (validation, pydantic dump, commit document, BSON encoding, metrics) from
    pymongo's and the server's.
    """
    store = EventStore(db, REGISTRY, collection="no_op")
    await store.ensure_indexes()
    for n in range(STREAMS):  # warm hints, so appends go straight to the insert
        await store.append(f"n-{n}", [make_event(n)])
    store._commits._coll = _NoOpCollection()  # type: ignore[attr-defined]
    out = {}
    for size, ops in ((1, 3000), (BATCH_SIZE, 60)):
        work = [[make_event(n * size + k) for k in range(size)] for n in range(ops)]
        runs = []
        for _ in range(5):
            cpu = time.process_time()
            for n in range(ops):
                await store.append(f"n-{n % STREAMS}", work[n])
            runs.append((time.process_time() - cpu) * 1e6 / ops)
        out[f"library_only_append_{size}_cpu_us"] = round(statistics.median(runs), 1)
    return out


async def breakdown(db: Any) -> dict[str, float]:
    """Time the pieces of an append separately (microseconds, medians of 7 runs)."""

    def median_us(fn: Callable[[], Any], loops: int) -> float:
        runs = []
        for _ in range(7):
            started = time.perf_counter()
            for _ in range(loops):
                fn()
            runs.append((time.perf_counter() - started) * 1e6 / loops)
        return statistics.median(runs)

    event = make_event(1)
    meta = EventMetadata()
    batch: list[Event] = [make_event(k) for k in range(BATCH_SIZE)]
    commit_1 = raw_commit("s", 1, 1, [event])
    commit_100 = raw_commit("s", 1, 1, batch)
    out = {
        "pydantic_dump_1_event_us": median_us(
            lambda: (REGISTRY.encode(event, stream_id="s"), meta.model_dump(exclude_defaults=True)),
            2000,
        ),
        "new_event_wrapper_1_us": median_us(lambda: NewEvent(event), 2000),
        "metrics_record_append_us": median_us(
            lambda: get_metrics().record_append("bench-1", 1, 0.001), 2000
        ),
        "bson_encode_commit_1_us": median_us(lambda: bson.encode(commit_1), 2000),
        "bson_encode_commit_100_us": median_us(lambda: bson.encode(commit_100), 50),
    }
    out["pydantic_dump_100_events_us"] = out["pydantic_dump_1_event_us"] * BATCH_SIZE
    out["new_event_wrapper_100_us"] = out["new_event_wrapper_1_us"] * BATCH_SIZE

    # Server round trips of the reads an append may make, on their own.
    coll = durable(db["lib_events"])
    some_id = commit_1["_id"]  # not stored: the miss an append's duplicate check makes
    hundred_ids = commit_100["event_ids"]

    async def reads() -> dict[str, float]:
        async def find_by_id() -> Any:
            return await coll.find_one({"_id": some_id})

        async def find_by_event_ids() -> Any:
            return await coll.find_one({"event_ids": {"$in": [some_id]}})

        async def find_by_100_event_ids() -> Any:
            return await coll.find_one({"event_ids": {"$in": hundred_ids}})

        async def log_head() -> Any:
            return await coll.find_one({}, sort=[("position", -1)], projection={"last_position": 1})

        async def stream_head() -> Any:
            cursor = await coll.aggregate(
                [
                    {"$match": {"stream_id": "lib-1"}},
                    {"$sort": {"from_version": -1}},
                    {"$limit": 1},
                    {"$project": {"to_version": 1, "last_position": 1}},
                ]
            )
            return await cursor.to_list()

        async def both_heads() -> Any:
            return await asyncio.gather(stream_head(), log_head())

        timings = {}
        for name, fn in (
            ("find_one_by_id", find_by_id),
            ("find_one_event_ids_in_1", find_by_event_ids),
            ("find_one_event_ids_in_100", find_by_100_event_ids),
            ("log_head_find_one", log_head),
            ("stream_head_aggregate", stream_head),
            ("both_heads_concurrently", both_heads),
        ):
            runs = []
            for _ in range(7):
                started = time.perf_counter()
                for _ in range(100):
                    await fn()
                runs.append((time.perf_counter() - started) * 1e6 / 100)
            timings[f"{name}_us"] = statistics.median(runs)
        return timings

    out.update(await reads())
    return {k: round(v, 1) for k, v in out.items()}


async def scaling_probe(db: Any) -> list[dict[str, Any]]:
    """How the duplicate-id check and a 100-event append scale with the collection's size.

    Fills a fresh collection with 100-event commits in steps and, at each size,
    times (median of 5) the ``event_ids`` ``$in`` query the duplicate-id check makes
    before inserting, the log-head read, library 1-event and 100-event appends of
    caller-made ``NewEvent``s (the ones that are checked) and a raw 100-event
    ``insert_one``.
    """
    store = EventStore(db, REGISTRY, collection="probe_lib")
    await store.ensure_indexes()
    coll = durable(db["probe_lib"])
    raw = durable(db["probe_raw"])
    await create_commit_indexes(raw)
    raw_position = 0
    rows = []
    filled = 0
    for size in (0, 50, 100, 200):
        while filled < size:
            await store.append(
                f"fill-{filled % STREAMS}", [make_event(k) for k in range(BATCH_SIZE)]
            )
            filled += 1
        lookups, heads, singles, appends, inserts = [], [], [], [], []
        for n in range(5):
            ids = [str(uuid.uuid4()) for _ in range(BATCH_SIZE)]
            started = time.perf_counter()
            await coll.find_one({"event_ids": {"$in": ids}})
            lookups.append(time.perf_counter() - started)
            started = time.perf_counter()
            await coll.find_one({}, sort=[("position", -1)], projection={"last_position": 1})
            heads.append(time.perf_counter() - started)
            single = [NewEvent(make_event(n))]
            started = time.perf_counter()
            await store.append(f"single-{n}", single)
            singles.append(time.perf_counter() - started)
            events: list[Event] = [make_event(k) for k in range(BATCH_SIZE)]
            batch = [NewEvent(e) for e in events]
            started = time.perf_counter()
            await store.append(f"probe-{n}", batch)
            appends.append(time.perf_counter() - started)
            doc = raw_commit(f"probe-{size}-{n}", 1, raw_position + 1, events)
            raw_position += BATCH_SIZE
            started = time.perf_counter()
            await raw.insert_one(doc)
            inserts.append(time.perf_counter() - started)
        filled += 10  # the probe's own appends
        rows.append(
            {
                "commits_in_collection": size,
                "event_ids_in_100_ms": round(statistics.median(lookups) * 1000, 3),
                "log_head_ms": round(statistics.median(heads) * 1000, 3),
                "lib_append_1_ms": round(statistics.median(singles) * 1000, 3),
                "lib_append_100_ms": round(statistics.median(appends) * 1000, 3),
                "raw_insert_one_100_ms": round(statistics.median(inserts) * 1000, 3),
            }
        )
    return rows


async def profile_appends(db: Any) -> str:
    """Where the time of library appends and raw inserts goes, by package (cProfile).

    Profiling slows every call down, so the absolute figures are inflated; the
    comparison between library and raw at the same number of calls is the point.
    """
    store = EventStore(db, REGISTRY, collection="profiled")
    await store.ensure_indexes()
    raw = durable(db["profiled_raw"])
    await create_commit_indexes(raw)
    await store.append("warm", [make_event(0)])
    await raw.insert_one(raw_commit("warm", 1, 1, [make_event(0)]))
    cases = []
    next_position = 2
    for label, size, ops in (("1 event", 1, 1000), ("100 events", BATCH_SIZE, 20)):
        lib_events = [[make_event(n * size + k) for k in range(size)] for n in range(ops)]
        raw_docs = [
            raw_commit(f"p{size}-{n}", 1, next_position + n * size, lib_events[n])
            for n in range(ops)
        ]
        next_position += ops * size
        lib_profile, raw_profile = cProfile.Profile(), cProfile.Profile()
        lib_profile.enable()
        for n in range(ops):
            await store.append(f"p-{n % STREAMS}", lib_events[n])
        lib_profile.disable()
        raw_profile.enable()
        for n in range(ops):
            await raw.insert_one(raw_docs[n])
        raw_profile.disable()
        cases.append(
            (label, own_time_by_package(lib_profile, ops), own_time_by_package(raw_profile, ops))
        )
    lines = []
    for label, lib, base in cases:
        lines += [
            f"#### {label}: own time by package, µs per operation (under cProfile)",
            "",
            "| package | library append | raw `insert_one` | difference |",
            "|---|---|---|---|",
        ]
        for name in sorted(set(lib) | set(base), key=lambda k: -(lib[k] - base[k])):
            lines.append(
                f"| {name} | {lib[name]:.1f} | {base[name]:.1f} | {lib[name] - base[name]:+.1f} |"
            )
        lines.append(
            f"| total | {sum(lib.values()):.1f} | {sum(base.values()):.1f} "
            f"| {sum(lib.values()) - sum(base.values()):+.1f} |"
        )
        lines.append("")
    return "\n".join(lines)


# -- report ------------------------------------------------------------------------------------

ONE = "`insert_one` commit"
ROWS = [
    # (label, library figure, raw figure, raw label)
    ("1 event, `expected_version=None`", "lib_append_1", "raw_insert_one_1", ONE),
    ("1 event in a caller-made `NewEvent`", "lib_append_1_new_event", "raw_insert_one_1", ONE),
    ("1 event, new `EventStore` per append", "lib_append_1_new_store", "raw_insert_one_1", ONE),
    ("1 event, two stores alternating", "lib_append_1_alternating", "raw_insert_one_1", ONE),
    ("100 events", "lib_append_100", "raw_insert_many_100", "`insert_many` 100 docs"),
    ("100 events", "lib_append_100", "raw_insert_one_100", "`insert_one` 100-event commit"),
    (
        "100 events in caller-made `NewEvent`s",
        "lib_append_100_new_events",
        "raw_insert_one_100",
        "`insert_one` 100-event commit",
    ),
]


def markdown_table(figures: dict[str, Figure], trips: dict[str, dict[str, float]]) -> str:
    lines = [
        "| append | library ms/op | raw driver | raw ms/op | ratio "
        "| client CPU ms/op, library / raw | library round trips/op |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, lib, raw, raw_label in ROWS:
        ratio = figures[lib].median / figures[raw].median
        counts = trips[lib]
        detail = ", ".join(f"{k} {v:g}" for k, v in counts.items() if k != "total")
        lines.append(
            f"| {label} | {figures[lib].cell()} | {raw_label} | {figures[raw].cell()} "
            f"| {ratio:.2f} | {figures[lib].cpu_median:.3f} / {figures[raw].cpu_median:.3f} "
            f"| {counts['total']:g} ({detail}) |"
        )
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "pymongo": metadata.version("pymongo"),
        "pydantic": metadata.version("pydantic"),
        "nx_27017": metadata.version("nx-27017"),
        "server": "nx-27017, in-memory SQLite, fresh for this run",
    }


async def main(rounds: int, profile: bool) -> None:
    started = time.perf_counter()
    with EmbeddedServer("memory") as server:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.uri)
        try:
            db = client["bench_append"]
            loads = Workloads(db, rounds=rounds)
            await loads.setup()
            figures = await loads.run()
            trips = await count_round_trips(server.uri, "bench_append")
            pieces = await breakdown(db)
            pieces.update(await library_only_cpu(db))
            scaling = await scaling_probe(db)
            profiled = await profile_appends(db) if profile else ""
        finally:
            await client.close()
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "environment": environment(),
        "rounds": rounds,
        "figures": {name: fig.summary() for name, fig in figures.items()},
        "ratios": {
            f"{lib}/{raw}": round(figures[lib].median / figures[raw].median, 3)
            for _, lib, raw, _ in ROWS
        },
        "round_trips_per_append": trips,
        "breakdown_us": pieces,
        "scaling_with_collection_size": scaling,
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_table(figures, trips))
    print()
    print("Breakdown (µs, medians):")
    for key, value in pieces.items():
        print(f"- {key}: {value}")
    print()
    print(
        "| commits in collection | `event_ids` `$in` 100 ids ms | log head ms "
        "| library 1-event append (`NewEvent`) ms | library 100-event append (`NewEvent`s) ms "
        "| raw `insert_one` 100-event commit ms |"
    )
    print("|---|---|---|---|---|---|")
    for row in scaling:
        print(" | ".join(["", *(str(v) for v in row.values()), ""]).strip())
    if profiled:
        print()
        print(profiled)
    print(f"\nwrote {RESULTS} in {report['runtime_s']} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds per figure (>= 5)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile summary")
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error("--rounds must be at least 5")
    asyncio.run(main(args.rounds, args.profile))
