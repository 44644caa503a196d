"""Scheduled commands: durable, fired once at or after their due time, cancellable.

A scheduled command is a document in the ``scheduled_commands`` collection:

    {_id, command_type: "module:Class", command: {...JSON...}, due_at, state,
     attempts, owner, lease_until, group, key, created_at, fired_at, error}

``state`` moves ``pending → firing → done`` (or ``rejected`` when the
handler raised a `DomainError`, ``failed`` after
``max_attempts``, ``cancelled`` when cancelled while still pending).

Never twice
-----------
A `Scheduler` *claims* a due command with one ``find_one_and_update``
that flips ``pending`` to ``firing`` and stamps its owner and a lease. A
single-document update is atomic on every MongoDB deployment, so two
schedulers can never both claim the same pending command. The claimant
dispatches the stored command, whose ``command_id`` was fixed when it was
scheduled, then marks it ``done``. If the claimant dies between dispatch and
``done``, the lease runs out, another scheduler claims it again and
re-dispatches the *same* ``command_id``: the command bus recognises the id
and returns the original result instead of running the handler again. The
command's effect therefore happens once even though dispatch is
at-least-once.

Recurring schedules
-------------------
`RecurringSchedule` (``cron: "*/5 * * * *"`` or ``rate: "5 minutes"``
in the routing file) enqueues one scheduled command per occurrence, with an
id and a ``command_id`` derived from the schedule name and the occurrence
time. Schedulers in several processes compute the same ids, so each
occurrence is enqueued, and fired, once. Occurrences missed while no
scheduler ran are coalesced: only the latest one fires.

Time comes from a `Clock`; tests pass a `ManualClock` and move
it forward instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from croniter import CroniterError, croniter
from pydantic import BaseModel

from cqrs_kit._mongo import DuplicateKey, MongoDatabase, adapt
from cqrs_kit.errors import DomainError, TransientStoreError, UsageError
from cqrs_kit.leases import default_owner

log = logging.getLogger("cqrs_kit.scheduling")

#: Namespace for command ids derived from schedule names and occurrence times.
SCHEDULE_NAMESPACE = uuid.UUID("6f1d7a1e-4b1c-5d8e-9a0b-1c2d3e4f5a6b")

Dispatch = Callable[[Any], Awaitable[Any]]


class Clock(Protocol):
    """Where schedulers get the time, and how they wait."""

    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        """``datetime.now(UTC)``."""
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep``."""
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that only moves when told to; sleepers wake when it passes their time.

    Args:
        start: The initial time (default: 2024-01-01T00:00:00Z).
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2024, 1, 1, tzinfo=UTC)
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        """The clock's current time."""
        return self._now

    def advance(self, delta: timedelta | float) -> datetime:
        """Move forward by ``delta`` (seconds or a timedelta) and wake due sleepers."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        if step < timedelta(0):
            raise UsageError("a ManualClock cannot go backwards", code="clock-backwards")
        self._now += step
        still: list[tuple[datetime, asyncio.Future[None]]] = []
        for wake_at, fut in self._sleepers:
            if wake_at <= self._now:
                if not fut.done():
                    fut.set_result(None)
            else:
                still.append((wake_at, fut))
        self._sleepers = still
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been advanced by ``seconds``."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._now + timedelta(seconds=seconds), fut))
        await fut


class ScheduleState(StrEnum):
    """Lifecycle of a scheduled command."""

    PENDING = "pending"
    FIRING = "firing"
    DONE = "done"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class ScheduledCommand:
    """A stored scheduled command.

    Attributes:
        id: Its id (deterministic when the caller chose one).
        command_type: ``module:QualifiedName`` of the command class.
        command: The command's JSON form.
        due_at: When it becomes due.
        state: Where it is in its lifecycle.
        attempts: Dispatch attempts so far.
        group: Who owns it (a process-manager instance, a schedule name).
        key: A name within the group, used to cancel it.
        error: The last dispatch error, if any.
    """

    id: str
    command_type: str
    command: Mapping[str, Any]
    due_at: datetime
    state: ScheduleState
    attempts: int = 0
    group: str | None = None
    key: str | None = None
    error: str | None = None

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> ScheduledCommand:
        """Build from a stored document."""
        return cls(
            id=str(doc["_id"]),
            command_type=doc["command_type"],
            command=doc["command"],
            due_at=datetime.fromtimestamp(float(doc["due_at"]), UTC),
            state=ScheduleState(doc["state"]),
            attempts=int(doc.get("attempts", 0)),
            group=doc.get("group"),
            key=doc.get("key"),
            error=doc.get("error"),
        )


def command_type_name(cls: type[Any]) -> str:
    """The ``module:QualifiedName`` a command class is stored under."""
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_command_type(name: str) -> type[BaseModel]:
    """Import the command class stored as ``module:QualifiedName``.

    Raises:
        UsageError: The name does not resolve to a pydantic model class.
    """
    module_name, _, qualname = name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UsageError(
            f"cannot resolve command type {name!r}: {exc}", code="unknown-command-type"
        ) from exc
    if not (isinstance(obj, type) and issubclass(obj, BaseModel)):
        raise UsageError(f"{name!r} is not a pydantic model class", code="unknown-command-type")
    return obj


def with_command_id(cls: type[BaseModel], args: Mapping[str, Any], command_id: str) -> BaseModel:
    """Build ``cls(**args)`` with ``command_id`` set when the class has that field."""
    data = dict(args)
    if "command_id" in cls.model_fields:
        data["command_id"] = command_id
    return cls.model_validate(data)


def derived_id(*parts: str) -> str:
    """A stable UUID (as text) derived from ``parts``."""
    return str(uuid.uuid5(SCHEDULE_NAMESPACE, "\x1f".join(parts)))


def _ts(moment: datetime) -> float:
    if moment.tzinfo is None:
        raise UsageError("scheduling needs timezone-aware datetimes", code="naive-datetime")
    return moment.timestamp()


class ScheduledCommandStore:
    """Schedules, cancels and lists scheduled commands.

    Any process may schedule (an API handler, a process manager); a
    `Scheduler` somewhere fires them.

    Args:
        database: A driver database object or an adapted one.
        clock: Source of "now" for ``after=``.
        collection: Collection name.
    """

    def __init__(
        self,
        database: Any,
        *,
        clock: Clock | None = None,
        collection: str = "scheduled_commands",
    ) -> None:
        self.database: MongoDatabase = adapt(database)
        self.clock: Clock = clock or SystemClock()
        self.collection = self.database.collection(collection)

    async def ensure_indexes(self) -> None:
        """Create the indexes the claim and cancel queries use (idempotent)."""
        await self.collection.create_index([("state", 1), ("due_at", 1)], name="state_due")
        await self.collection.create_index([("state", 1), ("lease_until", 1)], name="state_lease")
        await self.collection.create_index([("group", 1), ("key", 1)], name="group_key")

    async def schedule(
        self,
        command: BaseModel,
        *,
        at: datetime | None = None,
        after: timedelta | float | None = None,
        id: str | None = None,
        group: str | None = None,
        key: str | None = None,
    ) -> ScheduledCommand:
        """Store ``command`` to be dispatched at ``at`` (or ``after`` from now).

        Scheduling is idempotent by ``id``: scheduling again under an existing id
        returns what is stored and changes nothing, so a caller that retries
        (a process manager replaying its outbox) never schedules twice.

        Raises:
            UsageError: Neither or both of ``at`` and ``after`` were given, or
                ``command`` is not a pydantic model.
        """
        if (at is None) == (after is None):
            raise UsageError("pass exactly one of at= or after=", code="schedule-when")
        if not isinstance(command, BaseModel):
            raise UsageError("only pydantic models can be scheduled", code="not-a-command")
        if at is None:
            seconds = after.total_seconds() if isinstance(after, timedelta) else float(after or 0)
            at = self.clock.now() + timedelta(seconds=seconds)
        doc: dict[str, Any] = {
            "_id": id or str(uuid.uuid4()),
            "command_type": command_type_name(type(command)),
            "command": command.model_dump(mode="json"),
            "due_at": _ts(at),
            "state": ScheduleState.PENDING.value,
            "attempts": 0,
            "group": group,
            "key": key,
            "created_at": time.time(),
        }
        try:
            await self.collection.insert_one(doc)
        except DuplicateKey:
            existing = await self.collection.find_one({"_id": doc["_id"]})
            if existing is not None:
                return ScheduledCommand.from_document(existing)
            raise
        return ScheduledCommand.from_document(doc)

    async def cancel(self, id: str) -> bool:
        """Cancel a pending command; ``False`` if it is not pending (fired, firing, gone)."""
        matched, _, _ = await self.collection.update_one(
            {"_id": id, "state": ScheduleState.PENDING.value},
            {"$set": {"state": ScheduleState.CANCELLED.value, "cancelled_at": time.time()}},
        )
        return matched > 0

    async def cancel_group(self, group: str, *, key: str | None = None) -> int:
        """Cancel every pending command of ``group`` (with ``key``, if given); returns how many."""
        query: dict[str, Any] = {"group": group, "state": ScheduleState.PENDING.value}
        if key is not None:
            query["key"] = key
        return await self.collection.update_many(
            query,
            {"$set": {"state": ScheduleState.CANCELLED.value, "cancelled_at": time.time()}},
        )

    async def get(self, id: str) -> ScheduledCommand | None:
        """The stored command, or ``None``."""
        doc = await self.collection.find_one({"_id": id})
        return ScheduledCommand.from_document(doc) if doc else None

    async def list(
        self, *, state: ScheduleState | None = None, group: str | None = None, limit: int = 100
    ) -> list[ScheduledCommand]:
        """Stored commands, soonest first."""
        query: dict[str, Any] = {}
        if state is not None:
            query["state"] = state.value
        if group is not None:
            query["group"] = group
        docs = await self.collection.find_list(query, sort=[("due_at", 1)], limit=limit)
        return [ScheduledCommand.from_document(d) for d in docs]


_RATE_RE = re.compile(
    r"^\s*(?:rate\(\s*)?(\d+)\s*(second|minute|hour|day)s?\s*\)?\s*$", re.IGNORECASE
)
_RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def parse_rate(text: str) -> timedelta:
    """Parse ``"5 minutes"`` (or EventBridge's ``"rate(5 minutes)"``).

    Raises:
        ValueError: The text is not a positive rate.
    """
    match = _RATE_RE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a rate like '5 minutes' (units: seconds to days)")
    amount = int(match.group(1))
    if amount <= 0:
        raise ValueError("a rate must be positive")
    return timedelta(seconds=amount * _RATE_UNITS[match.group(2).lower()])


def validate_cron(expression: str) -> str:
    """Return ``expression`` if croniter accepts it (5 fields, or 6 with seconds).

    Raises:
        ValueError: The expression is invalid.
    """
    try:
        croniter(expression, datetime(2024, 1, 1, tzinfo=UTC))
    except (CroniterError, ValueError, KeyError) as exc:
        raise ValueError(f"invalid cron expression {expression!r}: {exc}") from exc
    return expression


@dataclass(frozen=True, slots=True)
class RecurringSchedule:
    """A command fired on a cron expression or at a fixed rate.

    Attributes:
        name: Unique name; part of every occurrence's id.
        command_type: The command class.
        args: Fields for the command (``command_id`` is set per occurrence).
        cron: A cron expression, in UTC.
        rate: A fixed interval, aligned to the Unix epoch so that every
            process computes the same occurrences.
    """

    name: str
    command_type: type[BaseModel]
    args: Mapping[str, Any] = field(default_factory=dict)
    cron: str | None = None
    rate: timedelta | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.rate is None):
            raise UsageError(
                f"schedule {self.name!r} needs exactly one of cron or rate", code="schedule-when"
            )
        if self.cron is not None:
            validate_cron(self.cron)

    def next_after(self, moment: datetime) -> datetime:
        """The first occurrence strictly after ``moment``."""
        if self.cron is not None:
            nxt: datetime = croniter(self.cron, moment.astimezone(UTC)).get_next(datetime)
            return nxt
        assert self.rate is not None
        step = self.rate.total_seconds()
        ticks = int(moment.timestamp() // step) + 1
        return datetime.fromtimestamp(ticks * step, UTC)

    def latest_until(self, after: datetime, now: datetime) -> datetime | None:
        """The last occurrence in ``(after, now]``, or ``None`` if there is none."""
        first = self.next_after(after)
        if first > now:
            return None
        if self.rate is not None:
            step = self.rate.total_seconds()
            return datetime.fromtimestamp(int(now.timestamp() // step) * step, UTC)
        latest = first
        for _ in range(100_000):  # bounded: a cron fires at most once a second
            following = self.next_after(latest)
            if following > now:
                break
            latest = following
        return latest

    def occurrence_id(self, occurrence: datetime) -> str:
        """The scheduled-command id of one occurrence."""
        return f"schedule:{self.name}@{occurrence.astimezone(UTC).isoformat()}"

    def command_for(self, occurrence: datetime) -> BaseModel:
        """The command of one occurrence, with its deterministic ``command_id``."""
        return with_command_id(
            self.command_type, self.args, derived_id(self.occurrence_id(occurrence))
        )


@dataclass(frozen=True, slots=True)
class FireResult:
    """What one `Scheduler.tick` did.

    Attributes:
        fired: Ids dispatched successfully.
        rejected: Ids whose handler raised a ``DomainError`` (not retried).
        retrying: Ids that failed and will be retried.
        failed: Ids that failed for the last time.
        enqueued: Ids of recurring occurrences enqueued.
    """

    fired: tuple[str, ...] = ()
    rejected: tuple[str, ...] = ()
    retrying: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    enqueued: tuple[str, ...] = ()


class Scheduler:
    """Fires due scheduled commands through the command bus, and recurring schedules.

    Run one or several per deployment: claims keep them from firing anything twice.

    Args:
        store: Where scheduled commands live.
        dispatch: The command bus's dispatch callable (``bus.dispatch``).
        schedules: Recurring schedules to enqueue occurrences of.
        clock: Source of time (defaults to the store's clock).
        owner: This scheduler's identity in claims.
        lease: Seconds a claim lasts; a claim older than that is taken over.
        max_attempts: Dispatch attempts before a command is marked ``failed``.
        retry_delay: Base delay (seconds) before retrying a failed dispatch; doubles per attempt.
        poll_interval: Longest wait between ticks.
    """

    def __init__(
        self,
        store: ScheduledCommandStore,
        dispatch: Dispatch,
        *,
        schedules: Sequence[RecurringSchedule] = (),
        clock: Clock | None = None,
        owner: str | None = None,
        lease: float = 60.0,
        max_attempts: int = 5,
        retry_delay: float = 5.0,
        poll_interval: float = 1.0,
    ) -> None:
        names = [s.name for s in schedules]
        if len(set(names)) != len(names):
            raise UsageError("recurring schedule names must be unique", code="duplicate-schedule")
        self.store = store
        self.dispatch = dispatch
        self.schedules = tuple(schedules)
        self.clock: Clock = clock or store.clock
        self.owner = owner or default_owner()
        self.lease = lease
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.poll_interval = poll_interval
        self._coll = store.collection
        self._watermarks = store.database.collection(f"{store.collection.name}_recurring")

    async def tick(self) -> FireResult:
        """Enqueue due recurring occurrences, then fire everything due now."""
        enqueued = [await self._enqueue_occurrence(s) for s in self.schedules]
        fired: list[str] = []
        rejected: list[str] = []
        retrying: list[str] = []
        failed: list[str] = []
        buckets = {
            ScheduleState.DONE: fired,
            ScheduleState.REJECTED: rejected,
            ScheduleState.PENDING: retrying,
            ScheduleState.FAILED: failed,
        }
        while True:
            doc = await self._claim()
            if doc is None:
                break
            outcome = await self._fire(doc)
            buckets[outcome].append(str(doc["_id"]))
        return FireResult(
            fired=tuple(fired),
            rejected=tuple(rejected),
            retrying=tuple(retrying),
            failed=tuple(failed),
            enqueued=tuple(e for e in enqueued if e is not None),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set, sleeping until the next due time or ``poll_interval``."""
        while not stop.is_set():
            try:
                await self.tick()
                wait = await self._seconds_to_next()
            except TransientStoreError as exc:
                log.warning("scheduler %s: database unavailable (%s); retrying", self.owner, exc)
                wait = self.poll_interval
            sleeper = asyncio.ensure_future(self.clock.sleep(wait))
            stopper = asyncio.ensure_future(stop.wait())
            _, pending = await asyncio.wait([sleeper, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _seconds_to_next(self) -> float:
        now = self.clock.now().timestamp()
        nxt = await self._coll.find_one(
            {"state": ScheduleState.PENDING.value}, sort=[("due_at", 1)], projection={"due_at": 1}
        )
        wait = self.poll_interval
        if nxt is not None:
            wait = min(wait, max(0.0, float(nxt["due_at"]) - now))
        for schedule in self.schedules:
            upcoming = schedule.next_after(self.clock.now()).timestamp()
            wait = min(wait, max(0.0, upcoming - now))
        return wait

    async def _claim(self) -> dict[str, Any] | None:
        now = self.clock.now().timestamp()
        claim = {
            "$set": {
                "state": ScheduleState.FIRING.value,
                "owner": self.owner,
                "lease_until": now + self.lease,
            },
            "$inc": {"attempts": 1},
        }
        # Two single-document claims rather than one $or: each is atomic, and each
        # matches one index. A claim whose lease ran out belonged to a scheduler that
        # died mid-dispatch; re-dispatching is safe because the command id is fixed.
        doc = await self._coll.find_one_and_update(
            {"state": ScheduleState.PENDING.value, "due_at": {"$lte": now}},
            claim,
            sort=[("due_at", 1)],
        )
        if doc is None:
            doc = await self._coll.find_one_and_update(
                {"state": ScheduleState.FIRING.value, "lease_until": {"$lt": now}},
                claim,
                sort=[("lease_until", 1)],
            )
            if doc is not None:
                log.warning("scheduled command %s: took over an expired claim", doc["_id"])
        return doc

    async def _fire(self, doc: Mapping[str, Any]) -> ScheduleState:
        ident = doc["_id"]
        try:
            cls = resolve_command_type(doc["command_type"])
            command = cls.model_validate(doc["command"])
        except Exception as exc:  # cannot be rebuilt: retrying will not help
            log.error("scheduled command %s cannot be rebuilt: %s", ident, exc)
            return await self._finish(ident, ScheduleState.FAILED, error=f"{exc}")
        try:
            await self.dispatch(command)
        except DomainError as exc:
            log.info("scheduled command %s was rejected: %s", ident, exc)
            return await self._finish(
                ident, ScheduleState.REJECTED, error=f"{type(exc).__name__}: {exc}"
            )
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            attempts = int(doc.get("attempts", 1))
            if attempts >= self.max_attempts:
                log.error("scheduled command %s failed %d times: %s", ident, attempts, error)
                return await self._finish(ident, ScheduleState.FAILED, error=error)
            delay = self.retry_delay * 2 ** (attempts - 1) * random.uniform(0.8, 1.0)
            log.warning("scheduled command %s failed (%s); retrying in %.1fs", ident, error, delay)
            await self._coll.update_one(
                {"_id": ident, "owner": self.owner, "state": ScheduleState.FIRING.value},
                {
                    "$set": {
                        "state": ScheduleState.PENDING.value,
                        "due_at": self.clock.now().timestamp() + delay,
                        "error": error,
                    }
                },
            )
            return ScheduleState.PENDING
        return await self._finish(ident, ScheduleState.DONE)

    async def _finish(
        self, ident: Any, state: ScheduleState, *, error: str | None = None
    ) -> ScheduleState:
        update: dict[str, Any] = {"state": state.value, "fired_at": time.time()}
        if error is not None:
            update["error"] = error
        matched, _, _ = await self._coll.update_one(
            {"_id": ident, "owner": self.owner, "state": ScheduleState.FIRING.value},
            {"$set": update},
        )
        if not matched:
            # Our lease ran out mid-dispatch and another scheduler claimed it; it will
            # re-dispatch the same command id, which the bus answers idempotently.
            log.warning("scheduled command %s: claim was taken over before completion", ident)
        return state

    async def _enqueue_occurrence(self, schedule: RecurringSchedule) -> str | None:
        now = self.clock.now()
        mark = await self._watermarks.find_one({"_id": schedule.name})
        if mark is None:
            # First sighting: start from now; earlier occurrences never belonged to us.
            with contextlib.suppress(DuplicateKey):
                await self._watermarks.insert_one(
                    {"_id": schedule.name, "watermark": now.timestamp()}
                )
            return None
        after = datetime.fromtimestamp(float(mark["watermark"]), UTC)
        occurrence = schedule.latest_until(after, now)
        if occurrence is None:
            return None
        ident = schedule.occurrence_id(occurrence)
        # Enqueue before moving the watermark: a crash in between re-enqueues the same
        # id next time, which the unique _id turns into a no-op.
        await self.store.schedule(
            schedule.command_for(occurrence), at=occurrence, id=ident, group=schedule.name
        )
        await self._watermarks.update_one(
            {"_id": schedule.name, "watermark": {"$lt": occurrence.timestamp()}},
            {"$set": {"watermark": occurrence.timestamp()}},
        )
        return ident
