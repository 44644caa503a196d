"""SIGKILL the service between a command and its downstream effects; nothing is lost or doubled.

"Nothing lost or doubled" means, after each restart on the same database: the member was
charged exactly once, the event log holds each fact of the rental once, every e-mail was
written once per event and sent, and each read model equals a fresh rebuild of it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from rich.console import Console

from cqrs_kit import EventStore
from cqrs_kit.testing import EmbeddedServer
from examples.rental_service.events import build_registry
from examples.rental_service.scenario import (
    RentalScenario,
    Report,
    rebuild_with_cli,
    rental_id_of,
    strip_volatile,
)
from examples.rental_service.tests.e2e.client import (
    Account,
    Document,
    ServiceClient,
    eventually,
)
from examples.rental_service.tests.e2e.service_process import ServiceFactory

pytestmark = pytest.mark.slow


async def facts_about(uri: str, database: str, rental_id: str) -> Counter[str]:
    """How many events of each type the log holds about ``rental_id``."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    try:
        store = EventStore(client[database], build_registry())
        counts: Counter[str] = Counter()
        async for recorded in store.read_all(after=0):
            if recorded.data.get("rental_id") == rental_id:
                counts[recorded.event_type] += 1
        return counts
    finally:
        await client.close()


async def test_a_killed_service_resumes_without_losing_or_repeating_effects(
    make_service: ServiceFactory, e2e_mongo: EmbeddedServer
) -> None:
    # The retry of a failed charge waits 3 s: the window in which the service is killed.
    # Restarts take a while: the rental must not fall due meanwhile.
    service = make_service(PAYMENT_RETRY_DELAY="3", RENTAL_PERIOD="3600").start()
    database = service.settings["DATABASE"]
    async with ServiceClient(service.base_url) as client:
        scenario = RentalScenario(client, Report(Console(width=120, highlight=False)))
        cast = await scenario.sign_up_members()
        await scenario.stock_catalog(cast)

        # 1. The gateway takes the money and the answer is lost; the service dies before
        #    its retry. After the restart the retry must find the earlier charge.
        await client.inject_gateway_failures(cast.staff, lose_next_response=1)
        accepted = await client.command(cast.ann, "request-rental", {"skus": [scenario.dress]})
        rental_id = rental_id_of(accepted)

        async def charged() -> Document | None:
            state = await client.gateway(cast.staff)
            return state if state["charges"] == 1 else None

        await eventually(charged, "the gateway charged once (and lost its answer)")
        service.kill()
        service.start()
        await scenario.wait_event(
            cast.staff, accepted["stream_id"], accepted["position"], "rentals.RentalConfirmed"
        )
        gateway = await client.gateway(cast.staff)
        assert (gateway["charges"], gateway["charge_calls"]) == (1, 2), gateway

        # 2. Killed right after a command was accepted, before its projections, e-mail and
        #    board row could follow.
        shipped = await client.command(cast.staff, "ship-rental", {"rental_id": rental_id})
        service.kill()
        service.start()
        row = await client.read(
            cast.staff, "rental-board", rental_id, min_position=shipped["position"]
        )
        assert row["status"] == "shipped"

        returned = await client.command(cast.ann, "return-rental", {"rental_id": rental_id})
        mine = await client.read(
            cast.ann, "my-rentals", rental_id, min_position=returned["position"]
        )
        assert mine["status"] == "returned"

        expected = ["rental_confirmed", "rental_returned", "rental_shipped"]

        async def written() -> list[str] | None:
            # The notification subscriber may still be taking over its lease.
            rows = await client.list_all(cast.staff, "outbox")
            found = sorted(m["template"] for m in rows if m["rental_id"] == rental_id)
            return found if len(found) >= len(expected) else None

        await eventually(written, "the rental's three e-mails are in the outbox")
        outbox = await scenario.all_mail_sent(cast)
        templates = sorted(m["template"] for m in outbox if m["rental_id"] == rental_id)
        assert templates == expected
        sent = [m["message_id"] for m in (await client.mail(cast.staff))["sent"]]
        assert sorted(sent) == sorted(m["message_id"] for m in outbox), "each e-mail sent once"

        facts = await facts_about(e2e_mongo.uri, database, rental_id)
        assert all(count == 1 for count in facts.values()), facts
        for fact in (
            "rentals.RentalRequested",
            "rentals.RentalUnitsReserved",
            "payments.PaymentCharged",
            "rentals.RentalConfirmed",
            "rentals.RentalShipped",
            "rentals.RentalReturned",
        ):
            assert facts[fact] == 1, (fact, facts)
        assert (await client.gateway(cast.staff))["charges"] == 1

        # 3. Every read model equals a rebuild from the log (the rebuilds run side by side).
        settled = await scenario.settled_position(cast.staff)
        before = [await snapshot(client, cast.staff, m, key, settled) for m, _, key in READ_MODELS]
        await asyncio.gather(
            *(
                rebuild_with_cli(
                    projection,
                    uri=e2e_mongo.uri,
                    database=database,
                    console=scenario.report.console,
                    drop_grace=0,
                )
                for _, projection, _ in READ_MODELS
            )
        )
        after = [await snapshot(client, cast.staff, m, key, settled) for m, _, key in READ_MODELS]
        for (read_model, _, _), old, new in zip(READ_MODELS, before, after, strict=True):
            assert new == old, read_model


#: (HTTP read model, projection name for the CLI, document id field)
READ_MODELS = [
    ("rental-board", "rental_board", "rental_id"),
    ("my-rentals", "member_rentals", "rental_id"),
    ("catalog", "catalog", "sku"),
    ("revenue", "revenue", "day"),
    ("utilisation", "utilisation", "category"),
]


async def snapshot(
    client: ServiceClient, staff: Account, read_model: str, key: str, position: int
) -> list[Document]:
    rows = await client.list_all(staff, read_model, min_position=position)
    return strip_volatile(sorted(rows, key=lambda r: str(r[key])))
