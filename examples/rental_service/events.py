"""Every event of the rental service, one section per backbone system.

Event type names are ``<context>.<Name>``; they are what is stored, so they
never change when a class is renamed. Amounts are whole yen (``int``), so that
routing patterns can match them numerically and pipelines can add them up.
Inventory events carry the item's category so that read models can group by
it without reading other state.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

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
    """A garment (one SKU: a model in one size) was added to the catalogue."""

    event_type: ClassVar[str] = "inventory.ItemListed"
    sku: str
    name: str
    category: str
    size: str
    price: int


class StockReceived(Event):
    """Physical units of an item arrived at the warehouse."""

    event_type: ClassVar[str] = "inventory.StockReceived"
    sku: str
    category: str
    unit_ids: list[str]


class UnitRetired(Event):
    """A unit left the rentable stock for good."""

    event_type: ClassVar[str] = "inventory.UnitRetired"
    sku: str
    category: str
    unit_id: str


class UnitReserved(Event):
    """A unit was set aside for a rental."""

    event_type: ClassVar[str] = "inventory.UnitReserved"
    sku: str
    category: str
    unit_id: str
    rental_id: str
    price: int


class ReservationRefused(Event):
    """No unit of the item was free for a rental."""

    event_type: ClassVar[str] = "inventory.ReservationRefused"
    sku: str
    category: str
    rental_id: str
    reason: str


class UnitReleased(Event):
    """A reservation or a rental of a unit ended: the unit is rentable again."""

    event_type: ClassVar[str] = "inventory.UnitReleased"
    sku: str
    category: str
    unit_id: str
    rental_id: str
    reason: str
    was: Literal["reserved", "rented_out"]


class UnitRentedOut(Event):
    """A reserved unit went out to the member."""

    event_type: ClassVar[str] = "inventory.UnitRentedOut"
    sku: str
    category: str
    unit_id: str
    rental_id: str


# -- rentals ----------------------------------------------------------------------------------


class RentalRequested(Event):
    """A member asked to rent some items."""

    event_type: ClassVar[str] = "rentals.RentalRequested"
    rental_id: str
    member_id: str
    member_email: str
    member_name: str
    skus: list[str]


class RentalUnitsReserved(Event):
    """Every requested item has a unit set aside; payment is due."""

    event_type: ClassVar[str] = "rentals.RentalUnitsReserved"
    rental_id: str
    member_id: str
    units: dict[str, str]
    amount: int


class RentalConfirmed(Event):
    """Payment arrived; the rental is confirmed and has a due date."""

    event_type: ClassVar[str] = "rentals.RentalConfirmed"
    rental_id: str
    member_id: str
    payment_id: str
    amount: int
    due_at: datetime


class RentalShipped(Event):
    """Staff shipped the items."""

    event_type: ClassVar[str] = "rentals.RentalShipped"
    rental_id: str
    member_id: str
    shipped_by: str


class ReturnReminderDue(Event):
    """The due date is near: the member should be reminded to send the items back."""

    event_type: ClassVar[str] = "rentals.ReturnReminderDue"
    rental_id: str
    member_id: str
    due_at: datetime


class RentalOverdue(Event):
    """The due date passed without a return."""

    event_type: ClassVar[str] = "rentals.RentalOverdue"
    rental_id: str
    member_id: str
    due_at: datetime


class RentalReturned(Event):
    """The items came back; the rental is closed."""

    event_type: ClassVar[str] = "rentals.RentalReturned"
    rental_id: str
    member_id: str
    returned_by: str


class RentalCancelled(Event):
    """The rental ended before shipping (out of stock, payment rejected or timed out)."""

    event_type: ClassVar[str] = "rentals.RentalCancelled"
    rental_id: str
    member_id: str
    reason: str


# -- payments ---------------------------------------------------------------------------------


class PaymentAuthorized(Event):
    """The fraud rule let a charge through; the gateway may now be called."""

    event_type: ClassVar[str] = "payments.PaymentAuthorized"
    payment_id: str
    rental_id: str
    member_id: str
    amount: int
    authorized_at: datetime


class PaymentCharged(Event):
    """The gateway took the money."""

    event_type: ClassVar[str] = "payments.PaymentCharged"
    payment_id: str
    rental_id: str
    member_id: str
    amount: int
    gateway_ref: str


class PaymentRejected(Event):
    """The fraud rule or the gateway refused the charge for good."""

    event_type: ClassVar[str] = "payments.PaymentRejected"
    payment_id: str
    rental_id: str
    member_id: str
    amount: int
    reason: str


class RefundRequested(Event):
    """A charge must be given back (it arrived for a rental that was cancelled)."""

    event_type: ClassVar[str] = "payments.RefundRequested"
    payment_id: str
    rental_id: str
    member_id: str
    amount: int
    gateway_ref: str


class PaymentRefunded(Event):
    """Money went back to the member."""

    event_type: ClassVar[str] = "payments.PaymentRefunded"
    payment_id: str
    rental_id: str
    member_id: str
    amount: int


ALL_EVENTS: tuple[type[Event], ...] = (
    MemberSignedUp,
    ItemListed,
    StockReceived,
    UnitRetired,
    UnitReserved,
    ReservationRefused,
    UnitReleased,
    UnitRentedOut,
    RentalRequested,
    RentalUnitsReserved,
    RentalConfirmed,
    RentalShipped,
    ReturnReminderDue,
    RentalOverdue,
    RentalReturned,
    RentalCancelled,
    PaymentAuthorized,
    PaymentCharged,
    PaymentRejected,
    RefundRequested,
    PaymentRefunded,
)


def build_registry() -> EventRegistry:
    """A registry with every event of the service."""
    return EventRegistry(*ALL_EVENTS)


#: The registry the routing file names, for handlers that take typed events.
registry = build_registry()
