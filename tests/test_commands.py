"""The command bus: handlers, retries, idempotency and metadata, as a contract.

``CommandBusContract`` is written against the ``StreamStore`` protocol and bound twice:
to the plugin's ``event_store`` (every backend) and to the harness's in-memory store, which
therefore has to behave like the real one wherever the bus can tell.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest

from cqrs_kit import (
    Command,
    CommandBus,
    CommandMetadata,
    ConcurrencyError,
    DomainError,
    EventRegistry,
    EventStore,
    HandlerNotFoundError,
    RecordedEvent,
    StreamStore,
    UsageError,
    derive_event_id,
)
from cqrs_kit.testing import InMemoryEventStore
from cqrs_kit.tracing import TraceContext, use_trace
from write_model_domain import (
    Account,
    AccountClosed,
    AccountNotOpen,
    AccountOpened,
    CloseAccount,
    Deposit,
    Increment,
    Incremented,
    InsufficientFunds,
    MoneyDeposited,
    MoneyWithdrawn,
    OpenAccount,
    Withdraw,
    build_bus,
    domain_registry,
)


async def read(store: StreamStore, stream_id: str) -> list[RecordedEvent]:
    return [recorded async for recorded in store.read_stream(stream_id)]


def racing_bus(
    store: StreamStore, barrier: asyncio.Barrier, **options: Any
) -> tuple[CommandBus, Counter[Any]]:
    """A bus whose deposits wait, on their first attempt, until every racer has loaded.

    Returns the bus and its count of handler runs per command id.
    """
    attempts: Counter[Any] = Counter()
    racing = CommandBus(store, **options)

    @racing.handles(OpenAccount, aggregate=Account)
    def open_account(command: OpenAccount, account: Account) -> None:
        account.open(command.owner)

    @racing.handles(Deposit, aggregate=Account)
    async def deposit(command: Deposit, account: Account) -> None:
        attempts[command.command_id] += 1
        if attempts[command.command_id] == 1:
            # Both handlers have loaded the same version when the barrier opens, so
            # both try to append at it: exactly one can win.
            await barrier.wait()
        account.deposit(command.amount)

    return racing, attempts


class CommandBusContract:
    """What every ``StreamStore`` must let the command bus guarantee."""

    @pytest.fixture
    def event_registry(self) -> EventRegistry:
        return domain_registry()

    @pytest.fixture
    def stream_store(self) -> StreamStore:
        raise NotImplementedError("bind the contract to a store by overriding this fixture")

    # -- an aggregate with three commands -----------------------------------------------------

    async def test_commands_change_one_account(self, stream_store: StreamStore) -> None:
        bus = build_bus(stream_store)
        opened = await bus.dispatch(
            OpenAccount(account_id="a-1", owner="ann", overdraft=Decimal(5))
        )
        deposited = await bus.dispatch(Deposit(account_id="a-1", amount=Decimal("20.50")))
        withdrawn = await bus.dispatch(Withdraw(account_id="a-1", amount=Decimal("25")))
        closed = await bus.dispatch(CloseAccount(account_id="a-1", reason="moved"))

        results = [opened, deposited, withdrawn, closed]
        assert [(r.stream_id, r.version, r.position, r.replayed) for r in results] == [
            ("account-a-1", 1, 1, False),
            ("account-a-1", 2, 2, False),
            ("account-a-1", 3, 3, False),
            ("account-a-1", 4, 4, False),
        ]
        expected = [
            AccountOpened(owner="ann", overdraft=Decimal(5)),
            MoneyDeposited(amount=Decimal("20.50")),
            MoneyWithdrawn(amount=Decimal(25)),
            AccountClosed(reason="moved"),
        ]
        assert [e for r in results for e in r.events] == expected
        assert [r.event for r in await read(stream_store, "account-a-1")] == expected

        account = await bus.repository(Account).load("a-1")
        assert (account.state.balance, account.state.closed, account.version) == (
            Decimal("-4.50"),
            True,
            4,
        )
        with pytest.raises(AccountNotOpen):
            await bus.dispatch(Deposit(account_id="a-1", amount=Decimal(1)))

    async def test_a_refused_command_stores_nothing(self, stream_store: StreamStore) -> None:
        bus = build_bus(stream_store)
        await bus.dispatch(OpenAccount(account_id="a-1", owner="ann", initial_deposit=Decimal(3)))
        with pytest.raises(InsufficientFunds) as info:
            await bus.dispatch(Withdraw(account_id="a-1", amount=Decimal(4)))
        assert (info.value.balance, info.value.amount) == (Decimal(3), Decimal(4))
        assert len(await read(stream_store, "account-a-1")) == 2

    async def test_a_command_that_records_nothing_appends_nothing(
        self, stream_store: StreamStore
    ) -> None:
        bus = build_bus(stream_store)
        await bus.dispatch(OpenAccount(account_id="a-1", owner="ann"))
        result = await bus.dispatch(Deposit(account_id="a-1", amount=Decimal(0)))
        assert (result.version, result.position, result.events) == (1, None, ())
        assert len(await read(stream_store, "account-a-1")) == 1

    # -- concurrency ----------------------------------------------------------------------------

    async def test_two_concurrent_handlers_both_succeed_in_sequence(
        self, stream_store: StreamStore
    ) -> None:
        bus, attempts = racing_bus(stream_store, asyncio.Barrier(2), retry_delay=0.001)
        await bus.dispatch(OpenAccount(account_id="a-1", owner="ann"))
        one = Deposit(account_id="a-1", amount=Decimal(1))
        two = Deposit(account_id="a-1", amount=Decimal(2))

        results = await asyncio.gather(bus.dispatch(one), bus.dispatch(two))

        assert sorted(r.version for r in results) == [2, 3]
        # The loser ran its handler again on the reloaded account: three runs for two.
        assert sorted(attempts.values()) == [1, 2]
        account = await bus.repository(Account).load("a-1")
        assert (account.state.balance, account.version) == (Decimal(3), 3)

    async def test_without_retries_the_loser_gets_the_concurrency_error(
        self, stream_store: StreamStore
    ) -> None:
        bus, _ = racing_bus(stream_store, asyncio.Barrier(2), max_retries=0)
        await bus.dispatch(OpenAccount(account_id="a-1", owner="ann"))

        outcomes = await asyncio.gather(
            bus.dispatch(Deposit(account_id="a-1", amount=Decimal(1))),
            bus.dispatch(Deposit(account_id="a-1", amount=Decimal(2))),
            return_exceptions=True,
        )

        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(errors) == 1
        assert isinstance(errors[0], ConcurrencyError)
        assert (errors[0].stream_id, errors[0].expected, errors[0].actual) == ("account-a-1", 1, 2)
        assert len(await read(stream_store, "account-a-1")) == 2

    async def test_retries_stop_after_max_retries(self, stream_store: StreamStore) -> None:
        await build_bus(stream_store).dispatch(OpenAccount(account_id="a-1", owner="ann"))
        stubborn = CommandBus(stream_store, max_retries=2, retry_delay=0.001)
        attempts = 0

        @stubborn.handles(Deposit, aggregate=Account)
        async def deposit(command: Deposit, account: Account) -> None:
            nonlocal attempts
            attempts += 1
            # Another writer appends between this load and this save, every time.
            await stream_store.append(account.stream_id, [MoneyDeposited(amount=Decimal(100))])
            account.deposit(command.amount)

        with pytest.raises(ConcurrencyError):
            await stubborn.dispatch(Deposit(account_id="a-1", amount=Decimal(1)))
        assert attempts == 3
        stored = [r.event for r in await read(stream_store, "account-a-1")]
        assert stored[1:] == [MoneyDeposited(amount=Decimal(100))] * 3

    async def test_domain_errors_are_never_retried(self, stream_store: StreamStore) -> None:
        await build_bus(stream_store).dispatch(OpenAccount(account_id="a-1", owner="ann"))
        bus = CommandBus(stream_store, max_retries=5, retry_delay=0.001)
        attempts = 0

        @bus.handles(Withdraw, aggregate=Account)
        async def withdraw(command: Withdraw, account: Account) -> None:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                # Force one conflict so that retrying is in play, then refuse.
                await stream_store.append(account.stream_id, [MoneyDeposited(amount=Decimal(1))])
                account.withdraw(Decimal(0))
                return
            account.withdraw(command.amount)

        with pytest.raises(InsufficientFunds):
            await bus.dispatch(Withdraw(account_id="a-1", amount=Decimal(50)))
        assert attempts == 2  # one retry for the conflict, none for the refusal

    # -- idempotency ----------------------------------------------------------------------------

    async def test_a_repeated_command_returns_the_first_result(
        self, stream_store: StreamStore
    ) -> None:
        await build_bus(stream_store).dispatch(OpenAccount(account_id="a-1", owner="ann"))
        command = Deposit(account_id="a-1", amount=Decimal(5))
        first = await build_bus(stream_store).dispatch(command)

        # A fresh bus stands for another process; the command comes back as JSON, the way
        # a client's retried request would.
        again = await build_bus(stream_store).dispatch(
            Deposit.model_validate_json(command.model_dump_json())
        )

        assert (first.replayed, again.replayed) == (False, True)
        assert (again.command_id, again.stream_id, again.version, again.position) == (
            first.command_id,
            first.stream_id,
            first.version,
            first.position,
        )
        assert again.events == first.events == (MoneyDeposited(amount=Decimal(5)),)
        assert len(await read(stream_store, "account-a-1")) == 2

    async def test_a_repeat_after_the_stream_moved_on_does_not_run_again(
        self, stream_store: StreamStore
    ) -> None:
        bus = build_bus(stream_store)
        await bus.dispatch(OpenAccount(account_id="a-1", owner="ann", initial_deposit=Decimal(10)))
        withdraw = Withdraw(account_id="a-1", amount=Decimal(10))
        first = await bus.dispatch(withdraw)
        await bus.dispatch(Deposit(account_id="a-1", amount=Decimal(3)))
        await bus.dispatch(Withdraw(account_id="a-1", amount=Decimal(3)))

        # Run again now, the handler would refuse (balance 0); the first answer stands.
        again = await build_bus(stream_store).dispatch(withdraw)

        assert again.replayed
        assert (again.version, again.position, again.events) == (
            first.version,
            first.position,
            (MoneyWithdrawn(amount=Decimal(10)),),
        )
        assert len(await read(stream_store, "account-a-1")) == 5

    async def test_concurrent_copies_of_one_command_store_it_once(
        self, stream_store: StreamStore
    ) -> None:
        barrier = asyncio.Barrier(2)
        first_process, first_attempts = racing_bus(stream_store, barrier)
        second_process, second_attempts = racing_bus(stream_store, barrier)
        await first_process.dispatch(OpenAccount(account_id="a-1", owner="ann"))
        command = Deposit(account_id="a-1", amount=Decimal(7))

        results = await asyncio.gather(
            first_process.dispatch(command), second_process.dispatch(command)
        )

        assert sorted(r.replayed for r in results) == [False, True]
        assert {(r.version, r.position, r.events) for r in results} == {
            (2, 2, (MoneyDeposited(amount=Decimal(7)),))
        }
        assert len(await read(stream_store, "account-a-1")) == 2
        # Both ran the handler: both got past the "applied before?" check before either
        # appended, and the store's idempotent append settled it.
        assert (sum(first_attempts.values()), sum(second_attempts.values())) == (1, 1)

    async def test_event_ids_derive_from_the_command_id(self, stream_store: StreamStore) -> None:
        command = OpenAccount(account_id="a-1", owner="ann", initial_deposit=Decimal(1))
        await build_bus(stream_store).dispatch(command)
        stored = await read(stream_store, "account-a-1")
        assert [r.event_id for r in stored] == [
            derive_event_id(command.command_id, 0),
            derive_event_id(command.command_id, 1),
        ]

    # -- metadata ------------------------------------------------------------------------------

    async def test_correlation_causation_and_principal_flow_into_events(
        self, stream_store: StreamStore
    ) -> None:
        bus = build_bus(stream_store)
        command = OpenAccount(
            account_id="a-1",
            owner="ann",
            initial_deposit=Decimal(2),
            metadata=CommandMetadata(
                correlation_id="signup-42",
                causation_id="http-request-9",
                principal="user:ann",
                headers={"tenant": "t1"},
            ),
        )
        with use_trace(TraceContext.new()) as trace:
            await bus.dispatch(command)
        assert trace is not None

        follow_up = Deposit(account_id="a-1", amount=Decimal(1))
        await bus.dispatch(follow_up)

        opened, deposited, later = (r.metadata for r in await read(stream_store, "account-a-1"))
        for meta in (opened, deposited):
            assert meta.causation_id == str(command.command_id)
            assert meta.correlation_id == "signup-42"
            assert meta.principal == "user:ann"
            assert meta.headers == {"tenant": "t1", "traceparent": trace.traceparent}
        # A command without a correlation id starts a conversation named after itself.
        assert later.correlation_id == later.causation_id == str(follow_up.command_id)
        assert later.principal is None

    # -- the functional form ----------------------------------------------------------------------

    async def test_deciders_run_through_the_same_bus(self, stream_store: StreamStore) -> None:
        bus = build_bus(stream_store)
        command = Increment(tally="t", by=2)
        first = await bus.dispatch(command)
        second = await bus.dispatch(Increment(tally="t", by=3))
        again = await bus.dispatch(command)

        assert (first.stream_id, first.version, second.version) == ("tally-t", 1, 2)
        assert again.replayed
        assert again.events == (Incremented(by=2),)
        with pytest.raises(DomainError):
            await bus.dispatch(Increment(tally="t", by=0))
        assert [r.event for r in await read(stream_store, "tally-t")] == [
            Incremented(by=2),
            Incremented(by=3),
        ]


class TestCommandBusOnEveryBackend(CommandBusContract):
    @pytest.fixture
    def stream_store(self, event_store: EventStore) -> StreamStore:
        return event_store


class TestCommandBusInMemory(CommandBusContract):
    @pytest.fixture
    def stream_store(self) -> StreamStore:
        return InMemoryEventStore()


# -- registration and dispatch misuse (no storage involved) -------------------------------------


class Unrouted(Command):
    pass


class NoId(Command):
    name: str


def test_unknown_commands_name_the_missing_handler() -> None:
    bus = build_bus(InMemoryEventStore())
    with pytest.raises(HandlerNotFoundError) as info:
        asyncio.run(bus.dispatch(Unrouted()))
    assert info.value.command_type == "Unrouted"
    assert "@bus.handles" in str(info.value)


def test_registering_a_command_twice_is_refused() -> None:
    bus = build_bus(InMemoryEventStore())
    with pytest.raises(UsageError) as info:
        bus.register(Deposit, lambda command, account: None, aggregate=Account)
    assert info.value.code == "duplicate-command-handler"
    with pytest.raises(UsageError):

        @bus.handles(Withdraw, aggregate=Account)
        def again(command: Withdraw, account: Account) -> None: ...


def test_registration_checks_its_arguments() -> None:
    bus = CommandBus(InMemoryEventStore())
    cases: list[tuple[str, Any]] = [
        ("not-a-command", lambda: bus.register(AccountOpened, print, aggregate=Account)),  # type: ignore[arg-type]
        ("not-an-aggregate", lambda: bus.register(Deposit, print, aggregate=Deposit)),  # type: ignore[arg-type, type-var]
        ("no-aggregate-id", lambda: bus.register(NoId, lambda c, a: None, aggregate=Account)),
        ("bad-handler-signature", lambda: bus.register(Deposit, lambda c: None, aggregate=Account)),  # type: ignore[arg-type]
    ]
    for code, register in cases:
        with pytest.raises(UsageError) as info:
            register()
        assert info.value.code == code, info.value
    bus.register(NoId, lambda c, a: None, aggregate=Account, aggregate_id=lambda c: c.name)
    assert bus.stream_id_for(NoId(name="x")) == "account-x"
    with pytest.raises(HandlerNotFoundError):
        bus.stream_id_for(Withdraw(account_id="y", amount=Decimal(1)))


@pytest.mark.parametrize(("max_retries", "retry_delay"), [(-1, 0.0), (True, 0.0), (1, -0.5)])
def test_retry_settings_are_checked(max_retries: Any, retry_delay: float) -> None:
    with pytest.raises(UsageError) as info:
        CommandBus(InMemoryEventStore(), max_retries=max_retries, retry_delay=retry_delay)
    assert info.value.code == "bad-retry-policy"


def test_dispatch_takes_commands() -> None:
    bus = build_bus(InMemoryEventStore())
    with pytest.raises(UsageError) as info:
        asyncio.run(bus.dispatch(MoneyDeposited(amount=Decimal(1))))  # type: ignore[arg-type]
    assert info.value.code == "not-a-command"
