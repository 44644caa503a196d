"""The Server-Sent Events feed, driven at the ASGI level.

httpx's ASGITransport collects a whole response before returning it, which an
endless stream never finishes, so these tests speak ASGI directly: they read
the body as it is sent and, when they have what they want, report the client
as gone, and check that the app then returns promptly. The uvicorn test reads
the same feed over a real socket.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest
import pytest_asyncio
from fastapi import FastAPI

from _http_app import NoteAdded, OrderLine, OrderPlaced, Shop, bearer, build_app
from cqrs_kit.testing import Backend


@pytest.fixture(params=["mongomock", "nx-pymongo"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """This module's backends: the in-process mock and the session's nx-27017 server."""
    if request.param == "mongomock":
        return Backend("mongomock", "mongomock", None)
    return Backend("nx-pymongo", "pymongo", request.getfixturevalue("nx_server").uri)


@pytest_asyncio.fixture
async def app(mongo_database: Any) -> FastAPI:
    # A short poll keeps the mongomock (no change stream) runs quick; nx rings the doorbell.
    app = build_app(mongo_database, heartbeat=0.3, feed_poll=0.05)
    await app.state.shop.store.ensure_indexes()
    return app


def shop(app: FastAPI) -> Shop:
    found: Shop = app.state.shop
    return found


def placed(customer: str = "alice") -> OrderPlaced:
    line = OrderLine(sku="ABC-123", quantity=1, price_cents=100)
    return OrderPlaced(customer=customer, lines=[line], total=Decimal("1.00"))


@dataclass
class SseReader:
    """One SSE request against an ASGI app, read as it streams."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    buffer: str = ""
    messages: list[dict[str, str]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    body: bytes = b""

    def feed(self, chunk: str) -> None:
        self.buffer += chunk
        while "\n\n" in self.buffer:
            block, self.buffer = self.buffer.split("\n\n", 1)
            message: dict[str, str] = {}
            for line in block.split("\n"):
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line:
                    name, _, value = line.partition(":")
                    message[name] = value.removeprefix(" ")
            if "data" in message:
                self.messages.append(message)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(m["data"]) for m in self.messages]


async def read_feed(
    app: FastAPI,
    *,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    until: Any = None,
    while_open: Any = None,
    deadline: float = 5.0,
) -> SseReader:
    """GET /events; disconnect once ``until(reader)`` holds; the app must then return."""
    reader = SseReader()
    gone = asyncio.Event()
    body_sent = False
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/events",
        "raw_path": b"/events",
        "query_string": urlencode(params or {}, doseq=True).encode(),
        "root_path": "",
        "headers": [(b"host", b"shop"), *raw_headers],
        "client": ("127.0.0.1", 50000),
        "server": ("shop", 80),
    }

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            reader.status = message["status"]
            reader.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            reader.body += chunk
            reader.feed(chunk.decode())
            if until is not None and until(reader):
                gone.set()

    task = asyncio.create_task(app(scope, receive, send))
    if while_open is not None:
        await while_open()
    done, _ = await asyncio.wait({task}, timeout=deadline)
    if not done:
        gone.set()  # give up waiting: disconnect, then fail below
        await asyncio.wait_for(task, 5)
        pytest.fail(f"the feed did not deliver in {deadline}s: {reader.messages}")
    task.result()
    return reader


async def test_feed_delivers_stored_and_live_events(app: FastAPI) -> None:
    store = shop(app).store
    await store.append("order-o-1", [placed()])
    await store.append("order-o-1", [NoteAdded(text="hello\nworld")])

    stored_seen = asyncio.Event()

    def until(reader: SseReader) -> bool:
        if len(reader.messages) >= 2:
            stored_seen.set()
        return len(reader.messages) >= 4

    async def append_while_streaming() -> None:
        # Only once the stored events have arrived: these two must come live.
        await asyncio.wait_for(stored_seen.wait(), 5)
        await store.append("order-o-2", [placed("bob"), NoteAdded(text="live")])

    reader = await read_feed(
        app, headers=bearer("alice"), until=until, while_open=append_while_streaming
    )
    assert reader.status == 200
    assert reader.headers["content-type"].startswith("text/event-stream")
    assert reader.headers["cache-control"] == "no-cache"
    assert reader.body.startswith(b"retry: 2000\n\n")
    assert [m["id"] for m in reader.messages] == ["1", "2", "3", "4"]
    events = reader.events
    assert [e["type"] for e in events] == [
        "shop.OrderPlaced",
        "shop.NoteAdded",
        "shop.OrderPlaced",
        "shop.NoteAdded",
    ]
    assert events[1]["data"] == {"text": "hello\nworld"}
    assert (events[2]["stream_id"], events[2]["version"], events[2]["position"]) == (
        "order-o-2",
        1,
        3,
    )
    assert "metadata" not in events[0]


async def test_change_stream_doorbell_wakes_the_feed(mongo_database: Any, backend: Backend) -> None:
    if not backend.has_server:
        pytest.skip("mongomock has no change streams; the feed polls there")
    # A poll interval far above the timeout: only the doorbell can deliver in time.
    app = build_app(mongo_database, heartbeat=60, feed_poll=30)
    store = shop(app).store
    await store.ensure_indexes()
    opened = asyncio.Event()

    def until(reader: SseReader) -> bool:
        opened.set()  # the retry line has been sent: the feed is waiting
        return len(reader.messages) >= 1

    async def append_later() -> None:
        await asyncio.wait_for(opened.wait(), 5)
        await store.append("order-o-1", [placed()])

    reader = await read_feed(
        app, headers=bearer("alice"), until=until, while_open=append_later, deadline=3
    )
    assert [m["id"] for m in reader.messages] == ["1"]


async def test_feed_filters_and_resumes_from_last_event_id(app: FastAPI) -> None:
    store = shop(app).store
    await store.append("order-a", [placed(), NoteAdded(text="a1")])
    await store.append("order-b", [placed(), NoteAdded(text="b1"), NoteAdded(text="b2")])
    await store.append("order-a", [NoteAdded(text="a2")])

    notes_of_b = await read_feed(
        app,
        params={"type": "shop.NoteAdded", "stream_id": "order-b"},
        headers=bearer("alice"),
        until=lambda r: len(r.messages) >= 2,
    )
    assert [e["data"]["text"] for e in notes_of_b.events] == ["b1", "b2"]

    resumed = await read_feed(
        app,
        params={"after": 1},
        headers={**bearer("alice"), "Last-Event-ID": "4"},
        until=lambda r: len(r.messages) >= 2,
    )
    assert [m["id"] for m in resumed.messages] == ["5", "6"]

    several = await read_feed(
        app,
        params={"after": 2, "stream_id": ["order-a", "order-b"], "type": "shop.NoteAdded"},
        headers=bearer("alice"),
        until=lambda r: len(r.messages) >= 3,
    )
    assert [m["id"] for m in several.messages] == ["4", "5", "6"]


async def test_feed_sends_heartbeats_while_idle(app: FastAPI) -> None:
    reader = await read_feed(
        app, headers=bearer("alice"), until=lambda r: len(r.comments) >= 2, deadline=3
    )
    assert reader.comments[:2] == ["keep-alive", "keep-alive"]
    assert reader.messages == []


async def test_feed_refuses_bad_input_and_anonymous_clients(app: FastAPI) -> None:
    bad = await read_feed(app, headers={**bearer("alice"), "Last-Event-ID": "yesterday"})
    assert bad.status == 422
    assert bad.headers["content-type"] == "application/problem+json"
    assert [e["loc"] for e in json.loads(bad.body)["errors"]] == ["header.Last-Event-ID"]
    negative = await read_feed(app, params={"after": -1}, headers=bearer("alice"))
    assert negative.status == 422
    anonymous = await read_feed(app)
    assert anonymous.status == 401
