"""Rentals: the aggregate a member's request becomes, and the commands that move it on.

A rental's life (see the README for the picture)::

    requested -> awaiting_payment -> confirmed -> shipped -> returned
        |               |                |          |
        +---------------+--> cancelled   +----------+--> overdue -> returned

Members and staff send ``RequestRental``, ``ShipRental`` and ``ReturnRental``
over HTTP; the rest come from the rental process manager and the scheduler.
Those never raise for business reasons: a command that arrives too late (a
payment timeout after the payment) simply records nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from cqrs_kit import Aggregate, Command, CommandBus, DomainError, Repository, StreamStore, applies
from examples.rental_service.events import (
    RentalCancelled,
    RentalConfirmed,
    RentalOverdue,
    RentalRequested,
    RentalReturned,
    RentalShipped,
    RentalUnitsReserved,
    ReturnReminderDue,
)
from examples.rental_service.inventory import Item, RentalId, Sku
from examples.rental_service.members import Directory

RentalStatus = Literal[
    "requested", "awaiting_payment", "confirmed", "shipped", "overdue", "returned", "cancelled"
]
_OUT = ("confirmed", "shipped", "overdue")


class RentalNotFound(DomainError):
    """No such rental, or not one the caller may see."""

    status_code = 404

    def __init__(self, rental_id: str) -> None:
        super().__init__(f"there is no rental {rental_id!r}")
        self.rental_id = rental_id


class RentalAlreadyExists(DomainError):
    """A rental with this id was already requested."""

    status_code = 409

    def __init__(self, rental_id: str) -> None:
        super().__init__(f"rental {rental_id!r} already exists; pick another rental_id")
        self.rental_id = rental_id


class InvalidRentalState(DomainError):
    """The rental is not in a state that allows this."""

    status_code = 409

    def __init__(self, rental_id: str, status: str, action: str) -> None:
        super().__init__(f"rental {rental_id!r} is {status.replace('_', ' ')}; cannot {action}")
        self.rental_id = rental_id
        self.status = status


class TooManyItems(DomainError):
    """A rental asked for more items than one rental may hold."""

    status_code = 422

    def __init__(self, requested: int, limit: int) -> None:
        super().__init__(f"a rental holds at most {limit} items, not {requested}")
        self.requested = requested
        self.limit = limit


class UnknownItems(DomainError):
    """A rental named SKUs that are not in the catalogue."""

    status_code = 422

    def __init__(self, skus: list[str]) -> None:
        super().__init__(f"not in the catalogue: {', '.join(skus)}")
        self.skus = skus


class NotAMember(DomainError):
    """The caller has no member account."""

    status_code = 403

    def __init__(self, principal: str | None) -> None:
        super().__init__(f"{principal!r} is not a signed-up member")
        self.principal = principal


class RentalState(BaseModel):
    """What the rental stream remembers."""

    status: RentalStatus | None = None
    member_id: str = ""
    skus: list[str] = Field(default_factory=list)
    units: dict[str, str] = Field(default_factory=dict)
    amount: int = 0
    payment_id: str | None = None
    due_at: datetime | None = None
    reminded: bool = False


class Rental(Aggregate[RentalState]):
    """One rental request and everything that happens to it."""

    stream_prefix = "rental-"

    def request(self, *, member_id: str, email: str, name: str, skus: list[str]) -> None:
        """Open the rental."""
        if self.state.status is not None:
            raise RentalAlreadyExists(self.id)
        self.record(
            RentalRequested(
                rental_id=self.id,
                member_id=member_id,
                member_email=email,
                member_name=name,
                skus=skus,
            )
        )

    def units_reserved(self, units: dict[str, str], amount: int) -> None:
        """Every item has a unit: payment is due."""
        if self.state.status != "requested":
            return
        self.record(
            RentalUnitsReserved(
                rental_id=self.id, member_id=self.state.member_id, units=units, amount=amount
            )
        )

    def cancel(self, reason: str) -> None:
        """End a rental that has not been paid for."""
        if self.state.status not in ("requested", "awaiting_payment"):
            return
        self.record(
            RentalCancelled(rental_id=self.id, member_id=self.state.member_id, reason=reason)
        )

    def payment_timed_out(self) -> None:
        """The payment window closed: cancel if still unpaid."""
        self.cancel("payment timed out")

    def confirm(self, *, payment_id: str, amount: int, due_at: datetime) -> None:
        """The payment arrived."""
        if self.state.status != "awaiting_payment":
            return
        self.record(
            RentalConfirmed(
                rental_id=self.id,
                member_id=self.state.member_id,
                payment_id=payment_id,
                amount=amount,
                due_at=due_at,
            )
        )

    def ship(self, by: str) -> None:
        """Staff sent the items."""
        self._require_exists()
        if self.state.status != "confirmed":
            raise InvalidRentalState(self.id, str(self.state.status), "ship it")
        self.record(RentalShipped(rental_id=self.id, member_id=self.state.member_id, shipped_by=by))

    def return_items(self, by: str) -> None:
        """The items came back."""
        self._require_exists()
        if self.state.status not in ("shipped", "overdue"):
            raise InvalidRentalState(self.id, str(self.state.status), "return it")
        self.record(
            RentalReturned(rental_id=self.id, member_id=self.state.member_id, returned_by=by)
        )

    def remind(self) -> None:
        """The due date is near."""
        if self.state.status not in _OUT or self.state.reminded or self.state.due_at is None:
            return
        self.record(
            ReturnReminderDue(
                rental_id=self.id, member_id=self.state.member_id, due_at=self.state.due_at
            )
        )

    def mark_overdue(self) -> None:
        """The due date passed."""
        if self.state.status not in ("confirmed", "shipped") or self.state.due_at is None:
            return
        self.record(
            RentalOverdue(
                rental_id=self.id, member_id=self.state.member_id, due_at=self.state.due_at
            )
        )

    def _require_exists(self) -> None:
        if self.state.status is None:
            raise RentalNotFound(self.id)

    # -- state --------------------------------------------------------------------------------

    @applies(RentalRequested)
    def _requested(self, event: RentalRequested) -> None:
        self.state.status = "requested"
        self.state.member_id = event.member_id
        self.state.skus = list(event.skus)

    @applies(RentalUnitsReserved)
    def _reserved(self, event: RentalUnitsReserved) -> None:
        self.state.status = "awaiting_payment"
        self.state.units = dict(event.units)
        self.state.amount = event.amount

    @applies(RentalCancelled)
    def _cancelled(self, event: RentalCancelled) -> None:
        self.state.status = "cancelled"

    @applies(RentalConfirmed)
    def _confirmed(self, event: RentalConfirmed) -> None:
        self.state.status = "confirmed"
        self.state.payment_id = event.payment_id
        self.state.due_at = event.due_at

    @applies(RentalShipped)
    def _shipped(self, event: RentalShipped) -> None:
        self.state.status = "shipped"

    @applies(ReturnReminderDue)
    def _reminded(self, event: ReturnReminderDue) -> None:
        self.state.reminded = True

    @applies(RentalOverdue)
    def _overdue(self, event: RentalOverdue) -> None:
        self.state.status = "overdue"

    @applies(RentalReturned)
    def _returned(self, event: RentalReturned) -> None:
        self.state.status = "returned"


# -- commands ---------------------------------------------------------------------------------


class RentalCommand(Command):
    """A command about one rental."""

    rental_id: RentalId

    @property
    def aggregate_id(self) -> str:
        """The rental's id."""
        return self.rental_id


class RequestRental(Command):
    """Ask to rent one unit of each SKU (members).

    Reservation and payment follow asynchronously: read the rental's status from
    ``/queries/my-rentals/{rental_id}``.
    """

    rental_id: RentalId | None = Field(
        default=None,
        description="Your id for the rental; default: derived from the request "
        "(stable across retries with the same Idempotency-Key).",
    )
    skus: list[Sku] = Field(min_length=1, max_length=20)

    @field_validator("skus")
    @classmethod
    def _distinct(cls, skus: list[str]) -> list[str]:
        if len(set(skus)) != len(skus):
            raise ValueError("each SKU may appear once")
        return skus

    @property
    def aggregate_id(self) -> str:
        """The rental's id: the given one, or one derived from the command id."""
        return self.rental_id or f"r-{self.command_id.hex[:16]}"


class MarkUnitsReserved(RentalCommand):
    """Every item has a unit set aside (rental process)."""

    units: dict[str, str]
    amount: int


class CancelRental(RentalCommand):
    """End an unpaid rental (rental process)."""

    reason: str


class ExpirePayment(RentalCommand):
    """The payment window closed (scheduled by the rental process)."""


class ConfirmRental(RentalCommand):
    """The payment arrived (rental process)."""

    payment_id: str
    amount: int
    due_at: datetime


class ShipRental(RentalCommand):
    """Record that the items of a confirmed rental went out (staff)."""


class ReturnRental(RentalCommand):
    """Record that the items of a shipped or overdue rental came back (its member or staff)."""


class RemindReturn(RentalCommand):
    """The due date is near (scheduled by the rental process)."""


class MarkOverdue(RentalCommand):
    """The due date has come (scheduled by the rental process)."""


Limit = Annotated[int, Field(ge=1)]


def register_rental_handlers(
    bus: CommandBus, *, store: StreamStore, directory: Directory, max_items: Limit
) -> None:
    """Route the rental commands to the rental aggregate.

    Args:
        bus: The command bus.
        store: Where ``RequestRental`` looks the requested items up.
        directory: Where it looks the member up (and ``ReturnRental`` checks for staff).
        max_items: The most SKUs one rental may hold.
    """
    items = Repository(store, Item)

    async def request(command: RequestRental, rental: Rental) -> None:
        member = await directory.get(command.metadata.principal or "")
        if member is None:
            raise NotAMember(command.metadata.principal)
        if len(command.skus) > max_items:
            raise TooManyItems(len(command.skus), max_items)
        unknown = [sku for sku in command.skus if not (await items.load(sku)).state.listed]
        if unknown:
            raise UnknownItems(unknown)
        rental.request(
            member_id=member.member_id, email=member.email, name=member.name, skus=command.skus
        )

    async def return_items(command: ReturnRental, rental: Rental) -> None:
        who = command.metadata.principal or ""
        if rental.state.member_id != who and not await directory.is_staff(who):
            raise RentalNotFound(rental.id)  # someone else's rental does not exist for you
        rental.return_items(by=who)

    def ship(command: ShipRental, rental: Rental) -> None:
        rental.ship(by=command.metadata.principal or "staff")

    def confirm(command: ConfirmRental, rental: Rental) -> None:
        rental.confirm(payment_id=command.payment_id, amount=command.amount, due_at=command.due_at)

    bus.register(RequestRental, request, aggregate=Rental)
    bus.register(
        MarkUnitsReserved, lambda c, r: r.units_reserved(c.units, c.amount), aggregate=Rental
    )
    bus.register(CancelRental, lambda c, r: r.cancel(c.reason), aggregate=Rental)
    bus.register(ExpirePayment, lambda c, r: r.payment_timed_out(), aggregate=Rental)
    bus.register(ConfirmRental, confirm, aggregate=Rental)
    bus.register(ShipRental, ship, aggregate=Rental)
    bus.register(ReturnRental, return_items, aggregate=Rental)
    bus.register(RemindReturn, lambda c, r: r.remind(), aggregate=Rental)
    bus.register(MarkOverdue, lambda c, r: r.mark_overdue(), aggregate=Rental)
