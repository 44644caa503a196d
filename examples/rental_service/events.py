"""Every event of the rental service, one section per backbone system.

Event type names are ``<context>.<Name>``; they are what is stored, so they
never change when a class is renamed.
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from cqrs_kit import Event, EventRegistry

# -- authentication -------------------------------------------------------------------------


class MemberSignedUp(Event):
    """Someone created an account."""

    event_type: ClassVar[str] = "auth.MemberSignedUp"
    member_id: str
    email: str
    name: str
    role: str
    password_hash: str


# -- inventory --------------------------------------------------------------------------------


class ItemListed(Event):
    """A garment was added to the catalogue."""

    event_type: ClassVar[str] = "inventory.ItemListed"
    sku: str
    name: str
    category: str
    size: str
    price: Decimal


class StockReceived(Event):
    """Physical units of an item arrived at the warehouse."""

    event_type: ClassVar[str] = "inventory.StockReceived"
    sku: str
    unit_ids: list[str]


class UnitRetired(Event):
    """A unit left the rentable stock for good."""

    event_type: ClassVar[str] = "inventory.UnitRetired"
    sku: str
    unit_id: str


class UnitReserved(Event):
    """A unit was set aside for a rental."""

    event_type: ClassVar[str] = "inventory.UnitReserved"
    sku: str
    unit_id: str
    rental_id: str


class UnitReleased(Event):
    """A reservation ended: the unit is rentable again."""

    event_type: ClassVar[str] = "inventory.UnitReleased"
    sku: str
    unit_id: str
    rental_id: str
    reason: str


class UnitRentedOut(Event):
    """A reserved unit went out to the member."""

    event_type: ClassVar[str] = "inventory.UnitRentedOut"
    sku: str
    unit_id: str
    rental_id: str


# -- rentals ----------------------------------------------------------------------------------


class RentalRequested(Event):
    """A member asked to rent some items."""

    event_type: ClassVar[str] = "rentals.RentalRequested"
    rental_id: str
    member_id: str
    skus: list[str]


class RentalUnitsReserved(Event):
    """Every requested item has a unit set aside; payment is due."""

    event_type: ClassVar[str] = "rentals.RentalUnitsReserved"
    rental_id: str
    member_id: str
    units: dict[str, str]
    amount: Decimal


class RentalConfirmed(Event):
    """Payment arrived; the rental is confirmed."""

    event_type: ClassVar[str] = "rentals.RentalConfirmed"
    rental_id: str
    member_id: str
    payment_id: str
    amount: Decimal
    due_at: str


class RentalShipped(Event):
    """Staff shipped the items."""

    event_type: ClassVar[str] = "rentals.RentalShipped"
    rental_id: str
    member_id: str
    shipped_by: str


class RentalReturned(Event):
    """The member returned the items; the rental is closed."""

    event_type: ClassVar[str] = "rentals.RentalReturned"
    rental_id: str
    member_id: str


class RentalCancelled(Event):
    """The rental ended before shipping (out of stock, payment failed or timed out)."""

    event_type: ClassVar[str] = "rentals.RentalCancelled"
    rental_id: str
    member_id: str
    reason: str


class RentalOverdue(Event):
    """The due date passed without a return."""

    event_type: ClassVar[str] = "rentals.RentalOverdue"
    rental_id: str
    member_id: str


# -- payments ---------------------------------------------------------------------------------


class PaymentCharged(Event):
    """The gateway took the money."""

    event_type: ClassVar[str] = "payments.PaymentCharged"
    payment_id: str
    rental_id: str
    member_id: str
    amount: Decimal
    gateway_ref: str


class PaymentRejected(Event):
    """The fraud rule or the gateway refused the charge for good."""

    event_type: ClassVar[str] = "payments.PaymentRejected"
    payment_id: str
    rental_id: str
    member_id: str
    amount: Decimal
    reason: str


class PaymentRefunded(Event):
    """Money went back to the member."""

    event_type: ClassVar[str] = "payments.PaymentRefunded"
    payment_id: str
    rental_id: str
    member_id: str
    amount: Decimal


ALL_EVENTS: tuple[type[Event], ...] = (
    MemberSignedUp,
    ItemListed,
    StockReceived,
    UnitRetired,
    UnitReserved,
    UnitReleased,
    UnitRentedOut,
    RentalRequested,
    RentalUnitsReserved,
    RentalConfirmed,
    RentalShipped,
    RentalReturned,
    RentalCancelled,
    RentalOverdue,
    PaymentCharged,
    PaymentRejected,
    PaymentRefunded,
)


def build_registry() -> EventRegistry:
    """A registry with every event of the service."""
    return EventRegistry(*ALL_EVENTS)
