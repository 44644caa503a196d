"""A small bank-account domain for the write-model tests: events, state, aggregate, handlers.

It uses only public names, the way an application would.
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from pydantic import BaseModel, Field

from cqrs_kit import (
    Aggregate,
    Command,
    CommandBus,
    Decider,
    DomainError,
    Event,
    EventRegistry,
    SnapshotStore,
    StreamStore,
    applies,
)

# -- events ----------------------------------------------------------------------------------


class AccountOpened(Event):
    event_type: ClassVar[str] = "bank.AccountOpened"
    owner: str
    overdraft: Decimal = Decimal(0)


class MoneyDeposited(Event):
    event_type: ClassVar[str] = "bank.MoneyDeposited"
    amount: Decimal


class MoneyWithdrawn(Event):
    event_type: ClassVar[str] = "bank.MoneyWithdrawn"
    amount: Decimal


class AccountClosed(Event):
    event_type: ClassVar[str] = "bank.AccountClosed"
    reason: str = ""


class Incremented(Event):
    event_type: ClassVar[str] = "tally.Incremented"
    by: int


ACCOUNT_EVENTS: tuple[type[Event], ...] = (
    AccountOpened,
    MoneyDeposited,
    MoneyWithdrawn,
    AccountClosed,
)


def domain_registry() -> EventRegistry:
    return EventRegistry(*ACCOUNT_EVENTS, Incremented)


# -- domain errors ---------------------------------------------------------------------------


class AccountNotOpen(DomainError):
    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id!r} is not open")
        self.account_id = account_id


class AccountAlreadyOpen(DomainError):
    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id!r} is already open")
        self.account_id = account_id


class InsufficientFunds(DomainError):
    def __init__(self, account_id: str, *, balance: Decimal, amount: Decimal) -> None:
        super().__init__(f"account {account_id!r} holds {balance}, cannot withdraw {amount}")
        self.account_id = account_id
        self.balance = balance
        self.amount = amount


# -- the aggregate ---------------------------------------------------------------------------


class AccountState(BaseModel):
    opened: bool = False
    closed: bool = False
    owner: str = ""
    overdraft: Decimal = Decimal(0)
    balance: Decimal = Decimal(0)
    movements: int = 0
    # Order-sensitive on purpose: a snapshot that dropped or reordered an event shows here.
    recent: list[Decimal] = Field(default_factory=list)


class Account(Aggregate[AccountState]):
    stream_prefix = "account-"

    # -- command methods: check the rules, then record --------------------------------------

    def open(self, owner: str, overdraft: Decimal = Decimal(0)) -> None:
        if self.state.opened:
            raise AccountAlreadyOpen(self.id)
        self.record(AccountOpened(owner=owner, overdraft=overdraft))

    def deposit(self, amount: Decimal) -> None:
        self._require_open()
        if amount == 0:
            return  # nothing happened, so nothing is recorded
        self.record(MoneyDeposited(amount=amount))

    def withdraw(self, amount: Decimal) -> None:
        self._require_open()
        if self.state.balance + self.state.overdraft < amount:
            raise InsufficientFunds(self.id, balance=self.state.balance, amount=amount)
        self.record(MoneyWithdrawn(amount=amount))

    def close(self, reason: str = "") -> None:
        self._require_open()
        self.record(AccountClosed(reason=reason))

    def _require_open(self) -> None:
        if not self.state.opened or self.state.closed:
            raise AccountNotOpen(self.id)

    # -- event handlers: the only code that changes the state -------------------------------

    @applies(AccountOpened)
    def _opened(self, event: AccountOpened) -> None:
        self.state.opened = True
        self.state.owner = event.owner
        self.state.overdraft = event.overdraft

    @applies(MoneyDeposited)
    def _deposited(self, event: MoneyDeposited) -> None:
        self._move(event.amount)

    @applies(MoneyWithdrawn)
    def _withdrawn(self, event: MoneyWithdrawn) -> None:
        self._move(-event.amount)

    @applies(AccountClosed)
    def _closed(self, event: AccountClosed) -> None:
        self.state.closed = True

    def _move(self, amount: Decimal) -> None:
        self.state.balance += amount
        self.state.movements += 1
        self.state.recent = [*self.state.recent, amount][-5:]


# -- commands --------------------------------------------------------------------------------


class AccountCommand(Command):
    account_id: str

    @property
    def aggregate_id(self) -> str:
        return self.account_id


class OpenAccount(AccountCommand):
    owner: str
    overdraft: Decimal = Decimal(0)
    initial_deposit: Decimal = Decimal(0)


class Deposit(AccountCommand):
    amount: Decimal


class Withdraw(AccountCommand):
    amount: Decimal


class CloseAccount(AccountCommand):
    reason: str = ""


class Increment(Command):
    tally: str
    by: int = 1


def _decide_tally(command: Increment, total: int) -> list[Event]:
    if command.by <= 0:
        raise DomainError(f"increments are positive, not {command.by}")
    return [Incremented(by=command.by)]


def _evolve_tally(total: int, event: Event) -> int:
    return total + event.by if isinstance(event, Incremented) else total


tally_decider: Decider[Increment, int] = Decider(
    initial_state=0, decide=_decide_tally, evolve=_evolve_tally
)


# -- wiring ----------------------------------------------------------------------------------


def build_bus(
    store: StreamStore,
    *,
    snapshots: SnapshotStore | None = None,
    max_retries: int = 3,
    retry_delay: float = 0.001,
) -> CommandBus:
    """A bus with the account handlers; a fresh bus stands for a fresh process."""
    bus = CommandBus(store, snapshots=snapshots, max_retries=max_retries, retry_delay=retry_delay)

    @bus.handles(OpenAccount, aggregate=Account)
    def open_account(command: OpenAccount, account: Account) -> None:
        account.open(command.owner, command.overdraft)
        account.deposit(command.initial_deposit)  # records nothing for 0

    @bus.handles(Deposit, aggregate=Account)
    async def deposit(command: Deposit, account: Account) -> None:
        account.deposit(command.amount)

    @bus.handles(Withdraw, aggregate=Account)
    async def withdraw(command: Withdraw, account: Account) -> None:
        account.withdraw(command.amount)

    bus.register(
        CloseAccount,
        lambda command, account: account.close(command.reason),
        aggregate=Account,
        aggregate_id=lambda command: command.account_id,
    )
    bus.register_decider(Increment, tally_decider, stream_id=lambda c: f"tally-{c.tally}")
    return bus
