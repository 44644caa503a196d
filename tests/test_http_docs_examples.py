"""docs/http.md, run: its Python blocks build the service, and its answers are real.

Every ``python`` block of the page runs, in order, in one module. The service
it defines is then driven through httpx, and every JSON answer the page shows
(``json`` blocks and the bodies of ``HTTP/1.1`` blocks) must be one of the
answers the service actually gave, member for member.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from cqrs_kit import EventStore
from cqrs_kit.fastapi import install_problem_handlers
from cqrs_kit.projections import ProjectionRunner
from cqrs_kit.testing import Backend, free_port

DOC = Path(__file__).resolve().parents[1] / "docs" / "http.md"
ANN = {"Authorization": "Bearer token-ann"}
BOB = {"Authorization": "Bearer token-bob"}
SAM = {"Authorization": "Bearer token-sam"}


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def load_example() -> types.ModuleType:
    """Run every Python block of the page, in order, as one module."""
    module = types.ModuleType("http_docs_example")
    sys.modules[module.__name__] = module  # pydantic and FastAPI look classes up there
    code = "\n\n".join(blocks("python"))
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    return module


example = load_example()


def shown_documents() -> list[dict[str, Any]]:
    """The JSON answers the page shows."""
    shown = [json.loads(block) for block in blocks("json")]
    for block in blocks("http"):
        if block.startswith("HTTP/1.1 "):
            _, _, body = block.partition("\n\n")
            shown.append(json.loads(body))
    return shown


@pytest.fixture(params=["mongomock", "nx-pymongo"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """This module's backends: the in-process mock and the session's nx-27017 server."""
    if request.param == "mongomock":
        return Backend("mongomock", "mongomock", None)
    return Backend("nx-pymongo", "pymongo", request.getfixturevalue("nx_server").uri)


class Recorder:
    """The answers the service gave, to compare with the page."""

    def __init__(self) -> None:
        self.documents: list[dict[str, Any]] = []

    def __call__(self, response: httpx.Response, status: int) -> dict[str, Any]:
        assert response.status_code == status, response.text
        assert "Traceback" not in response.text
        body: dict[str, Any] = response.json()
        if status >= 400:
            assert response.headers["content-type"] == "application/problem+json"
            assert (body["status"], body["instance"]) == (status, response.request.url.path)
        self.documents.append(body)
        return body


@pytest_asyncio.fixture
async def service(mongo_database: Any) -> AsyncIterator[tuple[httpx.AsyncClient, ...]]:
    """The page's two apps on one database (the command app's lifespan run), and a projector."""
    commands = example.command_app(mongo_database)
    queries = example.query_app(mongo_database, max_wait=0.3)
    async with (
        commands.router.lifespan_context(commands),
        httpx.AsyncClient(transport=httpx.ASGITransport(commands), base_url="http://c") as c,
        httpx.AsyncClient(transport=httpx.ASGITransport(queries), base_url="http://q") as q,
    ):
        yield c, q


async def project(database: Any) -> None:
    store = EventStore(database, example.registry)
    await ProjectionRunner(store, [example.RentalsProjection()]).catch_up()


async def test_the_documented_service_answers_as_documented(
    service: tuple[httpx.AsyncClient, httpx.AsyncClient], mongo_database: Any
) -> None:
    c, q = service
    got = Recorder()
    rent = {"rental_id": "r-1", "sku": "DRESS-0042", "price_yen": 12800}
    keyed = {**ANN, "Idempotency-Key": "9f1c7d2e"}

    # Commands: 201 with Location; a retry with the same key answers the first result.
    first = await c.post("/commands/request-rental", json=rent, headers=keyed)
    accepted = got(first, 201)
    assert first.headers["location"] == "/queries/rentals/r-1" == accepted["location"]
    again = got(await c.post("/commands/request-rental", json=rent, headers=keyed), 201)
    assert again == {**accepted, "replayed": True}
    reused = await c.post(
        "/commands/request-rental", json={**rent, "rental_id": "r-9"}, headers=keyed
    )
    assert got(reused, 422)["type"] == "urn:problem:idempotency-key-reused"
    got(await c.post("/commands/request-rental", json=rent, headers=ANN), 409)
    invalid = {"rental_id": "R 1", "sku": "dress", "price_yen": 0, "colour": "red"}
    got(await c.post("/commands/request-rental", json=invalid, headers=ANN), 422)

    # Read-your-writes: lagging while the projection has not run, then the new state.
    lagging = await q.get("/queries/rentals/r-1", headers={**ANN, "X-Min-Position": "1"})
    got(lagging, 503)
    assert lagging.headers["retry-after"] == "1"
    await project(mongo_database)
    fresh = await q.get("/queries/rentals/r-1", headers={**ANN, "X-Min-Position": "1"})
    assert got(fresh, 200)["status"] == "out"
    assert fresh.headers["x-projection-position"] == "1"

    # Domain errors, each with its class's status and type.
    got(await c.post("/commands/return-rental", json={"rental_id": "r-1"}, headers=BOB), 403)
    got(await c.post("/commands/return-rental", json={"rental_id": "r-9"}, headers=ANN), 404)
    bobs = {"rental_id": "r-2", "sku": "SHOES-0007", "price_yen": 5400}
    got(await c.post("/commands/request-rental", json=bobs, headers=BOB), 201)
    stale = {"rental_id": "r-1", "expected_version": 2}
    conflict = got(await c.post("/commands/return-rental", json=stale, headers=ANN), 409)
    assert (conflict["expected_version"], conflict["actual_version"]) == (2, 1)
    current = {"rental_id": "r-1", "expected_version": accepted["version"]}
    returned = got(await c.post("/commands/return-rental", json=current, headers=ANN), 202)
    got(await c.post("/commands/return-rental", json={"rental_id": "r-1"}, headers=ANN), 400)
    bag = {"rental_id": "r-3", "sku": "BAG-0001", "price_yen": 3200}
    got(await c.post("/commands/request-rental", json=bag, headers=ANN), 201)
    after_return = await q.get(
        "/queries/rentals/r-1", params={"min_position": returned["position"]}, headers=ANN
    )
    assert got(after_return, 503)["type"] == "urn:problem:projection-lagging"
    await project(mongo_database)
    assert got(await q.get("/queries/rentals/r-1", headers=ANN), 200)["status"] == "returned"

    # Scoping: bob's rental is "not found" for ann; staff see everything, page by page.
    got(await q.get("/queries/rentals/r-2", headers=ANN), 404)
    mine = got(await q.get("/queries/rentals", headers=ANN), 200)
    assert [item["rental_id"] for item in mine["items"]] == ["r-1", "r-3"]
    page = got(await q.get("/queries/rentals?sort=-price_yen&limit=2", headers=SAM), 200)
    rest = await q.get(
        "/queries/rentals",
        params={"sort": "-price_yen", "limit": 2, "cursor": page["next_cursor"]},
        headers=SAM,
    )
    assert [item["rental_id"] for item in page["items"] + got(rest, 200)["items"]] == [
        "r-1",
        "r-2",
        "r-3",
    ]
    assert rest.json()["next_cursor"] is None
    assert got(await q.get("/queries/rentals"), 401)["type"] == "about:blank"

    # The feed is for staff.
    assert got(await c.get("/events", headers=ANN), 403)["type"] == "urn:problem:forbidden"

    got.documents += await outage_answers()
    got.documents.append(await internal_error_answer())
    for shown in shown_documents():
        assert matches_one(shown, got.documents), f"not answered by the service: {shown}"


def matches_one(shown: dict[str, Any], answers: list[dict[str, Any]]) -> bool:
    """Whether an answer equals ``shown``; an ``error_id`` is random and only has to exist."""
    for answer in answers:
        if "error_id" in shown and set(answer) == set(shown):
            if {**answer, "error_id": None} == {**shown, "error_id": None}:
                return True
        elif answer == shown:
            return True
    return False


async def outage_answers() -> list[dict[str, Any]]:
    """The page's apps on a database nobody listens on: 503 from commands and queries."""
    from pymongo import AsyncMongoClient

    mongo: Any = AsyncMongoClient(
        f"mongodb://127.0.0.1:{free_port()}/?directConnection=true", serverSelectionTimeoutMS=200
    )
    got = Recorder()
    rent = {"rental_id": "r-1", "sku": "DRESS-0042", "price_yen": 12800}
    try:
        database = mongo["down"]
        commands, queries = example.command_app(database), example.query_app(database)
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(commands), base_url="http://c") as c,
            httpx.AsyncClient(transport=httpx.ASGITransport(queries), base_url="http://q") as q,
        ):
            command = got(await c.post("/commands/request-rental", json=rent, headers=ANN), 503)
            query = got(await q.get("/queries/rentals/r-1", headers=ANN), 503)
            feed = got(await c.get("/events", headers=SAM), 503)
    finally:
        await mongo.close()
    for body in (command, query, feed):
        assert body["type"] == "urn:problem:unavailable"
        assert "ServerSelection" not in json.dumps(body)
    return got.documents


async def internal_error_answer() -> dict[str, Any]:
    """What ``install_problem_handlers`` answers for an exception nothing else handles."""
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/commands/request-rental")
    async def broken() -> None:
        raise RuntimeError("secret internals")

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://c") as c:
        response = await c.post("/commands/request-rental")
    assert "secret" not in response.text
    return Recorder()(response, 500)


# -- the feed -------------------------------------------------------------------------------


async def read_sse(app: FastAPI, query: dict[str, Any], until: Callable[[str], bool]) -> str:
    """GET /events at the ASGI level, disconnecting once ``until(received)`` holds."""
    received = ""
    gone = asyncio.Event()
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal received
        if message["type"] == "http.response.start":
            assert message["status"] == 200
        elif message["type"] == "http.response.body":
            received += message.get("body", b"").decode()
            if until(received):
                gone.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/events",
        "raw_path": b"/events",
        "query_string": urlencode(query, doseq=True).encode(),
        "root_path": "",
        "headers": [(b"host", b"c"), (b"authorization", SAM["Authorization"].encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("c", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), 10)
    return received


async def test_the_documented_feed_message(mongo_database: Any) -> None:
    app = example.command_app(mongo_database)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://c") as c,
    ):
        rent = {"rental_id": "r-1", "sku": "DRESS-0042", "price_yen": 12800}
        assert (await c.post("/commands/request-rental", json=rent, headers=ANN)).status_code == 201
        received = await read_sse(app, {}, lambda text: "\n\nid: 1\ndata: " in text)
    [shown] = blocks("text")
    assert received.startswith("retry: 2000\n\nid: 1\ndata: ")
    shown_event, event = first_data(shown), first_data(received)
    assert list(event) == list(shown_event)
    volatile = {"id", "time"}
    assert {k: v for k, v in event.items() if k not in volatile} == {
        k: v for k, v in shown_event.items() if k not in volatile
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00", event["time"])


def first_data(stream: str) -> dict[str, Any]:
    """The JSON of the first ``data:`` line of an event stream."""
    found = re.search(r"^data: (.*)$", stream, flags=re.M)
    assert found is not None, stream
    event: dict[str, Any] = json.loads(found.group(1))
    return event
