"""The projection contract: laws every projection must obey, on every backend.

A projection is correct only if its read model depends on the events alone:
not on how they were batched, not on how often a batch was delivered, and
not on whether the model was built incrementally or by a rebuild. Bind the
suite to your own projection by naming it and a history of events::

    pytest_plugins = ["cqrs_kit.testing.plugin"]

    class TestStockLevels(ProjectionContract):
        def projection(self) -> Projection:
            return StockLevels()

        def history(self) -> list[tuple[str, Event]]:
            return [("item-1", StockAdded(sku="1", quantity=3)), ...]

Each test starts from an empty database of the backend under test (the
plugin's ``mongo_database`` fixture).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import pytest

from cqrs_kit.checkpoints import CheckpointStore
from cqrs_kit.events import Event, EventRegistry
from cqrs_kit.projections import Projection, ProjectionRunner, ReadModel, projection_key
from cqrs_kit.store import EventStore


class ProjectionContract(ABC):
    """Contract tests for a projection: batching, redelivery and rebuilds change nothing."""

    @abstractmethod
    def projection(self) -> Projection:
        """A fresh instance of the projection under test."""

    @abstractmethod
    def history(self) -> list[tuple[str, Event]]:
        """The events to project, as ``(stream_id, event)`` in append order.

        Use a few streams, several events per document, and every event type the
        projection handles, including ones that delete documents.
        """

    @pytest.fixture
    def event_registry(self) -> EventRegistry:
        """A registry of the history's event classes."""
        return EventRegistry(*{type(event) for _, event in self.history()})

    async def _store(self, mongo_database: Any, registry: EventRegistry) -> EventStore:
        store = EventStore(mongo_database, registry)
        await store.ensure_indexes()
        return store

    async def _append(self, store: EventStore, events: list[tuple[str, Event]]) -> None:
        for stream_id, event in events:
            await store.append(stream_id, [event])

    async def _read_model(self, mongo_database: Any) -> list[dict[str, Any]]:
        name = self.projection().name
        return await ReadModel(mongo_database, name, max_age=0).find(sort=[("_id", 1)])

    def _runner(self, store: EventStore, batch_size: int) -> ProjectionRunner:
        return ProjectionRunner(store, [self.projection()], batch_size=batch_size, lease_ttl=2.0)

    async def test_batching_does_not_change_the_read_model(
        self, mongo_database: Any, event_registry: EventRegistry
    ) -> None:
        store = await self._store(mongo_database, event_registry)
        history = self.history()
        await self._append(store, history)
        name = self.projection().name
        one_by_one = self._runner(store, batch_size=1)
        await one_by_one.catch_up()
        expected = await self._read_model(mongo_database)
        await one_by_one.reset(name)
        await self._runner(store, batch_size=len(history) + 1).catch_up()
        assert await self._read_model(mongo_database) == expected

    async def test_redelivery_from_an_older_checkpoint_changes_nothing(
        self, mongo_database: Any, event_registry: EventRegistry
    ) -> None:
        store = await self._store(mongo_database, event_registry)
        history = self.history()
        await self._append(store, history)
        runner = self._runner(store, batch_size=3)
        await runner.catch_up()
        expected = await self._read_model(mongo_database)
        checkpoints = CheckpointStore(mongo_database)
        key = projection_key(self.projection().name)
        for position in (0, len(history) // 2, len(history) - 1):
            # As if the checkpoint write of earlier batches had been lost.
            await checkpoints.collection.update_one({"_id": key}, {"$set": {"position": position}})
            await runner.catch_up()
            assert await self._read_model(mongo_database) == expected, position
            assert await checkpoints.position(key) == len(history)

    async def test_incremental_model_equals_a_rebuild(
        self, mongo_database: Any, event_registry: EventRegistry
    ) -> None:
        store = await self._store(mongo_database, event_registry)
        history = self.history()
        half = len(history) // 2
        runner = self._runner(store, batch_size=2)
        await self._append(store, history[:half])
        await runner.catch_up()
        await self._append(store, history[half:])
        await runner.catch_up()
        incremental = await self._read_model(mongo_database)
        result = await runner.rebuild(self.projection().name, drop_grace=0)
        assert result.position == len(history)
        assert await self._read_model(mongo_database) == incremental
