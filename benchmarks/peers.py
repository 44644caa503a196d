"""A reference row: the Python ``eventsourcing`` library appending the same aggregate events.

Run from the repository root (needs the ``bench`` extra)::

    .venv/bin/python benchmarks/peers.py [--target nx-27017|mongodb] [--rounds 7]

The same aggregate (a rental that records ``ItemRented`` events carrying a UUID,
two strings, a decimal price, a quantity and a datetime with an offset) is saved
after recording one event, and after recording 100, by:

* ``eventsourcing`` with its SQLite recorder, on an in-memory database and on a
  file (WAL journal), in this process: ``Application.save(aggregate)``;
* cqrs-kit on the target server: ``Repository.save(aggregate)`` (the write-model
  path; its events carry ids, which the store checks), and ``EventStore.append``
  of the bare events with ``expected_version`` (the store path);
* the raw driver on the same server: ``insert_one`` of a commit document of the
  same events, built before the clock starts.

The storage differs: eventsourcing writes rows into SQLite inside the benchmark
process, while cqrs-kit and the raw driver send each write over TCP to a server
(nx-27017 is itself a Python process over SQLite). Read the row as a reference
for what an in-process store costs, not as a like-for-like race.

Rounds are interleaved as in ``append.py``; a sample is a round's wall time
divided by its operations. Writes ``benchmarks/results/peers.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel
from pymongo import AsyncMongoClient
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from cqrs_kit import Aggregate, Event, EventRegistry, EventStore, Repository, applies
from harness import Samples, environment, open_target, results_path

try:
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate as EsAggregate
    from eventsourcing.domain import event as es_event
except ImportError:  # pragma: no cover - depends on the environment
    raise SystemExit(
        "benchmarks/peers.py needs the eventsourcing package: pip install -e '.[bench]'"
    ) from None

OPS = {1: 200, 100: 20}  # operations per round, by events per save
JST = timezone(timedelta(hours=9))


def fields(n: int) -> dict[str, Any]:
    """The payload of the n-th event, the same on both sides."""
    return {
        "rental_id": uuid.uuid4(),
        "member_id": f"member-{n % 97}",
        "sku": f"DRESS-{n % 500:04d}",
        "price": Decimal("12800.00"),
        "quantity": 1 + n % 3,
        "rented_at": datetime(2024, 5, 1, 10, 30, 15, 123456, tzinfo=JST) + timedelta(seconds=n),
    }


# -- cqrs-kit ------------------------------------------------------------------------------


class ItemRented(Event):
    event_type: ClassVar[str] = "bench.ItemRented"
    rental_id: uuid.UUID
    member_id: str
    sku: str
    price: Decimal
    quantity: int
    rented_at: datetime


class RentalState(BaseModel):
    items: int = 0


class Rental(Aggregate[RentalState]):
    stream_prefix = "rental-"

    def rent(self, n: int) -> None:
        self.record(ItemRented(**fields(n)))

    @applies(ItemRented)
    def _rented(self, event: ItemRented) -> None:
        self.state.items += event.quantity


# -- eventsourcing -------------------------------------------------------------------------


class EsRental(EsAggregate):  # type: ignore[misc]
    @es_event("Opened")
    def __init__(self, member_id: str) -> None:
        self.member_id = member_id
        self.items = 0

    @es_event("ItemRented")
    def rent(
        self,
        rental_id: uuid.UUID,
        member_id: str,
        sku: str,
        price: Decimal,
        quantity: int,
        rented_at: datetime,
    ) -> None:
        self.items += quantity


class Rentals(Application):  # type: ignore[misc]
    pass


# -- measurement ---------------------------------------------------------------------------

Op = Callable[[int], Awaitable[Any]]


class Contenders:
    """Every way of saving compared, each with its own stream or aggregate."""

    def __init__(self, db: Any, sqlite_file: Path) -> None:
        self.store = EventStore(db, EventRegistry(ItemRented), collection="peers")
        self.repository = Repository(self.store, Rental)
        self.raw = db["peers_raw"].with_options(
            write_concern=WriteConcern("majority"), read_concern=ReadConcern("majority")
        )
        self.raw_position = 0
        self.raw_version = 0
        self.counter = 0
        self.apps = {
            "eventsourcing_sqlite_memory": Rentals(
                env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": ":memory:"}
            ),
            "eventsourcing_sqlite_file": Rentals(
                env={
                    "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                    "SQLITE_DBNAME": str(sqlite_file),
                }
            ),
        }
        self.es_aggregates = {name: EsRental(member_id="m-1") for name in self.apps}
        self.rental = Rental("r-1")
        self.append_version = 0

    async def setup(self) -> None:
        await self.store.ensure_indexes()
        for coll_index in (
            [("position", 1)],
            [("stream_id", 1), ("from_version", 1)],
            [("event_ids", 1)],
        ):
            await self.raw.create_index(coll_index, unique=True)
        for name, app in self.apps.items():
            app.save(self.es_aggregates[name])
        # A first save on every path: connections, hints, tables.
        for size in OPS:
            for make in self.operations(size).values():
                await (await make(1))(0)

    def _next(self) -> int:
        self.counter += 1
        return self.counter

    def operations(self, size: int) -> dict[str, Callable[[int], Awaitable[Op]]]:
        """Name -> factory that prepares ``ops`` operations saving ``size`` events each."""

        def es(name: str) -> Callable[[int], Awaitable[Op]]:
            async def make(ops: int) -> Op:
                app, aggregate = self.apps[name], self.es_aggregates[name]
                payloads = [[fields(self._next()) for _ in range(size)] for _ in range(ops)]

                async def op(n: int) -> Any:
                    for payload in payloads[n]:
                        aggregate.rent(**payload)
                    app.save(aggregate)

                return op

            return make

        async def repository(ops: int) -> Op:
            numbers = [[self._next() for _ in range(size)] for _ in range(ops)]

            async def op(n: int) -> Any:
                for k in numbers[n]:
                    self.rental.rent(k)
                return await self.repository.save(self.rental)

            return op

        async def append(ops: int) -> Op:
            batches = [
                [ItemRented(**fields(self._next())) for _ in range(size)] for _ in range(ops)
            ]

            async def op(n: int) -> Any:
                result = await self.store.append(
                    "rental-append", batches[n], expected_version=self.append_version
                )
                self.append_version = result.version
                return result

            return op

        async def raw(ops: int) -> Op:
            docs = []
            for _ in range(ops):
                events = [ItemRented(**fields(self._next())) for _ in range(size)]
                docs.append(self._raw_commit(events))

            async def op(n: int) -> Any:
                return await self.raw.insert_one(docs[n])

            return op

        return {
            "eventsourcing_sqlite_memory": es("eventsourcing_sqlite_memory"),
            "eventsourcing_sqlite_file": es("eventsourcing_sqlite_file"),
            "cqrs_kit_repository_save": repository,
            "cqrs_kit_store_append": append,
            "raw_insert_one": raw,
        }

    def _raw_commit(self, events: list[ItemRented]) -> dict[str, Any]:
        ids = [str(uuid.uuid4()) for _ in events]
        first_version, first_position = self.raw_version + 1, self.raw_position + 1
        self.raw_version += len(events)
        self.raw_position += len(events)
        return {
            "_id": ids[0],
            "stream_id": "rental-raw",
            "from_version": first_version,
            "to_version": self.raw_version,
            "position": first_position,
            "last_position": self.raw_position,
            "recorded_at": datetime.now(UTC),
            "event_ids": ids,
            "types": [ItemRented.event_type],
            "events": [
                {
                    "id": ids[n],
                    "type": e.event_type,
                    "v": 1,
                    "data": e.model_dump(mode="json"),
                    "meta": {},
                    "version": first_version + n,
                    "position": first_position + n,
                }
                for n, e in enumerate(events)
            ],
        }

    async def run(self, rounds: int) -> dict[int, dict[str, Samples]]:
        figures = {size: {name: Samples("ms/op") for name in self.operations(size)} for size in OPS}
        for _ in range(rounds):
            for size, ops in OPS.items():
                for name, make in self.operations(size).items():
                    op = await make(ops)
                    started = time.perf_counter()
                    for n in range(ops):
                        await op(n)
                    figures[size][name].add((time.perf_counter() - started) * 1000 / ops)
        return figures

    def check(self) -> None:
        """Both libraries stored what they were given."""
        for name, app in self.apps.items():
            stored = app.repository.get(self.es_aggregates[name].id)
            assert stored.items == self.es_aggregates[name].items, name


async def main(target_name: str, rounds: int) -> None:
    started = time.perf_counter()
    with (
        open_target(target_name) as target,
        tempfile.TemporaryDirectory(prefix="cqrs-kit-peers-") as scratch,
    ):
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(target.uri)
        try:
            contenders = Contenders(client["bench_peers"], Path(scratch) / "rentals.sqlite")
            await contenders.setup()
            figures = await contenders.run(rounds)
            contenders.check()
            loaded = await Repository(contenders.store, Rental).load("r-1")
            assert loaded.state == contenders.rental.state
        finally:
            await client.close()
    report = {
        "command": " ".join(["python", "benchmarks/peers.py", *sys.argv[1:]]),
        "environment": environment(),
        "target": {"name": target.name, "server": target.description},
        "rounds": rounds,
        "ops_per_round": {str(size): ops for size, ops in OPS.items()},
        "figures": {
            str(size): {name: s.summary() for name, s in by_name.items()}
            for size, by_name in figures.items()
        },
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    out = results_path("peers", target_name)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("| save | " + " | ".join(f"{size} event(s), ms/op" for size in OPS) + " |")
    print("|---|" + "---|" * len(OPS))
    for name in figures[1]:
        cells = [f"{figures[size][name].median:.3f}" for size in OPS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nwrote {out} in {report['runtime_s']} s", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("nx-27017", "mongodb"), default="nx-27017")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per figure (>= 5)")
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error("--rounds must be at least 5")
    asyncio.run(main(args.target, args.rounds))
