"""The app under a real uvicorn process on loopback, against the session's nx-27017 server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from _http_app import ITEMS_EXAMPLE, bearer
from cqrs_kit.testing import EmbeddedServer, free_port

TESTS = Path(__file__).parent


@pytest.fixture
def server(nx_server: EmbeddedServer, tmp_path: Path) -> Iterator[str]:
    """``uvicorn _http_app:create_app`` in a child process; yields its base URL."""
    port = free_port()
    log = tmp_path / "uvicorn.log"
    env = {
        **os.environ,
        "CQRS_KIT_HTTP_MONGODB_URI": nx_server.uri,
        "CQRS_KIT_HTTP_DATABASE": f"http_{uuid.uuid4().hex[:10]}",
        "CQRS_KIT_HTTP_HEARTBEAT": "0.5",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", "--factory", "_http_app:create_app",
                "--app-dir", str(TESTS), "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "info", "--timeout-graceful-shutdown", "5",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
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
