"""``cqrs-kit routes`` and ``cqrs-kit dlq``: the routing file at a glance, and dead letters.

``cqrs_kit.cli.build_parser()`` calls `register` to add these groups:

    cqrs-kit routes show routing.yaml [--json]
    cqrs-kit dlq list [--subscriber ID] [--type TYPE] [--since 2h|ISO] [--limit N] [--json]
    cqrs-kit dlq show ENTRY_ID [--json]
    cqrs-kit dlq retry --routes routing.yaml (ENTRY_ID... | --all [filters])
    cqrs-kit dlq discard (ENTRY_ID... | --all [filters]) [--reason TEXT]
    cqrs-kit worker run routing.yaml [--bus MODULE:ATTR] [--metrics-port P] [--lease-ttl S]
    cqrs-kit worker status [SUBSCRIBER...] [--routes routing.yaml] [--json]

Exit codes are ``cqrs_kit.cli``'s: 0 success; 1 the operation failed (an
entry not found, a retry that failed again); 2 invalid input (arguments, a
routing file); 3 the database could not be reached. The connection options
(``--uri``, ``--database``, ``--connect-timeout``) are the shared ones too.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from cqrs_kit.cli import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    add_connection_options,
    add_runner_options,
    connect,
    database_name,
    print_json,
    print_table,
    run_async,
    setup_logging,
    start_metrics,
)
from cqrs_kit.errors import DeadLetterNotFoundError, RoutingError, RoutingFileError
from cqrs_kit.events import EventRegistry
from cqrs_kit.routing.dlq import DeadLetter, DeadLetterQueue

log = logging.getLogger("cqrs_kit.routing.cli")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, *, now: datetime | None = None) -> float:
    """``2h``/``30m``/``1d`` ago, or an ISO timestamp, as Unix seconds.

    Raises:
        ValueError: Neither form.
    """
    match = _DURATION.match(text.strip())
    if match:
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        return ((now or datetime.now(UTC)) - timedelta(seconds=seconds)).timestamp()
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (30m, 2h, 1d) nor an ISO time") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _since_arg(text: str) -> float:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- registration ---------------------------------------------------------------------------

DlqCommand = Callable[[argparse.Namespace, Any], Awaitable[int]]


def register(subparsers: Any) -> None:
    """Add the ``routes`` and ``dlq`` command groups to a ``cqrs-kit`` parser."""
    routes = subparsers.add_parser("routes", help="inspect a routing file")
    routes_sub = routes.add_subparsers(dest="routes_command", metavar="COMMAND", required=True)
    show = routes_sub.add_parser("show", help="which event reaches which handler, as a table")
    show.add_argument("file", help="the routing YAML file")
    show.add_argument("--json", action="store_true", help="print JSON rows")
    _app_dir_option(show)
    show.set_defaults(handler=_routes_show)

    dlq = subparsers.add_parser("dlq", help="list, inspect, retry or discard dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", metavar="COMMAND", required=True)

    listing = dlq_sub.add_parser("list", help="dead letters, oldest first")
    add_connection_options(listing)
    _filter_options(listing)
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_with_database(_dlq_list))

    show_one = dlq_sub.add_parser("show", help="one dead letter with its event and traceback")
    add_connection_options(show_one)
    show_one.add_argument("entry_id")
    show_one.add_argument("--json", action="store_true")
    show_one.set_defaults(handler=_with_database(_dlq_show))

    retry = dlq_sub.add_parser("retry", help="deliver dead letters to their subscriber again")
    add_connection_options(retry)
    _selection_options(retry)
    retry.add_argument("--routes", required=True, help="the routing file naming the handlers")
    _app_dir_option(retry)
    retry.set_defaults(handler=_with_database(_dlq_retry))

    discard = dlq_sub.add_parser("discard", help="delete dead letters for good (logged)")
    add_connection_options(discard)
    _selection_options(discard)
    discard.add_argument("--reason", help="why, for the log")
    discard.set_defaults(handler=_with_database(_dlq_discard))

    worker = subparsers.add_parser("worker", help="run the subscribers of a routing file")
    worker_sub = worker.add_subparsers(dest="worker_command", metavar="COMMAND", required=True)
    run = worker_sub.add_parser(
        "run", help="run subscribers, process managers and schedules until SIGINT/SIGTERM"
    )
    run.add_argument("file", help="the routing YAML file")
    add_connection_options(run)
    _app_dir_option(run)
    _events_option(run)
    run.add_argument(
        "--bus",
        metavar="MODULE:ATTR",
        help="the CommandBus, or a function of the EventStore returning one (needed by "
        "process managers and schedules)",
    )
    run.add_argument("--lease-ttl", type=float, default=10.0, help="seconds (default: 10)")
    run.add_argument("--batch-size", type=int, default=50, help="events per read (default: 50)")
    run.add_argument("--poll-interval", type=float, default=1.0, help="seconds (default: 1)")
    add_runner_options(run)
    run.set_defaults(handler=_worker_run)

    status = worker_sub.add_parser(
        "status", help="position, lag, state, owner, parked events, dead letters, last error"
    )
    add_connection_options(status)
    status.add_argument("ids", nargs="*", metavar="SUBSCRIBER", help="only these subscribers")
    status.add_argument(
        "--routes", help="the subscribers of this routing file (default: every one that has run)"
    )
    _app_dir_option(status)
    _events_option(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_with_database(_worker_status))


def _filter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subscriber", help="only this subscriber's entries")
    parser.add_argument("--type", dest="event_type", help="only events of this type")
    parser.add_argument(
        "--since", type=_since_arg, help="only entries dead-lettered since (30m, 2h, 1d or ISO)"
    )


def _selection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("entry_ids", nargs="*", metavar="ENTRY_ID")
    parser.add_argument("--all", action="store_true", help="every entry matching the filters")
    _filter_options(parser)


def _events_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events-collection", default="events", help="the events collection (default: events)"
    )


def _app_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app-dir", default=".", help="directory to import handler modules from (default: .)"
    )


def _with_database(command: DlqCommand) -> Callable[[argparse.Namespace], int]:
    """Run an async dlq command against the database named by the connection options."""

    def handler(args: argparse.Namespace) -> int:
        async def run() -> int:
            async with connect(args, database_name(args)) as database:
                return await command(args, database)

        return run_async(run)

    return handler


# -- routes ---------------------------------------------------------------------------------


def _load(file: str, app_dir: str) -> Any:
    from cqrs_kit.routing.config import load_routing

    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        return load_routing(file)
    except RoutingFileError as exc:
        raise CliError(str(exc), code=EXIT_USAGE) from None


def _routes_show(args: argparse.Namespace) -> int:
    config = _load(args.file, args.app_dir)
    rows = [asdict(row) for row in config.table()]
    if args.json:
        print_json(rows, sys.stdout)
        return EXIT_OK
    headers = ("route", "pattern", "subscriber", "handler", "retry", "timeout", "ordering")
    print_table([[row[h] for h in headers] for row in rows], headers, sys.stdout)
    for schedule in config.schedules:
        when = schedule.cron if schedule.cron is not None else f"every {schedule.rate}"
        target = f"{schedule.command_type.__module__}:{schedule.command_type.__qualname__}"
        print(f"schedule {schedule.name}: {when} -> {target}")
    return EXIT_OK


# -- dlq ------------------------------------------------------------------------------------


def _summary(entry: DeadLetter) -> dict[str, Any]:
    return {
        "id": entry.id,
        "subscriber": entry.subscriber,
        "event_id": entry.event_id,
        "event_type": entry.event_type,
        "stream_id": entry.stream_id,
        "position": entry.position,
        "attempts": entry.attempts,
        "retries": entry.retries,
        "error_type": entry.error_type,
        "error": entry.error,
        "first_failed_at": _iso(entry.first_failed_at),
        "dead_lettered_at": _iso(entry.dead_lettered_at),
    }


async def _dlq_list(args: argparse.Namespace, database: Any) -> int:
    entries = await DeadLetterQueue(database).list(
        subscriber=args.subscriber, event_type=args.event_type, since=args.since, limit=args.limit
    )
    if args.json:
        print_json([_summary(e) for e in entries], sys.stdout)
        return EXIT_OK
    rows = [
        (
            e.id,
            e.event_type,
            e.stream_id,
            e.attempts + e.retries,
            _iso(e.dead_lettered_at),
            f"{e.error_type}: {e.error}"[:60],
        )
        for e in entries
    ]
    if rows:
        headers = ("id", "type", "stream", "attempts", "dead-lettered", "error")
        print_table(rows, headers, sys.stdout)
    print(f"{len(entries)} dead letter{'s' * (len(entries) != 1)}")
    return EXIT_OK


async def _dlq_show(args: argparse.Namespace, database: Any) -> int:
    entry = await DeadLetterQueue(database).require(args.entry_id)
    if args.json:
        print_json(
            {**_summary(entry), "event": entry.event, "traceback": entry.traceback}, sys.stdout
        )
        return EXIT_OK
    for key, value in _summary(entry).items():
        print(f"{key + ':':<18}{value}")
    print("event:")
    print_json(entry.event, sys.stdout)
    print("traceback:")
    print(entry.traceback.rstrip())
    return EXIT_OK


async def _selected(args: argparse.Namespace, queue: DeadLetterQueue) -> list[str]:
    if args.all == bool(args.entry_ids):
        raise CliError("give entry ids, or --all (with optional filters)", code=EXIT_USAGE)
    if args.entry_ids:
        return list(args.entry_ids)
    entries = await queue.list(
        subscriber=args.subscriber, event_type=args.event_type, since=args.since, limit=10_000
    )
    return [e.id for e in entries]


async def _dlq_retry(args: argparse.Namespace, database: Any) -> int:
    from cqrs_kit.routing.worker import Worker
    from cqrs_kit.store import EventStore

    config = _load(args.routes, args.app_dir)
    queue = DeadLetterQueue(database)
    ids = await _selected(args, queue)
    store = EventStore(database, config.registry or EventRegistry())
    worker = Worker(store, list(config.subscribers.values()), dead_letters=queue)
    status = EXIT_OK
    for entry_id in ids:
        try:
            outcome = await worker.retry_dead_letter(entry_id)
        except RoutingError as exc:  # not found, or its subscriber is not in the file
            print(f"{entry_id}: error: {exc}")
            status = EXIT_FAILURE
            continue
        if outcome.ok:
            print(f"{entry_id}: delivered, removed from the dead-letter queue")
        else:
            print(f"{entry_id}: failed again: {outcome.error}")
            status = EXIT_FAILURE
    return status


async def _dlq_discard(args: argparse.Namespace, database: Any) -> int:
    queue = DeadLetterQueue(database)
    status = EXIT_OK
    for entry_id in await _selected(args, queue):
        try:
            entry = await queue.discard(entry_id, reason=args.reason)
        except DeadLetterNotFoundError as exc:
            print(f"{entry_id}: error: {exc}")
            status = EXIT_FAILURE
            continue
        print(f"{entry.id}: discarded ({entry.event_type} at position {entry.position})")
    return status


# -- worker ---------------------------------------------------------------------------------


def _dispatch(spec: str | None, store: Any) -> Any:
    """The ``dispatch`` of the command bus ``--bus`` names, or ``None``."""
    if not spec:
        return None
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"--bus {spec!r} must look like MODULE:ATTR", code=EXIT_USAGE)
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise CliError(f"cannot load --bus {spec}: {exc}", code=EXIT_USAGE) from exc
    if not hasattr(obj, "dispatch") and callable(obj):
        obj = obj(store)
    dispatch = getattr(obj, "dispatch", None)
    if not callable(dispatch):
        raise CliError(
            f"--bus {spec}: a {type(obj).__name__} has no dispatch(); it must be a CommandBus "
            "or a function of the EventStore returning one",
            code=EXIT_USAGE,
        )
    return dispatch


def _worker_run(args: argparse.Namespace) -> int:
    config = _load(args.file, args.app_dir)
    setup_logging(args)

    async def command() -> int:
        from cqrs_kit.leases import LeaseManager
        from cqrs_kit.routing.worker import Worker
        from cqrs_kit.status import StatusReader
        from cqrs_kit.store import EventStore

        serving = start_metrics(args)
        async with connect(args, database_name(args)) as database:
            registry = config.registry or EventRegistry()
            store = EventStore(database, registry, collection=args.events_collection)
            leases = LeaseManager(database, ttl=args.lease_ttl)
            worker = Worker.from_routing(
                store,
                config,
                dispatch=_dispatch(args.bus, store),
                leases=leases,
                batch_size=args.batch_size,
                poll_interval=args.poll_interval,
            )
            await worker.ensure_indexes()
            names = ", ".join(sorted(worker.runtimes)) or "no subscribers"
            log.info("running %s as %s", names, leases.owner)
            stop = asyncio.Event()
            reporter = None
            if serving:  # keep the lag and state gauges fresh for the scraper
                reader = StatusReader(store, subscribers=worker)
                reporter = asyncio.create_task(reader.report(stop, interval=args.status_interval))
            try:
                await worker.serve()
            finally:
                stop.set()
                if reporter is not None:
                    await reporter
        log.info("stopped")
        return EXIT_OK

    return run_async(command)


async def _worker_status(args: argparse.Namespace, database: Any) -> int:
    from cqrs_kit.checkpoints import CheckpointStore
    from cqrs_kit.status import subscriber_ids, subscriber_statuses
    from cqrs_kit.store import EventStore

    if args.ids:
        ids = list(args.ids)
    elif args.routes:
        config = _load(args.routes, args.app_dir)
        ids = sorted([*config.subscribers, *config.process_managers])
    else:
        ids = await subscriber_ids(CheckpointStore(database))
    store = EventStore(database, EventRegistry(), collection=args.events_collection)
    statuses = await subscriber_statuses(store, ids)
    if args.json:
        print_json([s.model_dump(mode="json") for s in statuses], sys.stdout)
        return EXIT_OK
    rows = [
        (
            s.name,
            s.state,
            s.position,
            s.head,
            s.lag_events,
            f"{s.lag_seconds:.1f}",
            s.owner or "-",
            s.parked,
            s.dead_letters,
            f"at {s.last_error.position}: {s.last_error.message}"[:60] if s.last_error else "-",
        )
        for s in statuses
    ]
    if rows:
        headers = ("subscriber", "state", "position", "head", "lag", "lag s", "owner", "parked")
        print_table(rows, (*headers, "dead letters", "last error"), sys.stdout)
    else:
        print("no subscribers have run yet")
    return EXIT_OK
