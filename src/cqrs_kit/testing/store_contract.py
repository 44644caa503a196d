"""The event-store contract: behaviour every ``EventStore`` backend must show.

Subclass `EventStoreContract` in a test module and provide the
``event_store`` fixture (the bundled plugin provides one per backend); every
``test_*`` method then runs against it:

    pytest_plugins = ["cqrs_kit.testing.plugin"]

    class TestMyStore(EventStoreContract):
        pass
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any, ClassVar

import pytest

from cqrs_kit.errors import (
    ConcurrencyError,
    DuplicateEventError,
    EventDecodingError,
    EventEncodingError,
    EventTooLargeError,
    InvalidStreamIdError,
    UnknownEventTypeError,
    UsageError,
)
from cqrs_kit.events import Event, EventMetadata, EventRegistry, NewEvent
from cqrs_kit.store import EventStore, ExpectedVersion


class ContractDeposited(Event):
    """A test event with a money amount."""

    event_type: ClassVar[str] = "contract.Deposited"
    amount: Decimal
    note: str = ""


class ContractOpened(Event):
    """A test event opening an account."""

    event_type: ClassVar[str] = "contract.Opened"
    owner: str


class ContractBlob(Event):
    """A test event with an arbitrary payload."""

    event_type: ClassVar[str] = "contract.Blob"
    body: Any = None


def contract_registry() -> EventRegistry:
    """A registry holding the contract's event classes."""
    return EventRegistry(ContractDeposited, ContractOpened, ContractBlob)


def _deposits(*amounts: str) -> list[Event]:
    return [ContractDeposited(amount=Decimal(a)) for a in amounts]


async def _collect(iterator: Any) -> list[Any]:
    return [item async for item in iterator]


class EventStoreContract:
    """Contract tests for `EventStore` (RELIABILITY scenarios 1, 2, 5 and 14)."""

    @pytest.fixture
    def event_registry(self) -> EventRegistry:
        """The contract's own event classes."""
        return contract_registry()

    # -- scenario 1: the append contract -------------------------------------------------

    async def test_read_back_equals_written(self, event_store: EventStore) -> None:
        meta = EventMetadata(correlation_id="c-1", causation_id="cmd-1", headers={"k": "v"})
        written = [
            NewEvent(ContractOpened(owner="ann"), metadata=meta),
            NewEvent(ContractDeposited(amount=Decimal("10.50"), note="first"), metadata=meta),
        ]
        result = await event_store.append("acct-1", written, expected_version=0)
        assert (result.version, result.first_position, result.position) == (2, 1, 2)
        read = await _collect(event_store.read_stream("acct-1"))
        assert [r.event for r in read] == [w.event for w in written]
        assert [r.event_id for r in read] == [w.event_id for w in written]
        assert [r.stream_version for r in read] == [1, 2]
        assert [r.position for r in read] == [1, 2]
        assert all(r.metadata == meta for r in read)
        assert all(r.recorded_at.tzinfo is not None for r in read)
        assert read[1].event.amount == Decimal("10.50")

    async def test_empty_append_is_a_no_op(self, event_store: EventStore) -> None:
        result = await event_store.append("acct-1", [], expected_version=ExpectedVersion.NO_STREAM)
        assert result.version == 0
        assert await event_store.head_position() == 0
        await event_store.append("acct-1", _deposits("1"))
        result = await event_store.append("acct-1", [])
        assert (result.version, result.position) == (1, 1)
        assert await event_store.head_position() == 1

    async def test_wrong_expected_version_raises_with_context(
        self, event_store: EventStore
    ) -> None:
        await event_store.append("acct-1", _deposits("1", "2"), expected_version=0)
        for expected in (0, 1, 3):
            with pytest.raises(ConcurrencyError) as info:
                await event_store.append("acct-1", _deposits("3"), expected_version=expected)
            assert (info.value.stream_id, info.value.expected, info.value.actual) == (
                "acct-1",
                expected,
                2,
            )
        assert await event_store.stream_version("acct-1") == 2
        assert await event_store.head_position() == 2

    async def test_expected_version_any_appends_to_any_state(self, event_store: EventStore) -> None:
        await event_store.append("acct-1", _deposits("1"), expected_version=None)
        result = await event_store.append("acct-1", _deposits("2"), expected_version=None)
        assert result.version == 2

    async def test_batch_is_all_or_nothing(self, event_store: EventStore) -> None:
        await event_store.append("acct-1", _deposits("1"))
        stored = NewEvent(ContractDeposited(amount=Decimal("2")))
        await event_store.append("acct-2", [stored])
        # The second event's id is already stored in acct-2: nothing of this batch lands.
        batch = [NewEvent(ContractDeposited(amount=Decimal("3"))), stored]
        with pytest.raises(DuplicateEventError) as info:
            await event_store.append("acct-1", batch)
        assert info.value.event_id == str(stored.event_id)
        assert [r.stream_version for r in await _collect(event_store.read_stream("acct-1"))] == [1]
        assert await event_store.head_position() == 2

    async def test_read_all_in_position_order_from_any_point(self, event_store: EventStore) -> None:
        await event_store.append("a", _deposits("1", "2", "3"))
        await event_store.append("b", _deposits("4"))
        await event_store.append("a", _deposits("5", "6"))
        everything = await _collect(event_store.read_all())
        assert [r.position for r in everything] == [1, 2, 3, 4, 5, 6]
        assert [(r.stream_id, r.stream_version) for r in everything] == [
            ("a", 1), ("a", 2), ("a", 3), ("b", 1), ("a", 4), ("a", 5)
        ]  # fmt: skip
        for after in range(7):
            tail = await _collect(event_store.read_all(after=after))
            assert [r.position for r in tail] == list(range(after + 1, 7))
        for after in range(7):
            for limit in range(1, 8):
                window = await _collect(event_store.read_all(after=after, limit=limit))
                expected = list(range(after + 1, min(after + limit, 6) + 1))
                assert [r.position for r in window] == expected, (after, limit)
        only_b = await _collect(event_store.read_all(event_types=["contract.Opened"]))
        assert only_b == []

    async def test_read_stream_windows_and_backwards(self, event_store: EventStore) -> None:
        await event_store.append("a", _deposits("1", "2", "3"))
        await event_store.append("a", _deposits("4", "5"))
        versions = [
            r.stream_version for r in await _collect(event_store.read_stream("a", from_version=3))
        ]
        assert versions == [3, 4, 5]
        assert [
            r.stream_version
            for r in await _collect(event_store.read_stream("a", from_version=2, limit=2))
        ] == [2, 3]
        backwards = await _collect(event_store.read_stream_backwards("a"))
        assert [r.stream_version for r in backwards] == [5, 4, 3, 2, 1]
        tail = await _collect(event_store.read_stream_backwards("a", from_version=4, limit=2))
        assert [r.stream_version for r in tail] == [4, 3]
        assert await _collect(event_store.read_stream("missing")) == []
        assert await event_store.stream_version("missing") == 0

    async def test_store_offers_no_update_or_delete(self, event_store: EventStore) -> None:
        public = {name for name in dir(event_store) if not name.startswith("_")}
        assert not {n for n in public if n.startswith(("update", "delete", "remove", "replace"))}

    # -- scenario 2: concurrent writers at one expected version ------------------------------

    async def test_concurrent_writers_one_wins(self, event_store: EventStore) -> None:
        await event_store.append("race", _deposits("0"))

        async def writer(n: int) -> str:
            try:
                await event_store.append("race", _deposits(str(n)), expected_version=1)
            except ConcurrencyError:
                return "lost"
            return "won"

        outcomes = await asyncio.gather(*(writer(n) for n in range(6)))
        assert outcomes.count("won") == 1
        assert outcomes.count("lost") == 5
        versions = [r.stream_version for r in await _collect(event_store.read_stream("race"))]
        assert versions == [1, 2]
        positions = [r.position for r in await _collect(event_store.read_all())]
        assert positions == [1, 2]

    async def test_concurrent_writers_any_version_all_land_contiguously(
        self, event_store: EventStore
    ) -> None:
        async def writer(n: int) -> None:
            await event_store.append(f"s-{n % 3}", _deposits(str(n), str(n)))

        await asyncio.gather(*(writer(n) for n in range(8)))
        events = await _collect(event_store.read_all())
        assert [r.position for r in events] == list(range(1, 17))
        for stream in ("s-0", "s-1", "s-2"):
            versions = [r.stream_version for r in events if r.stream_id == stream]
            assert versions == list(range(1, len(versions) + 1))

    # -- scenario 5: retried append -----------------------------------------------------------

    async def test_retried_append_returns_original_result(self, event_store: EventStore) -> None:
        batch = [NewEvent(ContractDeposited(amount=Decimal(n))) for n in ("1", "2")]
        first = await event_store.append("acct", batch, expected_version=0)
        await event_store.append("acct", _deposits("3"))
        # The expected version no longer matches, yet the retry is recognised.
        again = await event_store.append("acct", batch, expected_version=0)
        assert again.replayed
        assert not first.replayed
        assert (again.version, again.position, again.first_position) == (
            first.version,
            first.position,
            first.first_position,
        )
        again_any = await event_store.append("acct", batch)
        assert again_any.position == first.position
        assert len(await _collect(event_store.read_all())) == 3

    async def test_reused_event_id_in_another_stream_is_refused(
        self, event_store: EventStore
    ) -> None:
        event = NewEvent(ContractDeposited(amount=Decimal("1")))
        await event_store.append("a", [event])
        with pytest.raises(DuplicateEventError):
            await event_store.append("b", [event])
        with pytest.raises(DuplicateEventError):
            await event_store.append("a", [event, event])

    async def test_an_id_from_inside_an_earlier_batch_is_refused(
        self, event_store: EventStore
    ) -> None:
        a, b, c = (NewEvent(ContractDeposited(amount=Decimal(n))) for n in ("1", "2", "3"))
        await event_store.append("acct", [a, b])
        with pytest.raises(DuplicateEventError):
            await event_store.append("acct", [c, b])
        with pytest.raises(DuplicateEventError):
            await event_store.append("other", [b])
        assert [r.event_id for r in await _collect(event_store.read_all())] == [
            a.event_id,
            b.event_id,
        ]

    async def test_find_commit_by_any_event_or_by_the_first(self, event_store: EventStore) -> None:
        a, b = (NewEvent(ContractDeposited(amount=Decimal(n))) for n in ("1", "2"))
        stored = await event_store.append("acct", [a, b])
        for event_id in (a.event_id, b.event_id):
            found = await event_store.find_commit(event_id)
            assert found is not None
            assert (found.version, found.position, found.replayed) == (2, stored.position, True)
        assert await event_store.find_commit(a.event_id, first=True) is not None
        assert await event_store.find_commit(b.event_id, first=True) is None
        assert await event_store.find_commit(uuid.uuid4()) is None

    # -- scenario 14: bad input ---------------------------------------------------------------

    @pytest.mark.parametrize("stream_id", ["", "   ", None, 42, "a\x00b", "x" * 600])
    async def test_invalid_stream_ids(self, event_store: EventStore, stream_id: Any) -> None:
        with pytest.raises(InvalidStreamIdError):
            await event_store.append(stream_id, _deposits("1"))
        assert await event_store.head_position() == 0

    async def test_unserialisable_payload(self, event_store: EventStore) -> None:
        with pytest.raises(EventEncodingError) as info:
            await event_store.append("a", [ContractBlob(body={1, 2}), ContractBlob(body=object())])
        assert info.value.stream_id == "a"
        assert info.value.event_type == "contract.Blob"
        with pytest.raises(EventEncodingError, match="64 bits"):
            await event_store.append("a", [ContractBlob(body={"n": 2**70})])
        assert await event_store.head_position() == 0

    async def test_unregistered_event_class(self, event_store: EventStore) -> None:
        class Stray(Event):
            event_type: ClassVar[str] = "contract.Stray"

        with pytest.raises(UnknownEventTypeError):
            await event_store.append("a", [Stray()])
        with pytest.raises(UsageError):
            await event_store.append("a", ["not an event"])  # type: ignore[list-item]
        with pytest.raises(UsageError):
            await event_store.append("a", _deposits("1"), expected_version=-1)

    async def test_oversize_append(self, event_store: EventStore) -> None:
        await event_store.append("a", _deposits("1"))
        huge = ContractBlob(body="x" * (17 * 1024 * 1024))
        with pytest.raises(EventTooLargeError) as info:
            await event_store.append("a", [huge])
        assert info.value.stream_id == "a"
        assert info.value.size > info.value.limit
        assert await event_store.head_position() == 1

    async def test_unknown_type_on_read_names_position(
        self, event_store: EventStore, event_registry: EventRegistry
    ) -> None:
        await event_store.append("a", _deposits("1"))
        await event_store.append("a", [ContractOpened(owner="x")])
        reader = EventStore(
            event_store.database,
            EventRegistry(ContractDeposited),
            collection=event_store.collection_name,
        )
        with pytest.raises(UnknownEventTypeError) as info:
            await _collect(reader.read_all())
        assert (info.value.event_type, info.value.position, info.value.stream_id) == (
            "contract.Opened",
            2,
            "a",
        )
        lenient = await _collect(reader.read_all(strict=False))
        assert [r.event_type for r in lenient] == ["contract.Deposited", "contract.Opened"]

    async def test_upcasting_old_versions_on_read(self, event_store: EventStore) -> None:
        await event_store.append("a", [ContractDeposited(amount=Decimal("5"))])

        class DepositedV2(Event):
            event_type: ClassVar[str] = "contract.Deposited"
            schema_version: ClassVar[int] = 2
            amount: Decimal
            note: str
            currency: str

        registry = EventRegistry(DepositedV2)

        @registry.upcaster("contract.Deposited", from_version=1)
        def _add_currency(data: dict[str, Any]) -> dict[str, Any]:
            return {**data, "currency": "JPY"}

        reader = EventStore(event_store.database, registry, collection=event_store.collection_name)
        [recorded] = await _collect(reader.read_stream("a"))
        assert recorded.schema_version == 1
        assert recorded.event == DepositedV2(amount=Decimal("5"), note="", currency="JPY")

        no_upcaster = EventStore(
            event_store.database,
            EventRegistry(DepositedV2),
            collection=event_store.collection_name,
        )
        with pytest.raises(EventDecodingError, match="no upcaster"):
            await _collect(no_upcaster.read_stream("a"))

    async def test_event_ids_are_uuids(self, event_store: EventStore) -> None:
        await event_store.append("a", _deposits("1"))
        [recorded] = await _collect(event_store.read_all())
        assert isinstance(recorded.event_id, uuid.UUID)
