"""The app under a real uvicorn process on loopback, against the session's nx-27017 server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _http_app import ITEMS_EXAMPLE, bearer
from cqrs_kit.testing import EmbeddedServer, free_port

TESTS = Path(__file__).parent


@contextlib.contextmanager
def uvicorn_process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[str]:
    """``python -m uvicorn <argv>`` (or ``python -c``) on a free loopback port; yields its URL.

    On the way out the server must stop on SIGTERM, cleanly: no traceback and no
    error in its output.
    """
    port = free_port()
    command = [sys.executable, *argv]
    if argv[:2] == ["-m", "uvicorn"]:
        command += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env={**os.environ, **env, "CQRS_KIT_HTTP_PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # wait until it answers (the startup includes the app's lifespan)
            if process.poll() is not None:
                pytest.fail(f"uvicorn exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{base}/openapi.json", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"uvicorn did not answer in 30 s:\n{log.read_text()}")
            time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        try:
            code = process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
            pytest.fail(f"uvicorn did not stop on SIGTERM:\n{log.read_text()}")
    output = log.read_text()
    # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully.
    assert code in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output, output
    assert "Traceback" not in output, output
    assert "ERROR" not in output, output


@pytest.fixture
def server(nx_server: EmbeddedServer, tmp_path: Path) -> Iterator[str]:
    """``uvicorn _http_app:create_app`` in a child process; yields its base URL."""
    env = {
        "CQRS_KIT_HTTP_MONGODB_URI": nx_server.uri,
        "CQRS_KIT_HTTP_DATABASE": f"http_{uuid.uuid4().hex[:10]}",
        "CQRS_KIT_HTTP_HEARTBEAT": "0.5",
    }
    argv = [
        "-m", "uvicorn", "--factory", "_http_app:create_app", "--app-dir", str(TESTS),
        "--log-level", "info", "--timeout-graceful-shutdown", "5",
    ]  # fmt: skip
    with uvicorn_process(argv, env, tmp_path / "uvicorn.log") as base:
        yield base


def test_commands_queries_and_feed_over_a_real_socket(server: str) -> None:
    alice = bearer("alice")
    with httpx.Client(base_url=server, timeout=10) as client:
        placed = client.post(
            "/commands/place-order",
            json={"order_id": "o-1", "items": ITEMS_EXAMPLE},
            headers={**alice, "Idempotency-Key": "first"},
        )
        assert placed.status_code == 201, placed.text
        position = placed.json()["position"]
        # Read-your-writes: the projection runs in the server's background.
        read = client.get(
            placed.headers["location"], headers={**alice, "X-Min-Position": str(position)}
        )
        assert read.status_code == 200, read.text
        assert read.json()["customer"] == "alice"

        invalid = client.post("/commands/place-order", json={"order_id": "O 1"}, headers=alice)
        assert invalid.status_code == 422
        assert invalid.headers["content-type"] == "application/problem+json"

        # The live feed: the stored event, then one appended while the stream is open.
        ids: list[str] = []
        with client.stream("GET", "/events", params={"after": 0}, headers=alice) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            for line in lines:
                if line.startswith("id: "):
                    ids.append(line[4:])
                    if len(ids) == 1:
                        noted = client.post(
                            "/commands/add-note",
                            json={"order_id": "o-1", "text": "live"},
                            headers=alice,
                        )
                        assert noted.status_code == 202
                    else:
                        break
            # Heartbeats keep an idle stream alive.
            assert any(line == ": keep-alive" for line in lines)
        assert ids == ["1", "2"]
        # The server noticed the disconnect: it stops cleanly (checked by the fixture).


def problem(response: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    """The problem document of ``response``, checked to be one and to leak nothing."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "Traceback" not in response.text
    body: dict[str, Any] = response.json()
    assert (body["type"], body["status"]) == (type_, status)
    assert body["instance"] == response.request.url.path
    return body


def test_every_error_class_over_a_real_socket(server: str) -> None:
    alice, bob, staff = bearer("alice"), bearer("bob"), bearer("sam:staff")
    with httpx.Client(base_url=server, timeout=10) as client:

        def command(name: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
            return client.post(f"/commands/{name}", json=body, headers=headers)

        placed = command("place-order", {"order_id": "o-1", "items": ITEMS_EXAMPLE}, alice)
        assert placed.status_code == 201, placed.text
        assert command("place-order", {"order_id": "o-2", "items": ITEMS_EXAMPLE}, bob).is_success

        # 422: the field path of every invalid input.
        bad_items = [ITEMS_EXAMPLE[0], {"sku": "nope", "quantity": 0, "price_cents": 1}]
        invalid = problem(
            command("place-order", {"order_id": "o-3", "items": bad_items}, alice),
            422,
            "urn:problem:validation",
        )
        assert {e["loc"] for e in invalid["errors"]} == {
            "body.items[1].sku",
            "body.items[1].quantity",
        }

        # 409: a concurrency conflict names both versions.
        noted = command("add-note", {"order_id": "o-1", "text": "ring"}, alice)
        assert noted.status_code == 202, noted.text
        stale = {"order_id": "o-1", "reason": "late", "expected_version": 1}
        conflict = problem(
            command("cancel-order", stale, staff), 409, "urn:problem:concurrency-conflict"
        )
        assert (
            conflict["stream_id"],
            conflict["expected_version"],
            conflict["actual_version"],
        ) == (
            "order-o-1",
            1,
            2,
        )

        # Domain errors: the status and type URI of each class.
        again = {"order_id": "o-1", "items": ITEMS_EXAMPLE}
        problem(
            command("place-order", again, alice), 409, "urn:problem:domain:order_already_placed"
        )
        spam = problem(
            command("add-note", {"order_id": "o-1", "text": "spam!"}, alice),
            400,
            "urn:problem:domain:note_rejected",
        )
        assert spam["word"] == "spam"
        problem(
            command("add-note", {"order_id": "o-9", "text": "hi"}, alice),
            404,
            "urn:problem:domain:order_not_found",
        )
        problem(command("cancel-order", {"order_id": "o-1", "reason": "x"}, alice), 403,
                "urn:problem:forbidden")  # fmt: skip

        # The read side, once it reflects the writes: 404 for an unknown id, and a
        # member sees only their own orders (another's answers like a missing one).
        wait = {**staff, "X-Min-Position": str(noted.json()["position"])}
        missing = problem(
            client.get("/queries/orders/o-404", headers=wait), 404, "urn:problem:not-found"
        )
        assert "o-404" in missing["detail"]
        problem(client.get("/queries/orders/o-2", headers=alice), 404, "urn:problem:not-found")
        mine = client.get("/queries/orders", headers=alice)
        assert [order["order_id"] for order in mine.json()["items"]] == ["o-1"]
        everyone = client.get("/queries/orders", headers=staff)
        assert [order["order_id"] for order in everyone.json()["items"]] == ["o-1", "o-2"]


# The shop app on a port nobody listens on. Its own startup creates indexes, which an
# unreachable database cannot, so this process starts it without that work.
UNREACHABLE_APP = """
import contextlib, os, sys
sys.path.insert(0, sys.argv[1])
import uvicorn
from pymongo import AsyncMongoClient
from _http_app import build_app

mongo = AsyncMongoClient(sys.argv[2], serverSelectionTimeoutMS=300)
app = build_app(mongo["down"])

@contextlib.asynccontextmanager
async def lifespan(app):
    yield
    await mongo.close()

app.router.lifespan_context = lifespan
port = int(os.environ["CQRS_KIT_HTTP_PORT"])
uvicorn.run(app, host="127.0.0.1", port=port, log_level="info", timeout_graceful_shutdown=5)
"""


def test_database_unreachable_over_a_real_socket(tmp_path: Path) -> None:
    down = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    argv = ["-c", UNREACHABLE_APP, str(TESTS), down]
    with (
        uvicorn_process(argv, {}, tmp_path / "uvicorn.log") as base,
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        alice = bearer("alice")
        answers = [
            client.post(
                "/commands/place-order",
                json={"order_id": "o-1", "items": ITEMS_EXAMPLE},
                headers={**alice, "Idempotency-Key": "k-1"},
            ),
            client.get("/queries/orders", headers={**alice, "X-Min-Position": "3"}),
            client.get("/events", headers=alice),
        ]
    for response in answers:
        body = problem(response, 503, "urn:problem:unavailable")
        assert response.headers["retry-after"] == "1"
        assert set(body) == {"type", "title", "status", "detail", "instance"}
        for leak in ("ServerSelection", "pymongo", "127.0.0.1", "Errno", "File "):
            assert leak not in response.text
    # The uvicorn_process exit checks also found no traceback in the server's output.
