"""``cqrs-kit routes`` and ``cqrs-kit dlq``: the table, and dead letters from failure to retry."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest

from cqrs_kit import Event, EventRegistry, EventStore
from cqrs_kit.cli import main
from cqrs_kit.routing.cli import parse_since
from cqrs_kit.routing.config import load_routing
from cqrs_kit.routing.worker import Worker
from cqrs_kit.testing import Backend


class Charged(Event):
    event_type: ClassVar[str] = "billing.Charged"
    invoice: str


registry = EventRegistry(Charged)
broken = {"flaky": True}
handled: list[str] = []


@pytest.fixture
def event_registry() -> EventRegistry:
    return registry


async def flaky(event: Charged) -> None:
    if broken["flaky"]:
        raise ConnectionError(f"ledger unavailable for {event.invoice}")
    handled.append(event.invoice)


ROUTING = """\
registry: test_routing_cli:registry
routes:
  charges:
    pattern: {type: [billing.Charged]}
    subscribers: [ledger]
subscribers:
  ledger:
    handler: test_routing_cli:flaky
    retry: {max_attempts: 2, initial_delay: 0.01, max_delay: 0.01}
    ordering: none
"""


@pytest.fixture
def routing_file(tmp_path: Path) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(ROUTING)
    return path


def test_routes_show_prints_the_table(
    routing_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["routes", "show", str(routing_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "route", "pattern", "subscriber", "handler", "retry", "timeout", "ordering"
    ]  # fmt: skip
    assert lines[1].split() == [
        "charges",
        '{"type":["billing.Charged"]}',
        "ledger",
        "test_routing_cli:flaky",
        "2x",
        "0.01s..0.01s",
        "x2",
        "30s",
        "none",
    ]
    assert main(["routes", "show", str(routing_file), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["handler"] == "test_routing_cli:flaky"


def test_routes_show_reports_file_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(ROUTING.replace("test_routing_cli:flaky", "test_routing_cli:missing"))
    assert main(["routes", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:8: subscribers.ledger.handler:" in err
    assert "has no attribute 'missing'" in err


def test_bad_arguments_exit_with_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq", "frobnicate"]) == 2
    assert main(["dlq", "list", "--since", "last tuesday"]) == 2
    assert "neither a duration" in capsys.readouterr().err


def test_since_parsing() -> None:
    now = datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert parse_since("2h", now=now) == now.timestamp() - 7200
    assert parse_since("2024-01-01T10:00:00+00:00") == now.timestamp() - 7200


async def cli(*argv: str) -> int:
    """Run the CLI as a user would, in its own thread and event loop."""
    return await asyncio.to_thread(main, list(argv))


async def test_dead_letter_list_show_retry_and_discard(
    backend: Backend,
    mongo_database: Any,
    event_store: EventStore,
    routing_file: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    if not backend.has_server:
        pytest.skip("the CLI connects by URI; mongomock lives inside this process")
    broken["flaky"] = True
    handled.clear()
    connection = ["--uri", str(backend.uri), "--database", mongo_database.name]
    await event_store.append("invoice-1", [Charged(invoice="inv-1")])
    await event_store.append("invoice-2", [Charged(invoice="inv-2")])
    worker = Worker.from_routing(event_store, load_routing(routing_file), poll_interval=0.05)
    async with worker:
        for _ in range(1000):
            if await worker.dead_letters.count() == 2:
                break
            await asyncio.sleep(0.01)
    capsys.readouterr()

    assert await cli("dlq", "list", *connection, "--subscriber", "ledger", "--json") == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["error"] for e in entries] == [
        "ledger unavailable for inv-1",
        "ledger unavailable for inv-2",
    ]
    first, second = (e["id"] for e in entries)
    assert await cli("dlq", "list", *connection, "--type", "other.Type") == 0
    assert "0 dead letters" in capsys.readouterr().out

    assert await cli("dlq", "show", *connection, first) == 0
    shown = capsys.readouterr().out
    assert "ConnectionError: ledger unavailable for inv-1" in shown
    assert '"invoice": "inv-1"' in shown

    retry = ["dlq", "retry", *connection, "--routes", str(routing_file)]
    assert await cli(*retry, first) == 1
    assert "failed again: ConnectionError" in capsys.readouterr().out
    broken["flaky"] = False
    assert await cli(*retry, first) == 0
    assert "delivered" in capsys.readouterr().out
    assert handled == ["inv-1"]

    with caplog.at_level(logging.WARNING, logger="cqrs_kit.routing.dlq"):
        assert await cli("dlq", "discard", *connection, second, "--reason", "refunded by hand") == 0
    assert "discarded" in capsys.readouterr().out
    assert any("refunded by hand" in r.getMessage() for r in caplog.records)
    assert await cli("dlq", "list", *connection) == 0
    assert "0 dead letters" in capsys.readouterr().out
    assert await cli("dlq", "show", *connection, second) == 1
    assert await cli("dlq", "discard", *connection) == 2  # neither ids nor --all
    assert handled == ["inv-1"]  # the discarded one was never delivered
