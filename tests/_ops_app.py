"""A tiny billing domain for the operations tests: events, a command, a projection, a subscriber.

``cqrs-kit projections --app-dir tests --app _ops_app:make_app`` loads its projections;
``cqrs-kit worker run`` loads a routing file whose handler is :func:`record_charge`.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from cqrs_kit import Command, CommandBus, Decider, DomainError, Event, EventRegistry, EventStore
from cqrs_kit.projections import HandlerProjection, ProjectionApp, Upsert, on

log = logging.getLogger("ops_app")


class Charged(Event):
    event_type: ClassVar[str] = "billing.Charged"
    account: str
    cents: int


class Charge(Command):
    account: str
    cents: int


class ChargeRefused(DomainError):
    status_code = 422


def registry() -> EventRegistry:
    return EventRegistry(Charged)


#: The registry a routing file names (``registry: _ops_app:REGISTRY``).
REGISTRY = registry()


class Balances(HandlerProjection):
    name = "balances"

    @on(Charged)
    def charged(self, event: Charged) -> Upsert:
        log.info("balance of %s moves by %d", event.account, event.cents)
        return Upsert(event.account, inc={"cents": event.cents})


def make_app() -> ProjectionApp:
    return ProjectionApp(registry=registry(), projections=[Balances()])


def _decide(command: Charge, state: int) -> list[Event]:
    if command.cents <= 0:
        raise ChargeRefused(f"cannot charge {command.cents} cents")
    return [Charged(account=command.account, cents=command.cents)]


def make_bus(store: EventStore) -> CommandBus:
    bus = CommandBus(store)
    decider = Decider(initial_state=0, decide=_decide, evolve=lambda state, event: state + 1)
    bus.register_decider(Charge, decider, stream_id=lambda command: f"account-{command.account}")
    return bus


charges: list[str] = []


async def record_charge(event: Charged) -> None:
    """The routed subscriber: logs inside the event's trace, then remembers the account."""
    log.info("charge of %s sent to the ledger", event.account)
    charges.append(event.account)
