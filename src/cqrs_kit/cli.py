"""The ``cqrs-kit`` command line.

::

    cqrs-kit projections list    [--json]
    cqrs-kit projections status  [NAME...] [--json]
    cqrs-kit projections run     [NAME...] [--lease-ttl S] [--batch-size N] [--metrics-port P]
    cqrs-kit projections rebuild NAME [--drop-grace S] [--no-progress]
    cqrs-kit projections reset   NAME --yes

Every ``projections`` command takes ``--app MODULE:ATTR`` (or ``$CQRS_KIT_APP``):
an importable `ProjectionApp`, or a zero-argument
factory returning one (any object with ``registry`` and ``projections``
attributes, optionally ``database_name`` and ``events_collection``).
``--app-dir`` (default ``.``) is put on ``sys.path`` first. Commands that
touch the database take ``--uri`` (``$MONGODB_URI``) and ``--database``
(``$MONGODB_DATABASE``, else the app's ``database_name``, else ``cqrs_kit``).

Exit codes: 0 success; 1 the operation failed at run time; 2 a usage error
(bad arguments, an unknown projection name, an app that cannot be loaded);
3 the database could not be reached.

Other command groups plug in here: `build_parser` adds the groups of
``cqrs_kit.routing.cli`` (``routes``, ``dlq``) when that module exists. A
group's ``register(subparsers)`` adds its parsers and sets ``handler`` on each
command to a callable taking the parsed ``argparse.Namespace`` and returning
an exit code. The helpers below are meant for them too:

* ``EXIT_OK``, ``EXIT_FAILURE``, ``EXIT_USAGE``, ``EXIT_UNAVAILABLE``;
* `CliError`: raise it with an exit code and a message for the user;
* `add_connection_options` / `connect`: ``--uri``, ``--database``,
  ``--connect-timeout`` and an async context manager that yields a pinged
  driver database (unreachable → `CliError` with ``EXIT_UNAVAILABLE``);
* `add_app_options` / `load_app`: ``--app`` and ``--app-dir``;
* `run_async`: run a coroutine and map cqrs-kit errors to exit codes;
* `print_table` and `print_json` for output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, TextIO

from cqrs_kit.errors import CqrsKitError, TransientStoreError, UsageError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

log = logging.getLogger("cqrs_kit.cli")


class CliError(Exception):
    """Stop a command with ``message`` (printed as ``error: ...``) and exit ``code``."""

    def __init__(self, message: str, *, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# -- shared helpers -----------------------------------------------------------------------


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--uri``, ``--database`` and ``--connect-timeout``."""
    parser.add_argument(
        "--uri",
        default=os.environ.get("MONGODB_URI", "mongodb://localhost:27017"),
        help="MongoDB connection string (default: $MONGODB_URI or mongodb://localhost:27017)",
    )
    parser.add_argument(
        "--database",
        default=os.environ.get("MONGODB_DATABASE"),
        help="database name (default: $MONGODB_DATABASE, the app's database_name, or cqrs_kit)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up reaching the server after this long (default: 10)",
    )


def add_app_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--app`` and ``--app-dir``."""
    parser.add_argument(
        "--app",
        default=os.environ.get("CQRS_KIT_APP"),
        metavar="MODULE:ATTR",
        help="the ProjectionApp (or a factory of one) to load (default: $CQRS_KIT_APP)",
    )
    parser.add_argument(
        "--app-dir", default=".", help="directory put on sys.path before importing (default: .)"
    )


def add_runner_options(parser: argparse.ArgumentParser) -> None:
    """Add the options of long-running commands: metrics port and address, logging."""
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics at http://ADDR:PORT/metrics (needs cqrs-kit[metrics])",
    )
    parser.add_argument(
        "--metrics-addr", default="0.0.0.0", metavar="ADDR", help="(default: 0.0.0.0)"
    )
    parser.add_argument(
        "--status-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how often the lag and state gauges are refreshed (default: 5)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="json: one JSON object per line with correlation, trace and event fields",
    )


def setup_logging(args: argparse.Namespace) -> None:
    """Log to stderr as ``--log-format`` says, unless the process configured logging itself."""
    from cqrs_kit.logs import configure_logging

    if not logging.getLogger().handlers:
        configure_logging(json_format=args.log_format == "json", level=args.log_level.upper())


def start_metrics(args: argparse.Namespace) -> bool:
    """Serve ``/metrics`` when ``--metrics-port`` is given; returns whether it does.

    Raises:
        UsageError: The ``metrics`` extra is not installed.
        CliError: The port cannot be bound.
    """
    if args.metrics_port is None:
        return False
    from cqrs_kit.metrics import serve_metrics

    try:
        serve_metrics(args.metrics_port, addr=args.metrics_addr)
    except OSError as exc:
        raise CliError(
            f"cannot serve metrics on {args.metrics_addr}:{args.metrics_port}: {exc}"
        ) from exc
    log.info("serving metrics at http://%s:%d/metrics", args.metrics_addr, args.metrics_port)
    return True


def redact(uri: str) -> str:
    """``uri`` without its password, for messages."""
    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", uri)


def load_app(spec: str | None, app_dir: str = ".") -> Any:
    """Import ``module:attr``; call it if it is a factory; check its shape.

    Raises:
        CliError: (``EXIT_USAGE``) no spec, an import error, or an object
            without ``registry`` and ``projections``.
    """
    if not spec:
        raise CliError("no app given: pass --app MODULE:ATTR or set CQRS_KIT_APP", code=EXIT_USAGE)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"--app {spec!r} must look like MODULE:ATTR", code=EXIT_USAGE)
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import {module_name!r} for --app: {exc}", code=EXIT_USAGE) from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise CliError(
            f"module {module_name!r} has no attribute {attr!r}", code=EXIT_USAGE
        ) from None
    if callable(obj) and not hasattr(obj, "projections"):
        obj = obj()
    missing = [a for a in ("registry", "projections") if not hasattr(obj, a)]
    if missing:
        raise CliError(
            f"--app {spec}: a {type(obj).__name__} object has no {' or '.join(missing)}; it must "
            "be a cqrs_kit.projections.ProjectionApp or a factory returning one",
            code=EXIT_USAGE,
        )
    return obj


def database_name(args: argparse.Namespace, app: Any = None) -> str:
    """The database: ``--database``, ``$MONGODB_DATABASE``, the app's, or ``cqrs_kit``."""
    return str(
        getattr(args, "database", None)
        or os.environ.get("MONGODB_DATABASE")
        or getattr(app, "database_name", None)
        or "cqrs_kit"
    )


@contextlib.asynccontextmanager
async def connect(args: argparse.Namespace, database: str) -> AsyncIterator[Any]:
    """Yield driver database ``database`` at ``--uri``, after checking the server answers.

    Raises:
        CliError: (``EXIT_UNAVAILABLE``) the server cannot be reached, now or
            while the body runs.
    """
    from cqrs_kit._mongo import adapt
    from cqrs_kit._mongo.adapter import close_client, open_client

    timeout_ms = int(max(0.05, float(getattr(args, "connect_timeout", 10.0))) * 1000)
    client = open_client(args.uri, timeout_ms=timeout_ms)
    try:
        db = client[database]
        try:
            await adapt(db).ping()
            yield db
        except TransientStoreError as exc:
            raise CliError(
                f"cannot reach MongoDB at {redact(args.uri)}: {exc}", code=EXIT_UNAVAILABLE
            ) from exc
    finally:
        await close_client(client)


def run_async(command: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``command()`` in a new event loop; map errors to exit codes and messages."""
    try:
        return asyncio.run(command())
    except CliError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.code
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TransientStoreError as exc:
        print(f"error: database unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except CqrsKitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], out: TextIO) -> None:
    """Print ``rows`` under ``headers``, columns padded to their widest cell."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def print_json(data: Any, out: TextIO) -> None:
    """Print ``data`` as indented JSON (datetimes and other objects as strings)."""
    print(json.dumps(data, indent=2, default=str, ensure_ascii=False), file=out)


# -- projections --------------------------------------------------------------------------


def _register_projections(subparsers: Any) -> None:
    group = subparsers.add_parser("projections", help="list, run, inspect and rebuild projections")
    commands = group.add_subparsers(dest="projections_command", metavar="COMMAND", required=True)

    listing = commands.add_parser("list", help="the projections the app declares")
    add_app_options(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_list)

    status = commands.add_parser("status", help="position, lag, state, owner and last error")
    add_app_options(status)
    add_connection_options(status)
    status.add_argument("names", nargs="*", metavar="NAME", help="only these projections")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_status)

    run = commands.add_parser("run", help="run projections in the foreground until SIGINT/SIGTERM")
    add_app_options(run)
    add_connection_options(run)
    run.add_argument("names", nargs="*", metavar="NAME", help="only these projections")
    run.add_argument("--lease-ttl", type=float, default=10.0, help="seconds (default: 10)")
    run.add_argument("--batch-size", type=int, default=500, help="events per batch (default: 500)")
    run.add_argument("--poll-interval", type=float, default=1.0, help="seconds (default: 1)")
    run.add_argument(
        "--handover-poll", type=float, default=1.0, help="rebuild check period (default: 1)"
    )
    add_runner_options(run)
    run.set_defaults(handler=_run)

    rebuild = commands.add_parser("rebuild", help="rebuild into a new collection, then swap")
    add_app_options(rebuild)
    add_connection_options(rebuild)
    rebuild.add_argument("name", metavar="NAME")
    rebuild.add_argument("--batch-size", type=int, default=1000, help="(default: 1000)")
    rebuild.add_argument(
        "--drop-grace",
        type=float,
        default=5.0,
        help="seconds between the swap and dropping the old collection (default: 5)",
    )
    rebuild.add_argument("--lease-ttl", type=float, default=10.0, help="seconds (default: 10)")
    rebuild.add_argument(
        "--no-progress", action="store_true", help="log lines instead of a progress bar"
    )
    rebuild.set_defaults(handler=_rebuild)

    reset = commands.add_parser("reset", help="empty the read model and start again from 0")
    add_app_options(reset)
    add_connection_options(reset)
    reset.add_argument("name", metavar="NAME")
    reset.add_argument("--yes", action="store_true", help="confirm dropping the read model")
    reset.add_argument("--lease-ttl", type=float, default=10.0, help="seconds (default: 10)")
    reset.set_defaults(handler=_reset)


def _list(args: argparse.Namespace) -> int:
    app = _load(args)
    rows = [
        {
            "name": p.name,
            "kind": p.kind,
            "event_types": sorted(p.type_names),
            "read_model": p.name,
        }
        for p in app.projections
    ]
    if args.json:
        print_json(rows, sys.stdout)
    else:
        table = [(r["name"], r["kind"], ", ".join(r["event_types"])) for r in rows]
        print_table(table, ("name", "kind", "event types"), sys.stdout)
    return EXIT_OK


def _load(args: argparse.Namespace) -> Any:
    app = load_app(args.app, args.app_dir)
    try:
        names = [p.name for p in app.projections]
    except Exception as exc:
        raise CliError(f"{args.app}: invalid projections: {exc}", code=EXIT_USAGE) from exc
    for name in getattr(args, "names", None) or ([args.name] if hasattr(args, "name") else []):
        if name not in names:
            known = ", ".join(sorted(names)) or "(none)"
            raise CliError(
                f"unknown projection {name!r}; known projections: {known}", code=EXIT_USAGE
            )
    return app


@contextlib.asynccontextmanager
async def _runner(args: argparse.Namespace, app: Any, **options: Any) -> AsyncIterator[Any]:
    from cqrs_kit.projections import ProjectionRunner
    from cqrs_kit.store import EventStore

    async with connect(args, database_name(args, app)) as db:
        store = EventStore(
            db, app.registry, collection=getattr(app, "events_collection", None) or "events"
        )
        yield ProjectionRunner(store, list(app.projections), **options)


def _status(args: argparse.Namespace) -> int:
    app = _load(args)

    async def command() -> int:
        async with _runner(args, app) as runner:
            statuses = await runner.status(args.names or None)
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
                s.read_model,
                (f"at {s.last_error.position}: {s.last_error.message}"[:70])
                if s.last_error
                else "-",
            )
            for s in statuses
        ]
        headers = ("name", "state", "position", "head", "lag", "lag s", "owner", "read model")
        print_table(rows, (*headers, "last error"), sys.stdout)
        return EXIT_OK

    return run_async(command)


def _run(args: argparse.Namespace) -> int:
    app = _load(args)
    setup_logging(args)

    async def command() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        serving = start_metrics(args)
        options = {
            "lease_ttl": args.lease_ttl,
            "batch_size": args.batch_size,
            "poll_interval": args.poll_interval,
            "handover_poll": args.handover_poll,
        }
        async with _runner(args, app, **options) as runner:
            names = args.names or sorted(runner.projections)
            log.info("running %s as %s", ", ".join(names), runner.leases.owner)
            jobs = [runner.run(stop, names)]
            if serving:  # keep the lag and state gauges fresh for the scraper
                from cqrs_kit.status import StatusReader

                reader = StatusReader(runner.store, projections=runner)
                jobs.append(reader.report(stop, interval=args.status_interval))
            await asyncio.gather(*jobs)
        log.info("stopped")
        return EXIT_OK

    return run_async(command)


class _Reporter:
    """Rebuild progress: a rich progress bar on a terminal, else a log line per second."""

    def __init__(self, name: str, out: TextIO, *, bar: bool) -> None:
        self.name = name
        self.out = out
        self._last = 0.0
        self._last_phase = ""
        self._progress: Any = None
        self._task: Any = None
        if bar:
            try:
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    TextColumn,
                    TimeElapsedColumn,
                    TimeRemainingColumn,
                )
            except ImportError:  # pragma: no cover - rich is a dependency
                return
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>9.0f} events/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            self._progress.start()
            self._task = self._progress.add_task(f"rebuild {name}", total=None, rate=0.0)

    def __call__(self, progress: Any) -> None:
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=progress.position,
                total=max(progress.head, progress.position),
                rate=progress.rate,
                description=f"rebuild {self.name} ({progress.phase})",
            )
            return
        now = time.monotonic()
        if progress.phase == self._last_phase and now - self._last < 1.0:
            return
        self._last, self._last_phase = now, progress.phase
        eta = "-" if progress.eta is None else f"{progress.eta:.1f}"
        print(
            f"rebuild name={self.name} phase={progress.phase} position={progress.position} "
            f"head={progress.head} events={progress.events} "
            f"events_per_s={progress.rate:.0f} eta_s={eta}",
            file=self.out,
            flush=True,
        )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _rebuild(args: argparse.Namespace) -> int:
    app = _load(args)

    async def command() -> int:
        from cqrs_kit.rebuild import rebuild

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        reporter = _Reporter(
            args.name, sys.stdout, bar=sys.stdout.isatty() and not args.no_progress
        )
        try:
            async with _runner(
                args, app, batch_size=args.batch_size, lease_ttl=args.lease_ttl
            ) as runner:
                result = await rebuild(
                    runner, args.name, progress=reporter, stop=stop, drop_grace=args.drop_grace
                )
        finally:
            reporter.close()
        print(
            f"rebuilt {result.name} into {result.collection} at position {result.position} "
            f"in {result.seconds:.1f}s; dropped {result.previous}",
            flush=True,
        )
        return EXIT_OK

    return run_async(command)


def _reset(args: argparse.Namespace) -> int:
    app = _load(args)
    if not args.yes:
        raise CliError(
            f"reset empties the read model of {args.name!r} until it is rebuilt in place; "
            "pass --yes to confirm (or use `rebuild` for no downtime)",
            code=EXIT_USAGE,
        )

    async def command() -> int:
        from cqrs_kit.rebuild import reset

        async with _runner(args, app, lease_ttl=args.lease_ttl) as runner:
            result = await reset(runner, args.name)
        print(
            f"reset {result.name}: now {result.collection} at position 0; dropped {result.previous}"
        )
        return EXIT_OK

    return run_async(command)


# -- entry point --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``cqrs-kit`` parser with every command group that is installed."""
    parser = argparse.ArgumentParser(prog="cqrs-kit", description="cqrs-kit operations")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _register_projections(subparsers)
    if importlib.util.find_spec("cqrs_kit.routing.cli") is not None:
        try:
            routing_cli = importlib.import_module("cqrs_kit.routing.cli")
        except ImportError as exc:  # a broken optional group must not take the others down
            print(f"warning: routes/dlq commands unavailable: {exc}", file=sys.stderr)
        else:
            routing_cli.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cqrs-kit``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        result: int = args.handler(args)
    except CliError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.code
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return result


if __name__ == "__main__":
    raise SystemExit(main())
