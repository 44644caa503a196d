"""Projectors in separate processes, killed with SIGKILL (scenarios 6, 11 and 12).

Each test starts its own nx-27017 server on a file database and runs
``cqrs-kit projections run`` (and ``rebuild``) as child processes, with the
stock app of ``_projector_worker.py``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from _projector_worker import ItemsPerCategory, StockLevels, registry
from cqrs_kit import EventStore
from cqrs_kit.leases import LeaseManager
from cqrs_kit.projections import ProjectionRunner, projection_key
from cqrs_kit.testing import EmbeddedServer
from test_projections import EXPECTED, History, append_random, snapshot

pytestmark = pytest.mark.slow

TESTS = Path(__file__).parent
DB = "crash"
TTL = 1.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    srv = EmbeddedServer(tmp_path / "crash.sqlite", workdir=tmp_path).start()
    try:
        yield srv
    finally:
        srv.cleanup()


@pytest_asyncio.fixture
async def store(server: EmbeddedServer) -> AsyncIterator[EventStore]:
    client: Any = AsyncMongoClient(server.uri, serverSelectionTimeoutMS=10_000)
    try:
        events = EventStore(client[DB], registry())
        await events.ensure_indexes()
        yield events
    finally:
        await client.close()


def cli(server: EmbeddedServer, log: Path, *args: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "cqrs_kit.cli", "projections", *args]
    command += ["--app-dir", str(TESTS), "--app", "_projector_worker:make_app"]
    command += ["--uri", server.uri, "--database", DB]
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def worker(server: EmbeddedServer, log: Path) -> subprocess.Popen[bytes]:
    return cli(
        server, log, "run", "--lease-ttl", str(TTL), "--batch-size", "7",
        "--poll-interval", "0.1", "--handover-poll", "0.1", "--log-level", "WARNING",
    )  # fmt: skip


def runner_for(store: EventStore) -> ProjectionRunner:
    return ProjectionRunner(store, [ItemsPerCategory(), StockLevels()], lease_ttl=TTL)


async def wait_for(predicate: Any, limit: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not reached within {limit}s")
        await asyncio.sleep(0.05)


async def positions(runner: ProjectionRunner) -> dict[str, int]:
    return {s.name: s.position for s in await runner.status()}


async def assert_equals_fresh_rebuild(store: EventStore, history: History) -> None:
    """The read models equal the oracle and a full rebuild into other collections."""
    checks = [ItemsPerCategory(name="check_categories"), StockLevels(name="check_levels")]
    await ProjectionRunner(store, checks).catch_up()
    db = store.database.raw
    pairs = {"items_per_category": "check_categories", "stock_levels": "check_levels"}
    for live, check in pairs.items():
        assert await snapshot(db, live) == await snapshot(db, check), live
        assert await snapshot(db, live) == EXPECTED[live](history), live


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(20)


async def test_sigkilled_projector_resumes_exactly_once(
    server: EmbeddedServer, store: EventStore, tmp_path: Path
) -> None:
    """Scenario 6: kill -9 at random points while it projects; nothing lost or doubled."""
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    rnd = random.Random(seed)
    history: History = []
    log = tmp_path / "worker.log"
    runner = runner_for(store)

    rounds_done = asyncio.Event()

    async def write() -> None:  # a few hundred events while the rounds go on
        for _ in range(150):
            if rounds_done.is_set():
                return
            await append_random(store, rnd, 1, history)
            await asyncio.sleep(0.04)

    writer = asyncio.create_task(write())
    progress: list[int] = []
    for _ in range(5):
        before = sum((await positions(runner)).values())
        process = worker(server, log)

        async def progressed(before: int = before) -> bool:
            return sum((await positions(runner)).values()) > before

        await wait_for(progressed, 20, f"worker progress (seed {seed}, see {log})")
        await asyncio.sleep(rnd.uniform(0.0, 0.4))  # somewhere mid-batch, or not
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        progress.append(sum((await positions(runner)).values()) - before)
    rounds_done.set()
    await writer
    assert len(progress) == 5
    assert all(p > 0 for p in progress), progress

    process = worker(server, log)
    head = await store.head_position()

    async def caught_up() -> bool:
        return set((await positions(runner)).values()) == {head}

    await wait_for(caught_up, 30, f"final catch-up (seed {seed}, see {log})")
    assert stop(process) == 0
    await assert_equals_fresh_rebuild(store, history)
    for status in await runner.status():
        # The checkpoint is the last applied position: no document is ahead of it.
        docs = await snapshot(store.database.raw, status.name)
        assert status.position == head
        assert max(d["_position"] for d in docs) <= status.position


async def test_standby_process_takes_over_a_killed_holder(
    server: EmbeddedServer, store: EventStore, tmp_path: Path
) -> None:
    """Scenario 11: two runners, one makes progress; kill it and the other continues."""
    history: History = []
    rnd = random.Random(1)
    await append_random(store, rnd, 5, history)
    first = worker(server, tmp_path / "first.log")
    second = worker(server, tmp_path / "second.log")
    leases = LeaseManager(store.database, ttl=TTL)
    names = [projection_key(n) for n in EXPECTED]
    try:

        async def all_held() -> bool:
            holders = [await leases.holder(n) for n in names]
            return all(h is not None for h in holders)

        await wait_for(all_held, 20, "leases taken")
        holders = {(await leases.holder(n)).owner for n in names}  # type: ignore[union-attr]
        pids = {int(owner.split(":")[1]) for owner in holders}
        assert pids <= {first.pid, second.pid}
        victim, survivor = (first, second) if first.pid in pids else (second, first)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        killed_at = asyncio.get_running_loop().time()
        await append_random(store, rnd, 5, history)

        async def survivor_holds_all() -> bool:
            holders = [await leases.holder(n) for n in names]
            return all(h is not None and f":{survivor.pid}:" in h.owner for h in holders)

        await wait_for(survivor_holds_all, TTL + 5, "takeover")
        assert asyncio.get_running_loop().time() - killed_at < TTL + 3
        head = await store.head_position()
        runner = runner_for(store)

        async def caught_up() -> bool:
            return set((await positions(runner)).values()) == {head}

        await wait_for(caught_up, 20, "survivor catches up")
        assert stop(survivor) == 0
        await assert_equals_fresh_rebuild(store, history)
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.kill()
                process.wait(10)


async def test_rebuild_killed_halfway_then_run_again(
    server: EmbeddedServer, store: EventStore, tmp_path: Path
) -> None:
    """Scenario 12: a killed rebuild leaves the live model serving; a rerun starts over."""
    history: History = []
    rnd = random.Random(2)
    await append_random(store, rnd, 80, history)
    live = worker(server, tmp_path / "live.log")
    runner = runner_for(store)
    try:
        head = await store.head_position()

        async def caught_up() -> bool:
            return set((await positions(runner)).values()) == {head}

        await wait_for(caught_up, 20, "live catch-up")
        log = tmp_path / "rebuild.log"
        rebuild_args = ["stock_levels", "--no-progress", "--drop-grace", "0"]
        rebuild_args += ["--batch-size", "3", "--lease-ttl", str(TTL)]
        killed = cli(server, log, "rebuild", *rebuild_args)

        async def building() -> bool:
            lines = [ln for ln in log.read_text().splitlines() if "phase=building" in ln]
            return any("position=0 " not in ln for ln in lines)

        await wait_for(building, 20, "rebuild started")
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        (status,) = await runner.status(["stock_levels"])
        assert status.read_model == "stock_levels__v1"  # the live model still serves
        assert status.rebuild is not None
        assert status.rebuild.collection == "stock_levels__v2"
        await append_random(store, rnd, 5, history)  # and still follows

        rebuild_leases = LeaseManager(store.database, ttl=TTL)

        async def abandoned() -> bool:
            return await rebuild_leases.holder(projection_key("stock_levels") + ":rebuild") is None

        await wait_for(abandoned, TTL + 5, "dead rebuild's lease expires")
        again = cli(server, log, "rebuild", *rebuild_args)
        assert again.wait(60) == 0, log.read_text()
        (status,) = await runner.status(["stock_levels"])
        assert (status.read_model, status.rebuild) == ("stock_levels__v3", None)
        assert not {"stock_levels__v1", "stock_levels__v2"} & set(
            await store.database.collection_names()
        )
        await append_random(store, rnd, 5, history)
        head = await store.head_position()
        await wait_for(caught_up, 20, "live continues on the rebuilt model")
        assert stop(live) == 0
        await assert_equals_fresh_rebuild(store, history)
    finally:
        if live.poll() is None:
            live.kill()
            live.wait(10)
