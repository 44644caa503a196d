"""The stock domain used by the projection tests, and an app object for the CLI.

``cqrs-kit projections --app-dir tests --app _projector_worker:make_app ...``
loads it; the crash tests run ``cqrs-kit projections run`` with it in a child
process and kill that process.
"""

from __future__ import annotations

import os
from typing import ClassVar

from cqrs_kit import Event, EventRegistry
from cqrs_kit.projections import (
    Count,
    Delete,
    First,
    HandlerProjection,
    Last,
    Max,
    PipelineProjection,
    ProjectionApp,
    Sum,
    Upsert,
    on,
)


class StockAdded(Event):
    event_type: ClassVar[str] = "inventory.StockAdded"
    sku: str
    category: str
    quantity: int


class StockRemoved(Event):
    event_type: ClassVar[str] = "inventory.StockRemoved"
    sku: str
    category: str
    quantity: int


class ItemDiscontinued(Event):
    event_type: ClassVar[str] = "inventory.ItemDiscontinued"
    sku: str


class Noise(Event):
    """An event no projection reads (its positions are skipped over)."""

    event_type: ClassVar[str] = "misc.Noise"


def registry() -> EventRegistry:
    return EventRegistry(StockAdded, StockRemoved, ItemDiscontinued, Noise)


class ItemsPerCategory(PipelineProjection):
    """Items available per category: the pipeline example of docs/projections.md."""

    name = "items_per_category"
    event_types = (StockAdded, StockRemoved)
    stages: ClassVar = [
        {
            "$addFields": {
                "delta": {
                    "$cond": [
                        {"$eq": ["$type", StockAdded.event_type]},
                        "$data.quantity",
                        {"$multiply": [-1, "$data.quantity"]},
                    ]
                }
            }
        }
    ]
    group_by = "$data.category"
    fields: ClassVar = {
        "available": Sum("$delta"),
        "movements": Count(),
        "last_sku": Last("$data.sku"),
        "first_sku": First("$data.sku"),
        "largest_movement": Max("$data.quantity"),
    }


class StockLevels(HandlerProjection):
    """Per-item stock: the handler example."""

    name = "stock_levels"

    @on(StockAdded)
    def added(self, event: StockAdded) -> Upsert:
        return Upsert(
            event.sku,
            inc={"available": event.quantity},
            set={"category": event.category},
            set_on_insert={"first_quantity": event.quantity},
        )

    @on(StockRemoved)
    def removed(self, event: StockRemoved) -> Upsert:
        return Upsert(event.sku, inc={"available": -event.quantity})

    @on(ItemDiscontinued)
    def discontinued(self, event: ItemDiscontinued) -> Delete:
        return Delete(event.sku)


def make_app() -> ProjectionApp:
    """Factory form of the app (what ``--app _projector_worker:make_app`` calls)."""
    return ProjectionApp(
        registry=registry(),
        projections=[ItemsPerCategory(), StockLevels()],
        database_name=os.environ.get("TEST_PROJECTIONS_DB"),
    )


#: Instance form of the app.
app = make_app()
