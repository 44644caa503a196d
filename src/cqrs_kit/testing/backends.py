"""The storage backends the test suite runs against, behind one description type."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

#: Environment variable naming a real MongoDB replica set for tests.
MONGODB_URI_ENV = "CQRS_KIT_TEST_MONGODB_URI"


@dataclass(frozen=True, slots=True)
class Backend:
    """One way of reaching a database.

    Attributes:
        name: ``mongomock``, ``nx-pymongo``, ``nx-motor`` or ``mongodb``.
        driver: ``pymongo``, ``motor`` or ``mongomock``.
        uri: Connection string, or ``None`` for the in-process mock.
    """

    name: str
    driver: str
    uri: str | None

    @property
    def has_server(self) -> bool:
        """Whether a real wire-protocol server is behind this backend."""
        return self.uri is not None


def real_mongodb_uri() -> str | None:
    """The real MongoDB URI for tests, if configured."""
    return os.environ.get(MONGODB_URI_ENV) or None


def make_client(backend: Backend) -> Any:
    """Create a driver client for ``backend`` (call inside the event loop that uses it)."""
    if backend.driver == "mongomock":
        from mongomock_motor import AsyncMongoMockClient

        return AsyncMongoMockClient()
    if backend.driver == "motor":
        from motor.motor_asyncio import AsyncIOMotorClient

        return AsyncIOMotorClient(backend.uri, serverSelectionTimeoutMS=10_000)
    from pymongo import AsyncMongoClient

    return AsyncMongoClient(backend.uri, serverSelectionTimeoutMS=10_000)


@asynccontextmanager
async def temporary_database(backend: Backend) -> AsyncIterator[Any]:
    """Yield a fresh, uniquely named database on ``backend``; drop it afterwards."""
    client = make_client(backend)
    name = f"cqrs_kit_test_{uuid.uuid4().hex[:12]}"
    db = client[name]
    try:
        yield db
    finally:
        if backend.has_server:
            try:
                await client.drop_database(name)
            finally:
                closed = client.close()
                if closed is not None:
                    await closed
