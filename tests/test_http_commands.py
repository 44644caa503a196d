"""The command router and the problem documents, through httpx against the ASGI app."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from _http_app import (
    AddNote,
    CancelOrder,
    Order,
    PlaceOrder,
    Shop,
    authenticate,
    bearer,
    build_app,
)
from cqrs_kit import Command, CommandBus, EventRegistry, EventStore, UsageError
from cqrs_kit.fastapi import (
    CommandEndpoint,
    command_router,
    install_problem_handlers,
)
from cqrs_kit.testing import Backend, free_port

PROBLEM = "application/problem+json"
ITEMS = [{"sku": "ABC-123", "quantity": 2, "price_cents": 950}]


@pytest.fixture(params=["mongomock", "nx-pymongo"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """This module's backends: the in-process mock and the session's nx-27017 server."""
    if request.param == "mongomock":
        return Backend("mongomock", "mongomock", None)
    return Backend("nx-pymongo", "pymongo", request.getfixturevalue("nx_server").uri)


@pytest_asyncio.fixture
async def app(mongo_database: Any) -> FastAPI:
    app = build_app(mongo_database, max_wait=0.3)
    await app.state.shop.store.ensure_indexes()
    return app


@pytest_asyncio.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        yield client


def shop(app: FastAPI) -> Shop:
    found: Shop = app.state.shop
    return found


async def place(client: httpx.AsyncClient, order_id: str, user: str = "alice") -> httpx.Response:
    return await client.post(
        "/commands/place-order", json={"order_id": order_id, "items": ITEMS}, headers=bearer(user)
    )


def assert_problem(response: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"] == type_
    assert body["title"]
    assert body["instance"] == response.request.url.path
    assert "Traceback" not in response.text
    return body


# -- success -----------------------------------------------------------------------------------


async def test_creating_command_answers_201_with_location(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    response = await place(client, "o-1")
    assert response.status_code == 201
    body = response.json()
    assert body["stream_id"] == "order-o-1"
    assert (body["version"], body["position"], body["replayed"]) == (1, 1, False)
    assert response.headers["location"] == "/queries/orders/o-1" == body["location"]
    recorded = [r async for r in shop(app).store.read_stream("order-o-1")]
    assert [r.event_type for r in recorded] == ["shop.OrderPlaced"]
    assert str(recorded[0].metadata.causation_id) == body["command_id"]


async def test_follow_up_command_answers_202(client: httpx.AsyncClient) -> None:
    await place(client, "o-1")
    response = await client.post(
        "/commands/add-note", json={"order_id": "o-1", "text": "ring twice"}, headers=bearer("al")
    )
    assert response.status_code == 202
    assert (response.json()["version"], response.json()["position"]) == (2, 2)


async def test_principal_and_correlation_id_reach_event_metadata(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    response = await client.post(
        "/commands/place-order",
        json={"order_id": "o-9", "items": ITEMS},
        headers={**bearer("carol"), "X-Correlation-ID": "checkout-77"},
    )
    assert response.status_code == 201
    [recorded] = [r async for r in shop(app).store.read_stream("order-o-9")]
    assert recorded.metadata.principal == "carol"
    assert recorded.metadata.correlation_id == "checkout-77"
    # The handler used the principal as the customer: it flows into the command too.
    assert recorded.event.customer == "carol"  # type: ignore[attr-defined]


async def test_idempotency_key_applies_once_and_replays(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    headers = {**bearer("alice"), "Idempotency-Key": "key-1"}
    payload = {"order_id": "o-2", "items": ITEMS}
    first = await client.post("/commands/place-order", json=payload, headers=headers)
    again = await client.post("/commands/place-order", json=payload, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == {**first.json(), "replayed": True}
    assert len([r async for r in shop(app).store.read_all()]) == 1

    # Without a key, the same request is a new command (and the domain refuses it).
    response = await client.post("/commands/place-order", json=payload, headers=bearer("alice"))
    assert_problem(response, 409, "urn:problem:domain:order_already_placed")

    # The same key from another principal is another command.
    other = await client.post(
        "/commands/place-order",
        json={"order_id": "o-3", "items": ITEMS},
        headers={**bearer("bob"), "Idempotency-Key": "key-1"},
    )
    assert other.status_code == 201
    assert other.json()["command_id"] != first.json()["command_id"]


async def test_idempotency_key_reused_for_another_request_is_refused(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    headers = {**bearer("alice"), "Idempotency-Key": "key-2"}
    await client.post(
        "/commands/place-order", json={"order_id": "o-4", "items": ITEMS}, headers=headers
    )
    response = await client.post(
        "/commands/place-order", json={"order_id": "o-5", "items": ITEMS}, headers=headers
    )
    assert_problem(response, 422, "urn:problem:idempotency-key-reused")
    assert [r.stream_id async for r in shop(app).store.read_all()] == ["order-o-4"]


# -- errors ------------------------------------------------------------------------------------


async def test_validation_problem_names_the_field_path(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    response = await client.post(
        "/commands/place-order",
        json={
            "order_id": "o-1",
            "items": [ITEMS[0], {"sku": "nope", "quantity": 0, "price_cents": 1}],
        },
        headers=bearer("alice"),
    )
    body = assert_problem(response, 422, "urn:problem:validation")
    locs = {e["loc"] for e in body["errors"]}
    assert locs == {"body.items[1].sku", "body.items[1].quantity"}
    assert all(e["msg"] and e["type"] for e in body["errors"])
    assert "body.items[1]" in body["detail"]
    assert await shop(app).store.head_position() == 0  # nothing written

    missing = await client.post("/commands/place-order", json={}, headers=bearer("alice"))
    assert {e["loc"] for e in assert_problem(missing, 422, "urn:problem:validation")["errors"]} == {
        "body.order_id",
        "body.items",
    }
    broken = await client.post(
        "/commands/place-order",
        content=b"{not json",
        headers={**bearer("alice"), "content-type": "application/json"},
    )
    assert assert_problem(broken, 422, "urn:problem:validation")["errors"][0]["loc"].startswith(
        "body"
    )
    # Server-owned fields cannot be smuggled in through the body.
    spoofed = await client.post(
        "/commands/place-order",
        json={"order_id": "o-1", "items": ITEMS, "metadata": {"principal": "root"}},
        headers=bearer("alice"),
    )
    assert {e["loc"] for e in assert_problem(spoofed, 422, "urn:problem:validation")["errors"]} == {
        "body.metadata"
    }
    header = await client.post(
        "/commands/place-order",
        json={"order_id": "o-1", "items": ITEMS},
        headers={**bearer("alice"), "Idempotency-Key": "k" * 300},
    )
    assert assert_problem(header, 422, "urn:problem:validation")["errors"][0]["loc"] == (
        "header.Idempotency-Key"
    )


async def test_concurrency_conflict_is_409_with_versions(client: httpx.AsyncClient) -> None:
    await place(client, "o-1")
    await client.post(
        "/commands/add-note", json={"order_id": "o-1", "text": "a"}, headers=bearer("alice")
    )
    response = await client.post(
        "/commands/cancel-order",
        json={"order_id": "o-1", "reason": "changed my mind", "expected_version": 1},
        headers=bearer("sam:staff"),
    )
    body = assert_problem(response, 409, "urn:problem:concurrency-conflict")
    assert (body["stream_id"], body["expected_version"], body["actual_version"]) == (
        "order-o-1",
        1,
        2,
    )


async def test_domain_errors_use_their_status_and_type(client: httpx.AsyncClient) -> None:
    await place(client, "o-1")
    spam = await client.post(
        "/commands/add-note", json={"order_id": "o-1", "text": "Buy SPAM"}, headers=bearer("a")
    )
    body = assert_problem(spam, 400, "urn:problem:domain:note_rejected")
    assert body["title"] == "Note rejected"
    assert body["detail"] == "notes must not contain 'spam'"
    assert (body["order_id"], body["word"]) == ("o-1", "spam")

    again = await place(client, "o-1")
    assert_problem(again, 409, "urn:problem:domain:order_already_placed")
    missing = await client.post(
        "/commands/add-note", json={"order_id": "o-404", "text": "hi"}, headers=bearer("a")
    )
    assert_problem(missing, 404, "urn:problem:domain:order_not_found")


async def test_authentication_and_roles(client: httpx.AsyncClient, app: FastAPI) -> None:
    anonymous = await client.post("/commands/place-order", json={"order_id": "o-1", "items": []})
    body = assert_problem(anonymous, 401, "about:blank")
    assert body["title"] == "Unauthorized"
    assert anonymous.headers["www-authenticate"] == "Bearer"
    await place(client, "o-1")
    customer = await client.post(
        "/commands/cancel-order", json={"order_id": "o-1", "reason": "x"}, headers=bearer("alice")
    )
    assert_problem(customer, 403, "urn:problem:forbidden")
    staff = await client.post(
        "/commands/cancel-order", json={"order_id": "o-1", "reason": "x"}, headers=bearer("s:staff")
    )
    assert staff.status_code == 202
    [_, cancelled] = [r async for r in shop(app).store.read_stream("order-o-1")]
    assert cancelled.metadata.principal == "s"


async def test_unknown_route_is_a_problem_too(client: httpx.AsyncClient) -> None:
    response = await client.post("/commands/launch-rocket", json={})
    assert_problem(response, 404, "about:blank")


async def test_database_unreachable_is_503() -> None:
    from pymongo import AsyncMongoClient

    mongo: Any = AsyncMongoClient(
        f"mongodb://127.0.0.1:{free_port()}/?directConnection=true", serverSelectionTimeoutMS=200
    )
    try:
        app = build_app(mongo["down"])
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://shop"
        ) as client:
            command = await place(client, "o-1")
            query = await client.get("/queries/orders/o-1", headers=bearer("alice"))
            feed = await client.get("/events", headers=bearer("alice"))
    finally:
        await mongo.close()
    for response in (command, query, feed):
        body = assert_problem(response, 503, "urn:problem:unavailable")
        assert response.headers["retry-after"] == "1"
        assert "ServerSelectionTimeout" not in body.get("detail", "")


class Boom(Command):
    """A command whose handler fails unexpectedly."""

    order_id: str


async def test_unexpected_error_is_a_generic_500_and_logged(
    mongo_database: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = EventStore(mongo_database, EventRegistry())
    bus = CommandBus(store)

    @bus.handles(Boom, aggregate=Order, aggregate_id=lambda c: c.order_id)
    def explode(command: Boom, order: Order) -> None:
        raise RuntimeError("secret internals")

    app = FastAPI()
    install_problem_handlers(app, type_base="https://errors.example.com/problems/")
    app.include_router(command_router(bus))
    with caplog.at_level(logging.ERROR, logger="cqrs_kit.fastapi"):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://shop"
        ) as client:
            response = await client.post("/boom", json={"order_id": "x"})
    body = assert_problem(response, 500, "https://errors.example.com/problems/internal-error")
    assert "secret" not in response.text
    [record] = [r for r in caplog.records if body["error_id"] in r.getMessage()]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


# -- building routers --------------------------------------------------------------------------


async def test_openapi_declares_bodies_examples_and_problem_responses(app: FastAPI) -> None:
    spec = app.openapi()
    operation = spec["paths"]["/commands/place-order"]["post"]
    body_schema = spec["components"]["schemas"]["PlaceOrder"]
    assert set(body_schema["properties"]) == {"order_id", "items"}
    assert body_schema["examples"][0]["order_id"] == "o-1"
    assert {"Idempotency-Key", "X-Correlation-ID"} <= {p["name"] for p in operation["parameters"]}
    responses = operation["responses"]
    assert {"201", "202", "400", "401", "403", "409", "422", "500", "503"} <= set(responses)
    for status in ("409", "422", "503"):
        assert set(responses[status]["content"]) == {PROBLEM}
    assert responses["422"]["content"][PROBLEM]["schema"]["$ref"].endswith("ValidationProblem")
    note = spec["paths"]["/commands/add-note"]["post"]
    assert note["requestBody"]["content"]["application/json"]["examples"]["example"]["value"] == {
        "order_id": "o-1",
        "text": "leave at the door",
    }
    assert "404" in note["responses"]  # from errors=(OrderNotFound, ...)


def test_router_refuses_misconfiguration(mongo_database: Any) -> None:
    bus = Shop(mongo_database).bus

    class Unhandled(Command):
        x: int

    with pytest.raises(UsageError, match="no handler"):
        command_router(bus, [Unhandled])
    with pytest.raises(UsageError, match="both be served"):
        command_router(bus, [PlaceOrder, CommandEndpoint(AddNote, path="/place-order")])
    with pytest.raises(UsageError, match="customer_id"):
        command_router(bus, [PlaceOrder], location="/orders/{customer_id}")
    with pytest.raises(UsageError, match="need an authentication"):
        command_router(bus, [CommandEndpoint(CancelOrder, roles={"staff"})])
    router = command_router(bus, auth=authenticate)
    assert sorted(route.path for route in router.routes) == [  # type: ignore[attr-defined]
        "/add-note",
        "/cancel-order",
        "/place-order",
    ]


def test_core_does_not_import_fastapi_and_extra_explains_itself() -> None:
    core = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, cqrs_kit, cqrs_kit.projections, cqrs_kit.subscriptions, cqrs_kit.cli;"
            "assert 'fastapi' not in sys.modules, 'core imported fastapi'",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert core.returncode == 0, core.stderr
    missing = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['fastapi'] = None; import cqrs_kit.fastapi",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode != 0
    assert "pip install 'cqrs-kit[fastapi]'" in missing.stderr


def test_idempotency_key_is_scoped_by_command_type_and_principal() -> None:
    from cqrs_kit.fastapi import Principal
    from cqrs_kit.fastapi.commands import command_id_for

    alice = Principal("alice")
    ids = {
        command_id_for("k", PlaceOrder, alice),
        command_id_for("k", AddNote, alice),
        command_id_for("k", PlaceOrder, Principal("bob")),
        command_id_for("k", PlaceOrder, None),
    }
    assert len(ids) == 4
    assert command_id_for("k", PlaceOrder, alice) == command_id_for("k", PlaceOrder, alice)
    assert isinstance(command_id_for("k", PlaceOrder, alice), uuid.UUID)
