"""Routing benchmarks: pattern-matching throughput and append-to-handler latency.

Run with ``.venv/bin/python benchmarks/routing.py`` (``--help`` for sizes). It
prints a Markdown table for ``docs/benchmarks.md`` and writes
``benchmarks/results/routing.json``.

1. **Pattern matching**: 1,000 EventBridge-style rules mixing exact values,
   prefixes, numeric ranges, anything-but, exists and nested fields, matched
   against a set of event documents; reports rule evaluations per second and
   events routed per second against the whole rule set.
2. **End to end**: a fresh in-memory ``nx-27017`` server
   (``cqrs_kit.testing.EmbeddedServer``), an event store and a worker; each event
   is appended and the clock stops when the subscriber's handler receives it.
   Reports p50/p99 for one subscriber, and for ten subscribers matching every
   event (time until the last of them has it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from pymongo import AsyncMongoClient

from cqrs_kit import Event, EventRegistry, EventStore, RecordedEvent
from cqrs_kit.routing.handlers import Delivery
from cqrs_kit.routing.patterns import EventPattern
from cqrs_kit.routing.subscribers import RetryPolicy, Subscriber
from cqrs_kit.routing.worker import Worker
from cqrs_kit.testing import EmbeddedServer

TYPES = [f"{ctx}.{name}" for ctx in ("orders", "payments", "rental") for name in "ABCDEFG"]
REGIONS = [f"r{n}" for n in range(20)]
STATUSES = ["new", "paid", "shipped", "cancelled", "failed"]


def make_rules(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """``n`` patterns cycling through the operators routing files use most."""
    rules: list[dict[str, Any]] = []
    for i in range(n):
        kind = i % 7
        if kind == 0:
            rule: dict[str, Any] = {"type": [rng.choice(TYPES), rng.choice(TYPES)]}
        elif kind == 1:
            rule = {
                "type": [{"prefix": rng.choice(["orders.", "payments.", "rental."])}],
                "data": {"region": rng.sample(REGIONS, 3)},
            }
        elif kind == 2:
            low = rng.randint(0, 900)
            rule = {"data": {"amount": [{"numeric": [">", low, "<=", low + 100]}]}}
        elif kind == 3:
            rule = {
                "type": [rng.choice(TYPES)],
                "data": {"status": [{"anything-but": ["cancelled", "failed"]}]},
            }
        elif kind == 4:
            rule = {"data": {"coupon": [{"exists": True}]}, "type": [{"prefix": "orders."}]}
        elif kind == 5:
            rule = {"metadata": {"principal": [f"user-{rng.randint(0, 30)}"]}}
        else:  # the seed example: currency in a list, nested under data
            rule = {"type": [rng.choice(TYPES)], "data": {"currency": ["JP", "US"]}}
        rules.append(rule)
    return rules


def make_documents(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """``n`` event documents shaped like ``RecordedEvent.to_document()``."""
    docs = []
    for i in range(n):
        data: dict[str, Any] = {
            "region": rng.choice(REGIONS),
            "amount": rng.randint(0, 1000),
            "status": rng.choice(STATUSES),
            "currency": rng.choice(["JP", "US", "EU"]),
        }
        if rng.random() < 0.3:
            data["coupon"] = "SPRING"
        docs.append(
            {
                "id": f"00000000-0000-0000-0000-{i:012d}",
                "type": rng.choice(TYPES),
                "schema_version": 1,
                "stream_id": f"s-{i % 50}",
                "version": i // 50 + 1,
                "position": i + 1,
                "time": "2024-01-01T00:00:00+00:00",
                "metadata": {
                    "correlation_id": None,
                    "causation_id": None,
                    "principal": f"user-{rng.randint(0, 30)}",
                    "headers": {},
                },
                "data": data,
            }
        )
    return docs


def bench_patterns(rules: int, events: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    patterns = [EventPattern.parse(r) for r in make_rules(rules, rng)]
    documents = make_documents(events, rng)
    matched = 0
    started = time.perf_counter()
    for doc in documents:
        for pattern in patterns:
            matched += pattern.matches(doc)
    elapsed = time.perf_counter() - started
    evaluations = rules * events
    return {
        "rules": rules,
        "events": events,
        "seconds": elapsed,
        "evaluations_per_second": evaluations / elapsed,
        "events_per_second": events / elapsed,
        "match_rate": matched / evaluations,
    }


class Ping(Event):
    event_type: ClassVar[str] = "bench.Ping"
    n: int


class _Any:
    def matches(self, document: Any) -> bool:
        return True


async def bench_latency(events: int, subscribers: int) -> list[float]:
    """Append-to-handler latency in seconds, one event at a time."""
    with EmbeddedServer("memory") as server:
        client: AsyncMongoClient[Any] = AsyncMongoClient(server.uri)
        try:
            store = EventStore(client["bench"], EventRegistry(Ping))
            await store.ensure_indexes()
            arrived: dict[int, list[float]] = {}
            done: dict[int, asyncio.Event] = {}

            async def handle(event: RecordedEvent, delivery: Delivery) -> None:
                n = event.data["n"]
                arrived.setdefault(n, []).append(time.perf_counter())
                if len(arrived[n]) == subscribers:
                    done[n].set()

            subs = [
                Subscriber(f"s{i}", handle, patterns=[_Any()], retry=RetryPolicy(max_attempts=1))
                for i in range(subscribers)
            ]
            worker = Worker(store, subs, poll_interval=1.0)
            await worker.ensure_indexes()
            latencies: list[float] = []
            async with worker:
                await asyncio.sleep(0.5)  # let every runtime open its change stream
                for n in range(events + 20):
                    done[n] = asyncio.Event()
                    started = time.perf_counter()
                    await store.append(f"ping-{n % 10}", [Ping(n=n)])
                    await asyncio.wait_for(done[n].wait(), 30)
                    if n >= 20:  # warm-up
                        latencies.append(max(arrived[n]) - started)
            return latencies
        finally:
            await client.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--events", type=int, default=500, help="documents for pattern matching")
    parser.add_argument("--appends", type=int, default=300, help="events for the latency runs")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args(argv)

    patterns = bench_patterns(args.rules, args.events, args.seed)
    one = asyncio.run(bench_latency(args.appends, 1))
    ten = asyncio.run(bench_latency(args.appends, 10))
    results = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}",
        "patterns": patterns,
        "latency_ms": {
            label: {
                "p50": percentile(values, 0.50) * 1000,
                "p99": percentile(values, 0.99) * 1000,
                "mean": statistics.fmean(values) * 1000,
                "n": len(values),
            }
            for label, values in (("1 subscriber", one), ("10 subscribers", ten))
        },
    }
    out = Path(__file__).parent / "results" / "routing.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return 0
    p = patterns
    print(f"Date: {results['date']}  \nMachine: {results['machine']}\n")
    print("| measurement | result |")
    print("|---|---|")
    print(
        f"| pattern matching, {p['rules']:,} rules x {p['events']:,} events "
        f"| {p['evaluations_per_second']:,.0f} rule evaluations/s "
        f"({p['events_per_second']:,.0f} events/s against all rules; "
        f"{p['match_rate']:.1%} of evaluations match) |"
    )
    for label, stats in results["latency_ms"].items():
        print(
            f"| append → handler, {label} (n={stats['n']}) "
            f"| p50 {stats['p50']:.1f} ms, p99 {stats['p99']:.1f} ms, mean {stats['mean']:.1f} ms |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
