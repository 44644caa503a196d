"""The payment gateway port, a fake adapter with injectable failures, and the fraud rule."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

from pymongo.errors import DuplicateKeyError

_STATE: Final = "state"


class GatewayUnavailable(Exception):
    """The gateway could not be reached, or its answer was lost; retrying may succeed."""


class GatewayDeclined(Exception):
    """The gateway refused the card; retrying will not help."""


class PaymentGateway(Protocol):
    """What the payments context needs from a card processor."""

    async def charge(self, *, idempotency_key: str, member_id: str, amount: int) -> str:
        """Charge once per ``idempotency_key``; returns the gateway's reference."""
        ...

    async def refund(self, *, idempotency_key: str, gateway_ref: str, amount: int) -> str:
        """Refund once per ``idempotency_key``; returns the refund's reference."""
        ...


class FakeGateway:
    """A gateway double that keeps its books in the service's database, as a processor would.

    It honours idempotency keys (one charge per key, however often it is called),
    and its state survives a restart of the service, so "how many charges were
    really taken" can be checked after a crash. Failures can be injected, which is
    what demos and tests use:

    * ``fail_next``: the next N charge calls fail before charging (unreachable);
    * ``lose_next_response``: the next N charge calls *do* charge, but the answer is
      lost and the caller sees a failure; a retry with the same key must not charge
      again, and does not;
    * ``declined_members``: charges for these members are declined for good.

    Args:
        database: A driver database; the gateway uses collections named ``prefix_*``.
        prefix: Collection name prefix.
    """

    def __init__(self, database: Any, *, prefix: str = "fake_gateway") -> None:
        self._state = database[f"{prefix}_state"]
        self._charges = database[f"{prefix}_charges"]
        self._refunds = database[f"{prefix}_refunds"]

    async def _take(self, counter: str) -> bool:
        """Use up one injected failure of kind ``counter``, if any is pending (atomically)."""
        taken = await self._state.find_one_and_update(
            {"_id": _STATE, counter: {"$gt": 0}}, {"$inc": {counter: -1}}
        )
        return taken is not None

    async def charge(self, *, idempotency_key: str, member_id: str, amount: int) -> str:
        """Charge, or return the earlier charge made under the same key."""
        await self._state.update_one({"_id": _STATE}, {"$inc": {"charge_calls": 1}}, upsert=True)
        if await self._take("fail_next"):
            raise GatewayUnavailable("gateway timed out before charging")
        earlier = await self._charges.find_one({"_id": idempotency_key})
        if earlier is not None:
            return str(earlier["ref"])
        state = await self._state.find_one({"_id": _STATE}) or {}
        if member_id in state.get("declined_members", []):
            raise GatewayDeclined("card declined")
        ref = f"ch_{uuid.uuid4().hex[:12]}"
        try:
            await self._charges.insert_one(
                {"_id": idempotency_key, "ref": ref, "member_id": member_id, "amount": amount}
            )
        except DuplicateKeyError:  # a concurrent call with the same key won
            winner = await self._charges.find_one({"_id": idempotency_key})
            assert winner is not None
            return str(winner["ref"])
        if await self._take("lose_next_response"):
            raise GatewayUnavailable("gateway charged, but the answer was lost")
        return ref

    async def refund(self, *, idempotency_key: str, gateway_ref: str, amount: int) -> str:
        """Refund, once per key."""
        with contextlib.suppress(DuplicateKeyError):
            await self._refunds.insert_one(
                {"_id": idempotency_key, "charge_ref": gateway_ref, "amount": amount}
            )
        return f"re_{gateway_ref}"

    async def inject(
        self,
        *,
        fail_next: int | None = None,
        lose_next_response: int | None = None,
        declined_members: Iterable[str] | None = None,
    ) -> None:
        """Set the pending injected failures (``None`` leaves one as it is)."""
        changes: dict[str, Any] = {}
        if fail_next is not None:
            changes["fail_next"] = fail_next
        if lose_next_response is not None:
            changes["lose_next_response"] = lose_next_response
        if declined_members is not None:
            changes["declined_members"] = sorted(set(declined_members))
        if changes:
            await self._state.update_one({"_id": _STATE}, {"$set": changes}, upsert=True)

    async def snapshot(self) -> dict[str, Any]:
        """The gateway's books and pending injected failures (the admin endpoint's answer)."""
        state = await self._state.find_one({"_id": _STATE}) or {}
        charges = await self._charges.find({}).to_list(None)
        refunds = await self._refunds.count_documents({})
        return {
            "charges": len(charges),
            "charge_calls": int(state.get("charge_calls", 0)),
            "charged_amount": sum(int(c["amount"]) for c in charges),
            "refunds": refunds,
            "fail_next": int(state.get("fail_next", 0)),
            "lose_next_response": int(state.get("lose_next_response", 0)),
            "declined_members": list(state.get("declined_members", [])),
        }


@dataclass(frozen=True)
class FraudRule:
    """Synchronous checks before any money moves: fraud needs an answer, not an event.

    Attributes:
        max_amount: Largest single charge, in yen.
        max_charges_per_hour: Charges per member in a sliding hour.
    """

    max_amount: int
    max_charges_per_hour: int

    def check(
        self, *, amount: int, recent_charges: Sequence[datetime], now: datetime
    ) -> str | None:
        """Return why the charge is refused, or ``None`` if it may proceed."""
        if amount > self.max_amount:
            return f"amount {amount} is above the limit of {self.max_amount}"
        window = [t for t in recent_charges if timedelta(0) <= now - t < timedelta(hours=1)]
        if len(window) >= self.max_charges_per_hour:
            return f"{len(window)} charges in the last hour (limit {self.max_charges_per_hour})"
        return None
