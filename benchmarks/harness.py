"""What the benchmark scripts share: the servers they run against, samples, the machine.

A benchmark runs against a *target*:

* ``nx-27017``: a fresh in-memory nx-27017 server started for the run through
  :class:`cqrs_kit.testing.EmbeddedServer` (its own port, pid file and log file),
  stopped and removed afterwards;
* ``mongodb``: the deployment named by ``CQRS_KIT_BENCH_MONGODB_URI``. It must be a
  scratch deployment: every database whose name starts with ``bench`` is dropped
  before and after each script.

:func:`launch` runs a benchmark script in the current (child) process, on either
target, without changing the script: on the MongoDB target it replaces
``EmbeddedServer`` with :class:`ExternalServer` before the script is loaded, so
the script's ``with EmbeddedServer(...) as server`` connects to ``server.uri`` on
MongoDB instead of starting nx-27017. ``benchmarks/run.py`` starts every script
that way.
"""

from __future__ import annotations

import contextlib
import cProfile
import os
import platform
import pstats
import runpy
import statistics
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

from pymongo import MongoClient
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

from cqrs_kit.testing import EmbeddedServer

URI_VARIABLE = "CQRS_KIT_BENCH_MONGODB_URI"
RESULTS = Path(__file__).with_name("results")
#: Databases of this prefix belong to the benchmarks and are dropped on a MongoDB target.
DATABASE_PREFIX = "bench"
TARGETS = ("nx-27017", "mongodb")


# -- targets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A server a benchmark talks to."""

    name: str
    uri: str
    description: str


def mongodb_uri() -> str | None:
    """The real MongoDB to benchmark against, if one is configured."""
    return os.environ.get(URI_VARIABLE) or None


def drop_bench_databases(uri: str) -> list[str]:
    """Drop every database whose name starts with ``bench``; return their names."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=10_000)
    try:
        names = [n for n in client.list_database_names() if n.startswith(DATABASE_PREFIX)]
        for name in names:
            client.drop_database(name)
        return names
    finally:
        client.close()


def server_version(uri: str) -> str:
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=10_000)
    try:
        info = client.server_info()
        hello = client.admin.command("hello")
        kind = f"replica set {hello['setName']}" if "setName" in hello else "standalone"
        return f"MongoDB {info.get('version', '?')} ({kind})"
    finally:
        client.close()


@contextlib.contextmanager
def open_target(name: str) -> Iterator[Target]:
    """Start (nx-27017) or clean (mongodb) the target, and stop or clean it afterwards."""
    if name == "nx-27017":
        with EmbeddedServer("memory") as server:
            version = metadata.version("nx-27017")
            yield Target(name, server.uri, f"nx-27017 {version}, in-memory SQLite, fresh")
        return
    if name != "mongodb":
        raise ValueError(f"unknown target {name!r}; use one of {', '.join(TARGETS)}")
    uri = mongodb_uri()
    if uri is None:
        raise SystemExit(f"the mongodb target needs {URI_VARIABLE}")
    drop_bench_databases(uri)
    try:
        yield Target(name, uri, server_version(uri))
    finally:
        drop_bench_databases(uri)


def results_path(name: str, target: str) -> Path:
    """Where a script's JSON goes: ``results/<name>.json``, or ``results/mongodb/`` for MongoDB."""
    folder = RESULTS if target == "nx-27017" else RESULTS / target
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.json"


class ExternalServer:
    """Stands in for ``EmbeddedServer`` on the MongoDB target: same shape, no process.

    Entering drops the benchmark databases, so that a script starts on an empty
    deployment as it would on a fresh nx-27017; leaving drops them again.
    """

    def __init__(self, db_path: object = "memory", **_: object) -> None:
        uri = mongodb_uri()
        if uri is None:
            raise SystemExit(f"ExternalServer needs {URI_VARIABLE}")
        self.uri = uri
        self.db_path = db_path
        self.pid = None

    def start(self, timeout: float = 30.0) -> ExternalServer:
        drop_bench_databases(self.uri)
        return self

    def stop(self) -> None:
        drop_bench_databases(self.uri)

    def cleanup(self) -> None:
        self.stop()

    def __enter__(self) -> ExternalServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def launch(script: str, target: str, argv: Sequence[str]) -> None:
    """Run ``script`` (a file beside this module) as ``__main__`` against ``target``."""
    if target == "mongodb":
        import cqrs_kit.testing
        import cqrs_kit.testing.server

        cqrs_kit.testing.EmbeddedServer = ExternalServer  # type: ignore[misc,assignment]
        cqrs_kit.testing.server.EmbeddedServer = ExternalServer  # type: ignore[misc,assignment]
    path = Path(__file__).with_name(script)
    sys.argv = [str(path), *argv]
    runpy.run_path(str(path), run_name="__main__")


# -- samples -------------------------------------------------------------------------------


@dataclass
class Samples:
    """Repeated measurements of one quantity (one per round)."""

    unit: str
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def summary(self, digits: int = 4) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "rounds": len(self.values),
            "median": round(self.median, digits),
            "min": round(min(self.values), digits),
            "max": round(max(self.values), digits),
            "samples": [round(v, digits) for v in self.values],
        }


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def cell(summary: dict[str, Any], digits: int = 2) -> str:
    """``median (min-max)`` of a summary, for a markdown table."""
    return (
        f"{summary['median']:,.{digits}f} "
        f"({summary['min']:,.{digits}f}-{summary['max']:,.{digits}f})"
    )


# -- the machine ---------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Date, machine and versions, for every results file."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "versions": {
            name: _version(name)
            for name in ("cqrs-kit", "pymongo", "pydantic", "nx-27017", "eventsourcing")
        },
    }


# -- measuring the library against the raw driver -----------------------------------------


def now_ms() -> datetime:
    """The current UTC time at BSON's millisecond precision (what the store writes)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


async def create_commit_indexes(collection: Any) -> None:
    """The indexes ``EventStore.ensure_indexes`` makes, on a raw collection."""
    await collection.create_index([("position", 1)], unique=True)
    await collection.create_index([("stream_id", 1), ("from_version", 1)], unique=True)
    await collection.create_index([("event_ids", 1)], unique=True)
    await collection.create_index([("types", 1), ("position", 1)])


class CountingListener(CommandListener):
    """Counts commands sent to the server, by name."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def started(self, event: CommandStartedEvent) -> None:
        self.counts[event.command_name] += 1

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


def _package(filename: str, function: str) -> str:
    """Which package a profiled function belongs to."""
    if filename == "~":  # a builtin: name it after what it is a method of
        if "epoll" in function or "select" in function:
            return "waiting for the server (epoll)"
        for name in ("bson", "pydantic_core", "uuid", "_socket", "_json", "datetime"):
            if name in function:
                return name
        return "other builtins"
    if "/cqrs_kit/fastapi/" in filename:
        return "cqrs_kit.fastapi"
    if "/cqrs_kit/" in filename:
        return "cqrs_kit"
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    stdlib = ("asyncio", "json", "uuid", "selectors", "inspect", "contextlib", "importlib")
    for name in stdlib:
        if f"/{name}" in filename or f"<frozen {name}" in filename:
            return name
    return "other stdlib"


def own_time_by_package(profiler: cProfile.Profile, ops: int) -> Counter[str]:
    """Own time (tottime) per package under cProfile, in microseconds per operation."""
    totals: Counter[str] = Counter()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    for (filename, _, function), (_, _, own, _, _) in stats.items():
        totals[_package(filename, function)] += own * 1e6 / ops
    return totals
