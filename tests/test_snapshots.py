"""Snapshots on every backend: snapshot + tail equals full replay; stale snapshots are ignored."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cqrs_kit import (
    AppendResult,
    CommandBus,
    Event,
    EventRegistry,
    EventStore,
    NewEvent,
    RecordedEvent,
    Repository,
    Snapshot,
    SnapshotStore,
    TransientStoreError,
    UsageError,
)
from write_model_domain import (
    Account,
    AccountClosed,
    AccountOpened,
    Deposit,
    MoneyDeposited,
    MoneyWithdrawn,
    OpenAccount,
    domain_registry,
)


@pytest.fixture
def event_registry() -> EventRegistry:
    return domain_registry()


@pytest.fixture
def snapshots(mongo_database: Any) -> SnapshotStore:
    return SnapshotStore(mongo_database)


class CountingStore:
    """A ``StreamStore`` that counts the events loads read, to tell snapshot loads apart."""

    def __init__(self, inner: EventStore) -> None:
        self.inner = inner
        self.read = 0

    async def append(
        self,
        stream_id: str,
        events: Iterable[Event | NewEvent],
        *,
        expected_version: int | None = None,
    ) -> AppendResult:
        return await self.inner.append(stream_id, events, expected_version=expected_version)

    async def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int = 1,
        limit: int | None = None,
        strict: bool = True,
    ) -> AsyncIterator[RecordedEvent]:
        async for recorded in self.inner.read_stream(
            stream_id, from_version=from_version, limit=limit, strict=strict
        ):
            self.read += 1
            yield recorded

    async def find_commit(self, event_id: uuid.UUID, *, first: bool = False) -> AppendResult | None:
        return await self.inner.find_commit(event_id, first=first)


def snapshotting(every: int, *, schema: int = 1) -> type[Account]:
    """``Account`` with a snapshot policy (same streams, same handlers)."""
    attributes = {"snapshot_every": every, "snapshot_version": schema}
    return type(f"AccountEvery{every}V{schema}", (Account,), attributes)


async def write(
    store: EventStore, snapshots: SnapshotStore, kind: type[Account], batches: list[list[Event]]
) -> str:
    """Save each batch through a repository that loads from and takes snapshots."""
    account_id = uuid.uuid4().hex
    repository = Repository(store, kind, snapshots=snapshots)
    for batch in [[AccountOpened(owner="ann")], *batches]:
        account = await repository.load(account_id)
        for event in batch:
            account.record(event)
        await repository.save(account)
    return account_id


# -- the law --------------------------------------------------------------------------------------

amounts = st.decimals(
    min_value=Decimal("-1000"), max_value=Decimal("1000"), places=2, allow_nan=False
)
movements = st.one_of(
    amounts.map(lambda amount: MoneyDeposited(amount=amount)),
    amounts.map(lambda amount: MoneyWithdrawn(amount=amount)),
    st.builds(AccountClosed, reason=st.text(max_size=4)),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    batches=st.lists(st.lists(movements, min_size=1, max_size=4), min_size=1, max_size=8),
    every=st.integers(min_value=1, max_value=6),
)
async def test_snapshot_plus_tail_equals_full_replay(
    event_store: EventStore, snapshots: SnapshotStore, batches: list[list[Event]], every: int
) -> None:
    kind = snapshotting(every)
    account_id = await write(event_store, snapshots, kind, batches)
    total = 1 + sum(len(batch) for batch in batches)

    counting = CountingStore(event_store)
    from_snapshot = await Repository(counting, kind, snapshots=snapshots).load(account_id)
    replayed = await Repository(event_store, Account).load(account_id)

    assert from_snapshot.state == replayed.state
    assert from_snapshot.version == replayed.version == total
    snapshot = await snapshots.load(Account.stream_id_for(account_id), schema_version=1)
    if total < every:
        assert snapshot is None
        assert counting.read == total
        return
    # A save snapshots once `every` events have gone by since the last snapshot, so the
    # latest one is less than `every` events behind.
    assert snapshot is not None, f"{total} events, snapshot every {every}, none taken"
    assert total - every < snapshot.version <= total
    assert counting.read == total - snapshot.version  # only the tail was read

    # The snapshot itself is the state a replay up to its version gives.
    history = [r.event async for r in event_store.read_stream(Account.stream_id_for(account_id))]
    at_snapshot = Account(account_id)
    at_snapshot.replay(history[: snapshot.version])
    assert Account.state_from_snapshot(snapshot.state) == at_snapshot.state


# -- stale and broken snapshots ---------------------------------------------------------------


async def test_a_snapshot_of_an_old_schema_version_is_ignored(
    event_store: EventStore, snapshots: SnapshotStore
) -> None:
    batches: list[list[Event]] = [[MoneyDeposited(amount=Decimal(n))] for n in range(1, 6)]
    account_id = await write(event_store, snapshots, snapshotting(2, schema=1), batches)
    stream_id = Account.stream_id_for(account_id)
    assert await snapshots.load(stream_id, schema_version=1) is not None

    new_code = snapshotting(2, schema=2)
    counting = CountingStore(event_store)
    loaded = await Repository(counting, new_code, snapshots=snapshots).load(account_id)

    assert counting.read == 6  # a full replay
    assert loaded.state.balance == Decimal(15)
    assert await snapshots.load(stream_id, schema_version=2) is None

    # The first save with the new code snapshots at once in the new schema...
    loaded.record(MoneyDeposited(amount=Decimal(1)))
    await Repository(event_store, new_code, snapshots=snapshots).save(loaded)
    fresh = await snapshots.load(stream_id, schema_version=2)
    assert fresh is not None
    assert fresh.version == 7
    # ...and the old one stays readable for processes still running the old code.
    old = await snapshots.load(stream_id, schema_version=1)
    assert old is not None
    assert old.version == 6
    assert await snapshots.prune(Account.stream_prefix, keep_schema_version=2) == 1
    assert await snapshots.load(stream_id, schema_version=1) is None


async def test_a_mislabelled_snapshot_is_not_read(
    event_store: EventStore, snapshots: SnapshotStore, mongo_database: Any
) -> None:
    account_id = await write(event_store, snapshots, Account, [[MoneyDeposited(amount=Decimal(4))]])
    stream_id = Account.stream_id_for(account_id)
    # Written by some other tool under the v2 key, but holding a v1 state.
    await mongo_database["snapshots"].insert_one(
        {
            "_id": f"{stream_id}@2",
            "stream_id": stream_id,
            "schema_version": 1,
            "version": 2,
            "state": {"opened": True, "balance": "999"},
        }
    )
    assert await snapshots.load(stream_id, schema_version=2) is None
    loaded = await Repository(event_store, snapshotting(1, schema=2), snapshots=snapshots).load(
        account_id
    )
    assert loaded.state.balance == Decimal(4)


async def test_a_snapshot_that_no_longer_fits_the_state_is_ignored(
    event_store: EventStore, snapshots: SnapshotStore, caplog: pytest.LogCaptureFixture
) -> None:
    account_id = await write(event_store, snapshots, Account, [[MoneyDeposited(amount=Decimal(4))]])
    stream_id = Account.stream_id_for(account_id)
    # The state model changed and nobody bumped snapshot_version.
    await snapshots.save(Snapshot(stream_id, 2, 1, {"balance": "four"}))

    with caplog.at_level(logging.WARNING, logger="cqrs_kit.repository"):
        loaded = await Repository(event_store, snapshotting(5), snapshots=snapshots).load(
            account_id
        )

    assert loaded.state.balance == Decimal(4)
    assert "bump" in caplog.text
    assert "snapshot_version" in caplog.text


# -- the snapshot store ---------------------------------------------------------------------------


async def test_a_snapshot_never_moves_backwards(snapshots: SnapshotStore) -> None:
    assert await snapshots.save(Snapshot("account-x", 10, 1, {"balance": "10"}))
    assert not await snapshots.save(Snapshot("account-x", 5, 1, {"balance": "5"}))
    assert not await snapshots.save(Snapshot("account-x", 10, 1, {"balance": "again"}))
    stored = await snapshots.load("account-x", schema_version=1)
    assert stored is not None
    assert (stored.version, stored.state) == (10, {"balance": "10"})
    assert stored.taken_at.tzinfo is not None

    assert await snapshots.save(Snapshot("account-x", 12, 1, {"balance": "12"}, aggregate="A"))
    stored = await snapshots.load("account-x", schema_version=1)
    assert stored is not None
    assert (stored.version, stored.aggregate) == (12, "A")


async def test_delete_and_prune(snapshots: SnapshotStore) -> None:
    await snapshots.ensure_indexes()
    for stream, schema in [("account-a", 1), ("account-a", 2), ("account-b", 1), ("rental-a", 1)]:
        await snapshots.save(Snapshot(stream, 3, schema, {}))
    assert await snapshots.prune("account-", keep_schema_version=2) == 2
    assert await snapshots.load("rental-a", schema_version=1) is not None
    assert await snapshots.delete("account-a", schema_version=2) == 1
    assert await snapshots.delete("rental-a") == 1
    with pytest.raises(UsageError):
        await snapshots.prune("", keep_schema_version=2)
    with pytest.raises(UsageError):
        await snapshots.save(Snapshot("account-a", 0, 1, {}))


# -- through the command bus ----------------------------------------------------------------------


def snapshotting_bus(
    store: EventStore, snapshots: SnapshotStore, kind: type[Account]
) -> CommandBus:
    bus = CommandBus(store, snapshots=snapshots)
    bus.register(OpenAccount, lambda c, a: a.open(c.owner), aggregate=kind)
    bus.register(Deposit, lambda c, a: a.deposit(c.amount), aggregate=kind)
    return bus


async def test_the_bus_loads_and_takes_snapshots(
    event_store: EventStore, snapshots: SnapshotStore
) -> None:
    kind = snapshotting(3)
    bus = snapshotting_bus(event_store, snapshots, kind)
    await bus.dispatch(OpenAccount(account_id="a-1", owner="ann"))
    for amount in range(1, 8):
        await bus.dispatch(Deposit(account_id="a-1", amount=Decimal(amount)))

    snapshot = await snapshots.load("account-a-1", schema_version=1)
    assert snapshot is not None
    assert snapshot.version == 6  # taken at 3 and 6
    assert snapshot.aggregate == kind.__qualname__
    account = await bus.repository(kind).load("a-1")
    assert (account.version, account.state.balance) == (8, Decimal(28))


class BrokenSnapshots(SnapshotStore):
    async def save(self, snapshot: Snapshot) -> bool:
        raise TransientStoreError("snapshot collection unreachable")


async def test_a_failed_snapshot_does_not_fail_the_command(
    event_store: EventStore, mongo_database: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bus = snapshotting_bus(event_store, BrokenSnapshots(mongo_database), snapshotting(1))
    with caplog.at_level(logging.WARNING, logger="cqrs_kit.repository"):
        result = await bus.dispatch(OpenAccount(account_id="a-1", owner="ann"))
    assert (result.version, result.replayed) == (1, False)
    assert "could not store a snapshot of account-a-1" in caplog.text
