"""Aggregates: events are the only way state changes; misuse fails early with a fix-it message.

The repository tests at the end run on every backend through the plugin's ``event_store``.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from cqrs_kit import (
    Aggregate,
    ConcurrencyError,
    Decider,
    Event,
    EventRegistry,
    EventStore,
    Repository,
    UsageError,
    applies,
)
from write_model_domain import (
    Account,
    AccountNotOpen,
    AccountOpened,
    AccountState,
    Incremented,
    InsufficientFunds,
    MoneyDeposited,
    MoneyWithdrawn,
    domain_registry,
    tally_decider,
)


class Unhandled(Event):
    event_type: ClassVar[str] = "test.Unhandled"


def opened_account(account_id: str = "a-1", *deposits: str) -> Account:
    account = Account(account_id)
    account.open("ann")
    for amount in deposits:
        account.deposit(Decimal(amount))
    return account


# -- recording and replaying -------------------------------------------------------------------


def test_record_applies_the_event_and_queues_it() -> None:
    account = Account("a-1")
    assert (account.version, account.original_version, account.is_new) == (0, 0, True)

    account.open("ann")
    account.deposit(Decimal("10"))

    assert account.state.balance == Decimal("10")
    assert account.state.owner == "ann"
    assert account.pending_events == (
        AccountOpened(owner="ann"),
        MoneyDeposited(amount=Decimal(10)),
    )
    assert (account.version, account.original_version, account.is_new) == (2, 0, False)


def test_command_methods_enforce_rules_without_recording() -> None:
    account = Account("a-1")
    with pytest.raises(AccountNotOpen):
        account.deposit(Decimal("1"))
    account.open("ann")
    with pytest.raises(InsufficientFunds) as info:
        account.withdraw(Decimal("5"))
    assert (info.value.balance, info.value.amount) == (Decimal(0), Decimal(5))
    assert account.pending_events == (AccountOpened(owner="ann"),)


def test_replay_rebuilds_the_same_state_without_pending_events() -> None:
    live = opened_account("a-1", "10", "2.5")
    live.withdraw(Decimal("4"))

    rebuilt = Account("a-1")
    rebuilt.replay(live.pending_events)

    assert rebuilt.state == live.state
    assert (rebuilt.version, rebuilt.original_version) == (4, 4)
    assert rebuilt.pending_events == ()


def test_replay_after_record_is_refused() -> None:
    account = opened_account()
    with pytest.raises(UsageError) as info:
        account.replay([MoneyDeposited(amount=Decimal(1))])
    assert info.value.code == "replay-after-record"


def test_an_event_without_handler_names_the_decorator_to_add() -> None:
    account = opened_account()
    with pytest.raises(UsageError) as info:
        account.record(Unhandled())
    assert info.value.code == "no-event-handler"
    assert "@applies(Unhandled)" in str(info.value)
    assert account.version == 1  # nothing was applied or queued
    assert len(account.pending_events) == 1


def test_restore_starts_from_a_state_at_a_version() -> None:
    state = AccountState(opened=True, owner="bo", balance=Decimal(7), movements=3)
    account = Account.restore("a-9", state, 4)
    assert (account.version, account.original_version, account.state.balance) == (4, 4, 7)
    account.deposit(Decimal(1))
    assert (account.version, account.original_version) == (5, 4)


def test_stream_ids_come_from_the_prefix() -> None:
    assert Account.stream_id_for("a-1") == "account-a-1"
    assert Account("a-1").stream_id == "account-a-1"


def test_snapshot_state_round_trips() -> None:
    account = opened_account("a-1", "0.10", "3")
    data = account.snapshot_state()
    assert data["balance"] == "3.10"  # JSON form: exact decimals as text
    assert Account.state_from_snapshot(data) == account.state


# -- misuse is caught where it happens ----------------------------------------------------------


class _State(BaseModel):
    seen: list[str] = []


def test_two_handlers_for_one_event_are_refused_at_class_creation() -> None:
    with pytest.raises(UsageError) as info:

        class Twice(Aggregate[_State]):
            stream_prefix = "twice-"

            @applies(MoneyDeposited)
            def _one(self, event: MoneyDeposited) -> None: ...

            @applies(MoneyDeposited)
            def _two(self, event: MoneyDeposited) -> None: ...

    assert info.value.code == "duplicate-event-handler"
    assert "_one" in str(info.value)
    assert "_two" in str(info.value)


def test_a_subclass_overrides_a_handler_by_name_not_by_adding_one() -> None:
    class Base(Aggregate[_State]):
        stream_prefix = "base-"

        @applies(MoneyDeposited)
        def _deposited(self, event: MoneyDeposited) -> None:
            self.state.seen.append("base")

    class Child(Base):
        def _deposited(self, event: MoneyDeposited) -> None:
            self.state.seen.append("child")

    child = Child("c")
    child.record(MoneyDeposited(amount=Decimal(1)))
    assert child.state.seen == ["child"]

    with pytest.raises(UsageError) as info:

        class Confused(Base):
            @applies(MoneyDeposited)
            def _other(self, event: MoneyDeposited) -> None: ...

    assert "override _deposited" in str(info.value)


def test_one_method_applies_one_event_type() -> None:
    with pytest.raises(UsageError) as info:

        class Stacked(Aggregate[_State]):
            stream_prefix = "stacked-"

            @applies(MoneyDeposited)
            @applies(MoneyWithdrawn)
            def _both(self, event: Any) -> None: ...

    assert info.value.code == "duplicate-event-handler"
    with pytest.raises(UsageError) as not_event:
        applies(int)  # type: ignore[type-var]
    assert not_event.value.code == "not-an-event"


def test_missing_prefix_state_model_or_defaults_are_explained() -> None:
    class NoPrefix(Aggregate[_State]):
        pass

    with pytest.raises(UsageError) as info:
        NoPrefix("x")
    assert info.value.code == "no-stream-prefix"
    assert 'stream_prefix = "noprefix-"' in str(info.value)

    class Untyped(Aggregate):  # type: ignore[type-arg]
        stream_prefix = "untyped-"

    with pytest.raises(UsageError) as info:
        Untyped("x")
    assert info.value.code == "no-state-type"

    class Required(BaseModel):
        name: str

    class NeedsArgs(Aggregate[Required]):
        stream_prefix = "needs-"

    with pytest.raises(UsageError) as info:
        NeedsArgs("x")
    assert info.value.code == "no-initial-state"
    assert "initial_state()" in str(info.value)

    class Overridden(NeedsArgs):
        @classmethod
        def initial_state(cls) -> Required:
            return Required(name="unnamed")

    assert Overridden("x").state.name == "unnamed"


@pytest.mark.parametrize("every", [0, -1, 2.5, True])
def test_snapshot_policy_is_checked_at_class_creation(every: Any) -> None:
    with pytest.raises(UsageError) as info:

        class Bad(Aggregate[_State]):
            stream_prefix = "bad-"
            snapshot_every = every

    assert info.value.code == "bad-snapshot-policy"


@pytest.mark.parametrize("aggregate_id", ["", None, 5])
def test_aggregate_ids_are_non_empty_strings(aggregate_id: Any) -> None:
    with pytest.raises(UsageError) as info:
        Account(aggregate_id)
    assert info.value.code == "bad-aggregate-id"


# -- the functional form -----------------------------------------------------------------------


def test_decider_folds_events_into_state() -> None:
    assert tally_decider.fold([Incremented(by=2), Incremented(by=3)]) == 5
    assert tally_decider.fold([]) == 0
    doubled = Decider(initial_state=1, decide=tally_decider.decide, evolve=lambda s, e: s * 2)
    assert doubled.fold([Incremented(by=1)] * 3) == 8


# -- the repository, on every backend -----------------------------------------------------------


@pytest.fixture
def event_registry() -> EventRegistry:
    return domain_registry()


async def test_repository_loads_a_missing_stream_as_new(event_store: EventStore) -> None:
    account = await Repository(event_store, Account).load("nobody")
    assert account.is_new
    assert account.state == AccountState()


async def test_repository_round_trips_and_checks_the_version(event_store: EventStore) -> None:
    repository = Repository(event_store, Account)
    account = opened_account("a-1", "10")
    result = await repository.save(account)
    assert (result.version, account.version, account.original_version) == (2, 2, 2)
    assert account.pending_events == ()

    first = await repository.load("a-1")
    second = await repository.load("a-1")
    assert first.state == account.state
    first.withdraw(Decimal("3"))
    second.deposit(Decimal("1"))
    await repository.save(first)
    with pytest.raises(ConcurrencyError) as info:
        await repository.save(second)
    assert (info.value.expected, info.value.actual) == (2, 3)

    latest = await repository.load("a-1")
    assert latest.state.balance == Decimal("7")
    assert latest.version == 3


async def test_repository_save_takes_one_id_per_event(event_store: EventStore) -> None:
    account = opened_account("a-1", "1")
    with pytest.raises(UsageError) as info:
        await Repository(event_store, Account).save(account, event_ids=[uuid.uuid4()])
    assert info.value.code == "event-id-count"
    assert await event_store.stream_version("account-a-1") == 0


def test_repository_takes_an_aggregate_class() -> None:
    with pytest.raises(UsageError) as info:
        Repository(object(), AccountState)  # type: ignore[arg-type, type-var]
    assert info.value.code == "not-an-aggregate"
