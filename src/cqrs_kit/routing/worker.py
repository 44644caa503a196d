"""The worker host: every subscriber, process manager and the scheduler in one process.

A `Worker` starts one `SubscriberRuntime`
per subscriber (process managers are subscribers too) and, if configured, a
`Scheduler`, and supervises them: a runtime that
crashes on something unexpected is logged and restarted after a pause, and
the others carry on.

Scaling out is running the same worker in more processes. Every subscriber
holds a lease (``subscriber:<id>`` in the ``leases`` collection) while it
runs, so each subscriber is active in exactly one process at a time and the
others stand by to take over when the holder dies; different subscribers
spread over the processes as the leases fall. Schedulers need no lease:
claims keep them from firing anything twice.

Stopping is graceful: `Worker.stop` asks every runtime to stop after
the batch in hand and waits up to ``grace`` seconds before cancelling what is
left. Anything cancelled is redelivered later (at-least-once), which the
idempotency records make harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from cqrs_kit.checkpoints import CheckpointStore
from cqrs_kit.errors import UsageError
from cqrs_kit.leases import LeaseManager
from cqrs_kit.routing.dlq import DeadLetterQueue, RetryOutcome
from cqrs_kit.routing.process_managers import ProcessManagerRunner
from cqrs_kit.routing.subscribers import IdempotencyStore, Subscriber, SubscriberRuntime
from cqrs_kit.scheduling import Clock, RecurringSchedule, ScheduledCommandStore, Scheduler
from cqrs_kit.store import EventStore

if TYPE_CHECKING:
    from cqrs_kit.routing.config import RoutingConfig

log = logging.getLogger("cqrs_kit.routing.worker")

Dispatch = Callable[[Any], Awaitable[Any]]


class Worker:
    """Runs subscribers (and a scheduler) concurrently, with graceful stop.

    Args:
        store: The event store to follow.
        subscribers: The subscribers to run.
        process_managers: Process managers to run (as subscribers).
        scheduler: A scheduler to run alongside, if any.
        checkpoints: Checkpoint store (default: ``checkpoints`` collection).
        leases: Lease manager; pass one per process to scale out safely.
        dead_letters: Dead-letter queue (default: ``dead_letters`` collection).
        batch_size: Events per log read, per subscriber.
        poll_interval: Longest sleep of each runtime.
        restart_delay: Pause before restarting a crashed runtime.
    """

    def __init__(
        self,
        store: EventStore,
        subscribers: Sequence[Subscriber] = (),
        *,
        process_managers: Sequence[ProcessManagerRunner] = (),
        scheduler: Scheduler | None = None,
        checkpoints: CheckpointStore | None = None,
        leases: LeaseManager | None = None,
        dead_letters: DeadLetterQueue | None = None,
        batch_size: int = 50,
        poll_interval: float = 1.0,
        restart_delay: float = 1.0,
    ) -> None:
        self.process_managers = {runner.id: runner for runner in process_managers}
        subscribers = [*subscribers, *(r.subscriber() for r in process_managers)]
        ids = [s.id for s in subscribers]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise UsageError(f"subscriber id {dup!r} is used twice", code="duplicate-subscriber")
        db = store.database
        self.store = store
        self.checkpoints = checkpoints or CheckpointStore(db)
        self.leases = leases
        self.dead_letters = dead_letters or DeadLetterQueue(db)
        self.idempotency = IdempotencyStore(db)
        self.scheduler = scheduler
        self.restart_delay = restart_delay
        self.runtimes: dict[str, SubscriberRuntime] = {
            s.id: SubscriberRuntime(
                store,
                s,
                checkpoints=self.checkpoints,
                leases=leases,
                dead_letters=self.dead_letters,
                idempotency=self.idempotency,
                batch_size=batch_size,
                poll_interval=poll_interval,
            )
            for s in subscribers
        }
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_routing(
        cls,
        store: EventStore,
        config: RoutingConfig,
        *,
        dispatch: Dispatch | None = None,
        scheduled: ScheduledCommandStore | None = None,
        clock: Clock | None = None,
        run_scheduler: bool = True,
        **options: Any,
    ) -> Worker:
        """Build a worker for everything a routing file declares.

        Args:
            store: The event store to follow.
            config: The loaded routing file.
            dispatch: The command bus's dispatch callable; required when the file
                has process managers or schedules.
            scheduled: Scheduled-command store (default: on the store's database).
            clock: Clock for scheduling (default: the system clock).
            run_scheduler: Whether this worker also fires scheduled commands.
            **options: Passed on to `Worker` (``leases``, ``batch_size``...).

        Raises:
            UsageError: The file needs a command bus and none was given.
        """
        needs_bus = bool(config.process_managers) or bool(config.schedules)
        if needs_bus and dispatch is None:
            raise UsageError(
                f"{config.file} has process managers or schedules; pass dispatch=bus.dispatch",
                code="dispatch-required",
            )
        scheduled = scheduled or ScheduledCommandStore(store.database, clock=clock)
        runners = [
            ProcessManagerRunner(
                spec.manager,
                store.database,
                dispatch=dispatch,
                scheduled=scheduled,
                id=spec.id,
                retry=spec.retry,
                timeout=spec.timeout,
            )
            for spec in config.process_managers.values()
            if dispatch is not None
        ]
        scheduler = None
        if run_scheduler and dispatch is not None:
            schedules: Sequence[RecurringSchedule] = config.schedules
            scheduler = Scheduler(scheduled, dispatch, schedules=schedules, clock=clock)
        return cls(
            store,
            list(config.subscribers.values()),
            process_managers=runners,
            scheduler=scheduler,
            **options,
        )

    async def ensure_indexes(self) -> None:
        """Create the indexes of every collection the worker writes (idempotent)."""
        for runtime in self.runtimes.values():
            await runtime.ensure_indexes()
        for runner in self.process_managers.values():
            await runner.ensure_indexes()
        if self.scheduler is not None:
            await self.scheduler.store.ensure_indexes()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run everything until ``stop`` (or `stop`) is set."""
        relay = asyncio.ensure_future(self._relay(stop)) if stop is not None else None
        jobs: dict[str, Callable[[asyncio.Event], Awaitable[None]]] = {
            name: rt.run for name, rt in self.runtimes.items()
        }
        if self.scheduler is not None:
            jobs["scheduler"] = self.scheduler.run
        try:
            await asyncio.gather(*(self._supervise(name, job) for name, job in jobs.items()))
        finally:
            if relay is not None:
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay

    async def _relay(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stop.set()

    async def _supervise(self, name: str, job: Callable[[asyncio.Event], Awaitable[None]]) -> None:
        while not self._stop.is_set():
            try:
                await job(self._stop)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s crashed; restarting in %.1fs", name, self.restart_delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.restart_delay)

    async def start(self) -> None:
        """Run in a background task (see `stop`)."""
        if self._task is not None:
            raise UsageError("the worker is already running", code="worker-running")
        self._stop.clear()
        self._task = asyncio.create_task(self.run(), name="cqrs-kit-worker")

    async def stop(self, grace: float = 30.0) -> None:
        """Ask everything to stop, wait up to ``grace`` seconds, then cancel the rest."""
        self._stop.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), grace)
        except TimeoutError:
            log.warning("worker did not stop within %.1fs; cancelling", grace)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def serve(self) -> None:
        """Run until SIGINT or SIGTERM, then stop gracefully (for ``cqrs-kit`` and apps)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        try:
            await self.run()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    def runtime(self, subscriber_id: str) -> SubscriberRuntime:
        """The runtime of one subscriber.

        Raises:
            UsageError: There is no such subscriber.
        """
        try:
            return self.runtimes[subscriber_id]
        except KeyError:
            known = ", ".join(sorted(self.runtimes)) or "none"
            raise UsageError(
                f"no subscriber {subscriber_id!r} (known: {known})", code="unknown-subscriber"
            ) from None

    async def retry_dead_letter(self, entry_id: str) -> RetryOutcome:
        """Redeliver a dead letter to its subscriber once (see ``DeadLetterQueue.retry``)."""
        runtimes: Mapping[str, SubscriberRuntime] = self.runtimes
        return await self.dead_letters.retry(entry_id, runtimes)
