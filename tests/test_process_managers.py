"""Process managers on every backend: state, commands with causation, timeouts, redelivery."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from cqrs_kit import (
    Aggregate,
    Command,
    CommandBus,
    CommandResult,
    DomainError,
    Event,
    EventMetadata,
    EventRegistry,
    EventStore,
    NewEvent,
    RecordedEvent,
    UsageError,
    applies,
)
from cqrs_kit.checkpoints import CheckpointStore
from cqrs_kit.routing.process_managers import (
    ProcessContext,
    ProcessManager,
    ProcessManagerRunner,
    reacts_to,
)
from cqrs_kit.routing.subscribers import RetryPolicy
from cqrs_kit.routing.worker import Worker
from cqrs_kit.scheduling import ManualClock, ScheduledCommandStore, Scheduler, ScheduleState

FAST = RetryPolicy(max_attempts=5, initial_delay=0.01, max_delay=0.05)


class Reserved(Event):
    event_type: ClassVar[str] = "rental.Reserved"
    rental_id: str


class PaymentReceived(Event):
    event_type: ClassVar[str] = "payment.Received"
    rental_id: str


class Released(Event):
    event_type: ClassVar[str] = "rental.Released"
    rental_id: str


@pytest.fixture
def event_registry() -> EventRegistry:
    return EventRegistry(Reserved, PaymentReceived, Released, DepositRequested)


class DepositRequested(Event):
    event_type: ClassVar[str] = "rental.DepositRequested"


class RentalState(BaseModel):
    reserved: bool = False
    deposits: int = 0
    released: bool = False


class AlreadyReleased(DomainError):
    pass


class Rental(Aggregate[RentalState]):
    stream_prefix = "rental-"

    def request_deposit(self) -> None:
        self.record(DepositRequested())

    def release(self) -> None:
        if self.state.released:
            raise AlreadyReleased(self.id)
        self.record(Released(rental_id=self.id))

    @applies(Reserved)
    def _reserved(self, event: Reserved) -> None:
        self.state.reserved = True

    @applies(DepositRequested)
    def _deposit(self, event: DepositRequested) -> None:
        self.state.deposits += 1

    @applies(Released)
    def _released(self, event: Released) -> None:
        self.state.released = True


class ChargeDeposit(Command):
    rental_id: str


class ReleaseReservation(Command):
    rental_id: str


class ReservationState(BaseModel):
    reserved: bool = False
    paid: bool = False
    released: bool = False
    events: int = 0


class Reservations(ProcessManager[ReservationState]):
    """Charge a deposit; release the reservation if payment has not arrived in 15 minutes."""

    state_type = ReservationState

    @reacts_to("rental.Reserved", correlate="$.data.rental_id", starts=True)
    async def reserved(
        self, state: ReservationState, event: Reserved, ctx: ProcessContext
    ) -> ReservationState:
        ctx.send(ChargeDeposit(rental_id=event.rental_id))
        ctx.schedule(
            ReleaseReservation(rental_id=event.rental_id),
            after=timedelta(minutes=15),
            key="payment-timeout",
        )
        return state.model_copy(update={"reserved": True, "events": state.events + 1})

    @reacts_to("payment.Received", correlate="$.data.rental_id")
    async def paid(
        self, state: ReservationState, event: PaymentReceived, ctx: ProcessContext
    ) -> None:
        state.paid = True
        state.events += 1
        ctx.cancel("payment-timeout")
        ctx.complete()

    @reacts_to("rental.Released", correlate="$.data.rental_id")
    async def released(self, state: ReservationState, event: Released, ctx: ProcessContext) -> None:
        state.released = True
        state.events += 1
        ctx.complete()


class Bus:
    """The real command bus, with a tap that records dispatches and can fail them."""

    def __init__(self, store: EventStore) -> None:
        self.bus = CommandBus(store)
        self.bus.register(
            ChargeDeposit, _request_deposit, aggregate=Rental, aggregate_id=lambda c: c.rental_id
        )
        self.bus.register(
            ReleaseReservation, _release, aggregate=Rental, aggregate_id=lambda c: c.rental_id
        )
        self.calls: list[Any] = []
        self.fail: Callable[[Any], bool] = lambda c: False

    async def dispatch(self, command: Any) -> CommandResult:
        self.calls.append(command)
        if self.fail(command):
            raise RuntimeError(f"bus unavailable for {type(command).__name__}")
        return await self.bus.dispatch(command)


def _request_deposit(command: ChargeDeposit, rental: Rental) -> None:
    rental.request_deposit()


def _release(command: ReleaseReservation, rental: Rental) -> None:
    rental.release()


async def stored(store: EventStore, event_type: str) -> list[RecordedEvent]:
    return [e async for e in store.read_all() if e.event_type == event_type]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def scheduled(mongo_database: Any, clock: ManualClock) -> ScheduledCommandStore:
    return ScheduledCommandStore(mongo_database, clock=clock)


@pytest.fixture
def bus(event_store: EventStore) -> Bus:
    return Bus(event_store)


@pytest.fixture
def runner(mongo_database: Any, bus: Bus, scheduled: ScheduledCommandStore) -> ProcessManagerRunner:
    return ProcessManagerRunner(
        Reservations(),
        mongo_database,
        dispatch=bus.dispatch,
        scheduled=scheduled,
        id="reservations",
        retry=FAST,
    )


async def settle(
    store: EventStore, runner: ProcessManagerRunner, checkpoints: CheckpointStore
) -> None:
    """Run the process manager until it has handled everything in the log."""
    async with Worker(store, process_managers=[runner], poll_interval=0.05):
        deadline = asyncio.get_running_loop().time() + 15
        name = f"subscriber:{runner.id}"
        while await checkpoints.position(name) < await store.head_position():
            assert asyncio.get_running_loop().time() < deadline, "process manager did not settle"
            await asyncio.sleep(0.02)
        while (await runner.database.collection("subscriber_parked").count({})) > 0:
            assert asyncio.get_running_loop().time() < deadline, "parked events left"
            await asyncio.sleep(0.02)


async def reserve(store: EventStore, rental_id: str) -> NewEvent:
    event = NewEvent(Reserved(rental_id=rental_id), metadata=EventMetadata(correlation_id="corr-1"))
    await store.append(f"rental-{rental_id}", [event])
    return event


async def test_timeout_fires_compensation_once_when_payment_never_arrives(
    event_store: EventStore,
    mongo_database: Any,
    runner: ProcessManagerRunner,
    bus: Bus,
    scheduled: ScheduledCommandStore,
    clock: ManualClock,
) -> None:
    checkpoints = CheckpointStore(mongo_database)
    reserved = await reserve(event_store, "r1")
    await settle(event_store, runner, checkpoints)
    (charge,) = bus.calls
    assert isinstance(charge, ChargeDeposit)
    assert (charge.metadata.causation_id, charge.metadata.correlation_id) == (
        str(reserved.event_id),
        "corr-1",
    )
    (deposit,) = await stored(event_store, "rental.DepositRequested")
    assert deposit.metadata.causation_id == str(charge.command_id)
    assert deposit.metadata.correlation_id == "corr-1"
    (timeout,) = await scheduled.list(state=ScheduleState.PENDING)
    assert timeout.due_at == clock.now() + timedelta(minutes=15)

    # Redelivery of the same event (checkpoint rewound) changes nothing.
    await checkpoints.reset(f"subscriber:{runner.id}", 0)
    await settle(event_store, runner, checkpoints)
    assert len(await stored(event_store, "rental.DepositRequested")) == 1
    assert len(await scheduled.list()) == 1

    scheduler = Scheduler(scheduled, bus.dispatch)
    clock.advance(timedelta(minutes=14))
    assert (await scheduler.tick()).fired == ()
    clock.advance(timedelta(minutes=1))
    assert (await scheduler.tick()).fired == (timeout.id,)
    assert (await scheduler.tick()).fired == ()
    releases = [c for c in bus.calls if isinstance(c, ReleaseReservation)]
    assert len(releases) == 1
    assert releases[0].metadata.causation_id == str(reserved.event_id)
    (released,) = await stored(event_store, "rental.Released")
    assert released.metadata.correlation_id == "corr-1"

    await settle(event_store, runner, checkpoints)  # the saga sees rental.Released
    instance = await runner.load("r1")
    assert instance is not None
    assert instance.completed
    assert instance.state == {"reserved": True, "paid": False, "released": True, "events": 2}


async def test_payment_cancels_the_timeout(
    event_store: EventStore,
    mongo_database: Any,
    runner: ProcessManagerRunner,
    bus: Bus,
    scheduled: ScheduledCommandStore,
    clock: ManualClock,
) -> None:
    checkpoints = CheckpointStore(mongo_database)
    await reserve(event_store, "r2")
    await event_store.append("payment-9", [PaymentReceived(rental_id="r2")])
    await settle(event_store, runner, checkpoints)
    (timeout,) = await scheduled.list()
    assert timeout.state is ScheduleState.CANCELLED
    clock.advance(timedelta(hours=1))
    assert (await Scheduler(scheduled, bus.dispatch).tick()).fired == ()
    assert [type(c) for c in bus.calls] == [ChargeDeposit]
    instance = await runner.load("r2")
    assert instance is not None
    assert (instance.completed, instance.version, instance.pending_ops) == (True, 2, 0)
    assert instance.state["paid"] is True


async def test_a_failed_dispatch_is_retried_without_reapplying_the_event(
    event_store: EventStore,
    mongo_database: Any,
    runner: ProcessManagerRunner,
    bus: Bus,
) -> None:
    failures = iter([True, True])
    bus.fail = lambda c: next(failures, False)
    await reserve(event_store, "r3")
    await settle(event_store, runner, checkpoints=CheckpointStore(mongo_database))
    assert len(bus.calls) == 3  # two failures, then success: same command id each time
    assert len({c.command_id for c in bus.calls}) == 1
    assert len(await stored(event_store, "rental.DepositRequested")) == 1
    instance = await runner.load("r3")
    assert instance is not None
    assert (instance.version, instance.pending_ops, instance.state["events"]) == (1, 0, 1)


async def test_events_without_an_instance_or_after_completion_are_ignored(
    event_store: EventStore, mongo_database: Any, runner: ProcessManagerRunner, bus: Bus
) -> None:
    checkpoints = CheckpointStore(mongo_database)
    await event_store.append("payment-1", [PaymentReceived(rental_id="nobody")])
    await reserve(event_store, "r4")
    await event_store.append("payment-2", [PaymentReceived(rental_id="r4")])
    await event_store.append("payment-3", [PaymentReceived(rental_id="r4")])
    await settle(event_store, runner, checkpoints)
    assert await runner.load("nobody") is None
    instance = await runner.load("r4")
    assert instance is not None
    assert (instance.version, instance.state["events"]) == (2, 2)


def test_declaring_two_reactions_to_one_event_is_refused() -> None:
    with pytest.raises(UsageError, match="twice"):

        class Twice(ProcessManager[ReservationState]):
            state_type = ReservationState

            @reacts_to("rental.Reserved", correlate="$.data.rental_id")
            async def one(self, state: Any, event: Any, ctx: Any) -> None: ...

            @reacts_to("rental.Reserved", correlate="$.data.rental_id")
            async def two(self, state: Any, event: Any, ctx: Any) -> None: ...

    assert Reservations.handled_types() == {
        "rental.Reserved",
        "payment.Received",
        "rental.Released",
    }
    assert Reservations.name == "Reservations"
