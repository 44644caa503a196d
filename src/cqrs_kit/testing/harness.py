"""Given/when/then tests for command handlers, in memory, with no database.

A `Scenario` runs a command through a copy of your
`CommandBus` (same handlers, same retries, same idempotency)
over an `InMemoryEventStore`, after seeding the command's stream with
the *given* events, and compares the events it records with the expected
ones:

    scenario = Scenario(bus)

    def test_withdrawing_more_than_the_balance_is_refused() -> None:
        scenario.given(
            AccountOpened(owner="ann"), MoneyDeposited(amount=Decimal(10))
        ).when(
            Withdraw(account_id="a-1", amount=Decimal(11))
        ).then_raises(InsufficientFunds)

``then`` and ``then_raises`` are plain functions, so the same line works in
sync tests and in ``async def`` tests: inside a running event loop the
scenario runs on a private loop in a worker thread (the in-memory store holds
no loop-bound resources). A mismatch fails with a line diff of the expected
and the actual events.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import difflib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TypeVar

from cqrs_kit.commands import Command, CommandBus, CommandResult
from cqrs_kit.errors import ConcurrencyError, DuplicateEventError, UsageError
from cqrs_kit.events import Event, EventRegistry, NewEvent, RecordedEvent
from cqrs_kit.store import AppendResult, validate_stream_id

T = TypeVar("T")
X = TypeVar("X", bound=BaseException)


@dataclasses.dataclass(frozen=True, slots=True)
class _Commit:
    ids: tuple[uuid.UUID, ...]
    result: AppendResult


class InMemoryEventStore:
    """An event store double in memory: the `StreamStore` subset.

    It keeps the guarantees the write model relies on: atomic appends,
    ``expected_version`` checks, idempotency by event id, contiguous versions
    and positions. Every event goes through its stored (JSON) form on the way
    in and is decoded on the way out, so a payload that the real store could
    not keep fails here too. Event classes are registered as they are appended.
    """

    def __init__(self) -> None:
        self.registry = EventRegistry()
        self._log: list[RecordedEvent] = []
        self._streams: dict[str, list[RecordedEvent]] = {}
        self._commits: dict[uuid.UUID, _Commit] = {}

    async def append(
        self,
        stream_id: str,
        events: Iterable[Event | NewEvent],
        *,
        expected_version: int | None = None,
    ) -> AppendResult:
        """Append events atomically (same contract as ``EventStore.append``).

        Raises:
            ConcurrencyError: The stream is not at ``expected_version``.
            DuplicateEventError: An event id is already stored in another append.
        """
        validate_stream_id(stream_id)
        if expected_version is not None and (
            isinstance(expected_version, bool)
            or not isinstance(expected_version, int)
            or expected_version < 0
        ):
            raise UsageError(
                f"expected_version must be None, 0 or a positive int, not {expected_version!r}",
                code="bad-expected-version",
            )
        batch = [item if isinstance(item, NewEvent) else NewEvent(item) for item in events]
        stream = self._streams.get(stream_id, [])
        actual = len(stream)
        if not batch:
            if expected_version is not None and actual != expected_version:
                raise ConcurrencyError(stream_id, expected=expected_version, actual=actual)
            position = stream[-1].position if stream else 0
            return AppendResult(stream_id, actual, position, position, replayed=True)
        ids = tuple(item.event_id for item in batch)
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise DuplicateEventError(str(dup), stream_id=stream_id)
        stored = next((self._commits[i] for i in ids if i in self._commits), None)
        if stored is not None:
            if stored.ids != ids or stored.result.stream_id != stream_id:
                clash = next(i for i in ids if i in self._commits)
                raise DuplicateEventError(str(clash), stream_id=stream_id)
            return stored.result
        if expected_version is not None and actual != expected_version:
            raise ConcurrencyError(stream_id, expected=expected_version, actual=actual)

        recorded_at = datetime.now(UTC)
        first_position = len(self._log) + 1
        recorded = [
            RecordedEvent(
                event_id=item.event_id,
                stream_id=stream_id,
                stream_version=actual + 1 + n,
                position=first_position + n,
                event_type=item.event.event_type,
                schema_version=item.event.schema_version,
                recorded_at=recorded_at,
                metadata=item.metadata,
                data=self._encode(item.event, stream_id),
                registry=self.registry,
            )
            for n, item in enumerate(batch)
        ]
        self._log.extend(recorded)
        self._streams[stream_id] = [*stream, *recorded]
        result = AppendResult(
            stream_id, recorded[-1].stream_version, recorded[-1].position, first_position
        )
        commit = _Commit(ids, dataclasses.replace(result, replayed=True))
        for event_id in ids:
            self._commits[event_id] = commit
        return result

    def _encode(self, event: Event, stream_id: str) -> dict[str, object]:
        if not isinstance(event, Event):
            raise UsageError(
                f"append() takes Event or NewEvent objects, not {type(event).__name__}",
                code="not-an-event",
            )
        if event.event_type not in self.registry:
            self.registry.register(type(event))
        return self.registry.encode(event, stream_id=stream_id)

    async def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int = 1,
        limit: int | None = None,
        strict: bool = True,
    ) -> AsyncIterator[RecordedEvent]:
        """Yield a stream's events in version order from ``from_version``."""
        validate_stream_id(stream_id)
        stream = list(self._streams.get(stream_id, []))
        selected = stream[max(from_version, 1) - 1 :]
        for recorded in selected[:limit] if limit is not None else selected:
            if strict:
                _ = recorded.event
            yield recorded

    async def find_commit(self, event_id: uuid.UUID, *, first: bool = False) -> AppendResult | None:
        """The result of the append that stored ``event_id``, if any."""
        commit = self._commits.get(event_id)
        if commit is None or (first and commit.ids[0] != event_id):
            return None
        return commit.result

    async def stream_version(self, stream_id: str) -> int:
        """The current version of a stream (0 if it does not exist)."""
        return len(self._streams.get(validate_stream_id(stream_id), []))

    def recorded(self, stream_id: str | None = None) -> list[RecordedEvent]:
        """Every stored event in position order, or those of one stream."""
        if stream_id is None:
            return list(self._log)
        return list(self._streams.get(stream_id, []))


def run_sync(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop."""

    async def main() -> T:
        return await factory()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    # Called from an async test: that loop is busy running us, so run the scenario
    # to completion on a fresh loop in a worker thread, keeping context variables.
    context = contextvars.copy_context()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cqrs-kit-scenario") as pool:
        return pool.submit(context.run, asyncio.run, main()).result()


def _render(events: Sequence[Event]) -> list[str]:
    lines = []
    for event in events:
        fields = ", ".join(f"{name}={value!r}" for name, value in event)
        lines.append(f"{type(event).__name__}({fields})")
    return lines or ["<no events>"]


def events_diff(expected: Sequence[Event], actual: Sequence[Event]) -> str:
    """A line diff of two event lists (``-`` expected, ``+`` actual), for assertion messages."""
    # ndiff's "?" hint lines end in a newline of their own; joining adds one.
    return "\n".join(
        line.rstrip("\n") for line in difflib.ndiff(_render(expected), _render(actual))
    )


class Scenario:
    """A given/when/then test of command handlers against an in-memory store.

    Args:
        bus: The bus whose handlers to test; its store is not touched.
    """

    def __init__(self, bus: CommandBus) -> None:
        self.bus = bus
        self._given: tuple[tuple[str | None, Event], ...] = ()

    def given(self, *events: Event, stream_id: str | None = None) -> Scenario:
        """Events already stored before the command (in the command's stream by default).

        Returns a new scenario; the receiver is unchanged, so one scenario can be
        the common start of several tests.
        """
        for event in events:
            if not isinstance(event, Event):
                raise UsageError(
                    f"given() takes events, not {type(event).__qualname__}", code="not-an-event"
                )
        extended = Scenario(self.bus)
        extended._given = (*self._given, *((stream_id, event) for event in events))
        return extended

    def when(self, command: Command) -> Outcome:
        """The command to dispatch; check what it did with ``then`` or ``then_raises``."""
        return Outcome(self, command)

    async def _run(self, command: Command) -> tuple[CommandResult, InMemoryEventStore]:
        store = InMemoryEventStore()
        bus = self.bus.with_store(store)
        target = bus.stream_id_for(command)
        # Consecutive given events of one stream go in one append, like a command's.
        runs: list[tuple[str, list[Event]]] = []
        for stream_id, event in self._given:
            stream = stream_id or target
            if runs and runs[-1][0] == stream:
                runs[-1][1].append(event)
            else:
                runs.append((stream, [event]))
        for stream, events in runs:
            await store.append(stream, events)
        return await bus.dispatch(command), store


class Outcome:
    """The command of a scenario, waiting for its expectation."""

    def __init__(self, scenario: Scenario, command: Command) -> None:
        self.scenario = scenario
        self.command = command
        self.store: InMemoryEventStore | None = None

    def _execute(self) -> CommandResult:
        result, self.store = run_sync(lambda: self.scenario._run(self.command))
        return result

    def then(self, *events: Event) -> CommandResult:
        """Assert that the command recorded exactly ``events`` (none, if none are given).

        Returns:
            The command's result, for further checks.

        Raises:
            AssertionError: The command raised, or recorded other events.
        """
        name = type(self.command).__name__
        try:
            result = self._execute()
        except Exception as exc:
            raise AssertionError(
                f"{name} raised {type(exc).__name__}: {exc}\n"
                f"expected it to record:\n{_indent(_render(events))}"
            ) from exc
        actual = result.events
        if list(actual) != list(events) or [type(e) for e in actual] != [type(e) for e in events]:
            raise AssertionError(
                f"{name} recorded other events than expected (- expected, + actual):\n"
                f"{events_diff(events, actual)}"
            )
        return result

    def then_raises(self, error_type: type[X], *, match: str | None = None) -> X:
        """Assert that the command raised ``error_type`` (and recorded nothing).

        Args:
            error_type: The exception class expected (a subclass also matches).
            match: Text the error message must contain.

        Returns:
            The exception, for checks on its attributes.

        Raises:
            AssertionError: The command succeeded, or raised something else.
        """
        name = type(self.command).__name__
        try:
            result = self._execute()
        except error_type as exc:
            if match is not None and match not in str(exc):
                raise AssertionError(
                    f"{name} raised {type(exc).__name__} as expected, but its message "
                    f"{str(exc)!r} does not contain {match!r}"
                ) from exc
            return exc
        except Exception as exc:
            raise AssertionError(
                f"expected {name} to raise {error_type.__name__}, but it raised "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        raise AssertionError(
            f"expected {name} to raise {error_type.__name__}, but it succeeded and "
            f"recorded:\n{_indent(_render(result.events))}"
        )


def _indent(lines: list[str]) -> str:
    return "\n".join(f"  {line}" for line in lines)
