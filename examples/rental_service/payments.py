"""Payments: a payment account per member, the fraud rule, and the gateway subscribers.

The fraud rule is synchronous and sits *before* the gateway: authorising a
charge is a decision on the member's payment account (their recent charges
are its state), so two concurrent charges cannot both slip under the velocity
limit. Only an authorised payment reaches the gateway.

Calling the gateway is a side effect, so it happens in a routed subscriber,
never in a command handler (which may run more than once). The gateway is
called with the payment id as its idempotency key: when a call fails (the
gateway was unreachable, or it charged but the answer was lost), the
subscriber's retry calls it again with the same key, and the member is
charged once.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from cqrs_kit import Aggregate, Command, CommandBus, applies
from cqrs_kit.routing import Delivery
from examples.rental_service.clock import ServiceClock
from examples.rental_service.events import (
    PaymentAuthorized,
    PaymentCharged,
    PaymentRefunded,
    PaymentRejected,
    RefundRequested,
    RentalUnitsReserved,
)
from examples.rental_service.payments_gateway import FraudRule, GatewayDeclined, PaymentGateway

_COMMANDS = uuid.UUID("8d4e1b7a-92c3-5f60-a1d4-3e7b5c9f0a12")
PaymentStatus = Literal["authorized", "charged", "rejected", "refund_requested", "refunded"]


def payment_id_for(rental_id: str) -> str:
    """A rental is paid by one payment; its id is also the gateway's idempotency key."""
    return f"pay-{rental_id}"


class Payment(BaseModel):
    """One payment of a member."""

    rental_id: str
    amount: int
    status: PaymentStatus
    gateway_ref: str | None = None


class AccountState(BaseModel):
    """A member's payments and when they were authorised (for the velocity limit)."""

    payments: dict[str, Payment] = Field(default_factory=dict)
    authorized_at: list[datetime] = Field(default_factory=list)


class PaymentAccount(Aggregate[AccountState]):
    """The payments of one member."""

    stream_prefix = "payments-"

    def authorize(
        self, *, payment_id: str, rental_id: str, amount: int, at: datetime, rule: FraudRule
    ) -> None:
        """Run the fraud rule; record the authorisation or the rejection."""
        if payment_id in self.state.payments:
            return
        refusal = rule.check(amount=amount, recent_charges=self.state.authorized_at, now=at)
        if refusal is not None:
            self.record(
                PaymentRejected(
                    payment_id=payment_id,
                    rental_id=rental_id,
                    member_id=self.id,
                    amount=amount,
                    reason=f"fraud check: {refusal}",
                )
            )
            return
        self.record(
            PaymentAuthorized(
                payment_id=payment_id,
                rental_id=rental_id,
                member_id=self.id,
                amount=amount,
                authorized_at=at,
            )
        )

    def charged(self, payment_id: str, gateway_ref: str) -> None:
        """The gateway took the money."""
        payment = self.state.payments.get(payment_id)
        if payment is None or payment.status != "authorized":
            return
        self.record(
            PaymentCharged(
                payment_id=payment_id,
                rental_id=payment.rental_id,
                member_id=self.id,
                amount=payment.amount,
                gateway_ref=gateway_ref,
            )
        )

    def declined(self, payment_id: str, reason: str) -> None:
        """The gateway refused the card."""
        payment = self.state.payments.get(payment_id)
        if payment is None or payment.status != "authorized":
            return
        self.record(
            PaymentRejected(
                payment_id=payment_id,
                rental_id=payment.rental_id,
                member_id=self.id,
                amount=payment.amount,
                reason=reason,
            )
        )

    def request_refund(self, payment_id: str) -> None:
        """Ask for a charged payment to be given back."""
        payment = self.state.payments.get(payment_id)
        if payment is None or payment.status != "charged" or payment.gateway_ref is None:
            return
        self.record(
            RefundRequested(
                payment_id=payment_id,
                rental_id=payment.rental_id,
                member_id=self.id,
                amount=payment.amount,
                gateway_ref=payment.gateway_ref,
            )
        )

    def refunded(self, payment_id: str) -> None:
        """The gateway gave the money back."""
        payment = self.state.payments.get(payment_id)
        if payment is None or payment.status != "refund_requested":
            return
        self.record(
            PaymentRefunded(
                payment_id=payment_id,
                rental_id=payment.rental_id,
                member_id=self.id,
                amount=payment.amount,
            )
        )

    # -- state --------------------------------------------------------------------------------

    @applies(PaymentAuthorized)
    def _authorized(self, event: PaymentAuthorized) -> None:
        self.state.payments[event.payment_id] = Payment(
            rental_id=event.rental_id, amount=event.amount, status="authorized"
        )
        # Only the last hour matters to the fraud rule; older times are dropped.
        recent = [
            t for t in self.state.authorized_at if event.authorized_at - t < timedelta(hours=1)
        ]
        self.state.authorized_at = [*recent, event.authorized_at]

    @applies(PaymentRejected)
    def _rejected(self, event: PaymentRejected) -> None:
        self.state.payments[event.payment_id] = Payment(
            rental_id=event.rental_id, amount=event.amount, status="rejected"
        )

    @applies(PaymentCharged)
    def _charged(self, event: PaymentCharged) -> None:
        payment = self.state.payments[event.payment_id]
        payment.status = "charged"
        payment.gateway_ref = event.gateway_ref

    @applies(RefundRequested)
    def _refund_requested(self, event: RefundRequested) -> None:
        self.state.payments[event.payment_id].status = "refund_requested"

    @applies(PaymentRefunded)
    def _refunded(self, event: PaymentRefunded) -> None:
        self.state.payments[event.payment_id].status = "refunded"


# -- commands ---------------------------------------------------------------------------------


class AccountCommand(Command):
    """A command about one member's payment account."""

    member_id: str
    payment_id: str

    @property
    def aggregate_id(self) -> str:
        """The member whose account it is."""
        return self.member_id


class AuthorizePayment(AccountCommand):
    """Run the fraud rule for a charge."""

    rental_id: str
    amount: int
    at: datetime


class RecordCharge(AccountCommand):
    """The gateway charged."""

    gateway_ref: str


class RecordDecline(AccountCommand):
    """The gateway declined."""

    reason: str


class RequestRefund(AccountCommand):
    """Give a charge back (rental process)."""


class RecordRefund(AccountCommand):
    """The gateway refunded."""


def register_payment_handlers(bus: CommandBus, *, rule: FraudRule) -> None:
    """Route the payment commands to the payment account."""

    def authorize(command: AuthorizePayment, account: PaymentAccount) -> None:
        account.authorize(
            payment_id=command.payment_id,
            rental_id=command.rental_id,
            amount=command.amount,
            at=command.at,
            rule=rule,
        )

    bus.register(AuthorizePayment, authorize, aggregate=PaymentAccount)
    bus.register(
        RecordCharge, lambda c, a: a.charged(c.payment_id, c.gateway_ref), aggregate=PaymentAccount
    )
    bus.register(
        RecordDecline, lambda c, a: a.declined(c.payment_id, c.reason), aggregate=PaymentAccount
    )
    bus.register(
        RequestRefund, lambda c, a: a.request_refund(c.payment_id), aggregate=PaymentAccount
    )
    bus.register(RecordRefund, lambda c, a: a.refunded(c.payment_id), aggregate=PaymentAccount)


# -- the subscribers that talk to the gateway -------------------------------------------------


def _command_id(delivery: Delivery, step: str) -> uuid.UUID:
    # Derived from the delivery's idempotency key, so a redelivery or retry sends the
    # same commands and the bus answers them with their first results.
    return uuid.uuid5(_COMMANDS, f"{delivery.idempotency_key}:{step}")


class Payments:
    """Charges and refunds through the gateway, driven by events (see ``routes.yaml``).

    ``RentalService`` builds it with its parts and hands it to the routing file's
    loader; built without them (as ``cqrs-kit routes show`` does, to list the
    handlers) it can be inspected but not run.

    Args:
        bus: The command bus.
        gateway: The payment gateway adapter.
        clock: The service clock (the fraud rule's "now").
    """

    def __init__(
        self,
        bus: CommandBus | None = None,
        gateway: PaymentGateway | None = None,
        clock: ServiceClock | None = None,
    ) -> None:
        self._bus = bus
        self._gateway = gateway
        self._clock = clock

    def _parts(self) -> tuple[CommandBus, PaymentGateway, ServiceClock]:
        if self._bus is None or self._gateway is None or self._clock is None:
            raise RuntimeError("Payments was built without its bus, gateway and clock")
        return self._bus, self._gateway, self._clock

    async def charge(self, event: RentalUnitsReserved, delivery: Delivery) -> None:
        """Authorise, then charge the member for a rental whose units are reserved.

        Raises:
            GatewayUnavailable: The gateway failed; the delivery is retried with the
                same idempotency key.
        """
        bus, gateway, clock = self._parts()
        payment_id = payment_id_for(event.rental_id)
        await bus.dispatch(
            AuthorizePayment(
                command_id=_command_id(delivery, "authorize"),
                member_id=event.member_id,
                payment_id=payment_id,
                rental_id=event.rental_id,
                amount=event.amount,
                at=clock.now(),
            )
        )
        account = await bus.repository(PaymentAccount).load(event.member_id)
        payment = account.state.payments.get(payment_id)
        if payment is None or payment.status != "authorized":
            return  # rejected by the fraud rule, or charged by an earlier delivery
        try:
            ref = await gateway.charge(
                idempotency_key=payment_id, member_id=event.member_id, amount=event.amount
            )
        except GatewayDeclined as exc:
            await bus.dispatch(
                RecordDecline(
                    command_id=_command_id(delivery, "decline"),
                    member_id=event.member_id,
                    payment_id=payment_id,
                    reason=str(exc),
                )
            )
            return
        await bus.dispatch(
            RecordCharge(
                command_id=_command_id(delivery, "charge"),
                member_id=event.member_id,
                payment_id=payment_id,
                gateway_ref=ref,
            )
        )

    async def refund(self, event: RefundRequested, delivery: Delivery) -> None:
        """Give a charge back through the gateway."""
        bus, gateway, _ = self._parts()
        await gateway.refund(
            idempotency_key=f"refund-{event.payment_id}",
            gateway_ref=event.gateway_ref,
            amount=event.amount,
        )
        await bus.dispatch(
            RecordRefund(
                command_id=_command_id(delivery, "refund"),
                member_id=event.member_id,
                payment_id=event.payment_id,
            )
        )
