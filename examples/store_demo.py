"""A scripted tour of the event store on the embedded server.

Run with ``make demo`` (or ``python -m examples.store_demo``). Starts an
``nx-27017`` server on a file under ``.data/`` unless ``MONGODB_URI`` is set,
then appends, conflicts, retries and reads events, printing each step.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from decimal import Decimal
from pathlib import Path
from typing import ClassVar

from pymongo import AsyncMongoClient

from cqrs_kit import (
    ConcurrencyError,
    Event,
    EventMetadata,
    EventRegistry,
    EventStore,
    ExpectedVersion,
    NewEvent,
)
from cqrs_kit.testing import EmbeddedServer


class RentalRequested(Event):
    """A member asked to rent items."""

    event_type: ClassVar[str] = "rentals.RentalRequested"
    member_id: str
    skus: list[str]


class PaymentCharged(Event):
    """The member's card was charged."""

    event_type: ClassVar[str] = "rentals.PaymentCharged"
    amount: Decimal


registry = EventRegistry(RentalRequested, PaymentCharged)


async def tour(uri: str) -> None:
    """Walk through appends, a conflict, an idempotent retry and reads."""
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri)
    db = client[f"store_demo_{uuid.uuid4().hex[:6]}"]
    store = EventStore(db, registry)
    await store.ensure_indexes()
    rental = f"rental-{uuid.uuid4().hex[:8]}"
    meta = EventMetadata(correlation_id="demo-1", principal="member-42")

    first = await store.append(
        rental,
        [NewEvent(RentalRequested(member_id="member-42", skus=["DRESS-1"]), metadata=meta)],
        expected_version=ExpectedVersion.NO_STREAM,
    )
    print(f"1. opened {rental}: version {first.version}, position {first.position}")

    charge = [NewEvent(PaymentCharged(amount=Decimal("4980.00")), metadata=meta)]
    second = await store.append(rental, charge, expected_version=1)
    print(f"2. charged: version {second.version}, position {second.position}")

    retry = await store.append(rental, charge, expected_version=1)
    print(f"3. client retried the charge: replayed={retry.replayed}, still version {retry.version}")

    try:
        await store.append(rental, [PaymentCharged(amount=Decimal("1"))], expected_version=1)
    except ConcurrencyError as exc:
        print(f"4. stale writer refused: {exc}")

    print("5. the stream, in order:")
    async for recorded in store.read_stream(rental):
        print(f"   v{recorded.stream_version} @{recorded.position} {recorded.event!r}")
    print(f"6. head position of the log: {await store.head_position()}")
    await client.drop_database(db.name)
    await client.close()


def main() -> None:
    """Run the tour against MONGODB_URI or an embedded server."""
    uri = os.environ.get("MONGODB_URI")
    if uri:
        asyncio.run(tour(uri))
        return
    data = Path(".data")
    data.mkdir(exist_ok=True)
    with EmbeddedServer(data / "store-demo.db", workdir=data) as server:
        print(f"embedded nx-27017 on {server.uri}")
        asyncio.run(tour(server.uri))


if __name__ == "__main__":
    main()
