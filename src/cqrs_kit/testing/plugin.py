"""Pytest plugin: fixtures that give tests a database and an event store on every backend.

Enable it with ``pytest_plugins = ["cqrs_kit.testing.plugin"]`` in a conftest (and the
``testing`` extra installed), so a project's own tests
can ask for ``mongo_database`` or ``event_store`` and run once per backend:
mongomock-motor (in process), an ``nx-27017`` server started for the test
session (through PyMongo's async API and through Motor), and a real MongoDB
replica set when ``CQRS_KIT_TEST_MONGODB_URI`` is set (skipped, with that
reason, otherwise). Override the ``event_registry`` fixture to supply your
own event classes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from cqrs_kit.events import EventRegistry
from cqrs_kit.store import EventStore
from cqrs_kit.testing.backends import MONGODB_URI_ENV, Backend, real_mongodb_uri, temporary_database
from cqrs_kit.testing.server import EmbeddedServer

BACKEND_NAMES = ("mongomock", "nx-pymongo", "nx-motor", "mongodb")


@pytest.fixture(scope="session")
def nx_server() -> Iterator[EmbeddedServer]:
    """One in-memory ``nx-27017`` server for the whole test session."""
    server = EmbeddedServer("memory").start()
    try:
        yield server
    finally:
        server.cleanup()


def _backend_params() -> list[Any]:
    skip_real = pytest.mark.skipif(
        real_mongodb_uri() is None,
        reason=f"real MongoDB: {MONGODB_URI_ENV} is not set",
    )
    return [
        pytest.param("mongomock", id="mongomock"),
        pytest.param("nx-pymongo", id="nx-pymongo"),
        pytest.param("nx-motor", id="nx-motor"),
        pytest.param("mongodb", id="mongodb", marks=skip_real),
    ]


@pytest.fixture(params=_backend_params())
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each storage backend in turn."""
    name: str = request.param
    if name == "mongomock":
        return Backend(name, "mongomock", None)
    if name == "mongodb":
        uri = real_mongodb_uri()
        assert uri is not None
        return Backend(name, "pymongo", uri)
    server: EmbeddedServer = request.getfixturevalue("nx_server")
    return Backend(name, "motor" if name == "nx-motor" else "pymongo", server.uri)


@pytest_asyncio.fixture
async def mongo_database(backend: Backend) -> AsyncIterator[Any]:
    """A fresh, empty database on the current backend (dropped afterwards)."""
    async with temporary_database(backend) as db:
        yield db


@pytest.fixture
def event_registry() -> EventRegistry:
    """The event classes for ``event_store``; override in your conftest."""
    return EventRegistry()


@pytest_asyncio.fixture
async def event_store(mongo_database: Any, event_registry: EventRegistry) -> EventStore:
    """An ``EventStore`` with its indexes, on a fresh database of the current backend."""
    store = EventStore(mongo_database, event_registry)
    await store.ensure_indexes()
    return store
