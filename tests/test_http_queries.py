"""The query router: lookups, listings, cursor pagination, scoping, read-your-writes."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from _http_app import ITEMS_EXAMPLE, Shop, bearer, build_app
from cqrs_kit import UsageError
from cqrs_kit.fastapi import Filter, ReadModelSpec, query_router
from cqrs_kit.fastapi.queries import decode_cursor, encode_cursor
from cqrs_kit.testing import Backend

PROBLEM = "application/problem+json"
STAFF = bearer("sam:staff")


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


async def place(client: httpx.AsyncClient, order_id: str, user: str, quantity: int = 1) -> int:
    items = [{**ITEMS_EXAMPLE[0], "quantity": quantity}]
    response = await client.post(
        "/commands/place-order", json={"order_id": order_id, "items": items}, headers=bearer(user)
    )
    assert response.status_code == 201, response.text
    position: int = response.json()["position"]
    return position


@contextlib.asynccontextmanager
async def projections_running(app: FastAPI) -> AsyncIterator[None]:
    """The orders projection, running in the background as it would in production."""
    stop = asyncio.Event()
    task = asyncio.create_task(shop(app).runner(poll_interval=0.05).run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


# -- lookups and listings ----------------------------------------------------------------------


async def test_get_and_list_with_filters_and_sorting(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await place(client, "o-1", "alice", quantity=3)
    await place(client, "o-2", "bob", quantity=1)
    await place(client, "o-3", "alice", quantity=2)
    await shop(app).runner().catch_up()

    one = await client.get("/queries/orders/o-1", headers=STAFF)
    assert one.status_code == 200
    assert one.json() == {
        "order_id": "o-1",
        "customer": "alice",
        "status": "placed",
        "total": 28.5,
        "lines": 1,
        "notes": 0,
    }
    assert one.headers["x-projection-position"] == "3"

    async def ids(**params: Any) -> list[str]:
        response = await client.get("/queries/orders", params=params, headers=STAFF)
        assert response.status_code == 200, response.text
        assert response.headers["x-projection-position"] == "3"
        return [item["order_id"] for item in response.json()["items"]]

    assert await ids() == ["o-1", "o-2", "o-3"]
    assert await ids(sort="-order_id") == ["o-3", "o-2", "o-1"]
    assert await ids(sort="-total") == ["o-1", "o-3", "o-2"]
    assert await ids(customer="alice") == ["o-1", "o-3"]
    assert await ids(min_total=19) == ["o-1", "o-3"]
    assert await ids(status="cancelled") == []
    assert await ids(status="placed", customer="bob") == ["o-2"]


async def test_unknown_id_is_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/queries/orders/o-404", headers=STAFF)
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["type"] == "urn:problem:not-found"
    assert body["instance"] == "/queries/orders/o-404"
    assert "o-404" in body["detail"]


async def test_bad_query_parameters_are_422_with_location(client: httpx.AsyncClient) -> None:
    cases = {
        "/queries/orders?limit=0": "query.limit",
        "/queries/orders?limit=51": "query.limit",
        "/queries/orders?sort=secret": "query.sort",
        "/queries/orders?status=lost": "query.status",
        "/queries/orders?min_total=lots": "query.min_total",
        "/queries/orders?cursor=%%%": "query.cursor",
        "/queries/orders?min_position=-1": "query.min_position",
        "/queries/orders?custmer=alice": "query.custmer",
        "/queries/orders/o-1?status=placed": "query.status",
    }
    for url, loc in cases.items():
        response = await client.get(url, headers=STAFF)
        assert response.status_code == 422, url
        assert response.headers["content-type"] == PROBLEM
        assert [e["loc"] for e in response.json()["errors"]] == [loc], url
    header = await client.get("/queries/orders", headers={**STAFF, "X-Min-Position": "soon"})
    assert [e["loc"] for e in header.json()["errors"]] == ["header.X-Min-Position"]


async def test_cursor_for_another_sort_is_refused(client: httpx.AsyncClient, app: FastAPI) -> None:
    for n in range(3):
        await place(client, f"o-{n}", "alice")
    await shop(app).runner().catch_up()
    first = await client.get("/queries/orders", params={"limit": 1, "sort": "total"}, headers=STAFF)
    cursor = first.json()["next_cursor"]
    assert cursor is not None
    response = await client.get(
        "/queries/orders", params={"cursor": cursor, "sort": "-total"}, headers=STAFF
    )
    assert response.status_code == 422
    assert "sort='total'" in response.json()["errors"][0]["msg"]


def test_cursor_round_trips_typed_values() -> None:
    import uuid
    from datetime import UTC, datetime
    from decimal import Decimal

    for value in [None, True, 3, 2.5, "x", datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)]:
        for id_ in ["a", 7, uuid.uuid4(), Decimal("1.10")]:
            cursor = encode_cursor("-f", value, id_)
            assert "=" not in cursor
            assert decode_cursor(cursor, "-f") == (value, id_)
    with pytest.raises(UsageError, match="cannot page"):
        encode_cursor("f", object(), "a")
    for bad in ["", "!!", "e30", encode_cursor("g", 1, "a")]:
        with pytest.raises(ValueError, match="cursor"):
            decode_cursor(bad, "f")


# -- pagination under concurrent inserts -----------------------------------------------------


@pytest.mark.parametrize("sort", ["price", "-price", "sku", "-name"])
async def test_cursor_pagination_is_stable_under_concurrent_inserts(
    client: httpx.AsyncClient, mongo_database: Any, sort: str
) -> None:
    rng = random.Random(sort)
    products = mongo_database["products"]
    made = 0

    def product() -> dict[str, Any]:
        nonlocal made
        made += 1
        doc: dict[str, Any] = {
            "_id": f"S{rng.randrange(10**6):06d}-{made}",
            "name": rng.choice(["hammer", "saw", "drill", "glue"]),
            "category": rng.choice(["tools", "toys", "food"]),
            "_position": made,
        }
        if made % 9:  # some products have no price: null sorts first in MongoDB
            doc["price"] = float(rng.randrange(8))  # few values, many ties
        return doc

    await products.insert_many([product() for _ in range(40)])
    field = {"price": "price", "sku": "_id", "name": "name"}[sort.lstrip("-")]
    descending = sort.startswith("-")

    def key(doc: dict[str, Any]) -> tuple[Any, ...]:
        value = doc.get(field)
        # MongoDB order: null/missing first, then numbers or strings; ties by _id.
        return (value is not None, value if value is not None else 0, doc["_id"])

    before = {doc["_id"]: doc async for doc in products.find({})}
    seen: list[str] = []
    inserted_after_cursor: set[str] = set()
    cursor = None
    last: tuple[Any, ...] | None = None
    pages = 0
    while pages < 100:
        params = {"sort": sort, "limit": 7, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/queries/products", params=params, headers=STAFF)
        assert response.status_code == 200, response.text
        page = response.json()
        seen += [item["sku"] for item in page["items"]]
        for item in page["items"]:
            current = key({**item, "_id": item["sku"]} if field != "_id" else {"_id": item["sku"]})
            if last is not None:
                assert (current < last) if descending else (current > last), "order broken"
            last = current
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # Insert between page fetches, on both sides of the cursor.
        fresh = [product() for _ in range(3)]
        await products.insert_many(fresh)
        for doc in fresh:
            if last is not None and ((key(doc) < last) if descending else (key(doc) > last)):
                inserted_after_cursor.add(doc["_id"])
    assert pages > 5
    assert len(seen) == len(set(seen)), "a document was listed twice"
    assert set(before) <= set(seen), "a document present from the start was skipped"
    assert inserted_after_cursor <= set(seen), "a document inserted after the cursor was skipped"


async def test_pages_cross_missing_sort_values(
    client: httpx.AsyncClient, mongo_database: Any
) -> None:
    docs = [
        {"_id": "a", "name": "saw", "category": "tools", "price": 2.0},
        {"_id": "b", "name": "saw", "category": "tools", "price": 1.0},
        {"_id": "c", "name": "saw", "category": "tools"},
        {"_id": "d", "name": "saw", "category": "tools", "price": None},
        {"_id": "e", "name": "saw", "category": "tools", "price": 1.0},
    ]
    await mongo_database["products"].insert_many(docs)
    expected = {"price": ["c", "d", "b", "e", "a"], "-price": ["a", "e", "b", "d", "c"]}
    for sort, order in expected.items():
        for limit in (1, 2, 3):
            seen: list[str] = []
            cursor = None
            for _ in range(len(docs) + 1):
                params = {"sort": sort, "limit": limit, **({"cursor": cursor} if cursor else {})}
                page = (await client.get("/queries/products", params=params, headers=STAFF)).json()
                seen += [item["sku"] for item in page["items"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert seen == order, (sort, limit)


# -- scoping -------------------------------------------------------------------------------------


async def test_scoped_queries_show_only_the_principals_documents(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await place(client, "o-a", "alice")
    await place(client, "o-b", "bob")
    await shop(app).runner().catch_up()

    mine = await client.get("/queries/orders", headers=bearer("alice"))
    assert [i["order_id"] for i in mine.json()["items"]] == ["o-a"]
    # Filters cannot widen the scope.
    theirs = await client.get(
        "/queries/orders", params={"customer": "bob"}, headers=bearer("alice")
    )
    assert theirs.json()["items"] == []
    # Someone else's document answers exactly like a missing one.
    other = await client.get("/queries/orders/o-b", headers=bearer("alice"))
    missing = await client.get("/queries/orders/o-x", headers=bearer("alice"))
    assert other.status_code == missing.status_code == 404
    assert other.json()["type"] == missing.json()["type"] == "urn:problem:not-found"
    assert (await client.get("/queries/orders/o-a", headers=bearer("alice"))).status_code == 200
    staff = await client.get("/queries/orders", headers=STAFF)
    assert [i["order_id"] for i in staff.json()["items"]] == ["o-a", "o-b"]
    anonymous = await client.get("/queries/orders")
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == PROBLEM


# -- read-your-writes ----------------------------------------------------------------------------


async def test_read_your_writes_with_a_background_projection(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    async with projections_running(app):
        await place(client, "o-1", "alice")
        for n in range(1, 6):
            response = await client.post(
                "/commands/add-note",
                json={"order_id": "o-1", "text": f"note {n}"},
                headers=bearer("alice"),
            )
            position = response.json()["position"]
            # Each query sees its own write: it waits for the projection when it must.
            read = await client.get(
                "/queries/orders/o-1", headers={**bearer("alice"), "X-Min-Position": str(position)}
            )
            assert read.status_code == 200, read.text
            assert read.json()["notes"] == n
            assert int(read.headers["x-projection-position"]) >= position
            listed = await client.get(
                "/queries/orders", params={"min_position": position}, headers=bearer("alice")
            )
            assert listed.json()["items"][0]["notes"] == n


async def test_read_your_writes_times_out_with_503_and_current_position(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    position = await place(client, "o-1", "alice")
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await client.get(
        "/queries/orders/o-1", headers={**bearer("alice"), "X-Min-Position": str(position)}
    )
    waited = loop.time() - started
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["retry-after"] == "1"
    body = response.json()
    assert body["type"] == "urn:problem:projection-lagging"
    assert (body["projection"], body["position"], body["min_position"]) == ("orders", 0, position)
    assert 0.3 <= waited < 2.0  # bounded by max_wait
    # Without a minimum the query answers at once, telling how far the model is.
    now = await client.get("/queries/orders/o-1", headers=bearer("alice"))
    assert now.status_code == 404
    assert now.headers["x-projection-position"] == "0"

    # A projection that catches up while the query waits releases it.
    async def late_projection() -> None:
        await asyncio.sleep(0.1)
        await shop(app).runner().catch_up()

    catching_up = asyncio.create_task(late_projection())
    waited_for = await client.get(
        "/queries/orders/o-1", params={"min_position": position}, headers=bearer("alice")
    )
    await catching_up
    assert waited_for.status_code == 200
    assert waited_for.json()["order_id"] == "o-1"


async def test_checkpoint_doorbell_releases_waiting_queries(
    mongo_database: Any, backend: Backend
) -> None:
    if not backend.has_server:
        pytest.skip("mongomock has no change streams; waiting queries poll there")
    # Polls far apart: only the change stream on the checkpoints can answer in time.
    app = build_app(mongo_database, max_wait=5, query_poll=10)
    await shop(app).store.ensure_indexes()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://shop"
    ) as client:
        position = await place(client, "o-1", "alice")
        loop = asyncio.get_running_loop()
        query = asyncio.create_task(
            client.get("/queries/orders/o-1", params={"min_position": position}, headers=STAFF)
        )
        # The waiting query re-reads after 5, 10, 20, ... ms: at 1.4 s its next read
        # is more than a second away, so a prompt answer can only come from the bell.
        await asyncio.sleep(1.4)
        await shop(app).runner().catch_up()
        caught_up = loop.time()
        response = await query
    assert response.status_code == 200
    assert loop.time() - caught_up < 0.5


async def test_plain_collection_without_checkpoint_has_no_position(
    client: httpx.AsyncClient, mongo_database: Any
) -> None:
    await mongo_database["products"].insert_one(
        {"_id": "S1", "name": "saw", "price": 5.0, "category": "tools"}
    )
    response = await client.get("/queries/products/S1", headers=STAFF)
    assert response.status_code == 200
    assert response.json() == {"sku": "S1", "name": "saw", "price": 5.0, "category": "tools"}
    assert "x-projection-position" not in response.headers
    listed = await client.get(
        "/queries/products", params={"category": ["toys", "tools"], "name": "sa"}, headers=STAFF
    )
    assert [i["sku"] for i in listed.json()["items"]] == ["S1"]


def test_declarations_are_checked(mongo_database: Any) -> None:
    from _http_app import ORDERS, OrderView

    def spec(**changes: Any) -> ReadModelSpec:
        fields = {"name": "orders", "model": OrderView, "projection": "orders"}
        fields.update(id_field="order_id")
        fields.update(changes)
        return ReadModelSpec(**fields)

    for changes, message in [
        ({"name": "no way"}, "name"),
        ({"collection": "x"}, "exactly one"),
        ({"id_field": "id"}, "id_field"),
        ({"sortable": ["nope"]}, "sortable"),
        ({"default_sort": "-nope"}, "default_sort"),
        ({"filters": {"sort": Filter()}}, "clashes"),
        ({"filters": {"x": Filter(op="like")}}, "unknown op"),  # type: ignore[arg-type]
        ({"max_page_size": 5, "default_page_size": 10}, "page_size"),
    ]:
        with pytest.raises(UsageError, match=message):
            spec(**changes)
    with pytest.raises(UsageError, match="needs the principal"):
        query_router(mongo_database, [ORDERS])
    with pytest.raises(UsageError, match="share a name"):
        query_router(mongo_database, [spec(), spec()])


async def test_openapi_declares_pages_and_position_header(app: FastAPI) -> None:
    schema = app.openapi()
    listing = schema["paths"]["/queries/orders"]["get"]
    ok = listing["responses"]["200"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith("Page_OrderView_")
    assert "X-Projection-Position" in ok["headers"]
    page = schema["components"]["schemas"]["Page_OrderView_"]
    assert set(page["properties"]) == {"items", "next_cursor"}
    params = {p["name"]: p for p in listing["parameters"]}
    assert {"status", "customer", "min_total", "sort", "limit", "cursor", "min_position"} <= set(
        params
    )
    assert "X-Min-Position" in params
    assert params["sort"]["schema"]["enum"] == [
        "order_id",
        "-order_id",
        "total",
        "-total",
        "customer",
        "-customer",
    ]
    assert set(listing["responses"]["503"]["content"]) == {PROBLEM}
    products = schema["paths"]["/queries/products/{sku}"]["get"]
    assert "min_position" not in {p["name"] for p in products["parameters"]}
