"""The write model's rules, given/when/then, in memory (no database)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from cqrs_kit import CommandMetadata
from cqrs_kit.testing import InMemoryEventStore, Scenario
from examples.rental_service.events import (
    ItemListed,
    MemberSignedUp,
    PaymentAuthorized,
    PaymentCharged,
    PaymentRejected,
    RefundRequested,
    RentalCancelled,
    RentalConfirmed,
    RentalOverdue,
    RentalRequested,
    RentalShipped,
    RentalUnitsReserved,
    ReservationRefused,
    ReturnReminderDue,
    StockReceived,
    UnitReleased,
    UnitReserved,
)
from examples.rental_service.inventory import (
    ItemAlreadyListed,
    ListItem,
    ReceiveStock,
    ReleaseUnit,
    ReserveUnit,
    RetireUnit,
    UnitNotAvailable,
)
from examples.rental_service.members import Directory, EmailTaken, SignUp, member_id_for
from examples.rental_service.payments import AuthorizePayment, RequestRefund
from examples.rental_service.rentals import (
    ConfirmRental,
    ExpirePayment,
    InvalidRentalState,
    MarkOverdue,
    RemindReturn,
    RentalNotFound,
    RequestRental,
    ReturnRental,
    ShipRental,
    TooManyItems,
    UnknownItems,
)
from examples.rental_service.service import build_bus
from examples.rental_service.settings import Settings

ANN = member_id_for("ann@example.com")
BOB = member_id_for("bob@example.com")
NOW = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
DUE = NOW + timedelta(days=14)


def _signed_up(member_id: str, email: str, role: str = "member") -> MemberSignedUp:
    return MemberSignedUp(
        member_id=member_id, email=email, name=email[:3].title(), role=role, password_hash="x"
    )


def _directory_store() -> InMemoryEventStore:
    """The streams other aggregates are looked up in: two members and one item."""
    store = InMemoryEventStore()

    async def seed() -> None:
        await store.append(f"member-{ANN}", [_signed_up(ANN, "ann@example.com")])
        await store.append(f"member-{BOB}", [_signed_up(BOB, "bob@example.com")])
        await store.append(
            "item-DRESS-1",
            [ItemListed(sku="DRESS-1", name="Dress", category="dress", size="M", price=4800)],
        )

    asyncio.run(seed())
    return store


LOOKUPS = _directory_store()
scenario = Scenario(
    build_bus(
        LOOKUPS,
        Settings(_env_file=None, max_items_per_rental=2, fraud_max_amount=10_000),
        Directory(LOOKUPS),
    )
)
as_ann = CommandMetadata(principal=ANN)
as_bob = CommandMetadata(principal=BOB)

LISTED = ItemListed(sku="DRESS-1", name="Dress", category="dress", size="M", price=4800)
TWO_UNITS = StockReceived(sku="DRESS-1", category="dress", unit_ids=["DRESS-1-001", "DRESS-1-002"])


def _reserved(unit: str, rental: str) -> UnitReserved:
    return UnitReserved(sku="DRESS-1", category="dress", unit_id=unit, rental_id=rental, price=4800)


# -- members ----------------------------------------------------------------------------------


def test_an_email_address_signs_up_once() -> None:
    sign_up = SignUp(email="Ann@Example.com", name="Ann", password_hash="h")
    scenario.when(sign_up).then(
        MemberSignedUp(
            member_id=ANN, email="ann@example.com", name="Ann", role="member", password_hash="h"
        )
    )


def test_signing_up_twice_is_refused() -> None:
    scenario.given(_signed_up(ANN, "ann@example.com")).when(
        SignUp(email="ann@example.com", name="Ann", password_hash="h")
    ).then_raises(EmailTaken)


# -- inventory --------------------------------------------------------------------------------


def test_units_are_numbered_on_from_the_last_delivery() -> None:
    scenario.given(LISTED, TWO_UNITS).when(ReceiveStock(sku="DRESS-1", quantity=1)).then(
        StockReceived(sku="DRESS-1", category="dress", unit_ids=["DRESS-1-003"])
    )


def test_an_item_is_listed_once() -> None:
    scenario.given(LISTED).when(
        ListItem(sku="DRESS-1", name="Dress", category="dress", size="M", price=1)
    ).then_raises(ItemAlreadyListed)


def test_a_reservation_takes_the_first_free_unit() -> None:
    scenario.given(LISTED, TWO_UNITS, _reserved("DRESS-1-001", "r-1")).when(
        ReserveUnit(sku="DRESS-1", rental_id="r-2")
    ).then(_reserved("DRESS-1-002", "r-2"))


def test_reserving_again_for_the_same_rental_records_nothing() -> None:
    scenario.given(LISTED, TWO_UNITS, _reserved("DRESS-1-001", "r-1")).when(
        ReserveUnit(sku="DRESS-1", rental_id="r-1")
    ).then()


def test_without_a_free_unit_the_reservation_is_refused() -> None:
    scenario.given(
        LISTED, TWO_UNITS, _reserved("DRESS-1-001", "r-1"), _reserved("DRESS-1-002", "r-2")
    ).when(ReserveUnit(sku="DRESS-1", rental_id="r-3")).then(
        ReservationRefused(sku="DRESS-1", category="dress", rental_id="r-3", reason="out of stock")
    )


def test_releasing_gives_the_unit_back_and_says_what_it_was() -> None:
    scenario.given(LISTED, TWO_UNITS, _reserved("DRESS-1-002", "r-1")).when(
        ReleaseUnit(sku="DRESS-1", rental_id="r-1", reason="cancelled")
    ).then(
        UnitReleased(
            sku="DRESS-1",
            category="dress",
            unit_id="DRESS-1-002",
            rental_id="r-1",
            reason="cancelled",
            was="reserved",
        )
    )


def test_a_reserved_unit_cannot_be_retired() -> None:
    error = (
        scenario.given(LISTED, TWO_UNITS, _reserved("DRESS-1-001", "r-1"))
        .when(RetireUnit(sku="DRESS-1", unit_id="DRESS-1-001"))
        .then_raises(UnitNotAvailable)
    )
    assert error.status == "reserved"


# -- rentals ----------------------------------------------------------------------------------

REQUESTED = RentalRequested(
    rental_id="r-1",
    member_id=ANN,
    member_email="ann@example.com",
    member_name="Ann",
    skus=["DRESS-1"],
)
RESERVED = RentalUnitsReserved(
    rental_id="r-1", member_id=ANN, units={"DRESS-1": "DRESS-1-001"}, amount=4800
)
CONFIRMED = RentalConfirmed(
    rental_id="r-1", member_id=ANN, payment_id="pay-r-1", amount=4800, due_at=DUE
)
SHIPPED = RentalShipped(rental_id="r-1", member_id=ANN, shipped_by="staff")


def test_a_member_requests_a_rental_of_listed_items() -> None:
    scenario.when(RequestRental(rental_id="r-1", skus=["DRESS-1"], metadata=as_ann)).then(REQUESTED)


@pytest.mark.parametrize(
    ("skus", "error"),
    [(["DRESS-1", "GHOST-1"], UnknownItems), (["A-1", "B-1", "C-1"], TooManyItems)],
)
def test_a_request_names_listed_items_within_the_limit(
    skus: list[str], error: type[Exception]
) -> None:
    scenario.when(RequestRental(rental_id="r-1", skus=skus, metadata=as_ann)).then_raises(error)


def test_the_payment_timeout_cancels_an_unpaid_rental() -> None:
    scenario.given(REQUESTED, RESERVED).when(ExpirePayment(rental_id="r-1")).then(
        RentalCancelled(rental_id="r-1", member_id=ANN, reason="payment timed out")
    )


def test_the_payment_timeout_does_nothing_once_paid() -> None:
    scenario.given(REQUESTED, RESERVED, CONFIRMED).when(ExpirePayment(rental_id="r-1")).then()


def test_a_payment_after_cancellation_does_not_confirm() -> None:
    cancelled = RentalCancelled(rental_id="r-1", member_id=ANN, reason="payment timed out")
    scenario.given(REQUESTED, RESERVED, cancelled).when(
        ConfirmRental(rental_id="r-1", payment_id="pay-r-1", amount=4800, due_at=DUE)
    ).then()


def test_only_a_confirmed_rental_ships() -> None:
    scenario.given(REQUESTED, RESERVED).when(ShipRental(rental_id="r-1")).then_raises(
        InvalidRentalState
    )


def test_another_members_rental_does_not_exist_for_them() -> None:
    scenario.given(REQUESTED, RESERVED, CONFIRMED, SHIPPED).when(
        ReturnRental(rental_id="r-1", metadata=as_bob)
    ).then_raises(RentalNotFound)


def test_the_reminder_goes_out_once_and_overdue_follows() -> None:
    reminder = ReturnReminderDue(rental_id="r-1", member_id=ANN, due_at=DUE)
    scenario.given(REQUESTED, RESERVED, CONFIRMED, SHIPPED).when(
        RemindReturn(rental_id="r-1")
    ).then(reminder)
    scenario.given(REQUESTED, RESERVED, CONFIRMED, SHIPPED, reminder).when(
        RemindReturn(rental_id="r-1")
    ).then()
    scenario.given(REQUESTED, RESERVED, CONFIRMED, SHIPPED, reminder).when(
        MarkOverdue(rental_id="r-1")
    ).then(RentalOverdue(rental_id="r-1", member_id=ANN, due_at=DUE))


# -- payments ---------------------------------------------------------------------------------


def _authorize(rental: str, amount: int, at: datetime) -> AuthorizePayment:
    return AuthorizePayment(
        member_id=ANN, payment_id=f"pay-{rental}", rental_id=rental, amount=amount, at=at
    )


def _authorized(rental: str, amount: int, at: datetime) -> PaymentAuthorized:
    return PaymentAuthorized(
        payment_id=f"pay-{rental}", rental_id=rental, member_id=ANN, amount=amount, authorized_at=at
    )


def test_the_fraud_rule_rejects_a_charge_above_the_limit() -> None:
    scenario.when(_authorize("r-1", 10_001, NOW)).then(
        PaymentRejected(
            payment_id="pay-r-1",
            rental_id="r-1",
            member_id=ANN,
            amount=10_001,
            reason="fraud check: amount 10001 is above the limit of 10000",
        )
    )


def test_the_velocity_limit_counts_the_last_hour_only() -> None:
    five = [_authorized(f"r-{n}", 100, NOW - timedelta(minutes=50 - n)) for n in range(5)]
    rejected = scenario.given(*five, stream_id=f"payments-{ANN}").when(_authorize("r-9", 100, NOW))
    rejected.then(
        PaymentRejected(
            payment_id="pay-r-9",
            rental_id="r-9",
            member_id=ANN,
            amount=100,
            reason="fraud check: 5 charges in the last hour (limit 5)",
        )
    )
    later = NOW + timedelta(minutes=15)
    scenario.given(*five, stream_id=f"payments-{ANN}").when(_authorize("r-9", 100, later)).then(
        _authorized("r-9", 100, later)
    )


def test_a_refund_is_requested_once_for_a_charged_payment() -> None:
    charged = PaymentCharged(
        payment_id="pay-r-1", rental_id="r-1", member_id=ANN, amount=4800, gateway_ref="ch_1"
    )
    refund = RefundRequested(
        payment_id="pay-r-1", rental_id="r-1", member_id=ANN, amount=4800, gateway_ref="ch_1"
    )
    authorized = _authorized("r-1", 4800, NOW)
    scenario.given(authorized, charged).when(
        RequestRefund(member_id=ANN, payment_id="pay-r-1")
    ).then(refund)
    scenario.given(authorized, charged, refund).when(
        RequestRefund(member_id=ANN, payment_id="pay-r-1")
    ).then()
