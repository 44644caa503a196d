"""Projection catch-up and live latency against raw aggregations, on a fresh nx-27017 server.

Run from the repository root::

    .venv/bin/python benchmarks/projection.py [--events 100000] [--batch-size 1000]

One run, one fresh in-memory nx-27017 server (started through
``EmbeddedServer``). It appends ``--events`` stock events (10 per commit,
20 categories, 1,000 items), then times, over the same events:

* **pipeline projector**: ``ProjectionRunner.catch_up()`` of the "items
  available per category" :class:`PipelineProjection` (batches of
  ``--batch-size``, guarded bulk upsert: nx-27017 does not run ``$merge``
  update pipelines);
* **raw aggregation**: what a hand-written job would do: one aggregation over
  all commits (``$unwind`` + the same stages + ``$group``) and one bulk upsert
  of the groups with the raw driver;
* **handler projector**: catch-up of the per-item :class:`HandlerProjection`;
* **raw handler equivalent**: one ``find`` over all commits, the same per-item
  sums folded in Python, one bulk upsert.

Then it runs both projections live (change-stream doorbell) and appends one
event at a time, measuring append-to-visible latency (from before
``append`` until the read-model document carries the event's position) for
``--live`` appends. It prints a markdown table and writes
``benchmarks/results/projection.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from pymongo import AsyncMongoClient, UpdateOne

from cqrs_kit import Event, EventRegistry, EventStore
from cqrs_kit.projections import (
    Count,
    HandlerProjection,
    PipelineProjection,
    ProjectionRunner,
    ReadModel,
    Sum,
    Upsert,
    on,
)
from cqrs_kit.testing import EmbeddedServer

RESULTS = Path(__file__).with_name("results") / "projection.json"
POLL = 0.005  # seconds between read-model probes while timing live latency


class StockAdded(Event):
    event_type: ClassVar[str] = "bench.StockAdded"
    sku: str
    category: str
    quantity: int


class StockRemoved(Event):
    event_type: ClassVar[str] = "bench.StockRemoved"
    sku: str
    category: str
    quantity: int


DELTA = {
    "$cond": [
        {"$eq": ["$type", StockAdded.event_type]},
        "$data.quantity",
        {"$multiply": [-1, "$data.quantity"]},
    ]
}


class PerCategory(PipelineProjection):
    name = "per_category"
    event_types = (StockAdded, StockRemoved)
    stages: ClassVar = [{"$addFields": {"delta": DELTA}}]
    group_by = "$data.category"
    fields: ClassVar = {"available": Sum("$delta"), "movements": Count()}


class PerItem(HandlerProjection):
    name = "per_item"

    @on(StockAdded)
    def added(self, event: StockAdded) -> Upsert:
        return Upsert(event.sku, inc={"available": event.quantity, "movements": 1})

    @on(StockRemoved)
    def removed(self, event: StockRemoved) -> Upsert:
        return Upsert(event.sku, inc={"available": -event.quantity, "movements": 1})


def stock_event(rnd: random.Random) -> Event:
    sku = rnd.randrange(1000)
    cls = StockAdded if rnd.random() < 0.7 else StockRemoved
    return cls(sku=f"sku-{sku}", category=f"cat-{sku % 20}", quantity=rnd.randrange(1, 10))


async def fill(store: EventStore, events: int) -> float:
    rnd = random.Random(42)
    started = time.perf_counter()
    for n in range(events // 10):
        await store.append(f"item-{n % 500}", [stock_event(rnd) for _ in range(10)])
    return time.perf_counter() - started


async def raw_aggregation(db: Any) -> tuple[float, list[dict[str, Any]]]:
    started = time.perf_counter()
    types = [StockAdded.event_type, StockRemoved.event_type]
    pipeline = [
        {"$match": {"types": {"$in": types}}},
        {"$sort": {"position": 1}},
        {"$unwind": "$events"},
        {"$match": {"events.type": {"$in": types}}},
        {"$project": {"_id": 0, "type": "$events.type", "data": "$events.data"}},
        {"$addFields": {"delta": DELTA}},
        {
            "$group": {
                "_id": "$data.category",
                "available": {"$sum": "$delta"},
                "movements": {"$sum": 1},
            }
        },
    ]
    groups = await (await db["events"].aggregate(pipeline)).to_list()
    await db["raw_per_category"].bulk_write(
        [
            UpdateOne(
                {"_id": g["_id"]},
                {"$inc": {"available": g["available"], "movements": g["movements"]}},
                upsert=True,
            )
            for g in groups
        ],
        ordered=False,
    )
    return time.perf_counter() - started, groups


async def raw_handler(db: Any) -> float:
    started = time.perf_counter()
    totals: dict[str, list[int]] = {}
    async for commit in db["events"].find({}, sort=[("position", 1)], batch_size=1000):
        for body in commit["events"]:
            data = body["data"]
            sign = 1 if body["type"] == StockAdded.event_type else -1
            entry = totals.setdefault(data["sku"], [0, 0])
            entry[0] += sign * data["quantity"]
            entry[1] += 1
    await db["raw_per_item"].bulk_write(
        [
            UpdateOne({"_id": sku}, {"$inc": {"available": a, "movements": m}}, upsert=True)
            for sku, (a, m) in totals.items()
        ],
        ordered=False,
    )
    return time.perf_counter() - started


async def live_latency(store: EventStore, db: Any, samples: int) -> dict[str, list[float]]:
    runner = ProjectionRunner(store, [PerCategory(), PerItem()], batch_size=1000)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    per_category = ReadModel(db, "per_category", max_age=60)
    per_item = ReadModel(db, "per_item", max_age=60)
    latencies: dict[str, list[float]] = {"per_category": [], "per_item": []}
    rnd = random.Random(7)
    try:
        deadline = time.monotonic() + 120
        while (await runner.status())[0].lag_events and time.monotonic() < deadline:  # noqa: ASYNC110 - polling the database
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # and open its change streams
        for _ in range(samples):
            event = stock_event(rnd)
            started = time.perf_counter()
            result = await store.append(f"item-{event.sku}", [event])  # type: ignore[attr-defined]
            pending = {"per_category": event.category, "per_item": event.sku}  # type: ignore[attr-defined]
            while pending:
                for name, key in list(pending.items()):
                    model = per_category if name == "per_category" else per_item
                    doc = await model.get(key)
                    if doc is not None and doc["_position"] >= result.position:
                        latencies[name].append(time.perf_counter() - started)
                        del pending[name]
                if pending:
                    # Every probe is a query the single-threaded embedded server must
                    # also answer; probing faster than this slows the projectors down.
                    await asyncio.sleep(POLL)
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--live", type=int, default=200, help="live appends to time")
    args = parser.parse_args()
    registry = EventRegistry(StockAdded, StockRemoved)
    run_started = time.perf_counter()
    with EmbeddedServer("memory") as server:
        client: Any = AsyncMongoClient(server.uri)
        db = client["bench_projection"]
        store = EventStore(db, registry)
        await store.ensure_indexes()
        fill_s = await fill(store, args.events)
        print(f"appended {args.events} events in {fill_s:.1f}s", file=sys.stderr)

        runner = ProjectionRunner(store, [PerCategory()], batch_size=args.batch_size)
        started = time.perf_counter()
        await runner.catch_up()
        pipeline_s = time.perf_counter() - started
        raw_s, groups = await raw_aggregation(db)
        projected = await ReadModel(db, "per_category").find(sort=[("_id", 1)])
        assert [(d["_id"], d["available"], d["movements"]) for d in projected] == sorted(
            (g["_id"], g["available"], g["movements"]) for g in groups
        ), "pipeline projector and raw aggregation disagree"

        runner = ProjectionRunner(store, [PerItem()], batch_size=args.batch_size)
        started = time.perf_counter()
        await runner.catch_up()
        handler_s = time.perf_counter() - started
        raw_handler_s = await raw_handler(db)

        # Where the pipeline projector's time goes: the runtime's own read of the log.
        started = time.perf_counter()
        async for _ in store.read_all(strict=False, batch_size=args.batch_size):
            pass
        read_all_s = time.perf_counter() - started

        latencies = await live_latency(store, db, args.live)
        await client.close()

    n = args.events
    rows = [
        ("pipeline projector (catch-up)", pipeline_s, "raw aggregation + bulk upsert", raw_s),
        (
            "handler projector (catch-up)",
            handler_s,
            "raw find + Python fold + bulk upsert",
            raw_handler_s,
        ),
    ]
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": " ".join(["python", "benchmarks/projection.py", *sys.argv[1:]]),
        "events": n,
        "batch_size": args.batch_size,
        "machine": {
            "nproc": os.cpu_count(),
            "machine": platform.machine(),
            "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
            "pymongo": metadata.version("pymongo"),
            "nx_27017": metadata.version("nx-27017"),
            "loadavg": os.getloadavg(),
        },
        "fill_seconds": fill_s,
        "read_all_seconds": read_all_s,
        "catch_up": [
            {"library": lib, "library_s": ls, "raw": raw, "raw_s": rs, "ratio": ls / rs}
            for lib, ls, raw, rs in rows
        ],
        "live": {
            name: {"samples": len(v), "p50_ms": pct(v, 0.5) * 1000, "p99_ms": pct(v, 0.99) * 1000}
            for name, v in latencies.items()
        },
        "total_seconds": time.perf_counter() - run_started,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    head = "| catch-up of {:,} events | s | events/s | raw baseline | s | events/s | ratio |"
    print(head.format(n))
    print("|---|---|---|---|---|---|---|")
    for lib, ls, raw, rs in rows:
        cells = [lib, f"{ls:.1f}", f"{n / ls:,.0f}", raw, f"{rs:.1f}", f"{n / rs:,.0f}"]
        print("| " + " | ".join([*cells, f"{ls / rs:.2f}"]) + " |")
    print()
    rate = n / read_all_s
    print(f"`read_all` of the same {n:,} events alone: {read_all_s:.1f}s ({rate:,.0f} events/s)")
    print()
    print("| live, append to visible | samples | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for name, stats in result["live"].items():
        print(f"| {name} | {stats['samples']} | {stats['p50_ms']:.1f} | {stats['p99_ms']:.1f} |")
    print(f"\nmedian of all live samples: {statistics.median(latencies['per_item']) * 1000:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
