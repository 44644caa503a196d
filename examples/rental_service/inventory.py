"""Inventory: items (one SKU each), their physical units, and reservations.

Every unit of an item lives in the item's stream, so "take a free unit" is a
decision on one aggregate guarded by optimistic concurrency: two rentals
racing for the last unit load the same version, one append wins, the other
gets a concurrency conflict, and the command bus re-runs it on the new state,
where no unit is free any more. A unit is therefore never promised twice.

Reservation commands come from the rental process manager and never raise for
business reasons: a refusal is recorded as an event (``ReservationRefused``),
so that the process manager hears about it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from cqrs_kit import Aggregate, Command, CommandBus, DomainError, applies
from examples.rental_service.events import (
    ItemListed,
    ReservationRefused,
    StockReceived,
    UnitReleased,
    UnitRentedOut,
    UnitReserved,
    UnitRetired,
)

Sku = Annotated[
    str,
    Field(
        min_length=1,
        max_length=40,
        pattern=r"^[A-Z0-9][A-Z0-9-]*$",
        description="Upper-case letters, digits and dashes.",
        examples=["DRESS-RED-M"],
    ),
]
RentalId = Annotated[
    str,
    Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", examples=["r-1"]),
]
UnitStatus = Literal["available", "reserved", "rented_out", "retired"]


class ItemAlreadyListed(DomainError):
    """The SKU is already in the catalogue."""

    status_code = 409

    def __init__(self, sku: str) -> None:
        super().__init__(f"item {sku!r} is already listed")
        self.sku = sku


class ItemNotFound(DomainError):
    """No item with this SKU is listed."""

    status_code = 404

    def __init__(self, sku: str) -> None:
        super().__init__(f"there is no item {sku!r}")
        self.sku = sku


class UnitNotAvailable(DomainError):
    """The unit does not exist, or is reserved, rented out or retired."""

    status_code = 409

    def __init__(self, sku: str, unit_id: str, status: str | None) -> None:
        what = "does not exist" if status is None else f"is {status.replace('_', ' ')}"
        super().__init__(f"unit {unit_id!r} of {sku!r} {what}")
        self.sku = sku
        self.unit_id = unit_id
        self.status = status


class Unit(BaseModel):
    """One physical garment."""

    status: UnitStatus = "available"
    rental_id: str | None = None


class ItemState(BaseModel):
    """An item's catalogue entry and its units (in order of arrival)."""

    listed: bool = False
    name: str = ""
    category: str = ""
    size: str = ""
    price: int = 0
    units: dict[str, Unit] = Field(default_factory=dict)
    received: int = 0


class Item(Aggregate[ItemState]):
    """A SKU and its stock."""

    stream_prefix = "item-"

    # -- staff ---------------------------------------------------------------------------------

    def list(self, *, name: str, category: str, size: str, price: int) -> None:
        """Add the item to the catalogue."""
        if self.state.listed:
            raise ItemAlreadyListed(self.id)
        self.record(ItemListed(sku=self.id, name=name, category=category, size=size, price=price))

    def receive(self, quantity: int) -> None:
        """Add ``quantity`` new units, numbered on from the last one received."""
        self._require_listed()
        first = self.state.received + 1
        unit_ids = [f"{self.id}-{n:03d}" for n in range(first, first + quantity)]
        self.record(StockReceived(sku=self.id, category=self.state.category, unit_ids=unit_ids))

    def retire(self, unit_id: str) -> None:
        """Take an available unit out of the rentable stock."""
        self._require_listed()
        unit = self.state.units.get(unit_id)
        if unit is None or unit.status != "available":
            raise UnitNotAvailable(self.id, unit_id, unit.status if unit else None)
        self.record(UnitRetired(sku=self.id, category=self.state.category, unit_id=unit_id))

    # -- the rental process ------------------------------------------------------------------

    def reserve_for(self, rental_id: str) -> None:
        """Set a free unit aside for ``rental_id``, or record why there is none."""
        if self._held_by(rental_id) is not None:
            return  # already holds one: nothing new happened
        free = next((uid for uid, u in self.state.units.items() if u.status == "available"), None)
        if not self.state.listed or free is None:
            reason = "out of stock" if self.state.listed else "not in the catalogue"
            self.record(
                ReservationRefused(
                    sku=self.id, category=self.state.category, rental_id=rental_id, reason=reason
                )
            )
            return
        self.record(
            UnitReserved(
                sku=self.id,
                category=self.state.category,
                unit_id=free,
                rental_id=rental_id,
                price=self.state.price,
            )
        )

    def release_from(self, rental_id: str, reason: str) -> None:
        """Make the unit ``rental_id`` holds rentable again (nothing if it holds none)."""
        unit_id = self._held_by(rental_id)
        if unit_id is None:
            return
        was = self.state.units[unit_id].status
        assert was in ("reserved", "rented_out")
        self.record(
            UnitReleased(
                sku=self.id,
                category=self.state.category,
                unit_id=unit_id,
                rental_id=rental_id,
                reason=reason,
                was=was,
            )
        )

    def rent_out_to(self, rental_id: str) -> None:
        """Mark the unit reserved for ``rental_id`` as gone to the member."""
        unit_id = self._held_by(rental_id)
        if unit_id is None or self.state.units[unit_id].status != "reserved":
            return
        self.record(
            UnitRentedOut(
                sku=self.id, category=self.state.category, unit_id=unit_id, rental_id=rental_id
            )
        )

    def _held_by(self, rental_id: str) -> str | None:
        for unit_id, unit in self.state.units.items():
            if unit.rental_id == rental_id and unit.status in ("reserved", "rented_out"):
                return unit_id
        return None

    def _require_listed(self) -> None:
        if not self.state.listed:
            raise ItemNotFound(self.id)

    # -- state --------------------------------------------------------------------------------

    @applies(ItemListed)
    def _listed(self, event: ItemListed) -> None:
        self.state.listed = True
        self.state.name = event.name
        self.state.category = event.category
        self.state.size = event.size
        self.state.price = event.price

    @applies(StockReceived)
    def _received(self, event: StockReceived) -> None:
        for unit_id in event.unit_ids:
            self.state.units[unit_id] = Unit()
        self.state.received += len(event.unit_ids)

    @applies(UnitRetired)
    def _retired(self, event: UnitRetired) -> None:
        self.state.units[event.unit_id] = Unit(status="retired")

    @applies(UnitReserved)
    def _reserved(self, event: UnitReserved) -> None:
        self.state.units[event.unit_id] = Unit(status="reserved", rental_id=event.rental_id)

    @applies(ReservationRefused)
    def _refused(self, event: ReservationRefused) -> None:
        pass

    @applies(UnitReleased)
    def _released(self, event: UnitReleased) -> None:
        self.state.units[event.unit_id] = Unit()

    @applies(UnitRentedOut)
    def _rented_out(self, event: UnitRentedOut) -> None:
        self.state.units[event.unit_id] = Unit(status="rented_out", rental_id=event.rental_id)


# -- commands ---------------------------------------------------------------------------------


class ItemCommand(Command):
    """A command about one item."""

    sku: Sku

    @property
    def aggregate_id(self) -> str:
        """The item's SKU."""
        return self.sku


class ListItem(ItemCommand):
    """Add a garment (one SKU: a model in one size) to the catalogue (staff)."""

    name: str = Field(min_length=1, max_length=100, examples=["Red dress"])
    category: str = Field(
        min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9-]*$", examples=["dress"]
    )
    size: str = Field(min_length=1, max_length=10, examples=["M"])
    price: int = Field(ge=0, le=10_000_000, description="Rental price in yen.", examples=[4800])


class ReceiveStock(ItemCommand):
    """Record new units of an item arriving at the warehouse (staff)."""

    quantity: int = Field(ge=1, le=100)


class RetireUnit(ItemCommand):
    """Take an available unit out of the rentable stock for good (staff)."""

    unit_id: str = Field(min_length=1, max_length=60)


class ReserveUnit(ItemCommand):
    """Set a free unit aside for a rental (sent by the rental process)."""

    rental_id: RentalId


class ReleaseUnit(ItemCommand):
    """Give back the unit a rental holds (sent by the rental process)."""

    rental_id: RentalId
    reason: str = Field(min_length=1, max_length=200)


class RentOutUnit(ItemCommand):
    """The unit reserved for a rental went out (sent by the rental process)."""

    rental_id: RentalId


def register_inventory_handlers(bus: CommandBus) -> None:
    """Route the inventory commands to the item aggregate."""

    def list_item(command: ListItem, item: Item) -> None:
        item.list(
            name=command.name, category=command.category, size=command.size, price=command.price
        )

    bus.register(ListItem, list_item, aggregate=Item)
    bus.register(ReceiveStock, lambda c, item: item.receive(c.quantity), aggregate=Item)
    bus.register(RetireUnit, lambda c, item: item.retire(c.unit_id), aggregate=Item)
    bus.register(ReserveUnit, lambda c, item: item.reserve_for(c.rental_id), aggregate=Item)
    bus.register(
        ReleaseUnit, lambda c, item: item.release_from(c.rental_id, c.reason), aggregate=Item
    )
    bus.register(RentOutUnit, lambda c, item: item.rent_out_to(c.rental_id), aggregate=Item)
