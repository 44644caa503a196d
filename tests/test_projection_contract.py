"""The projection contract, bound to the test projections on every backend."""

import random

from _projector_worker import (
    ItemDiscontinued,
    ItemsPerCategory,
    Noise,
    StockAdded,
    StockLevels,
    StockRemoved,
)
from cqrs_kit import Event, Projection
from cqrs_kit.testing.projection_contract import ProjectionContract


def stock_history() -> list[tuple[str, Event]]:
    rnd = random.Random(11)
    history: list[tuple[str, Event]] = []
    for _ in range(24):
        sku = f"sku-{rnd.randrange(5)}"
        category = f"cat-{rnd.randrange(3)}"
        r = rnd.random()
        event: Event
        if r < 0.55:
            event = StockAdded(sku=sku, category=category, quantity=rnd.randrange(1, 9))
        elif r < 0.8:
            event = StockRemoved(sku=sku, category=category, quantity=rnd.randrange(1, 4))
        elif r < 0.9:
            event = ItemDiscontinued(sku=sku)
        else:
            event = Noise()
        history.append((f"item-{sku}", event))
    return history


class TestPipelineProjection(ProjectionContract):
    def projection(self) -> Projection:
        return ItemsPerCategory()

    def history(self) -> list[tuple[str, Event]]:
        return stock_history()


class TestHandlerProjection(ProjectionContract):
    def projection(self) -> Projection:
        return StockLevels()

    def history(self) -> list[tuple[str, Event]]:
        return stock_history()
