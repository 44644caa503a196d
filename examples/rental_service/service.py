"""The service object: every part of the rental service wired together, and its lifecycle.

:class:`RentalService` builds the event store, the command bus with every
handler, the projections, the routing worker (subscribers, the rental process
manager, the scheduler) and the mail relay on one database, and runs the
background parts until it is stopped. The HTTP app (``app.py``) and the tests
both start from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

from cqrs_kit import CommandBus, EventStore, LeaseManager, ProjectionRunner
from cqrs_kit.routing import RoutingConfig, Worker, load_routing
from examples.rental_service.clock import ServiceClock
from examples.rental_service.events import build_registry
from examples.rental_service.fulfilment import RentalFulfilment
from examples.rental_service.inventory import register_inventory_handlers
from examples.rental_service.members import (
    Directory,
    EmailTaken,
    SignUp,
    register_member_handlers,
)
from examples.rental_service.notifications import (
    OUTBOX,
    FakeMailSender,
    MailRelay,
    Notifications,
)
from examples.rental_service.payments import Payments, register_payment_handlers
from examples.rental_service.payments_gateway import FakeGateway, FraudRule
from examples.rental_service.read_models import build_projections
from examples.rental_service.rentals import register_rental_handlers
from examples.rental_service.security import hash_password
from examples.rental_service.settings import Settings

log = logging.getLogger("rental_service")

#: The routing file: which event reaches which handler.
ROUTES_FILE = Path(__file__).with_name("routes.yaml")
_BOOTSTRAP = uuid.UUID("c5e0f3a1-7d2b-5e94-b8c6-1a3f5d7e9b20")


def build_bus(store: Any, settings: Settings, directory: Directory) -> CommandBus:
    """A command bus over ``store`` with every command handler of the service."""
    bus = CommandBus(store, max_retries=8, retry_delay=0.005)
    register_member_handlers(bus)
    register_inventory_handlers(bus)
    register_rental_handlers(
        bus, store=store, directory=directory, max_items=settings.max_items_per_rental
    )
    register_payment_handlers(
        bus,
        rule=FraudRule(
            max_amount=settings.fraud_max_amount,
            max_charges_per_hour=settings.fraud_max_charges_per_hour,
        ),
    )
    return bus


class RentalService:
    """Everything the rental service runs, on one database.

    Args:
        database: A driver database (PyMongo async, Motor or mongomock-motor).
        settings: The settings.
        clock: The service clock (tests move it forward).
        poll_interval: How often background parts look for work when they
            have no change stream to wake them.

    Attributes:
        store: The event store.
        bus: The command bus.
        directory: Member look-ups.
        runner: The projection runner.
        routing: The loaded routing file.
        worker: Subscribers, the process manager and the scheduler.
        mail: The fake mail sender.
        relay: Sends the outbox through ``mail``.
    """

    def __init__(
        self,
        database: Any,
        settings: Settings | None = None,
        *,
        clock: ServiceClock | None = None,
        poll_interval: float = 0.5,
    ) -> None:
        self.database = database
        self.settings = settings or Settings()
        self.clock = clock or ServiceClock()
        self.gateway = FakeGateway(database)
        self.store = EventStore(database, build_registry())
        self.directory = Directory(self.store)
        self.bus = build_bus(self.store, self.settings, self.directory)
        self.projections = build_projections()
        self.runner = ProjectionRunner(
            self.store,
            self.projections,
            poll_interval=poll_interval,
            batch_size=200,
            lease_ttl=self.settings.lease_ttl,
        )
        self.mail = FakeMailSender(database, self.clock)
        self.notifications = Notifications(database, self.directory, self.clock)
        self.payments = Payments(self.bus, self.gateway, self.clock)
        self.routing = self._load_routing()
        self.worker = Worker.from_routing(
            self.store,
            self.routing,
            dispatch=self.bus.dispatch,
            clock=self.clock,
            poll_interval=poll_interval,
            # One process per subscriber at a time, however many service processes
            # share the database; another takes over within ``lease_ttl`` if one dies.
            leases=LeaseManager(database, ttl=self.settings.lease_ttl),
        )
        self.relay = MailRelay(
            database, self.mail, self.clock, poll_interval=min(poll_interval, 0.2)
        )
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def _load_routing(self) -> RoutingConfig:
        config = load_routing(
            ROUTES_FILE,
            services={
                Payments: self.payments,
                Notifications: self.notifications,
                RentalFulfilment: RentalFulfilment(self.settings),
            },
        )
        charge = config.subscribers["charge-payment"]
        charge.retry = replace(charge.retry, initial_delay=self.settings.payment_retry_delay)
        return config

    async def prepare(self) -> None:
        """Create every index, and the staff account (both idempotent)."""
        await self.store.ensure_indexes()
        await self.worker.ensure_indexes()
        await self.database[OUTBOX].create_index([("sent_at", 1), ("created_at", 1)])
        await self.database[OUTBOX].create_index([("member_id", 1), ("created_at", 1)])
        if self.settings.gateway_fail_next:
            await self.gateway.inject(fail_next=self.settings.gateway_fail_next)
        await self.bootstrap_staff()

    async def bootstrap_staff(self) -> None:
        """Create the staff account from the settings, unless it exists."""
        email = self.settings.staff_email
        if await self.directory.by_email(email) is not None:
            return
        command = SignUp(
            command_id=uuid.uuid5(_BOOTSTRAP, email.lower()),
            email=email,
            name=self.settings.staff_name,
            role="staff",
            password_hash=hash_password(self.settings.staff_password.get_secret_value()),
        )
        with contextlib.suppress(EmailTaken):  # another process got there first
            await self.bus.dispatch(command)
        log.info("staff account %s is ready", email)

    async def start(self) -> None:
        """Prepare, then run projections, the worker and the mail relay in the background."""
        await self.prepare()
        self._stop.clear()
        jobs: dict[str, Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = {
            "projections": self.runner.run,
            "worker": self.worker.run,
            "mail-relay": self.relay.run,
        }
        self._tasks = [
            asyncio.create_task(job(self._stop), name=f"rental-service-{name}")
            for name, job in jobs.items()
        ]

    async def stop(self, grace: float = 10.0) -> None:
        """Ask the background parts to finish what they hold, then cancel what is left."""
        self._stop.set()
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        for task in tasks:
            if task.cancelled():
                continue
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("%s ended with an error", task.get_name())

    async def __aenter__(self) -> RentalService:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
