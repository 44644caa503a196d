"""Scheduled commands on every backend: fire once, across restarts, claims and cancellations."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from cqrs_kit import (
    Aggregate,
    Command,
    CommandBus,
    DomainError,
    Event,
    EventRegistry,
    EventStore,
    UsageError,
    applies,
)
from cqrs_kit.scheduling import (
    ManualClock,
    RecurringSchedule,
    ScheduledCommandStore,
    Scheduler,
    ScheduleState,
    derived_id,
    parse_rate,
    validate_cron,
)

START = datetime(2024, 1, 1, 0, 3, tzinfo=UTC)


class ReleaseReservation(BaseModel):
    command_id: str = "unset"
    rental_id: str


class BuildReport(BaseModel):
    command_id: str = "unset"
    kind: str


class Rejected(DomainError):
    pass


class Bumped(Event):
    event_type: ClassVar[str] = "counter.Bumped"


class CounterState(BaseModel):
    bumps: int = 0


class Counter(Aggregate[CounterState]):
    stream_prefix = "counter-"

    @applies(Bumped)
    def _bumped(self, event: Bumped) -> None:
        self.state.bumps += 1


class Bump(Command):
    counter: str


@pytest.fixture
def event_registry() -> EventRegistry:
    return EventRegistry(Bumped)


class FakeBus:
    """Idempotent by command id, like the real command bus: a repeat returns the first result."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.effects: dict[str, Any] = {}
        self.fail: Exception | None = None

    async def dispatch(self, command: Any) -> str:
        self.calls.append(command)
        if self.fail is not None:
            raise self.fail
        self.effects.setdefault(command.command_id, command)
        return command.command_id


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
async def scheduled(mongo_database: Any, clock: ManualClock) -> ScheduledCommandStore:
    store = ScheduledCommandStore(mongo_database, clock=clock)
    await store.ensure_indexes()
    return store


async def test_fires_once_at_due_time(scheduled: ScheduledCommandStore, clock: ManualClock) -> None:
    bus = FakeBus()
    scheduler = Scheduler(scheduled, bus.dispatch, owner="a")
    cmd = ReleaseReservation(command_id="c-1", rental_id="r1")
    await scheduled.schedule(cmd, after=timedelta(minutes=15), id="timeout-r1")
    clock.advance(timedelta(minutes=14, seconds=59))
    assert (await scheduler.tick()).fired == ()
    clock.advance(1)
    assert (await scheduler.tick()).fired == ("timeout-r1",)
    assert (await scheduler.tick()).fired == ()
    assert bus.calls == [cmd]
    stored = await scheduled.get("timeout-r1")
    assert stored is not None
    assert stored.state is ScheduleState.DONE


async def test_scheduling_twice_under_one_id_stores_one(scheduled: ScheduledCommandStore) -> None:
    first = await scheduled.schedule(ReleaseReservation(rental_id="r1"), after=60, id="x")
    again = await scheduled.schedule(ReleaseReservation(rental_id="OTHER"), after=999, id="x")
    assert again == first
    assert len(await scheduled.list()) == 1


async def test_survives_a_restart_and_fires_exactly_once(
    mongo_database: Any, clock: ManualClock
) -> None:
    bus = FakeBus()
    first_store = ScheduledCommandStore(mongo_database, clock=clock)
    await first_store.schedule(
        ReleaseReservation(command_id="c-2", rental_id="r2"), after=600, id="t2"
    )
    first = Scheduler(first_store, bus.dispatch, owner="before-restart")
    assert (await first.tick()).fired == ()
    del first, first_store  # the process stops

    clock.advance(601)
    second = Scheduler(ScheduledCommandStore(mongo_database, clock=clock), bus.dispatch, owner="b")
    third = Scheduler(ScheduledCommandStore(mongo_database, clock=clock), bus.dispatch, owner="c")
    results = await asyncio.gather(second.tick(), third.tick(), second.tick(), third.tick())
    assert sum(len(r.fired) for r in results) == 1
    assert [c.command_id for c in bus.calls] == ["c-2"]


async def test_a_crash_after_dispatch_redispatches_the_same_command_id(
    scheduled: ScheduledCommandStore, clock: ManualClock
) -> None:
    bus = FakeBus()

    async def dispatch_then_die(command: Any) -> None:
        await bus.dispatch(command)
        raise asyncio.CancelledError  # the process dies before marking the command done

    await scheduled.schedule(ReleaseReservation(command_id="c-3", rental_id="r3"), after=1, id="t3")
    clock.advance(2)
    with pytest.raises(asyncio.CancelledError):
        await Scheduler(scheduled, dispatch_then_die, owner="dies", lease=30).tick()
    stuck = await scheduled.get("t3")
    assert stuck is not None
    assert stuck.state is ScheduleState.FIRING

    survivor = Scheduler(scheduled, bus.dispatch, owner="survivor", lease=30)
    assert (await survivor.tick()).fired == ()  # the claim is still leased
    clock.advance(31)
    assert (await survivor.tick()).fired == ("t3",)
    assert [c.command_id for c in bus.calls] == ["c-3", "c-3"]  # dispatched twice...
    assert list(bus.effects) == ["c-3"]  # ...but the bus ran it once


async def test_a_redispatch_after_a_crash_is_applied_once_by_the_command_bus(
    event_store: EventStore, scheduled: ScheduledCommandStore, clock: ManualClock
) -> None:
    bus = CommandBus(event_store)

    @bus.handles(Bump, aggregate=Counter, aggregate_id=lambda c: c.counter)
    def bump(command: Bump, counter: Counter) -> None:
        counter.record(Bumped())

    async def dispatch_then_die(command: Any) -> None:
        await bus.dispatch(command)
        raise asyncio.CancelledError

    await scheduled.schedule(Bump(counter="c"), after=5, id="bump")
    clock.advance(5)
    with pytest.raises(asyncio.CancelledError):
        await Scheduler(scheduled, dispatch_then_die, owner="dies", lease=10).tick()
    clock.advance(11)
    assert (await Scheduler(scheduled, bus.dispatch, owner="next").tick()).fired == ("bump",)
    assert [e.event_type async for e in event_store.read_all()] == ["counter.Bumped"]


async def test_cancel_prevents_firing(scheduled: ScheduledCommandStore, clock: ManualClock) -> None:
    bus = FakeBus()
    await scheduled.schedule(
        ReleaseReservation(rental_id="r"), after=60, id="t", group="g", key="k"
    )
    await scheduled.schedule(
        ReleaseReservation(rental_id="s"), after=60, id="u", group="g", key="o"
    )
    assert await scheduled.cancel_group("g", key="k") == 1
    assert await scheduled.cancel("t") is False  # no longer pending
    clock.advance(61)
    assert (await Scheduler(scheduled, bus.dispatch).tick()).fired == ("u",)
    stored = await scheduled.get("t")
    assert stored is not None
    assert stored.state is ScheduleState.CANCELLED


async def test_failures_are_retried_then_marked_failed(
    scheduled: ScheduledCommandStore, clock: ManualClock
) -> None:
    bus = FakeBus()
    bus.fail = RuntimeError("bus down")
    scheduler = Scheduler(scheduled, bus.dispatch, max_attempts=3, retry_delay=10)
    await scheduled.schedule(ReleaseReservation(rental_id="r"), after=0, id="t")
    assert (await scheduler.tick()).retrying == ("t",)
    assert (await scheduler.tick()).retrying == ()  # backing off
    clock.advance(11)
    assert (await scheduler.tick()).retrying == ("t",)
    clock.advance(21)
    assert (await scheduler.tick()).failed == ("t",)
    stored = await scheduled.get("t")
    assert stored is not None
    assert (stored.state, stored.attempts, stored.error) == (
        ScheduleState.FAILED,
        3,
        "RuntimeError: bus down",
    )


async def test_domain_rejection_is_final(scheduled: ScheduledCommandStore) -> None:
    bus = FakeBus()
    bus.fail = Rejected("already paid")
    await scheduled.schedule(ReleaseReservation(rental_id="r"), after=0, id="t")
    result = await Scheduler(scheduled, bus.dispatch).tick()
    assert result.rejected == ("t",)
    assert len(bus.calls) == 1


async def test_cron_occurrences_fire_once_each_and_coalesce(
    scheduled: ScheduledCommandStore, clock: ManualClock
) -> None:
    bus = FakeBus()
    every5 = RecurringSchedule("report", BuildReport, {"kind": "nightly"}, cron="*/5 * * * *")
    a = Scheduler(scheduled, bus.dispatch, schedules=[every5], owner="a")
    b = Scheduler(scheduled, bus.dispatch, schedules=[every5], owner="b")
    assert (await a.tick()).fired == ()  # 00:03: first sighting, nothing is owed
    clock.advance(timedelta(minutes=2))  # 00:05
    await asyncio.gather(a.tick(), b.tick())
    await asyncio.gather(a.tick(), b.tick())
    clock.advance(timedelta(minutes=12))  # 00:17: 00:10 and 00:15 passed; only 00:15 fires
    await asyncio.gather(b.tick(), a.tick())
    fired_ids = [c.command_id for c in bus.calls]
    expected = [
        derived_id("schedule:report@2024-01-01T00:05:00+00:00"),
        derived_id("schedule:report@2024-01-01T00:15:00+00:00"),
    ]
    assert fired_ids == expected
    assert all(c.kind == "nightly" for c in bus.calls)


async def test_rate_schedule_is_aligned_and_fires_once_per_interval(
    scheduled: ScheduledCommandStore, clock: ManualClock
) -> None:
    bus = FakeBus()
    every5 = RecurringSchedule(
        "sweep", BuildReport, {"kind": "sweep"}, rate=parse_rate("5 minutes")
    )
    scheduler = Scheduler(scheduled, bus.dispatch, schedules=[every5])
    await scheduler.tick()
    for _ in range(3):
        clock.advance(timedelta(minutes=5))
        await scheduler.tick()
        await scheduler.tick()
    due = sorted(c.due_at for c in await scheduled.list(group="sweep"))
    assert [d.strftime("%H:%M") for d in due] == ["00:05", "00:10", "00:15"]
    assert len(bus.calls) == 3


async def test_run_loop_wakes_when_the_clock_moves(
    scheduled: ScheduledCommandStore, clock: ManualClock
) -> None:
    bus = FakeBus()
    scheduler = Scheduler(scheduled, bus.dispatch, poll_interval=3600)
    await scheduled.schedule(ReleaseReservation(rental_id="r"), after=60, id="t")
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    try:
        await asyncio.sleep(0.05)
        assert bus.calls == []
        clock.advance(60)
        for _ in range(500):
            if bus.calls:
                break
            await asyncio.sleep(0.01)
        assert len(bus.calls) == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def test_rate_and_cron_validation() -> None:
    assert parse_rate("rate(1 hour)") == timedelta(hours=1)
    assert parse_rate("30 seconds") == timedelta(seconds=30)
    for bad in ("5 fortnights", "0 minutes", "minutes"):
        with pytest.raises(ValueError, match=r"rate|positive"):
            parse_rate(bad)
    assert validate_cron("0 3 * * *") == "0 3 * * *"
    with pytest.raises(ValueError, match="invalid cron"):
        validate_cron("61 * * * *")
    with pytest.raises(UsageError):
        RecurringSchedule("x", BuildReport, {}, cron="* * * * *", rate=timedelta(minutes=1))
