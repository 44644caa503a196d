"""The payment gateway port, a fake adapter with injectable failures, and the fraud rule."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol


class GatewayUnavailable(Exception):
    """The gateway could not be reached; retrying may succeed."""


class GatewayDeclined(Exception):
    """The gateway refused the card; retrying will not help."""


class PaymentGateway(Protocol):
    """What the payments context needs from a card processor."""

    async def charge(self, *, idempotency_key: str, member_id: str, amount: Decimal) -> str:
        """Charge once per ``idempotency_key``; returns the gateway's reference."""
        ...

    async def refund(self, *, idempotency_key: str, gateway_ref: str, amount: Decimal) -> str:
        """Refund once per ``idempotency_key``."""
        ...


@dataclass
class FakeGateway:
    """An in-memory gateway that honours idempotency keys, like real processors do.

    Attributes:
        fail_next: How many upcoming calls fail with ``GatewayUnavailable``.
        decline_members: Members whose cards are declined.
        charges: Every distinct charge taken, by idempotency key.
    """

    fail_next: int = 0
    decline_members: set[str] = field(default_factory=set)
    charges: dict[str, tuple[str, Decimal]] = field(default_factory=dict)
    refunds: dict[str, Decimal] = field(default_factory=dict)
    calls: int = 0

    async def charge(self, *, idempotency_key: str, member_id: str, amount: Decimal) -> str:
        """Charge, or return the earlier charge for the same key."""
        self.calls += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            raise GatewayUnavailable("gateway timed out")
        if idempotency_key in self.charges:
            return self.charges[idempotency_key][0]
        if member_id in self.decline_members:
            raise GatewayDeclined("card declined")
        ref = f"ch_{uuid.uuid4().hex[:12]}"
        self.charges[idempotency_key] = (ref, amount)
        return ref

    async def refund(self, *, idempotency_key: str, gateway_ref: str, amount: Decimal) -> str:
        """Refund, once per key."""
        self.calls += 1
        self.refunds.setdefault(idempotency_key, amount)
        return f"re_{gateway_ref}"


@dataclass(frozen=True)
class FraudRule:
    """Synchronous checks before any money moves: fraud needs an answer, not an event.

    Attributes:
        max_amount: Largest single charge.
        max_charges_per_hour: Charges per member in a sliding hour.
    """

    max_amount: Decimal
    max_charges_per_hour: int

    def check(
        self, *, amount: Decimal, recent_charges: list[datetime], now: datetime
    ) -> str | None:
        """Return why the charge is refused, or ``None`` if it may proceed."""
        if amount > self.max_amount:
            return f"amount {amount} is above the limit of {self.max_amount}"
        window = [t for t in recent_charges if now - t < timedelta(hours=1)]
        if len(window) >= self.max_charges_per_hour:
            return f"{len(window)} charges in the last hour (limit {self.max_charges_per_hour})"
        return None
