"""``cqrs-kit projections ...``: commands, output, exit codes and error messages."""

from __future__ import annotations

import asyncio
import gc
import json
import random
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pymongo import AsyncMongoClient

from _projector_worker import ItemsPerCategory, StockLevels, registry
from cqrs_kit import EventStore
from cqrs_kit.cli import EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, build_parser, main
from cqrs_kit.leases import LeaseManager
from cqrs_kit.projections import ProjectionRunner, projection_key
from cqrs_kit.testing import EmbeddedServer, free_port
from test_projections import EXPECTED, History, append_random, snapshot

TESTS = Path(__file__).parent
APP = ["--app-dir", str(TESTS), "--app", "_projector_worker:make_app"]
T = TypeVar("T")


@pytest.fixture
def database(nx_server: EmbeddedServer) -> Iterator[str]:
    name = f"cli_{uuid.uuid4().hex[:10]}"
    yield name
    with_store(nx_server, name, lambda store: store.database.raw.client.drop_database(name))


def with_store(
    server: EmbeddedServer, database: str, body: Callable[[EventStore], Awaitable[T]]
) -> T:
    async def go() -> T:
        client: Any = AsyncMongoClient(server.uri, serverSelectionTimeoutMS=10_000)
        try:
            store = EventStore(client[database], registry())
            await store.ensure_indexes()
            return await body(store)
        finally:
            await client.close()

    return asyncio.run(go())


def seed(server: EmbeddedServer, database: str, history: History, commits: int = 20) -> int:
    async def body(store: EventStore) -> int:
        await append_random(store, random.Random(len(history)), commits, history)
        return await store.head_position()

    return with_store(server, database, body)


def conn(server: EmbeddedServer, database: str) -> list[str]:
    return ["--uri", server.uri, "--database", database]


def status_json(server: EmbeddedServer, database: str, capsys: pytest.CaptureFixture[str]) -> Any:
    capsys.readouterr()
    assert main(["projections", "status", *APP, *conn(server, database), "--json"]) == EXIT_OK
    return {s["name"]: s for s in json.loads(capsys.readouterr().out)}


def test_list_shows_the_apps_projections(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["projections", "list", *APP]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["name", "kind", "event", "types"]
    assert "items_per_category  pipeline  inventory.StockAdded, inventory.StockRemoved" in out
    assert (
        main(
            [
                "projections",
                "list",
                "--app-dir",
                str(TESTS),
                "--app",
                "_projector_worker:app",
                "--json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["kind"]) for r in rows] == [
        ("items_per_category", "pipeline"),
        ("stock_levels", "handler"),
    ]


WORKER = ["--app-dir", str(TESTS), "--app"]
KNOWN = "known projections: items_per_category, stock_levels"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["projections", "list"], "no app given: pass --app MODULE:ATTR"),
        (["projections", "list", "--app", "nocolon"], "must look like MODULE:ATTR"),
        (["projections", "list", "--app", "no_such_module_xyz:app"], "cannot import"),
        (["projections", "list", *WORKER, "_projector_worker:nope"], "has no attribute 'nope'"),
        (
            ["projections", "list", *WORKER, "_projector_worker:registry"],
            "a EventRegistry object has no registry or projections",
        ),
        (["projections", "status", *APP, "nope"], f"unknown projection 'nope'; {KNOWN}"),
        (["projections", "rebuild", *APP, "nope"], KNOWN),
        (["projections", "reset", *APP, "stock_levels"], "pass --yes to confirm"),
    ],
)
def test_usage_errors_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert message in err


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["projections", "frobnicate"]) == EXIT_USAGE
    assert "invalid choice" in capsys.readouterr().err
    assert main(["projections", "run", *APP, "--batch-size", "many"]) == EXIT_USAGE


def test_unreachable_database_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"mongodb://user:secret@127.0.0.1:{free_port()}/?directConnection=true"
    argv = ["projections", "status", *APP, "--uri", uri, "--connect-timeout", "0.3"]
    with warnings.catch_warnings():
        # PyMongo's async connect leaves the socket of a refused connection for the
        # garbage collector; collect it here rather than in whichever test runs next.
        warnings.simplefilter("ignore", ResourceWarning)
        assert main(argv) == EXIT_UNAVAILABLE
        gc.collect()
    err = capsys.readouterr().err
    assert "cannot reach MongoDB at mongodb://user:***@127.0.0.1" in err
    assert "secret" not in err


def test_status_reports_position_lag_state_and_owner(
    nx_server: EmbeddedServer, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    history: History = []
    head = seed(nx_server, database, history)
    before = status_json(nx_server, database, capsys)
    assert before["stock_levels"]["lag_events"] == head
    assert before["stock_levels"]["lag_seconds"] > 0
    assert before["stock_levels"]["state"] == "stopped"

    async def catch_up(store: EventStore) -> None:
        await ProjectionRunner(store, [ItemsPerCategory(), StockLevels()]).catch_up()

    with_store(nx_server, database, catch_up)
    after = status_json(nx_server, database, capsys)
    for name in EXPECTED:
        assert (after[name]["position"], after[name]["head"]) == (head, head)
        assert (after[name]["lag_events"], after[name]["lag_seconds"]) == (0, 0.0)
        assert after[name]["owner"] is None
        assert after[name]["last_error"] is None
    assert main(["projections", "status", *APP, *conn(nx_server, database)]) == EXIT_OK
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["name", "state", "position", "head"]
    assert table[1].split()[:4] == ["items_per_category", "stopped", str(head), str(head)]


def test_rebuild_logs_progress_then_reset_starts_over(
    nx_server: EmbeddedServer, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    history: History = []
    head = seed(nx_server, database, history, commits=40)
    argv = ["projections", "rebuild", *APP, *conn(nx_server, database), "stock_levels"]
    assert main([*argv, "--drop-grace", "0", "--batch-size", "10"]) == EXIT_OK
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("rebuild name=stock_levels")]
    assert lines, out
    fields = dict(item.split("=", 1) for item in lines[-1].split()[1:])
    assert set(fields) == {"name", "phase", "position", "head", "events", "events_per_s", "eta_s"}
    assert {ln.split()[2] for ln in lines} >= {"phase=building", "phase=handover", "phase=done"}
    assert f"rebuilt stock_levels into stock_levels__v2 at position {head}" in out

    async def read(store: EventStore) -> list[dict[str, Any]]:
        return await snapshot(store.database.raw, "stock_levels")

    assert with_store(nx_server, database, read) == EXPECTED["stock_levels"](history)

    reset = ["projections", "reset", *APP, *conn(nx_server, database), "stock_levels", "--yes"]
    assert main(reset) == EXIT_OK
    assert "reset stock_levels: now stock_levels__v3 at position 0" in capsys.readouterr().out
    status = status_json(nx_server, database, capsys)["stock_levels"]
    assert (status["position"], status["version"]) == (0, 3)
    assert with_store(nx_server, database, read) == []


def test_rebuild_on_a_terminal_uses_a_progress_bar(
    nx_server: EmbeddedServer,
    database: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed(nx_server, database, [], commits=10)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    argv = ["projections", "rebuild", *APP, *conn(nx_server, database), "items_per_category"]
    assert main([*argv, "--drop-grace", "0"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "rebuild name=" not in out  # no log lines: rich drew (or skipped) the bar
    assert "rebuilt items_per_category into items_per_category__v2" in out


def test_rebuild_fails_with_1_while_another_runs(
    nx_server: EmbeddedServer, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(nx_server, database, [], commits=3)

    async def hold(store: EventStore) -> None:
        leases = LeaseManager(store.database, owner="other-host:1:abc", ttl=30)
        await leases.try_acquire(projection_key("stock_levels") + ":rebuild")

    with_store(nx_server, database, hold)
    argv = ["projections", "rebuild", *APP, *conn(nx_server, database), "stock_levels"]
    assert main(argv) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "a rebuild or reset of 'stock_levels' is already running (other-host:1:abc)" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_follows_until_signalled(
    nx_server: EmbeddedServer, database: str, tmp_path: Path, sig: signal.Signals
) -> None:
    history: History = []
    seed(nx_server, database, history, commits=10)
    log = tmp_path / "run.log"
    command = [sys.executable, "-m", "cqrs_kit.cli", "projections", "run", *APP]
    command += [*conn(nx_server, database), "--poll-interval", "0.2", "stock_levels"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:

        async def wait_matches(store: EventStore) -> None:
            deadline = time.monotonic() + 30
            while await snapshot(store.database.raw, "stock_levels") != EXPECTED["stock_levels"](
                history
            ):
                assert time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.05)

        with_store(nx_server, database, wait_matches)
        seed(nx_server, database, history, commits=5)
        with_store(nx_server, database, wait_matches)  # live
        process.send_signal(sig)
        assert process.wait(20) == EXIT_OK
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    text = log.read_text()
    assert "running stock_levels as" in text
    assert "stopped" in text


def test_parser_hosts_the_routing_groups(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == EXIT_OK
    listed = capsys.readouterr().out
    assert all(group in listed for group in ("projections", "routes", "dlq"))
    assert build_parser().parse_args(["dlq", "list"]).handler is not None
