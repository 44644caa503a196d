"""The shared status model: projections and subscribers, lag by a clock, gauges, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient

from _ops_app import Balances, Charged, registry
from cqrs_kit import EventRegistry, EventStore, ProjectionRunner
from cqrs_kit.cli import EXIT_OK, EXIT_USAGE, main
from cqrs_kit.leases import LeaseManager
from cqrs_kit.metrics import Metrics
from cqrs_kit.routing import Subscriber, Worker
from cqrs_kit.routing.subscribers import RetryPolicy
from cqrs_kit.scheduling import ManualClock
from cqrs_kit.status import (
    ProjectionStatus,
    StatusReader,
    SubscriberStatus,
    subscriber_statuses,
)
from cqrs_kit.testing import EmbeddedServer, free_port

TESTS = Path(__file__).parent
T = TypeVar("T")


@pytest.fixture
def event_registry() -> EventRegistry:
    return registry()


async def eventually(probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool]) -> T:
    """Poll ``probe`` until ``accept`` holds for its result (15 s deadline)."""
    deadline = time.monotonic() + 15
    while True:
        value = await probe()
        if accept(value):
            return value
        assert time.monotonic() < deadline, f"condition not reached; last value: {value!r}"
        await asyncio.sleep(0.02)


class AnyType:
    def matches(self, document: Any) -> bool:
        return True


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_lag_seconds_grow_while_stopped_and_drop_to_zero_after_catching_up(
    event_store: EventStore,
) -> None:
    runner = ProjectionRunner(event_store, [Balances()], poll_interval=0.05, lease_ttl=5)

    async def status() -> ProjectionStatus:
        (found,) = await runner.status(clock=clock)
        return found

    clock = ManualClock(datetime.now(UTC))
    stop = asyncio.Event()
    running = asyncio.create_task(runner.run(stop))
    first = await eventually(status, lambda s: s.state == "running")
    assert (first.position, first.lag_events, first.lag_seconds) == (0, 0, 0.0)
    assert first.owner == runner.leases.owner
    stop.set()
    await running

    await event_store.append("account-a", [Charged(account="a", cents=5)])
    await event_store.append("account-b", [Charged(account="b", cents=7)])
    clock = ManualClock(datetime.now(UTC))
    stopped = await status()
    assert (stopped.state, stopped.owner, stopped.lag_events) == ("stopped", None, 2)
    clock.advance(90)
    later = await status()
    assert later.lag_events == 2
    assert later.lag_seconds == pytest.approx(stopped.lag_seconds + 90, abs=0.01)
    clock.advance(30)
    assert (await status()).lag_seconds == pytest.approx(stopped.lag_seconds + 120, abs=0.01)

    stop = asyncio.Event()
    running = asyncio.create_task(runner.run(stop))
    try:
        caught_up = await eventually(status, lambda s: s.state == "running" and s.lag_events == 0)
    finally:
        stop.set()
        await running
    assert (caught_up.position, caught_up.head, caught_up.lag_seconds) == (2, 2, 0.0)
    assert caught_up.dead_letters == 0
    assert caught_up.last_error is None


async def test_subscriber_status_shows_parked_events_dead_letters_and_the_last_error(
    event_store: EventStore,
) -> None:
    async def ledger(event: Charged) -> None:
        if event.account == "poison":
            raise ValueError(f"ledger refuses {event.account}")

    async def mailer(event: Charged) -> None:
        if event.account == "slow":
            raise ConnectionError("mail server down")

    leases = LeaseManager(event_store.database, ttl=5)
    quick = RetryPolicy(max_attempts=2, initial_delay=0.01, max_delay=0.01)
    patient = RetryPolicy(max_attempts=5, initial_delay=3600, max_delay=3600)
    worker = Worker(
        event_store,
        [
            Subscriber("ledger", ledger, patterns=[AnyType()], retry=quick),
            Subscriber("mailer", mailer, patterns=[AnyType()], retry=patient),
        ],
        leases=leases,
        poll_interval=0.05,
    )
    await event_store.append("account-1", [Charged(account="poison", cents=1)])
    await event_store.append("account-2", [Charged(account="slow", cents=2)])
    await event_store.append("account-2", [Charged(account="slow", cents=3)])
    reader = StatusReader(event_store, subscribers=worker)

    async with worker:
        status = await eventually(
            reader.read,
            lambda s: (
                s.subscribers[0].dead_letters == 1
                and s.subscribers[1].parked == 2
                and all(c.lag_events == 0 and c.state == "running" for c in s.subscribers)
            ),
        )
        ledger_status, mailer_status = status.subscribers
        assert (ledger_status.name, mailer_status.name) == ("ledger", "mailer")
        assert ledger_status.owner == mailer_status.owner == leases.owner
        assert ledger_status.parked == 0
        assert ledger_status.last_error is not None
        assert ledger_status.last_error.message == "ValueError: ledger refuses poison"
        assert (ledger_status.last_error.position, ledger_status.last_error.attempts) == (1, 2)
        assert mailer_status.dead_letters == 0
        assert mailer_status.last_error is not None
        assert mailer_status.last_error.message == "ConnectionError: mail server down"
        assert mailer_status.last_error.position == 2  # the second event waits behind it
        assert status.head == 3
        assert status.projections == []

        metrics = Metrics(CollectorRegistry())
        await reader.publish(metrics)
        found = samples(metrics)
        ledger_key = (("consumer", "subscriber:ledger"),)
        assert found[("cqrs_dead_letters_waiting", ledger_key)] == 1
        assert found[("cqrs_consumer_parked", (("consumer", "subscriber:mailer"),))] == 2
        assert found[("cqrs_consumer_lag_events", ledger_key)] == 0
        running = (("consumer", "subscriber:ledger"), ("state", "running"))
        assert found[("cqrs_consumer_state", running)] == 1
        faulted = (("consumer", "subscriber:ledger"), ("state", "faulted"))
        assert found[("cqrs_consumer_state", faulted)] == 0

    after = await subscriber_statuses(event_store, ["ledger", "never-ran"])
    assert [(s.name, s.state, s.owner) for s in after] == [
        ("ledger", "stopped", None),
        ("never-ran", "stopped", None),
    ]
    assert (after[1].position, after[1].lag_events, after[1].last_error) == (0, 3, None)


# -- the command line ---------------------------------------------------------------------


@pytest.fixture
def database(nx_server: EmbeddedServer) -> Iterator[str]:
    name = f"status_{uuid.uuid4().hex[:10]}"
    yield name
    run_on(nx_server, name, lambda store: store.database.raw.client.drop_database(name))


def run_on(server: EmbeddedServer, database: str, body: Callable[[EventStore], Awaitable[T]]) -> T:
    async def go() -> T:
        client: Any = AsyncMongoClient(server.uri, serverSelectionTimeoutMS=10_000)
        try:
            store = EventStore(client[database], registry())
            await store.ensure_indexes()
            return await body(store)
        finally:
            await client.close()

    return asyncio.run(go())


def conn(server: EmbeddedServer, database: str) -> list[str]:
    return ["--uri", server.uri, "--database", database]


ROUTING = """\
registry: _ops_app:REGISTRY
routes:
  charges:
    pattern: {type: [billing.Charged]}
    subscribers: [ledger]
subscribers:
  ledger:
    handler: _ops_app:record_charge
"""


def test_worker_status_prints_the_shared_model(
    nx_server: EmbeddedServer, database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def deliver(store: EventStore) -> None:
        await store.append("account-c", [Charged(account="c", cents=1)])
        worker = Worker(
            store,
            [Subscriber("ledger", record, patterns=[AnyType()])],
            leases=LeaseManager(store.database),
            poll_interval=0.05,
        )
        async with worker:
            await eventually(
                lambda: subscriber_statuses(store, ["ledger"]), lambda s: s[0].lag_events == 0
            )

    async def record(event: Charged) -> None:
        pass

    run_on(nx_server, database, deliver)
    assert main(["worker", "status", *conn(nx_server, database), "--json"]) == EXIT_OK
    (row,) = json.loads(capsys.readouterr().out)
    model = SubscriberStatus.model_validate(row)
    assert (model.name, model.state, model.position, model.head) == ("ledger", "stopped", 1, 1)
    assert (row["lag_events"], row["lag_seconds"]) == (0, 0)
    assert (row["parked"], row["dead_letters"], row["last_error"]) == (0, 0, None)

    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING.replace("ledger", "audit"))
    argv = ["worker", "status", *conn(nx_server, database), "--app-dir", str(TESTS)]
    assert main([*argv, "--routes", str(routing)]) == EXIT_OK
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [
        "subscriber", "state", "position", "head", "lag", "lag", "s", "owner", "parked", "dead",
        "letters", "last", "error",
    ]  # fmt: skip
    row_cells = table[1].split()
    assert row_cells[:5] == ["audit", "stopped", "0", "1", "1"]
    assert row_cells[6:] == ["-", "0", "0", "-"]


def test_run_commands_serve_metrics_with_fresh_lag_gauges(
    nx_server: EmbeddedServer, database: str, tmp_path: Path
) -> None:
    async def seed(store: EventStore) -> int:
        for account in ("d", "e", "f"):
            await store.append(f"account-{account}", [Charged(account=account, cents=1)])
        return await store.head_position()

    head = run_on(nx_server, database, seed)
    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING)
    common = [*conn(nx_server, database), "--status-interval", "0.1", "--poll-interval", "0.1"]
    projections = ["projections", "run", "--app-dir", str(TESTS), "--app", "_ops_app:make_app"]
    commands = {
        "projection:balances": projections,
        "subscriber:ledger": ["worker", "run", str(routing), "--app-dir", str(TESTS)],
    }
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    for consumer, argv in commands.items():
        port = free_port()
        log = tmp_path / f"{consumer.split(':')[0]}.log"
        command = [sys.executable, "-m", "cqrs_kit.cli", *argv, *common]
        command += ["--metrics-port", str(port)]
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            found = scrape_until(
                port,
                lambda s, c=consumer: (
                    s.get(("cqrs_consumer_position", (("consumer", c),))) == head
                    and s.get(("cqrs_consumer_lag_events", (("consumer", c),))) == 0
                ),
                log,
            )
            state = (("consumer", consumer), ("state", "running"))
            assert found[("cqrs_consumer_state", state)] == 1
            assert found[("cqrs_consumer_lag_seconds", (("consumer", consumer),))] == 0
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == EXIT_OK, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        assert f"serving metrics at http://0.0.0.0:{port}/metrics" in log.read_text()


def scrape_until(
    port: int, accept: Callable[[dict[Any, float]], bool], log: Path
) -> dict[Any, float]:
    deadline = time.monotonic() + 30
    found: dict[Any, float] = {}
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
                text = answer.read().decode()
        except OSError:
            text = ""
        found = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        if accept(found):
            return found
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def test_metrics_port_without_the_extra_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import cqrs_kit.metrics

    monkeypatch.setattr(cqrs_kit.metrics, "_prom", None)
    argv = ["projections", "run", "--app-dir", str(TESTS), "--app", "_ops_app:make_app"]
    assert main([*argv, "--metrics-port", str(free_port())]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "pip install 'cqrs-kit[metrics]'" in err
    assert "[code: metrics-extra-missing]" in err
