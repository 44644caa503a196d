"""The rental process over HTTP: reservations, payment, compensation, time, e-mails."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import cast

from cqrs_kit import Event, RecordedEvent
from cqrs_kit.routing import Delivery, IdempotencyStore
from examples.rental_service.events import RentalConfirmed, RentalUnitsReserved
from examples.rental_service.tests.conftest import SETTLED, Harness, HarnessFactory, eventually


async def _first(h: Harness, event_type: type[Event]) -> RecordedEvent:
    async for recorded in h.service.store.read_all(after=0):
        if isinstance(recorded.event, event_type):
            return recorded
    raise AssertionError(f"no {event_type.__name__} was recorded")


async def _request(h: Harness, headers: dict[str, str], *skus: str) -> str:
    accepted = await h.command("request-rental", {"skus": list(skus)}, headers, status=201)
    rental_id: str = accepted["location"].rsplit("/", 1)[1]
    return rental_id


async def test_two_members_race_for_the_last_unit_and_exactly_one_wins(
    on_each_backend: HarnessFactory,
) -> None:
    async with on_each_backend() as h:
        await h.stock("GOWN-1", units=1)
        _, ann = await h.member("Ann")
        _, bob = await h.member("Bob")

        first, second = await asyncio.gather(_request(h, ann, "GOWN-1"), _request(h, bob, "GOWN-1"))
        outcomes = [await h.settled(first), await h.settled(second)]

        statuses = sorted(row["status"] for row in outcomes)
        assert statuses == ["cancelled", "confirmed"]
        loser = next(row for row in outcomes if row["status"] == "cancelled")
        assert loser["reason"] == "out of stock: GOWN-1"
        catalog = await h.catalog("GOWN-1")
        assert (catalog["available"], catalog["reserved"]) == (0, 1)
        assert (await h.gateway())["charges"] == 1


async def test_a_failed_charge_is_retried_without_charging_twice(
    on_each_backend: HarnessFactory,
) -> None:
    async with on_each_backend() as h:
        await h.stock("COAT-1", price=7000)
        _, ann = await h.member("Ann")
        # The first call fails before charging; the second charges but its answer is lost.
        await h.client.post(
            "/admin/gateway", json={"fail_next": 1, "lose_next_response": 1}, headers=h.staff
        )

        rental = await h.settled(await _request(h, ann, "COAT-1"))

        assert rental["status"] == "confirmed"
        gateway = await h.gateway()
        assert gateway["charge_calls"] == 3
        assert (gateway["charges"], gateway["charged_amount"]) == (1, 7000)
        revenue = await h.get("/queries/revenue")
        assert [(d["charged"], d["charges"]) for d in revenue["items"]] == [(7000, 1)]


async def test_a_fraud_rejection_releases_the_reservation(on_mongomock: HarnessFactory) -> None:
    async with on_mongomock(fraud_max_amount=5000) as h:
        await h.stock("FUR-1", price=6000)
        _, ann = await h.member("Ann")

        rental = await h.settled(await _request(h, ann, "FUR-1"))

        assert rental["status"] == "cancelled"
        assert rental["reason"].startswith("payment rejected: fraud check: amount 6000")
        catalog = await eventually(lambda: _available(h, "FUR-1"), what="the unit to be released")
        assert (catalog["available"], catalog["reserved"]) == (1, 0)
        assert (await h.gateway())["charge_calls"] == 0


async def test_the_velocity_limit_rejects_before_charging(on_mongomock: HarnessFactory) -> None:
    async with on_mongomock(fraud_max_charges_per_hour=1) as h:
        await h.stock("TOP-1", units=2)
        _, ann = await h.member("Ann")
        first = await h.settled(await _request(h, ann, "TOP-1"))
        second = await h.settled(await _request(h, ann, "TOP-1"))

        assert first["status"] == "confirmed"
        assert second["status"] == "cancelled"
        assert "1 charges in the last hour" in second["reason"]
        assert (await h.gateway())["charge_calls"] == 1


async def _available(h: Harness, sku: str) -> dict[str, int] | None:
    catalog: dict[str, int] = await h.catalog(sku)
    return catalog if catalog["reserved"] == 0 else None


async def test_the_payment_timeout_releases_the_reservation_and_refunds_a_late_charge(
    on_mongomock: HarnessFactory,
) -> None:
    async with on_mongomock(payment_timeout=timedelta(minutes=15)) as h:
        await h.stock("SUIT-1", price=9000)
        _, ann = await h.member("Ann")
        await h.client.post("/admin/gateway", json={"fail_next": 1000}, headers=h.staff)
        rental_id = await _request(h, ann, "SUIT-1")
        await h.rental(rental_id, until=lambda r: r["status"] == "awaiting_payment")

        h.clock.advance(timedelta(minutes=15, seconds=1))
        rental = await h.settled(rental_id)

        assert (rental["status"], rental["reason"]) == ("cancelled", "payment timed out")
        await eventually(lambda: _available(h, "SUIT-1"), what="the unit to be released")
        assert (await h.gateway())["charges"] == 0

        # The gateway recovers and a retry of the charge lands after the cancellation:
        # the money is taken, and given back.
        await h.client.post("/admin/gateway", json={"fail_next": 0}, headers=h.staff)
        reserved = await _first(h, RentalUnitsReserved)
        await h.service.payments.charge(
            cast(RentalUnitsReserved, reserved.event),
            Delivery("charge-payment", reserved, 7, f"charge-payment:{reserved.event_id}"),
        )
        refunded = await eventually(lambda: h.mails("payment_refunded"), what="the refund e-mail")
        assert len(refunded) == 1
        gateway = await h.gateway()
        assert (gateway["charges"], gateway["refunds"]) == (1, 1)
        rental = await h.get(f"/queries/rental-board/{rental_id}")
        assert rental["status"] == "cancelled"


async def test_a_return_reminder_then_overdue_follow_the_clock(
    on_mongomock: HarnessFactory,
) -> None:
    async with on_mongomock(
        rental_period=timedelta(days=14), reminder_before=timedelta(days=2)
    ) as h:
        await h.stock("SKIRT-1")
        _, ann = await h.member("Ann")
        rental_id = await _request(h, ann, "SKIRT-1")
        assert (await h.settled(rental_id))["status"] == "confirmed"
        await h.command("ship-rental", {"rental_id": rental_id}, h.staff)

        h.clock.advance(timedelta(days=12, minutes=1))
        reminded = await h.rental(rental_id, until=lambda r: r["reminded"])
        assert reminded["status"] == "shipped"
        assert len(await eventually(lambda: h.mails("return_reminder"), what="reminder")) == 1

        h.clock.advance(timedelta(days=2))
        overdue = await h.rental(rental_id, until=lambda r: r["status"] == "overdue")
        assert overdue["overdue"] is True
        assert len(await eventually(lambda: h.mails("rental_overdue"), what="overdue mail")) == 1

        await h.command("return-rental", {"rental_id": rental_id}, ann)
        await h.rental(rental_id, until=lambda r: r["status"] == "returned")
        catalog = await eventually(lambda: _back(h, "SKIRT-1"), what="the unit back in stock")
        assert catalog["rented_out"] == 0


async def _back(h: Harness, sku: str) -> dict[str, int] | None:
    catalog: dict[str, int] = await h.catalog(sku)
    return catalog if catalog["available"] == 1 else None


async def test_one_email_per_event_even_when_the_event_is_delivered_again(
    on_mongomock: HarnessFactory,
) -> None:
    async with on_mongomock() as h:
        await h.stock("SCARF-1")
        _, ann = await h.member("Ann")
        rental_id = await _request(h, ann, "SCARF-1")
        assert (await h.settled(rental_id))["status"] in SETTLED
        await eventually(lambda: h.mails("rental_confirmed"), what="the confirmation e-mail")
        confirmed = await _first(h, RentalConfirmed)
        key = f"mail-confirmed:{confirmed.event_id}"
        runtime = h.service.worker.runtimes["mail-confirmed"]

        # A replay: the idempotency record says "done", so the handler is not called.
        await runtime.handle([confirmed], up_to=confirmed.position)
        # The idempotency records are pruned, then the event is replayed (or: a crash came
        # after the e-mail was queued but before "done" was recorded): the handler runs
        # again with the same key, and the outbox already holds the e-mail.
        assert await IdempotencyStore(h.service.database).prune(older_than=time.time() + 1)
        await runtime.handle([confirmed], up_to=confirmed.position)
        delivery = Delivery("mail-confirmed", confirmed, 3, key)
        await h.service.notifications.rental_confirmed(
            cast(RentalConfirmed, confirmed.event), delivery
        )
        await h.service.relay.send_pending()

        outbox = await h.get("/queries/outbox?template=rental_confirmed")
        assert [m["message_id"] for m in outbox["items"]] == [key]
        assert [m["message_id"] for m in await h.mails("rental_confirmed")] == [key]
