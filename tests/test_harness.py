"""The given/when/then harness: passes when it should, fails with a readable diff when not."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from cqrs_kit import (
    ConcurrencyError,
    DomainError,
    DuplicateEventError,
    HandlerNotFoundError,
    NewEvent,
    UsageError,
)
from cqrs_kit.testing import InMemoryEventStore, Scenario
from write_model_domain import (
    AccountClosed,
    AccountNotOpen,
    AccountOpened,
    CloseAccount,
    Deposit,
    InsufficientFunds,
    MoneyDeposited,
    MoneyWithdrawn,
    OpenAccount,
    Withdraw,
    build_bus,
)

OPENED = AccountOpened(owner="ann")
DEPOSITED = MoneyDeposited(amount=Decimal(10))


@pytest.fixture
def bus_store() -> InMemoryEventStore:
    return InMemoryEventStore()


@pytest.fixture
def scenario(bus_store: InMemoryEventStore) -> Scenario:
    return Scenario(build_bus(bus_store))


# -- passing scenarios ------------------------------------------------------------------------


def test_given_when_then_in_a_sync_test(scenario: Scenario, bus_store: InMemoryEventStore) -> None:
    result = (
        scenario.given(OPENED, DEPOSITED)
        .when(Withdraw(account_id="a-1", amount=Decimal(4)))
        .then(MoneyWithdrawn(amount=Decimal(4)))
    )
    assert (result.stream_id, result.version, result.position) == ("account-a-1", 3, 3)
    assert bus_store.recorded() == []  # the bus's own store is never touched


async def test_the_same_lines_work_in_an_async_test(scenario: Scenario) -> None:
    scenario.given(OPENED).when(Deposit(account_id="a-1", amount=Decimal(1))).then(
        MoneyDeposited(amount=Decimal(1))
    )
    error = scenario.when(Deposit(account_id="a-1", amount=Decimal(1))).then_raises(AccountNotOpen)
    assert error.account_id == "a-1"


def test_then_raises_returns_the_error(scenario: Scenario) -> None:
    error = (
        scenario.given(OPENED, DEPOSITED)
        .when(Withdraw(account_id="a-1", amount=Decimal(11)))
        .then_raises(InsufficientFunds, match="cannot withdraw 11")
    )
    assert (error.balance, error.amount) == (Decimal(10), Decimal(11))
    scenario.given(OPENED).when(Withdraw(account_id="a-1", amount=Decimal(1))).then_raises(
        DomainError  # a base class matches too
    )


def test_then_with_no_events_expects_none(scenario: Scenario) -> None:
    result = scenario.given(OPENED).when(Deposit(account_id="a-1", amount=Decimal(0))).then()
    assert result.position is None


def test_a_command_recording_several_events(scenario: Scenario) -> None:
    scenario.when(OpenAccount(account_id="a-1", owner="ann", initial_deposit=Decimal(3))).then(
        OPENED, MoneyDeposited(amount=Decimal(3))
    )


def test_scenarios_are_immutable_and_start_from_scratch(scenario: Scenario) -> None:
    opened = scenario.given(OPENED)
    funded = opened.given(DEPOSITED)
    withdraw = Withdraw(account_id="a-1", amount=Decimal(5))
    funded.when(withdraw).then(MoneyWithdrawn(amount=Decimal(5)))
    opened.when(withdraw).then_raises(InsufficientFunds)  # opened did not gain the deposit
    funded.when(withdraw).then(MoneyWithdrawn(amount=Decimal(5)))  # a fresh store each run


def test_given_events_can_go_to_other_streams(scenario: Scenario) -> None:
    outcome = (
        scenario.given(OPENED, stream_id="account-other")
        .given(OPENED)
        .when(CloseAccount(account_id="a-1"))
    )
    outcome.then(AccountClosed())
    assert outcome.store is not None
    assert [r.stream_id for r in outcome.store.recorded()] == [
        "account-other",
        "account-a-1",
        "account-a-1",
    ]


# -- failing scenarios fail, and say why --------------------------------------------------------


def test_other_events_fail_with_a_diff(scenario: Scenario) -> None:
    outcome = scenario.given(OPENED, DEPOSITED).when(Withdraw(account_id="a-1", amount=Decimal(4)))
    with pytest.raises(AssertionError) as info:
        outcome.then(MoneyWithdrawn(amount=Decimal(5)))
    message = str(info.value)
    assert "Withdraw recorded other events than expected (- expected, + actual)" in message
    assert "- MoneyWithdrawn(amount=Decimal('5'))" in message
    assert "+ MoneyWithdrawn(amount=Decimal('4'))" in message

    with pytest.raises(AssertionError) as missing:
        outcome.then()
    assert "- <no events>" in str(missing.value)
    with pytest.raises(AssertionError) as wrong_type:
        outcome.then(MoneyDeposited(amount=Decimal(4)))
    assert "- MoneyDeposited(amount=Decimal('4'))" in str(wrong_type.value)


def test_then_fails_when_the_command_raises(scenario: Scenario) -> None:
    with pytest.raises(AssertionError) as info:
        scenario.when(Deposit(account_id="a-1", amount=Decimal(1))).then(DEPOSITED)
    assert "Deposit raised AccountNotOpen: account 'a-1' is not open" in str(info.value)
    assert isinstance(info.value.__cause__, AccountNotOpen)


def test_then_raises_fails_when_the_command_succeeds(scenario: Scenario) -> None:
    with pytest.raises(AssertionError) as info:
        scenario.given(OPENED).when(Deposit(account_id="a-1", amount=Decimal(2))).then_raises(
            AccountNotOpen
        )
    assert "expected Deposit to raise AccountNotOpen, but it succeeded" in str(info.value)
    assert "MoneyDeposited(amount=Decimal('2'))" in str(info.value)


def test_then_raises_fails_on_another_error_or_message(scenario: Scenario) -> None:
    outcome = scenario.given(OPENED).when(Withdraw(account_id="a-1", amount=Decimal(1)))
    with pytest.raises(AssertionError) as info:
        outcome.then_raises(AccountNotOpen)
    assert "but it raised InsufficientFunds" in str(info.value)
    with pytest.raises(AssertionError) as mismatch:
        outcome.then_raises(InsufficientFunds, match="overdrawn")
    assert "does not contain 'overdrawn'" in str(mismatch.value)


def test_setup_mistakes_surface_as_failures(scenario: Scenario) -> None:
    class Unrouted(Withdraw):
        pass

    with pytest.raises(AssertionError) as info:
        scenario.when(Unrouted(account_id="a-1", amount=Decimal(1))).then()
    assert isinstance(info.value.__cause__, HandlerNotFoundError)
    assert str(info.value).startswith("Unrouted raised HandlerNotFoundError")
    with pytest.raises(UsageError):
        scenario.given("not an event")  # type: ignore[arg-type]


# -- the in-memory store keeps the store's promises ----------------------------------------------


async def test_in_memory_store_checks_versions_and_ids() -> None:
    store = InMemoryEventStore()
    first = NewEvent(OPENED)
    result = await store.append("s", [first], expected_version=0)
    assert (result.version, result.position, result.replayed) == (1, 1, False)
    again = await store.append("s", [first], expected_version=0)
    assert (again.version, again.position, again.replayed) == (1, 1, True)
    assert await store.find_commit(first.event_id) == again
    assert await store.find_commit(uuid.uuid4()) is None

    with pytest.raises(ConcurrencyError) as conflict:
        await store.append("s", [DEPOSITED], expected_version=0)
    assert (conflict.value.expected, conflict.value.actual) == (0, 1)
    with pytest.raises(DuplicateEventError):
        await store.append("other", [first])
    with pytest.raises(DuplicateEventError):
        await store.append("s", [NewEvent(DEPOSITED), first])
    empty = await store.append("s", [], expected_version=1)
    assert (empty.version, empty.position) == (1, 1)

    await store.append("s", [DEPOSITED, DEPOSITED])
    tail = [r.stream_version async for r in store.read_stream("s", from_version=2, limit=1)]
    assert tail == [2]
    assert await store.stream_version("s") == 3
    stored = [r async for r in store.read_stream("s")]
    assert stored[1].event == DEPOSITED
    assert stored[1].event is not DEPOSITED  # decoded from its stored form
