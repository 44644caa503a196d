"""Loading a 10,000-event aggregate with and without a snapshot, on a fresh nx-27017 server.

Run from the repository root::

    .venv/bin/python benchmarks/snapshots.py [--events 10000] [--tail 50] [--rounds 7]

Setup (not timed): ``events - tail`` events are appended in batches of 500, the way an
import would write them; the aggregate is then loaded and saved once through a
repository with ``snapshot_every = 100``, which stores a snapshot at that version;
finally ``tail`` events are appended one per append, the way commands write them, so
the snapshot is ``tail`` events behind the head (with ``snapshot_every = 100`` it is
at most 99 behind, 50 on average).

Each round loads the aggregate once through a repository without snapshots (a full
replay: every event is read, decoded and applied) and once through one with
snapshots (one snapshot read, then the tail), in alternating order. The figures are
the median and the min-max over the rounds, and the ratio of the medians. Both loads
are checked to produce the same state and version before anything is timed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from decimal import Decimal
from importlib import metadata
from typing import Any, ClassVar

from pydantic import BaseModel
from pymongo import AsyncMongoClient

from cqrs_kit import (
    Aggregate,
    Event,
    EventRegistry,
    EventStore,
    Repository,
    SnapshotStore,
    applies,
)
from cqrs_kit.testing import EmbeddedServer

BATCH = 500


class Deposited(Event):
    event_type: ClassVar[str] = "bench.Deposited"
    amount: Decimal
    note: str = ""


class LedgerState(BaseModel):
    balance: Decimal = Decimal(0)
    deposits: int = 0
    largest: Decimal = Decimal(0)


class Ledger(Aggregate[LedgerState]):
    stream_prefix = "ledger-"
    snapshot_every = 100

    @applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        self.state.balance += event.amount
        self.state.deposits += 1
        self.state.largest = max(self.state.largest, event.amount)


def deposit(n: int) -> Deposited:
    return Deposited(amount=Decimal(n % 97) + Decimal("0.25"), note=f"deposit {n}")


async def setup(store: EventStore, snapshots: SnapshotStore, events: int, tail: int) -> None:
    stream_id = Ledger.stream_id_for("bench")
    bulk = events - tail - 1
    for start in range(0, bulk, BATCH):
        await store.append(stream_id, [deposit(n) for n in range(start, min(start + BATCH, bulk))])
    # One save through a snapshotting repository: the full replay it loads from is more
    # than snapshot_every events old, so the save stores a snapshot at its version.
    repository = Repository(store, Ledger, snapshots=snapshots)
    ledger = await repository.load("bench")
    ledger.record(deposit(bulk))
    await repository.save(ledger)
    for n in range(bulk + 1, events):
        await store.append(stream_id, [deposit(n)])


async def timed_load(repository: Repository[Ledger]) -> tuple[float, Ledger]:
    started = time.perf_counter()
    ledger = await repository.load("bench")
    return time.perf_counter() - started, ledger


def describe(samples: list[float]) -> str:
    return (
        f"{statistics.median(samples) * 1000:8.1f} ms "
        f"(min {min(samples) * 1000:.1f}, max {max(samples) * 1000:.1f})"
    )


async def run(events: int, tail: int, rounds: int) -> None:
    started = time.perf_counter()
    with EmbeddedServer("memory") as server:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.uri)
        try:
            db = client["bench_snapshots"]
            store = EventStore(db, EventRegistry(Deposited))
            await store.ensure_indexes()
            snapshots = SnapshotStore(db)
            await snapshots.ensure_indexes()

            setup_started = time.perf_counter()
            await setup(store, snapshots, events, tail)
            setup_s = time.perf_counter() - setup_started
            snapshot = await snapshots.load(
                Ledger.stream_id_for("bench"), schema_version=Ledger.snapshot_version
            )
            assert snapshot is not None, "setup stored no snapshot"

            full = Repository(store, Ledger)
            snapshotted = Repository(store, Ledger, snapshots=snapshots)
            _, replayed = await timed_load(full)  # also warms up both paths
            _, restored = await timed_load(snapshotted)
            assert replayed.version == restored.version == events
            assert replayed.state == restored.state

            without: list[float] = []
            with_snapshot: list[float] = []
            for round_no in range(rounds):
                order = [(full, without), (snapshotted, with_snapshot)]
                for repository, samples in order if round_no % 2 == 0 else order[::-1]:
                    seconds, _ = await timed_load(repository)
                    samples.append(seconds)
        finally:
            await client.close()

    ratio = statistics.median(without) / statistics.median(with_snapshot)
    print(f"cqrs-kit snapshot benchmark: {events} events, snapshot {tail} events behind the head")
    print(
        f"python {sys.version.split()[0]}, pymongo {metadata.version('pymongo')}, "
        f"pydantic {metadata.version('pydantic')}, nx-27017 {metadata.version('nx-27017')} "
        "(in-memory, fresh)"
    )
    print(f"setup: {events} events appended in {setup_s:.1f} s; snapshot at v{snapshot.version}")
    print(f"load without snapshot (full replay): {describe(without)}  [{rounds} rounds]")
    print(f"load with snapshot + {tail}-event tail: {describe(with_snapshot)}  [{rounds} rounds]")
    print(f"ratio (medians, without / with): {ratio:.1f}x")
    print(f"total runtime: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000, help="events in the stream")
    parser.add_argument("--tail", type=int, default=50, help="events after the snapshot")
    parser.add_argument("--rounds", type=int, default=7, help="timed loads of each kind")
    args = parser.parse_args()
    if not 0 <= args.tail < args.events - 1 or args.rounds < 1:
        parser.error("need 0 <= --tail < --events - 1 and --rounds >= 1")
    asyncio.run(run(args.events, args.tail, args.rounds))
