"""Notifications: one handler per notifiable event, an outbox, and a fake mail sender.

Each handler turns its event into one e-mail and *enqueues* it in the
``outbox`` collection under the delivery's idempotency key (``<subscriber>:<event
id>``) with an insert-if-absent upsert. A redelivered event (a crash after the
handler ran, a replay, a lease takeover) therefore finds its e-mail already
there and enqueues nothing: one e-mail per event. A separate relay sends
what is pending through the mail sender, claiming each e-mail before sending
it (see :class:`MailRelay`). The fake sender logs every call without
deduplicating, so a duplicate would be visible in ``GET /admin/mail``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from cqrs_kit.routing import Delivery
from examples.rental_service.clock import ServiceClock
from examples.rental_service.events import (
    PaymentRefunded,
    RentalCancelled,
    RentalConfirmed,
    RentalOverdue,
    RentalReturned,
    RentalShipped,
    ReturnReminderDue,
)
from examples.rental_service.members import Directory
from examples.rental_service.read_models import UtcDatetime

log = logging.getLogger("rental_service.notifications")

#: The collection e-mails wait in until the relay has sent them.
OUTBOX = "outbox"


class OutboxMessage(BaseModel):
    """One e-mail, as stored in the outbox and served by the ``outbox`` read model."""

    message_id: str
    member_id: str
    to: str
    template: str
    subject: str
    body: str
    event_type: str
    event_id: str
    rental_id: str | None = None
    created_at: UtcDatetime
    claimed_at: UtcDatetime | None = None
    sent_at: UtcDatetime | None = None


class SentMail(BaseModel):
    """One call of the fake mail sender."""

    message_id: str
    to: str
    subject: str
    template: str
    at: UtcDatetime


class FakeMailSender:
    """A mail API double that records every send call in the service's database.

    It does *not* deduplicate, so a message sent twice shows up twice: what the
    outbox and relay promise (one e-mail per event) is visible in its log. The
    log survives a restart of the service, like a provider's would.

    Args:
        database: A driver database; the log is the ``fake_mail`` collection.
        clock: Stamps each call.
    """

    def __init__(self, database: Any, clock: ServiceClock) -> None:
        self._log = database["fake_mail"]
        self.clock = clock

    async def send(
        self, *, message_id: str, to: str, subject: str, body: str, template: str
    ) -> None:
        """Send one e-mail."""
        await self._log.insert_one(
            {
                "message_id": message_id,
                "to": to,
                "subject": subject,
                "body": body,
                "template": template,
                "at": self.clock.now(),
            }
        )
        log.info("mail to %s: %s", to, subject)

    async def sent(self) -> list[SentMail]:
        """Every send call, oldest first."""
        docs = await self._log.find({}).sort([("at", 1), ("_id", 1)]).to_list(None)
        return [SentMail.model_validate(doc) for doc in docs]


class Notifications:
    """The notification subscribers (``routes.yaml`` names one method per event).

    Built without its parts (as ``cqrs-kit routes show`` does) it can be inspected
    but not run.

    Args:
        database: The driver database holding the outbox.
        directory: Where member e-mail addresses come from.
        clock: The service clock.
    """

    def __init__(
        self,
        database: Any = None,
        directory: Directory | None = None,
        clock: ServiceClock | None = None,
    ) -> None:
        self._outbox = None if database is None else database[OUTBOX]
        self._directory = directory
        self._clock = clock

    async def enqueue(
        self,
        delivery: Delivery,
        *,
        member_id: str,
        template: str,
        subject: str,
        body: str,
        rental_id: str | None,
    ) -> None:
        """Put one e-mail in the outbox, once per delivery key."""
        if self._outbox is None or self._directory is None or self._clock is None:
            raise RuntimeError("Notifications was built without its database, directory and clock")
        member = await self._directory.get(member_id)
        if member is None:
            log.warning("no member %s; dropping %s e-mail", member_id, template)
            return
        message = OutboxMessage(
            message_id=delivery.idempotency_key,
            member_id=member_id,
            to=member.email,
            template=template,
            subject=subject,
            body=body,
            event_type=delivery.event.event_type,
            event_id=str(delivery.event.event_id),
            rental_id=rental_id,
            created_at=self._clock.now(),
        )
        document = message.model_dump(exclude={"message_id"})
        await self._outbox.update_one(
            {"_id": message.message_id}, {"$setOnInsert": document}, upsert=True
        )

    async def rental_confirmed(self, event: RentalConfirmed, delivery: Delivery) -> None:
        """Tell the member the rental is paid and when it is due back."""
        await self.enqueue(
            delivery,
            member_id=event.member_id,
            template="rental_confirmed",
            subject=f"Rental {event.rental_id} confirmed",
            body=f"We received {event.amount} yen. Please return the items by "
            f"{event.due_at:%Y-%m-%d %H:%M} UTC.",
            rental_id=event.rental_id,
        )

    async def rental_cancelled(self, event: RentalCancelled, delivery: Delivery) -> None:
        """Tell the member why the rental did not go ahead."""
        await self.enqueue(
            delivery,
            member_id=event.member_id,
            template="rental_cancelled",
            subject=f"Rental {event.rental_id} cancelled",
            body=f"Your rental was cancelled ({event.reason}).",
            rental_id=event.rental_id,
        )

    async def rental_shipped(self, event: RentalShipped, delivery: Delivery) -> None:
        """Tell the member the parcel is on its way."""
        await self.enqueue(
            delivery,
            member_id=event.member_id,
            template="rental_shipped",
            subject=f"Rental {event.rental_id} shipped",
            body="Your items are on their way.",
            rental_id=event.rental_id,
        )

    async def return_reminder(self, event: ReturnReminderDue, delivery: Delivery) -> None:
        """Remind the member of the due date."""
        await self.enqueue(
            delivery,
            member_id=event.member_id,
            template="return_reminder",
            subject=f"Rental {event.rental_id} is due soon",
            body=f"Please send the items back by {event.due_at:%Y-%m-%d %H:%M} UTC.",
            rental_id=event.rental_id,
        )

    async def rental_overdue(self, event: RentalOverdue, delivery: Delivery) -> None:
        """Tell the member the rental is late."""
        await self.enqueue(
            delivery,
            member_id=event.member_id,
            template="rental_overdue",
            subject=f"Rental {event.rental_id} is overdue",
            body=f"The items were due back on {event.due_at:%Y-%m-%d %H:%M} UTC.",
            rental_id=event.rental_id,
        )

    async def rental_returned(self, event: RentalReturned, delivery: Delivery) -> None:
        """Thank the member."""
        await self.enqueue(
            delivery,
            member_id=event.member_id,
            template="rental_returned",
            subject=f"Rental {event.rental_id} returned",
            body="We received your items. Thank you!",
            rental_id=event.rental_id,
        )

    async def payment_refunded(self, event: PaymentRefunded, delivery: Delivery) -> None:
        """Tell the member the money went back."""
        await self.enqueue(
            delivery,
            member_id=event.member_id,
            template="payment_refunded",
            subject=f"Refund for rental {event.rental_id}",
            body=f"We refunded {event.amount} yen.",
            rental_id=event.rental_id,
        )


class MailRelay:
    """Sends pending outbox e-mails through the mail sender, oldest first.

    Each e-mail is *claimed* (one atomic update stamping ``claimed_at``) before it
    is sent and marked ``sent_at`` after, so two relays never send the same
    e-mail. A relay that dies between the two leaves a claim that expires after
    ``claim_timeout``; the e-mail is then sent again (at-least-once), which is
    the only way a duplicate can arise.

    Args:
        database: The driver database holding the outbox.
        sender: The mail sender.
        clock: The service clock (stamps ``claimed_at`` and ``sent_at``).
        poll_interval: Seconds between looks at the outbox when it is empty.
        claim_timeout: Seconds after which an unfinished claim is taken over.
    """

    def __init__(
        self,
        database: Any,
        sender: FakeMailSender,
        clock: ServiceClock,
        *,
        poll_interval: float = 0.2,
        claim_timeout: float = 60.0,
    ) -> None:
        self.outbox = database[OUTBOX]
        self.sender = sender
        self.clock = clock
        self.poll_interval = poll_interval
        self.claim_timeout = claim_timeout

    async def _claim(self) -> dict[str, Any] | None:
        now = self.clock.now()
        stale = now - timedelta(seconds=self.claim_timeout)
        claimed: dict[str, Any] | None = await self.outbox.find_one_and_update(
            {
                "sent_at": {"$in": [None]},
                "$or": [{"claimed_at": {"$in": [None]}}, {"claimed_at": {"$lt": stale}}],
            },
            {"$set": {"claimed_at": now}},
            sort=[("created_at", 1), ("_id", 1)],
        )
        return claimed

    async def send_pending(self, limit: int = 100) -> int:
        """Send up to ``limit`` pending e-mails; returns how many were sent."""
        sent = 0
        while sent < limit:
            doc = await self._claim()
            if doc is None:
                break
            await self.sender.send(
                message_id=str(doc["_id"]),
                to=str(doc["to"]),
                subject=str(doc["subject"]),
                body=str(doc["body"]),
                template=str(doc["template"]),
            )
            await self.outbox.update_one(
                {"_id": doc["_id"]}, {"$set": {"sent_at": self.clock.now()}}
            )
            sent += 1
        return sent

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; database errors are logged and retried."""
        while not stop.is_set():
            sent = 0
            try:
                sent = await self.send_pending()
            except Exception:  # keep relaying: the next round retries what is pending
                log.exception("mail relay failed; retrying")
            if sent == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_interval)
