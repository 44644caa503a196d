"""Scaling study: appends, catch-up, rebuild memory and read-your-writes as the log grows.

Run from the repository root::

    .venv/bin/python benchmarks/scaling.py [--target nx-27017|mongodb] [--rounds 5]
        [--sizes 10000,100000,1000000] [--projection-sizes 10000,100000,1000000]

One store grows through ``--sizes`` (events). The events are loaded with the raw
driver as commit documents in exactly the store's stored format (10 events per
commit, 5,000 streams, batches of 500 commits per ``insert_many``), which is
much faster than appending them one command at a time; the load rate of each
step is recorded. At every size:

* **appends** (every size): ``--rounds`` interleaved rounds of library appends of
  one bare event with a warm store (the steady state of one writer), with a new
  store per append (it reads the stream head and the log head first), and of a
  caller-made ``NewEvent`` (its id is checked for an earlier append), against a
  raw ``insert_one`` of a one-event commit into the same collection;
* **catch-up** (projection sizes): ``--rounds`` interleaved rounds of a handler
  projection (a per-item stock level) caught up from zero with
  ``ProjectionRunner.catch_up()``, against a raw ``find`` of all commits, the same
  fold in Python and one bulk upsert;
* **rebuild memory** (projection sizes): a ``rebuild()`` of the projection in a
  child process, whose peak resident set (``ru_maxrss``) is compared with two raw
  children, one streaming the same cursor and one loading every commit into a
  list first.

A projection size whose rounds would take longer than ``--projection-budget``
seconds at the catch-up rate measured so far is skipped and recorded as such.

Finally **read-your-writes**: on a fresh database, a child process appends one
event at a time at a steady rate (``--loads``, appends per second) while this
process appends probe events and waits until the read model shows each of them,
first with a live ``ProjectionRunner``, then with a hand-written raw projector
(a change stream and one ``update_one`` per event, no checkpoint).

Writes ``benchmarks/results/scaling.json`` (``results/mongodb/scaling.json`` on
the MongoDB target).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from pymongo import AsyncMongoClient, UpdateOne

from cqrs_kit import Event, EventRegistry, EventStore, NewEvent, ReadModel
from cqrs_kit.checkpoints import CheckpointStore
from cqrs_kit.projections import HandlerProjection, ProjectionRunner, Upsert, on, projection_key
from harness import Samples, Target, environment, open_target, percentile, results_path

EVENTS_PER_COMMIT = 10
LOAD_STREAMS = 5_000
LOAD_BATCH = 500  # commits per insert_many
SKUS = 1_000
BATCH_SIZE = 1_000  # projector batch size, as in benchmarks/projection.py
DATABASE = "bench_scaling"
RYW_DATABASE = "bench_ryw"

# Operations per round of each append figure. The caller-made-id append scans the
# log on servers without unique multikey indexes (nx-27017), so it gets few.
APPEND_OPS = {"lib_warm": 100, "lib_new_store": 40, "lib_caller_id": 4, "raw_insert_one": 100}


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


REGISTRY = EventRegistry(StockAdded, StockRemoved)


class PerItem(HandlerProjection):
    """Stock level and movement count per item."""

    name = "per_item"

    @on(StockAdded)
    def added(self, event: StockAdded) -> Upsert:
        return Upsert(event.sku, inc={"available": event.quantity, "movements": 1})

    @on(StockRemoved)
    def removed(self, event: StockRemoved) -> Upsert:
        return Upsert(event.sku, inc={"available": -event.quantity, "movements": 1})


def stock_event(n: int) -> StockAdded | StockRemoved:
    sku = (n * 7919) % SKUS
    cls = StockRemoved if n % 10 in (3, 7, 9) else StockAdded
    return cls(sku=f"sku-{sku}", category=f"cat-{sku % 20}", quantity=1 + n % 9)


def now_ms() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def commit_document(
    stream_id: str, from_version: int, position: int, events: Sequence[Event]
) -> dict[str, Any]:
    """A commit exactly as ``EventStore.append`` stores one (see ``cqrs_kit.store``)."""
    ids = [str(uuid.uuid4()) for _ in events]
    bodies = [
        {
            "id": ids[n],
            "type": event.event_type,
            "v": event.schema_version,
            "data": event.model_dump(mode="json"),
            "meta": {},
            "version": from_version + n,
            "position": position + n,
        }
        for n, event in enumerate(events)
    ]
    return {
        "_id": ids[0],
        "stream_id": stream_id,
        "from_version": from_version,
        "to_version": from_version + len(events) - 1,
        "position": position,
        "last_position": position + len(events) - 1,
        "recorded_at": now_ms(),
        "event_ids": ids,
        "types": sorted({e.event_type for e in events}),
        "events": bodies,
    }


class Loader:
    """Grows the store with raw ``insert_many`` of commit documents."""

    def __init__(self, coll: Any) -> None:
        self.coll = coll
        self.loaded = 0
        self.versions: dict[str, int] = {}
        self.rates: list[dict[str, Any]] = []

    async def grow_to(self, events: int, head: int) -> None:
        """Load until ``events`` events were loaded; ``head`` is the log's current position."""
        started, before = time.perf_counter(), self.loaded
        position = head + 1
        while self.loaded < events:
            docs = []
            for _ in range(LOAD_BATCH):
                if self.loaded >= events:
                    break
                commit_no = self.loaded // EVENTS_PER_COMMIT
                stream = f"item-{commit_no % LOAD_STREAMS}"
                version = self.versions.get(stream, 0) + 1
                batch = [stock_event(self.loaded + k) for k in range(EVENTS_PER_COMMIT)]
                docs.append(commit_document(stream, version, position, batch))
                self.versions[stream] = version + EVENTS_PER_COMMIT - 1
                position += EVENTS_PER_COMMIT
                self.loaded += EVENTS_PER_COMMIT
            await self.coll.insert_many(docs, ordered=True)
        seconds = time.perf_counter() - started
        self.rates.append(
            {
                "from_events": before,
                "to_events": self.loaded,
                "seconds": round(seconds, 2),
                "events_per_second": round((self.loaded - before) / seconds) if seconds else None,
            }
        )


# -- appends -------------------------------------------------------------------------------


Op = Callable[[int], Awaitable[Any]]


async def timed(op: Op, ops: int) -> float:
    """Milliseconds per operation over ``ops`` calls of ``op``."""
    started = time.perf_counter()
    for n in range(ops):
        await op(n)
    return (time.perf_counter() - started) * 1000 / ops


class AppendFigures:
    """The append operations compared at one store size, each prepared per round."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.coll = db["events"]
        self.raw_versions: dict[str, int] = {}
        self.counter = 0

    def _event(self) -> Event:
        self.counter += 1
        return stock_event(self.counter)

    async def _warm_store(self) -> EventStore:
        store = EventStore(self.db, REGISTRY)
        for n in range(10):  # learn the heads untimed, as a long-lived process has
            await store.append(f"lib-{n}", [self._event()])
        return store

    async def lib_warm(self) -> Op:
        store = await self._warm_store()
        events = [self._event() for _ in range(APPEND_OPS["lib_warm"])]

        async def op(n: int) -> Any:
            return await store.append(f"lib-{n % 10}", [events[n]])

        return op

    async def lib_new_store(self) -> Op:
        events = [self._event() for _ in range(APPEND_OPS["lib_new_store"])]

        async def op(n: int) -> Any:
            return await EventStore(self.db, REGISTRY).append(f"lib-{n % 10}", [events[n]])

        return op

    async def lib_caller_id(self) -> Op:
        store = await self._warm_store()
        events = [NewEvent(self._event()) for _ in range(APPEND_OPS["lib_caller_id"])]

        async def op(n: int) -> Any:
            return await store.append(f"lib-{n % 10}", [events[n]])

        return op

    async def raw_insert_one(self) -> Op:
        head = await self.coll.find_one(
            {}, sort=[("position", -1)], projection={"last_position": 1}
        )
        position = (head["last_position"] if head else 0) + 1
        docs = []
        for n in range(APPEND_OPS["raw_insert_one"]):
            stream = f"raw-{n % 10}"
            version = self.raw_versions.get(stream, 0) + 1
            self.raw_versions[stream] = version
            docs.append(commit_document(stream, version, position + n, [self._event()]))

        async def op(n: int) -> Any:
            return await self.coll.insert_one(docs[n])

        return op

    async def measure(self, rounds: int) -> dict[str, dict[str, Any]]:
        makers = {
            "lib_warm": self.lib_warm,
            "lib_new_store": self.lib_new_store,
            "lib_caller_id": self.lib_caller_id,
            "raw_insert_one": self.raw_insert_one,
        }
        samples = {name: Samples("ms/op") for name in makers}
        for _ in range(rounds):
            for name, make in makers.items():
                op = await make()  # inputs are built before the clock starts
                samples[name].add(await timed(op, APPEND_OPS[name]))
        return {name: s.summary() for name, s in samples.items()}


# -- catch-up ------------------------------------------------------------------------------


async def drop_projection(db: Any, name: str) -> None:
    await (await ReadModel(db, name).collection()).drop()
    await CheckpointStore(db).delete(projection_key(name))


async def library_catch_up(store: EventStore, db: Any, name: str) -> tuple[float, int]:
    """Seconds to catch a fresh projection up from zero, and the movements it counted."""
    runner = ProjectionRunner(store, [PerItem(name=name)], batch_size=BATCH_SIZE)
    started = time.perf_counter()
    await runner.catch_up()
    seconds = time.perf_counter() - started
    docs = await ReadModel(db, name).find()
    await drop_projection(db, name)
    return seconds, sum(d["movements"] for d in docs)


async def raw_fold(coll: Any) -> dict[str, list[int]]:
    """The per-item fold over every commit, streamed from one cursor."""
    totals: dict[str, list[int]] = {}
    async for commit in coll.find({}, sort=[("position", 1)], batch_size=BATCH_SIZE):
        fold_commit(totals, commit)
    return totals


def fold_commit(totals: dict[str, list[int]], commit: dict[str, Any]) -> None:
    for body in commit["events"]:
        if body["type"] not in (StockAdded.event_type, StockRemoved.event_type):
            continue
        data = body["data"]
        sign = 1 if body["type"] == StockAdded.event_type else -1
        entry = totals.setdefault(data["sku"], [0, 0])
        entry[0] += sign * data["quantity"]
        entry[1] += 1


async def raw_catch_up(db: Any, name: str) -> tuple[float, int]:
    started = time.perf_counter()
    totals = await raw_fold(db["events"])
    await db[name].bulk_write(
        [
            UpdateOne({"_id": sku}, {"$inc": {"available": a, "movements": m}}, upsert=True)
            for sku, (a, m) in totals.items()
        ],
        ordered=False,
    )
    seconds = time.perf_counter() - started
    await db[name].drop()
    return seconds, sum(m for _, m in totals.values())


async def catch_up_figures(
    store: EventStore, db: Any, size: int, rounds: int
) -> dict[str, dict[str, Any]]:
    library, raw = Samples("s"), Samples("s")
    for n in range(rounds):
        lib_s, lib_count = await library_catch_up(store, db, f"scale_{size}_{n}")
        raw_s, raw_count = await raw_catch_up(db, f"raw_scale_{size}_{n}")
        if lib_count != raw_count:
            raise AssertionError(f"projector counted {lib_count} movements, raw fold {raw_count}")
        library.add(lib_s)
        raw.add(raw_s)
    return {"library": library.summary(), "raw": raw.summary()}


# -- memory (child processes) --------------------------------------------------------------


def rss_mb() -> float:
    """This process's resident set now, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def memory_child(uri: str, mode: str) -> dict[str, Any]:
    """Run one rebuild or raw pass in this (child) process and report its memory."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    try:
        db = client[DATABASE]
        store = EventStore(db, REGISTRY)
        await db["events"].find_one({})  # connect before the baseline is taken
        baseline = rss_mb()
        started = time.perf_counter()
        if mode == "rebuild":
            runner = ProjectionRunner(store, [PerItem()], batch_size=BATCH_SIZE)
            await runner.rebuild("per_item", drop_grace=0.0)
        elif mode == "raw_stream":
            await raw_fold(db["events"])
        elif mode == "raw_load":
            commits = await db["events"].find({}, sort=[("position", 1)]).to_list()
            totals: dict[str, list[int]] = {}
            for commit in commits:
                fold_commit(totals, commit)
        else:
            raise ValueError(mode)
        seconds = time.perf_counter() - started
    finally:
        await client.close()
    return {
        "baseline_mb": round(baseline, 1),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "seconds": round(seconds, 2),
    }


async def run_memory_child(uri: str, mode: str) -> dict[str, Any]:
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "child-memory", uri, mode, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(child.communicate(), 3600)
    if child.returncode != 0:
        raise RuntimeError(f"memory child ({mode}) exited with {child.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


# -- read-your-writes ----------------------------------------------------------------------


async def writer_child(uri: str, rate: float, max_seconds: float) -> dict[str, Any]:
    """Append one event at a time at ``rate`` per second until stdin closes (or the limit)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    loop = asyncio.get_running_loop()
    closed = asyncio.Event()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch_stdin() -> None:
        await reader.read()
        closed.set()

    watcher = asyncio.create_task(watch_stdin())
    store = EventStore(client[RYW_DATABASE], REGISTRY)
    started = loop.time()
    appended = 0
    late = 0
    try:
        while not closed.is_set() and loop.time() - started < max_seconds:
            due = started + appended / rate
            delay = due - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closed.wait(), delay)
                continue
            if delay < -1.0 / rate:
                late += 1
            await store.append(f"load-{appended % 50}", [stock_event(appended)])
            appended += 1
    finally:
        watcher.cancel()
        await client.close()
    elapsed = loop.time() - started
    return {
        "appended": appended,
        "seconds": round(elapsed, 2),
        "rate": round(appended / elapsed, 1),
    }


class RawProjector:
    """What a hand-written projector looks like: a change stream, one update per event."""

    def __init__(self, db: Any) -> None:
        self.events = db["events"]
        self.model = db["raw_ryw_items"]
        self.ready = asyncio.Event()

    async def get(self, sku: str) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await self.model.find_one({"_id": sku})
        return doc

    async def run(self) -> None:
        pipeline = [{"$match": {"operationType": "insert"}}]
        async with await self.events.watch(pipeline) as stream:
            self.ready.set()
            async for change in stream:
                commit = change["fullDocument"]
                for body in commit["events"]:
                    data = body["data"]
                    sign = 1 if body["type"] == StockAdded.event_type else -1
                    await self.model.update_one(
                        {"_id": data["sku"]},
                        {
                            "$inc": {"available": sign * data["quantity"], "movements": 1},
                            "$max": {"_position": body["position"]},
                        },
                        upsert=True,
                    )


async def probe_until_visible(
    store: EventStore, get: Callable[[str], Awaitable[dict[str, Any] | None]], n: int
) -> tuple[float, float]:
    """Append a probe event and wait until the read model shows it.

    Returns (append start to visible, append return to visible), in milliseconds.
    """
    event = StockAdded(sku=f"probe-{n % 20}", category="probe", quantity=1)
    started = time.perf_counter()
    result = await store.append(f"probe-{n % 20}", [event])
    appended = time.perf_counter()
    deadline = appended + 30
    while True:
        doc = await get(event.sku)
        if doc is not None and doc.get("_position", 0) >= result.position:
            break
        if time.perf_counter() > deadline:
            raise TimeoutError(f"probe at position {result.position} not visible after 30 s")
        await asyncio.sleep(0.002)
    done = time.perf_counter()
    return (done - started) * 1000, (done - appended) * 1000


async def probe_rounds(
    store: EventStore,
    get: Callable[[str], Awaitable[dict[str, Any] | None]],
    rounds: int,
    per_round: int,
) -> dict[str, Any]:
    for n in range(3):  # warm-up: connections, the change stream, the store's hints
        await probe_until_visible(store, get, n)
    totals, visible = [], []
    round_medians = Samples("ms")
    for r in range(rounds):
        this_round = []
        for n in range(per_round):
            total_ms, visible_ms = await probe_until_visible(store, get, r * per_round + n)
            totals.append(total_ms)
            visible.append(visible_ms)
            this_round.append(total_ms)
            await asyncio.sleep(0.05)
        round_medians.add(statistics.median(this_round))
    return {
        "round_medians_ms": round_medians.summary(2),
        "p50_ms": round(percentile(totals, 0.5), 2),
        "p99_ms": round(percentile(totals, 0.99), 2),
        "visible_after_append_p50_ms": round(percentile(visible, 0.5), 2),
        "samples": len(totals),
    }


async def read_your_writes(
    target: Target, loads: Sequence[float], rounds: int, per_round: int
) -> list[dict[str, Any]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(target.uri)
    rows = []
    try:
        db = client[RYW_DATABASE]
        store = EventStore(db, REGISTRY)
        await store.ensure_indexes()
        loader = Loader(db["events"])
        await loader.grow_to(10_000, head=0)
        runner = ProjectionRunner(store, [PerItem(name="ryw_items")], batch_size=BATCH_SIZE)
        model = ReadModel(db, "ryw_items", max_age=60)
        raw = RawProjector(db)
        for load in loads:
            writer = None
            if load > 0:
                writer = await asyncio.create_subprocess_exec(
                    *(sys.executable, __file__, "child-writer", target.uri, str(load), "600"),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            try:
                stop = asyncio.Event()
                running = asyncio.create_task(runner.run(stop))
                try:
                    library = await probe_rounds(store, model.get, rounds, per_round)
                finally:
                    stop.set()
                    await running
                raw_task = asyncio.create_task(raw.run())
                try:
                    await asyncio.wait_for(raw.ready.wait(), 30)
                    baseline = await probe_rounds(store, raw.get, rounds, per_round)
                finally:
                    raw_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await raw_task
                    raw.ready.clear()
            finally:
                achieved = None
                if writer is not None:
                    assert writer.stdin is not None
                    writer.stdin.close()  # the writer stops at the end of its input
                    out, _ = await asyncio.wait_for(writer.communicate(), 60)
                    achieved = json.loads(out.decode().strip().splitlines()[-1])
            rows.append(
                {
                    "writes_per_second": load,
                    "writer": achieved,
                    "library": library,
                    "raw": baseline,
                }
            )
            print(f"  read-your-writes at {load:g} appends/s: done", file=sys.stderr, flush=True)
    finally:
        await client.close()
    return rows


# -- the study -----------------------------------------------------------------------------


async def study(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(target.uri)
    db = client[DATABASE]
    store = EventStore(db, REGISTRY)
    await store.ensure_indexes()
    loader = Loader(db["events"])
    append_figures = AppendFigures(db)  # one for all sizes: it numbers its raw streams
    appends, catch_ups, memory, skipped = [], [], [], []
    catch_up_rate: float | None = None  # events per second, from the last size measured
    try:
        for size in sorted(set(args.sizes) | set(args.projection_sizes)):
            await loader.grow_to(size, head=await store.head_position())
            total = await store.head_position()
            log(f"{size:,} events loaded ({loader.rates[-1]['events_per_second']:,} events/s)")
            # Decode the last commits through the store: the loaded format is the store's.
            async for _ in store.read_all(after=max(0, total - 50)):
                pass
            if size in args.sizes:
                appends.append(
                    {
                        "events": size,
                        "events_in_store": total,
                        "figures": await append_figures.measure(args.rounds),
                    }
                )
                log(f"  appends at {size:,}: done")
            if size not in args.projection_sizes:
                continue
            if catch_up_rate is not None:
                estimate = args.rounds * total / catch_up_rate * 1.2  # plus the raw rounds
                if estimate > args.projection_budget:
                    skipped.append(
                        {
                            "events": size,
                            "what": "catch-up and rebuild memory",
                            "estimated_seconds": round(estimate),
                            "budget_seconds": args.projection_budget,
                        }
                    )
                    log(f"  catch-up at {size:,} skipped: about {estimate:,.0f} s")
                    continue
            figures = await catch_up_figures(store, db, size, args.rounds)
            catch_up_rate = total / figures["library"]["median"]
            catch_ups.append({"events": size, "events_in_store": total, **figures})
            log(f"  catch-up at {size:,}: {figures['library']['median']:.1f} s")
            memory.append(
                {
                    "events": size,
                    **{
                        mode: await run_memory_child(target.uri, mode)
                        for mode in ("rebuild", "raw_stream", "raw_load")
                    },
                }
            )
            log(f"  memory at {size:,}: done")
    finally:
        await client.close()
    ryw = await read_your_writes(target, args.loads, args.rounds, args.probes)
    return {
        "load": loader.rates,
        "append": appends,
        "catch_up": catch_ups,
        "memory": memory,
        "read_your_writes": ryw,
        "skipped": skipped,
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sizes(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("nx-27017", "mongodb"), default="nx-27017")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per figure (>= 5)")
    parser.add_argument("--sizes", type=sizes, default=sizes("10000,100000,300000,1000000"))
    parser.add_argument(
        "--projection-sizes", type=sizes, default=sizes("10000,30000,100000,1000000")
    )
    parser.add_argument(
        "--projection-budget",
        type=float,
        default=300.0,
        help="skip a catch-up size whose rounds would take longer (seconds)",
    )
    parser.add_argument(
        "--loads", type=lambda t: [float(x) for x in t.split(",")], default=[0.0, 20.0, 50.0, 100.0]
    )
    parser.add_argument("--probes", type=int, default=6, help="read-your-writes probes per round")
    args = parser.parse_args(argv)
    if args.rounds < 5:
        parser.error("--rounds must be at least 5")
    return args


async def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    with open_target(args.target) as target:
        log(f"scaling study on {target.description}")
        results = await study(args, target)
    report = {
        "command": " ".join(["python", "benchmarks/scaling.py", *argv]),
        "environment": environment(),
        "target": {"name": target.name, "server": target.description},
        "rounds": args.rounds,
        "events_per_commit": EVENTS_PER_COMMIT,
        "ops_per_round": APPEND_OPS,
        **results,
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    out = results_path("scaling", args.target)
    out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out} in {report['runtime_s']} s")


def child(argv: Sequence[str]) -> None:
    """Entry point of the child processes (memory measurement, steady writer)."""
    kind, uri, *rest = argv
    if kind == "child-memory":
        result = asyncio.run(memory_child(uri, rest[0]))
    else:
        result = asyncio.run(writer_child(uri, float(rest[0]), float(rest[1])))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("child-"):
        child(sys.argv[1:])
    else:
        asyncio.run(main(sys.argv[1:]))
