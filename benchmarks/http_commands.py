"""Commands over HTTP: the cqrs-kit command router against a bare FastAPI route, on nx-27017.

Run from the repository root::

    .venv/bin/python benchmarks/http_commands.py [--rounds 7] [--concurrency 8] [--profile]

Both sides are FastAPI apps in this process, called by the same
``httpx.AsyncClient`` setup over ``httpx.ASGITransport`` (no sockets: an HTTP
server's own work would be the same on both sides and only dilute the
ratio), against one fresh in-memory nx-27017 server started through
``EmbeddedServer``, in one run:

* **router**: ``command_router`` of a ``CommandBus`` with one command,
  ``RentItem``, whose handler records one ``ItemRented`` event on a new
  ``Rental`` aggregate (``201 Created``), behind ``install_problem_handlers``.
  The figure includes everything a command costs: body validation, the
  command model, the bus (was this command applied before? load the
  aggregate, run the handler) and the append.
* **raw**: a bare FastAPI route taking a body model with the same fields and
  constraints, building the commit document the store writes for that event
  (same fields, same indexes, majority write concern) and inserting it with
  pymongo's ``AsyncMongoClient.insert_one``, answering ``201`` with a JSON body.

To attribute the difference, the same commands are also timed without HTTP
(``CommandBus.dispatch`` against a raw ``insert_one``), the database commands
per request are counted by a pymongo ``CommandListener`` on a second client in
a separate pass, and the HTTP layer alone is measured as client CPU with the
database taken out (the router over ``InMemoryEventStore``, a bare route that
writes nothing).

Each figure is ``rounds`` rounds of ``M`` requests, run interleaved (one round
of every workload, then the next) so that drift, such as the collections
growing, falls on all of them alike. Sequential workloads send one request at
a time; concurrent ones keep ``--concurrency`` in flight. A round's wall time
divided by ``M`` is one sample. The table shows commands per second of the
median sample, the spread (min-max) across rounds, and ratio = router/raw in
commands per second (the target is 0.8 or more).

Prints a markdown table and writes ``benchmarks/results/http_commands.json``.
``--profile`` also prints a cProfile summary (own time by package) of router
and raw requests.
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from pymongo import AsyncMongoClient
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from cqrs_kit import Aggregate, Command, CommandBus, Event, EventRegistry, EventStore, applies
from cqrs_kit.fastapi import command_router, install_problem_handlers
from cqrs_kit.testing import EmbeddedServer, InMemoryEventStore
from harness import CountingListener, create_commit_indexes, now_ms, own_time_by_package

RESULTS = Path(__file__).with_name("results") / "http_commands.json"
OPS = 100  # requests per round
CONCURRENCY = 8  # requests in flight in the concurrent workloads
BASE_URL = "http://bench"
PATH = "/commands/rent-item"

# -- the domain ------------------------------------------------------------------------------

SKU = r"^[A-Z]+-[0-9]{4}$"
RENTAL_ID = r"^[a-z0-9-]{1,40}$"


class ItemRented(Event):
    event_type: ClassVar[str] = "bench.ItemRented"
    member_id: str
    sku: str
    price: Decimal
    quantity: int


class RentalState(BaseModel):
    rented: bool = False


class Rental(Aggregate[RentalState]):
    stream_prefix = "rental-"

    def rent(self, member_id: str, sku: str, price: Decimal, quantity: int) -> None:
        self.record(ItemRented(member_id=member_id, sku=sku, price=price, quantity=quantity))

    @applies(ItemRented)
    def _rented(self, event: ItemRented) -> None:
        self.state.rented = True


class RentItem(Command):
    """Rent an item to a member."""

    rental_id: str = Field(pattern=RENTAL_ID)
    member_id: str = Field(min_length=1, max_length=40)
    sku: str = Field(pattern=SKU)
    price: Decimal = Field(ge=0, max_digits=12, decimal_places=2)
    quantity: int = Field(gt=0, le=10)


class RentItemBody(BaseModel):
    """The raw route's body: the command's fields with the same constraints."""

    rental_id: str = Field(pattern=RENTAL_ID)
    member_id: str = Field(min_length=1, max_length=40)
    sku: str = Field(pattern=SKU)
    price: Decimal = Field(ge=0, max_digits=12, decimal_places=2)
    quantity: int = Field(gt=0, le=10)


REGISTRY = EventRegistry(ItemRented)


def make_bus(store: Any) -> CommandBus:
    bus = CommandBus(store)

    @bus.handles(RentItem, aggregate=Rental, aggregate_id=lambda c: c.rental_id)
    def rent(command: RentItem, rental: Rental) -> None:
        rental.rent(command.member_id, command.sku, command.price, command.quantity)

    return bus


def body(n: int, prefix: str) -> dict[str, Any]:
    return {
        "rental_id": f"{prefix}-{n}",
        "member_id": f"member-{n % 97}",
        "sku": f"DRESS-{n % 500:04d}",
        "price": "12800.00",
        "quantity": 1 + n % 3,
    }


# -- the two apps ------------------------------------------------------------------------------


def router_app(bus: CommandBus) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(command_router(bus), prefix="/commands")
    return app


class RawWriter:
    """What a hand-written endpoint would do: build one commit document, ``insert_one`` it."""

    def __init__(self, collection: Any) -> None:
        self.collection = collection
        self.position = 0

    def document(self, rental: RentItemBody) -> dict[str, Any]:
        # A process-local counter stands in for the global position. It is taken
        # before the insert awaits, so concurrent requests get distinct positions.
        self.position += 1
        event_id = str(uuid.uuid4())
        event = {
            "id": event_id,
            "type": ItemRented.event_type,
            "v": ItemRented.schema_version,
            "data": rental.model_dump(mode="json", exclude={"rental_id"}),
            "meta": {"correlation_id": event_id, "causation_id": event_id},
            "version": 1,
            "position": self.position,
        }
        return {
            "_id": event_id,
            "stream_id": f"rental-{rental.rental_id}",
            "from_version": 1,
            "to_version": 1,
            "position": self.position,
            "last_position": self.position,
            "recorded_at": now_ms(),
            "event_ids": [event_id],
            "types": [ItemRented.event_type],
            "events": [event],
        }

    async def insert(self, rental: RentItemBody) -> dict[str, Any]:
        doc = self.document(rental)
        await self.collection.insert_one(doc)
        return doc


def raw_app(writer: RawWriter | None) -> FastAPI:
    """The bare route; with ``writer=None`` it answers without writing (HTTP layer alone)."""
    app = FastAPI()

    @app.post(PATH, status_code=201)
    async def rent_item(rental: RentItemBody) -> JSONResponse:
        if writer is None:
            answer: dict[str, Any] = {"stream_id": f"rental-{rental.rental_id}", "version": 1}
        else:
            doc = await writer.insert(rental)
            answer = {
                "command_id": doc["_id"],
                "stream_id": doc["stream_id"],
                "version": doc["to_version"],
                "position": doc["last_position"],
            }
        return JSONResponse(answer, status_code=201)

    return app


def client_for(app: FastAPI) -> httpx.AsyncClient:
    """The one HTTP client setup both sides use."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=BASE_URL)


# -- measurement -------------------------------------------------------------------------------


@dataclass
class Figure:
    """Samples (ms per command, one per round) of one workload."""

    name: str
    ops: int
    concurrency: int
    samples: list[float] = field(default_factory=list)
    #: Client CPU (this process: HTTP client, app and driver) in ms per command.
    cpu_samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def per_second(self) -> float:
        return 1000 / self.median

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_samples)

    def summary(self) -> dict[str, Any]:
        return {
            "ops_per_round": self.ops,
            "concurrency": self.concurrency,
            "commands_per_second": round(self.per_second, 1),
            "commands_per_second_min": round(1000 / max(self.samples), 1),
            "commands_per_second_max": round(1000 / min(self.samples), 1),
            "median_ms": round(self.median, 4),
            "min_ms": round(min(self.samples), 4),
            "max_ms": round(max(self.samples), 4),
            "samples_ms": [round(s, 4) for s in self.samples],
            "client_cpu_median_ms": round(self.cpu_median, 4),
        }

    def cell(self) -> str:
        low, high = 1000 / max(self.samples), 1000 / min(self.samples)
        return f"{self.per_second:,.0f} ({low:,.0f}-{high:,.0f})"


Op = Callable[[int], Awaitable[Any]]


async def timed_round(op: Op, ops: int, concurrency: int) -> tuple[float, float]:
    """Run ``op(0..ops-1)``, ``concurrency`` at a time; wall and CPU ms per operation."""
    cpu = time.process_time()
    started = time.perf_counter()
    if concurrency == 1:
        for n in range(ops):
            await op(n)
    else:
        pending = iter(range(ops))

        async def lane() -> None:
            for n in pending:  # the lanes share one iterator: each n runs once
                await op(n)

        await asyncio.gather(*(lane() for _ in range(concurrency)))
    wall = (time.perf_counter() - started) * 1000 / ops
    return wall, (time.process_time() - cpu) * 1000 / ops


def expect_created(response: httpx.Response) -> None:
    if response.status_code != 201:
        raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text}")


class Workloads:
    """The workloads compared, sharing one database on one fresh server."""

    def __init__(self, db: Any, concurrency: int) -> None:
        self.db = db
        self.concurrency = concurrency
        self.store = EventStore(db, REGISTRY, collection="lib_events")
        self.bus = make_bus(self.store)
        options: dict[str, Any] = {
            "write_concern": WriteConcern("majority"),
            "read_concern": ReadConcern("majority"),
        }
        self.raw_http = RawWriter(db["raw_http"].with_options(**options))
        self.raw_direct = RawWriter(db["raw_direct"].with_options(**options))
        self.router_client = client_for(router_app(self.bus))
        self.raw_client = client_for(raw_app(self.raw_http))
        self._prefixes = 0

    async def setup(self) -> None:
        await self.store.ensure_indexes()
        await create_commit_indexes(self.raw_http.collection)
        await create_commit_indexes(self.raw_direct.collection)
        # Warm every path once (connections, collections, the store's hints).
        ops = self.operations()
        for name in ("router", "router_idempotency_key", "raw", "bus_dispatch", "raw_insert_one"):
            op = ops[name][2]()
            for n in range(5):
                await op(n)

    async def close(self) -> None:
        await self.router_client.aclose()
        await self.raw_client.aclose()

    def _bodies(self) -> list[dict[str, Any]]:
        self._prefixes += 1  # every round rents new items: every command creates its stream
        return [body(n, f"b{self._prefixes}") for n in range(OPS)]

    def operations(self) -> dict[str, tuple[int, int, Callable[[], Op]]]:
        """Name -> (operations per round, concurrency, a factory preparing one round's inputs)."""

        def router() -> Op:
            bodies = self._bodies()

            async def op(n: int) -> None:
                expect_created(await self.router_client.post(PATH, json=bodies[n]))

            return op

        def router_idempotent() -> Op:
            bodies = self._bodies()
            keys = [{"Idempotency-Key": str(uuid.uuid4())} for _ in bodies]

            async def op(n: int) -> None:
                response = await self.router_client.post(PATH, json=bodies[n], headers=keys[n])
                expect_created(response)

            return op

        def raw() -> Op:
            bodies = self._bodies()

            async def op(n: int) -> None:
                expect_created(await self.raw_client.post(PATH, json=bodies[n]))

            return op

        def bus_dispatch() -> Op:
            commands = [RentItem.model_validate(b) for b in self._bodies()]

            async def op(n: int) -> None:
                await self.bus.dispatch(commands[n])

            return op

        def raw_insert() -> Op:
            bodies = [RentItemBody.model_validate(b) for b in self._bodies()]

            async def op(n: int) -> None:
                await self.raw_direct.insert(bodies[n])

            return op

        many = self.concurrency
        return {
            "router": (OPS, 1, router),
            "router_idempotency_key": (OPS, 1, router_idempotent),
            "raw": (OPS, 1, raw),
            "router_concurrent": (OPS, many, router),
            "raw_concurrent": (OPS, many, raw),
            "bus_dispatch": (OPS, 1, bus_dispatch),
            "raw_insert_one": (OPS, 1, raw_insert),
        }

    async def run(self, rounds: int) -> dict[str, Figure]:
        ops = self.operations()
        figures = {name: Figure(name, count, lanes) for name, (count, lanes, _) in ops.items()}
        for _ in range(rounds):
            for name, (count, lanes, prepare) in ops.items():
                wall, cpu = await timed_round(prepare(), count, lanes)
                figures[name].samples.append(wall)
                figures[name].cpu_samples.append(cpu)
        return figures


async def count_round_trips(
    uri: str, database: str, concurrency: int
) -> dict[str, dict[str, float]]:
    """Database commands per request, by name, on a listening client.

    ``database`` must differ from the timed runs' one: the workloads start their
    rental ids and raw positions afresh.
    """
    listener = CountingListener()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, event_listeners=[listener])
    loads = Workloads(client[database], concurrency)
    try:
        await loads.setup()  # warm-up: the store learns the log head
        ops = loads.operations()
        out: dict[str, dict[str, float]] = {}
        for name in ("router", "router_idempotency_key", "raw", "router_concurrent"):
            count, lanes, prepare = ops[name]
            listener.counts.clear()
            await timed_round(prepare(), count, lanes)
            per_op = {k: v / count for k, v in sorted(listener.counts.items())}
            per_op["total"] = sum(listener.counts.values()) / count
            out[name] = per_op
        return out
    finally:
        await loads.close()
        await client.close()


async def http_layer_cpu(requests: int = 300, runs: int = 7) -> dict[str, float]:
    """Client CPU of the HTTP layer with the database taken out (µs per request, medians).

    The router runs over ``InMemoryEventStore``, so the bus's reads and the
    append cost microseconds; ``dispatch`` times that bus on its own. The bare
    route validates the same body and answers without writing, with and without
    ``install_problem_handlers``. ``router - dispatch - bare route + problems``
    is what the router's own HTTP layer adds over a hand-written route.
    """
    bus = make_bus(InMemoryEventStore())
    bare_with_problems = raw_app(None)
    install_problem_handlers(bare_with_problems)
    clients = {
        "router": client_for(router_app(bus)),
        "bare_route": client_for(raw_app(None)),
        "bare_route_with_problem_handlers": client_for(bare_with_problems),
    }
    made = 0

    def fresh() -> dict[str, Any]:
        nonlocal made
        made += 1
        return body(made, "mem")

    async def one(client: httpx.AsyncClient) -> None:
        expect_created(await client.post(PATH, json=fresh()))

    async def dispatch() -> None:
        await bus.dispatch(RentItem.model_validate(fresh()))

    calls: dict[str, Callable[[], Awaitable[None]]] = {
        name: (lambda c=client: one(c)) for name, client in clients.items()
    }
    calls["dispatch_in_memory"] = dispatch
    samples: dict[str, list[float]] = {name: [] for name in calls}
    try:
        for call in calls.values():  # warm-up
            for _ in range(20):
                await call()
        for _ in range(runs):
            for name, call in calls.items():
                cpu = time.process_time()
                for _ in range(requests):
                    await call()
                samples[name].append((time.process_time() - cpu) * 1e6 / requests)
    finally:
        for client in clients.values():
            await client.aclose()
    out = {f"{name}_us": round(statistics.median(values), 1) for name, values in samples.items()}
    out["router_layer_over_bare_route_us"] = round(
        out["router_us"]
        - out["dispatch_in_memory_us"]
        - out["bare_route_with_problem_handlers_us"],
        1,
    )
    return out


# -- profiling -------------------------------------------------------------------------------


async def profile(loads: Workloads) -> str:
    """Own time by package of router and raw requests (µs per request, under cProfile).

    Profiling slows every call down, so the absolute figures are inflated; the
    comparison between the two sides at the same number of requests is the point.
    """
    ops = loads.operations()
    found = {}
    for name in ("router", "raw"):
        count, _, prepare = ops[name]
        op = prepare()
        profiler = cProfile.Profile()
        profiler.enable()
        for n in range(count):
            await op(n)
        profiler.disable()
        found[name] = own_time_by_package(profiler, count)
    lib, base = found["router"], found["raw"]
    lines = [
        "| package | router µs/request | raw µs/request | difference |",
        "|---|---|---|---|",
    ]
    for name in sorted(set(lib) | set(base), key=lambda k: -(lib[k] - base[k])):
        lines.append(
            f"| {name} | {lib[name]:.0f} | {base[name]:.0f} | {lib[name] - base[name]:+.0f} |"
        )
    lines.append(
        f"| total | {sum(lib.values()):.0f} | {sum(base.values()):.0f} "
        f"| {sum(lib.values()) - sum(base.values()):+.0f} |"
    )
    return "\n".join(lines)


# -- report ------------------------------------------------------------------------------------

BARE = "bare route, `insert_one`"
ROWS = [
    # (label, library figure, raw figure, raw label)
    ("`POST /commands/rent-item`, one at a time", "router", "raw", BARE),
    ("the same, with `Idempotency-Key`", "router_idempotency_key", "raw", BARE),
    ("`POST /commands/rent-item`, {c} in flight", "router_concurrent", "raw_concurrent", BARE),
    ("`CommandBus.dispatch`, no HTTP", "bus_dispatch", "raw_insert_one", "`insert_one`, no HTTP"),
]


def ratio(figures: dict[str, Figure], lib: str, raw: str) -> float:
    """Library/raw in commands per second (raw/library in time per command)."""
    return figures[raw].median / figures[lib].median


def markdown_table(figures: dict[str, Figure], concurrency: int) -> str:
    lines = [
        "| workload | library commands/s | raw | raw commands/s | ratio "
        "| ms/command, library / raw | client CPU ms/command, library / raw |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, lib, raw, raw_label in ROWS:
        lf, rf = figures[lib], figures[raw]
        lines.append(
            f"| {label.format(c=concurrency)} | {lf.cell()} | {raw_label} | {rf.cell()} "
            f"| {ratio(figures, lib, raw):.2f} | {lf.median:.2f} / {rf.median:.2f} "
            f"| {lf.cpu_median:.2f} / {rf.cpu_median:.2f} |"
        )
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "fastapi": metadata.version("fastapi"),
        "starlette": metadata.version("starlette"),
        "httpx": metadata.version("httpx"),
        "pymongo": metadata.version("pymongo"),
        "pydantic": metadata.version("pydantic"),
        "nx_27017": metadata.version("nx-27017"),
        "server": "nx-27017, in-memory SQLite, fresh for this run",
        "transport": "httpx.AsyncClient over httpx.ASGITransport, in process (no sockets)",
    }


async def main(rounds: int, concurrency: int, with_profile: bool) -> None:
    started = time.perf_counter()
    with EmbeddedServer("memory") as server:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.uri)
        loads = Workloads(client["bench_http"], concurrency)
        try:
            await loads.setup()
            figures = await loads.run(rounds)
            trips = await count_round_trips(server.uri, "bench_http_counted", concurrency)
            profiled = await profile(loads) if with_profile else ""
        finally:
            await loads.close()
            await client.close()
    layer = await http_layer_cpu()
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "environment": environment(),
        "rounds": rounds,
        "concurrency": concurrency,
        "figures": {name: fig.summary() for name, fig in figures.items()},
        "ratios": {f"{lib}/{raw}": round(ratio(figures, lib, raw), 3) for _, lib, raw, _ in ROWS},
        "round_trips_per_request": trips,
        "http_layer_cpu_us": layer,
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_table(figures, concurrency))
    print()
    print("Database commands per request:")
    for name, counts in trips.items():
        detail = ", ".join(f"{k} {v:g}" for k, v in counts.items() if k != "total")
        print(f"- {name}: {counts['total']:g} ({detail})")
    print()
    print("HTTP layer without the database, client CPU (µs per request, medians):")
    for key, value in layer.items():
        print(f"- {key}: {value}")
    if profiled:
        print()
        print(profiled)
    print(f"\nwrote {RESULTS} in {report['runtime_s']} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds per figure (>= 5)")
    parser.add_argument(
        "--concurrency", type=int, default=CONCURRENCY, help="requests in flight (concurrent rows)"
    )
    parser.add_argument("--profile", action="store_true", help="print a cProfile summary")
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error("--rounds must be at least 5")
    if args.concurrency < 2:
        parser.error("--concurrency must be at least 2")
    asyncio.run(main(args.rounds, args.concurrency, args.profile))
