"""The rental process manager: from a request to reserved units, payment, shipping and return.

It is the only place that knows the order of the steps. Each reaction only
updates the instance's state and lists commands through the context; the
runner saves both in one write and then carries the commands out, so a crash
or a redelivery never loses or doubles a step. Every command it sends is
answered by an event, even a refusal (``ReservationRefused``), so the process
always learns the outcome.

Compensation: whatever ends a rental before it is paid (a missing unit, a
rejected payment, the payment timeout) leads to ``RentalCancelled``, and on
that event every unit the rental holds is released, including units whose
reservation lands after the cancellation. A charge that lands after the
cancellation is refunded.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from cqrs_kit.routing import ProcessContext, ProcessManager, reacts_to
from examples.rental_service.events import (
    PaymentCharged,
    PaymentRejected,
    RentalCancelled,
    RentalConfirmed,
    RentalRequested,
    RentalReturned,
    RentalShipped,
    ReservationRefused,
    UnitReserved,
)
from examples.rental_service.inventory import ReleaseUnit, RentOutUnit, ReserveUnit
from examples.rental_service.payments import RequestRefund
from examples.rental_service.rentals import (
    CancelRental,
    ConfirmRental,
    ExpirePayment,
    MarkOverdue,
    MarkUnitsReserved,
    RemindReturn,
)
from examples.rental_service.settings import Settings

_BY_RENTAL = "$.data.rental_id"
PAYMENT_TIMEOUT = "payment-timeout"
REMINDER = "return-reminder"
OVERDUE = "overdue-check"


class FulfilmentState(BaseModel):
    """What one rental's process remembers."""

    member_id: str = ""
    skus: list[str] = Field(default_factory=list)
    units: dict[str, str] = Field(default_factory=dict)
    prices: dict[str, int] = Field(default_factory=dict)
    refused: dict[str, str] = Field(default_factory=dict)
    reserved_all: bool = False
    cancelled: bool = False
    charged: bool = False
    refund_requested: bool = False
    payment_id: str | None = None


class RentalFulfilment(ProcessManager[FulfilmentState]):
    """Drives one rental through reservation, payment, shipping and return.

    Args:
        settings: Where the payment timeout, rental period and reminder lead come from.
    """

    state_type = FulfilmentState
    name = "rental-fulfilment"

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()

    # -- reservation ----------------------------------------------------------------------------

    @reacts_to(RentalRequested.event_type, correlate=_BY_RENTAL, starts=True)
    async def requested(
        self, state: FulfilmentState, event: RentalRequested, ctx: ProcessContext
    ) -> None:
        """Reserve one unit of every requested item."""
        state.member_id = event.member_id
        state.skus = list(event.skus)
        for sku in event.skus:
            ctx.send(ReserveUnit(sku=sku, rental_id=event.rental_id))

    @reacts_to(UnitReserved.event_type, correlate=_BY_RENTAL)
    async def unit_reserved(
        self, state: FulfilmentState, event: UnitReserved, ctx: ProcessContext
    ) -> None:
        """Collect the unit; once every item has one, ask for payment and start the timer."""
        state.units[event.sku] = event.unit_id
        state.prices[event.sku] = event.price
        if state.cancelled or state.refused:
            # Landed after the rental failed: give it straight back.
            ctx.send(ReleaseUnit(sku=event.sku, rental_id=event.rental_id, reason="cancelled"))
            return
        if set(state.units) == set(state.skus) and not state.reserved_all:
            state.reserved_all = True
            # The timer is listed first, so it exists before anyone can see the rental
            # waiting for payment.
            ctx.schedule(
                ExpirePayment(rental_id=event.rental_id),
                after=self.settings.payment_timeout,
                key=PAYMENT_TIMEOUT,
            )
            ctx.send(
                MarkUnitsReserved(
                    rental_id=event.rental_id,
                    units=dict(state.units),
                    amount=sum(state.prices.values()),
                )
            )

    @reacts_to(ReservationRefused.event_type, correlate=_BY_RENTAL)
    async def reservation_refused(
        self, state: FulfilmentState, event: ReservationRefused, ctx: ProcessContext
    ) -> None:
        """One item has no free unit: the whole rental fails."""
        first = not state.refused
        state.refused[event.sku] = event.reason
        if first and not state.cancelled:
            ctx.send(CancelRental(rental_id=event.rental_id, reason=f"{event.reason}: {event.sku}"))

    # -- payment --------------------------------------------------------------------------------

    @reacts_to(PaymentCharged.event_type, correlate=_BY_RENTAL)
    async def charged(
        self, state: FulfilmentState, event: PaymentCharged, ctx: ProcessContext
    ) -> None:
        """Confirm the rental, or refund a charge that came too late."""
        state.charged = True
        state.payment_id = event.payment_id
        if state.cancelled:
            self._refund(state, ctx)
            return
        ctx.cancel(PAYMENT_TIMEOUT)
        ctx.send(
            ConfirmRental(
                rental_id=event.rental_id,
                payment_id=event.payment_id,
                amount=event.amount,
                due_at=ctx.now + self.settings.rental_period,
            )
        )

    @reacts_to(PaymentRejected.event_type, correlate=_BY_RENTAL)
    async def rejected(
        self, state: FulfilmentState, event: PaymentRejected, ctx: ProcessContext
    ) -> None:
        """No money, no rental."""
        ctx.send(
            CancelRental(rental_id=event.rental_id, reason=f"payment rejected: {event.reason}")
        )

    @reacts_to(RentalCancelled.event_type, correlate=_BY_RENTAL)
    async def cancelled(
        self, state: FulfilmentState, event: RentalCancelled, ctx: ProcessContext
    ) -> None:
        """Compensate: release every unit held, refund a charge already taken."""
        state.cancelled = True
        ctx.cancel(PAYMENT_TIMEOUT)
        for sku in sorted(state.units):
            ctx.send(ReleaseUnit(sku=sku, rental_id=event.rental_id, reason="cancelled"))
        if state.charged:
            self._refund(state, ctx)

    # -- after payment --------------------------------------------------------------------------

    @reacts_to(RentalConfirmed.event_type, correlate=_BY_RENTAL)
    async def confirmed(
        self, state: FulfilmentState, event: RentalConfirmed, ctx: ProcessContext
    ) -> None:
        """Schedule the return reminder and the overdue check."""
        remind_at: datetime = event.due_at - self.settings.reminder_lead
        ctx.schedule(RemindReturn(rental_id=event.rental_id), at=remind_at, key=REMINDER)
        ctx.schedule(MarkOverdue(rental_id=event.rental_id), at=event.due_at, key=OVERDUE)

    @reacts_to(RentalShipped.event_type, correlate=_BY_RENTAL)
    async def shipped(
        self, state: FulfilmentState, event: RentalShipped, ctx: ProcessContext
    ) -> None:
        """The reserved units are now out with the member."""
        for sku in sorted(state.units):
            ctx.send(RentOutUnit(sku=sku, rental_id=event.rental_id))

    @reacts_to(RentalReturned.event_type, correlate=_BY_RENTAL)
    async def returned(
        self, state: FulfilmentState, event: RentalReturned, ctx: ProcessContext
    ) -> None:
        """Put the units back into stock and finish (pending reminders are cancelled)."""
        for sku in sorted(state.units):
            ctx.send(ReleaseUnit(sku=sku, rental_id=event.rental_id, reason="returned"))
        ctx.complete()

    def _refund(self, state: FulfilmentState, ctx: ProcessContext) -> None:
        if state.refund_requested or state.payment_id is None:
            return
        state.refund_requested = True
        ctx.send(RequestRefund(member_id=state.member_id, payment_id=state.payment_id))
