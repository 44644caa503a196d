"""A scripted day at the rental service, over HTTP, with every read model printed.

Run with ``make demo`` (or ``python -m examples.rental_service.scenario``). It starts an
embedded nx-27017 server on a temporary file (or uses ``MONGODB_URI``, in a database of its
own), starts the service as a child process exactly as ``make serve`` does, and then:

1. signs up two members, Ann and Ben, and signs in the staff account;
2. staff lists three garments and receives stock: the red dress has a single unit;
3. Ann and Ben ask for the red dress at the same moment: exactly one gets it, the other's
   rental is cancelled as out of stock;
4. the payment gateway charges the winner but loses its answer; the payment is retried
   with the same idempotency key and the gateway's books show one charge;
5. staff ships the dress; Ben rents a bag, which is shipped and returned in time;
6. the dress is not returned: a reminder goes out, then the rental becomes overdue (the
   rental period is a few seconds here), and Ann returns it late;
7. the ``rental-board`` read model is rebuilt with ``cqrs-kit projections rebuild`` while
   the service runs, and reads the same afterwards.

Every step checks what it expects and the run exits 1 with the reason (and the end of the
service's log) on the first surprise, 0 when everything held.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cqrs_kit.testing import EmbeddedServer
from examples.rental_service.tests.e2e.client import (
    Account,
    Document,
    ExpectationFailed,
    ServiceClient,
    eventually,
)
from examples.rental_service.tests.e2e.service_process import (
    REPO_ROOT,
    ServiceProcess,
    ServiceProcessError,
)

#: The ``ProjectionApp`` that ``cqrs-kit projections ...`` loads for this service.
APP_SPEC = "examples.rental_service.read_models:projection_app"
STAFF_EMAIL = "staff@example.com"
STAFF_PASSWORD = "staff-password-demo"
MEMBER_PASSWORD = "member-password-demo"
#: The rental period of the demo, in seconds: short enough to watch a rental go overdue.
RENTAL_PERIOD = 6.0
#: The return reminder goes out this many seconds before the due date.
REMINDER_BEFORE = 3.0


def demo_settings(database: str) -> dict[str, str]:
    """The service's settings for a scripted run: shortened clocks, a known staff account."""
    return {
        "DATABASE": database,
        "STAFF_EMAIL": STAFF_EMAIL,
        "STAFF_PASSWORD": STAFF_PASSWORD,
        "PAYMENT_RETRY_DELAY": "0.5",
        "PAYMENT_TIMEOUT": "60",
        "RENTAL_PERIOD": str(RENTAL_PERIOD),
        "REMINDER_BEFORE": str(REMINDER_BEFORE),
        "READ_YOUR_WRITES_TIMEOUT": "10",
        "LOG_LEVEL": "INFO",
    }


# -- printing --------------------------------------------------------------------------------

Column = tuple[str, Callable[[Document], Any]]


def cell(name: str) -> Callable[[Document], Any]:
    """A column getter for one field (``-`` when absent or null)."""
    return lambda doc: "-" if doc.get(name) is None else doc[name]


def short_time(name: str) -> Callable[[Document], Any]:
    """A column getter showing only the time of day of an ISO 8601 timestamp."""
    return lambda doc: (doc.get(name) or "-")[11:19] or "-"


RENTAL_COLUMNS: Sequence[Column] = (
    ("rental", cell("rental_id")),
    ("member", lambda d: d.get("member_name") or d.get("member_id") or "-"),
    ("status", cell("status")),
    ("skus", lambda d: ", ".join(d.get("skus", []))),
    ("amount", cell("amount")),
    ("due", short_time("due_at")),
    ("reminded", cell("reminded")),
    ("reason", cell("reason")),
)
CATALOG_COLUMNS: Sequence[Column] = (
    ("sku", cell("sku")),
    ("name", cell("name")),
    ("price", cell("price")),
    ("units", cell("units_total")),
    ("available", cell("available")),
    ("reserved", cell("reserved")),
    ("rented out", cell("rented_out")),
)
OUTBOX_COLUMNS: Sequence[Column] = (
    ("to", cell("to")),
    ("template", cell("template")),
    ("rental", cell("rental_id")),
    ("event", cell("event_type")),
    ("sent", short_time("sent_at")),
)


class Report:
    """Prints the scenario as numbered steps, checks and read-model tables."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.steps = 0
        self.checks = 0
        self.started = time.monotonic()

    def step(self, title: str) -> None:
        """Start a numbered step (with the seconds since the scenario started)."""
        self.steps += 1
        elapsed = time.monotonic() - self.started
        self.console.print()
        self.console.rule(
            f"[bold]{self.steps}. {title}[/bold]  [dim]t={elapsed:.1f}s", align="left"
        )

    def say(self, text: str) -> None:
        """One line of narration."""
        self.console.print(f"  {text}", highlight=False, markup=False)

    def check(self, holds: bool, expectation: str, *, got: object = None) -> None:
        """Record an expectation; stop the scenario if it does not hold.

        Args:
            holds: Whether it held.
            expectation: What was expected, as a sentence.
            got: What was found instead, for the failure message.

        Raises:
            ExpectationFailed: ``holds`` is false.
        """
        if not holds:
            found = "" if got is None else f" (got {got!r})"
            raise ExpectationFailed(f"expected: {expectation}{found}")
        self.checks += 1
        self.console.print(f"  [green]ok[/green] {escape(expectation)}", highlight=False)

    def table(self, title: str, rows: Sequence[Document], columns: Sequence[Column]) -> None:
        """A read model (or any list of documents) as a table."""
        table = Table(title=title, title_justify="left", show_lines=False)
        for header, _ in columns:
            table.add_column(header, overflow="fold")
        for row in rows:
            table.add_row(*(Text(str(get(row))) for _, get in columns))
        if not rows:
            table.caption = "(empty)"
        self.console.print(table)


# -- the scenario ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Cast:
    """Who takes part: the staff account and two members."""

    staff: Account
    ann: Account
    ben: Account


@dataclass(frozen=True)
class Race:
    """How the race for the last unit ended.

    Attributes:
        winner: The member who got the unit.
        loser: The member whose rental was cancelled.
        won: The winner's rental id (confirmed once paid).
        stream: The event stream of the winner's rental.
        lost: The loser's rental id (cancelled).
        position: Global position of the winner's ``RentalConfirmed``.
    """

    winner: Account
    loser: Account
    won: str
    stream: str
    lost: str
    position: int


class RentalScenario:
    """The steps of the scripted scenario; the end-to-end tests call them one by one.

    Args:
        client: The service's API.
        report: Where the narration, checks and tables go.
        tag: Appended to e-mail addresses and SKUs, so that several runs can share one
            service (empty for the demo, which has a service to itself).
        timeout: Seconds to wait for any asynchronous effect.
    """

    def __init__(
        self, client: ServiceClient, report: Report, *, tag: str = "", timeout: float = 20.0
    ) -> None:
        self.client = client
        self.report = report
        self.tag = tag
        self.timeout = timeout
        suffix = f"-{tag.upper()}" if tag else ""
        self.dress = f"DRESS-RED-M{suffix}"
        self.bag = f"BAG-BLACK-F{suffix}"
        self.coat = f"COAT-NAVY-L{suffix}"
        self.suffix = suffix.lower()

    def rental_id(self, member: Account, what: str) -> str:
        """A readable rental id for ``member`` renting ``what`` (the service accepts ours)."""
        return f"{member.name.lower()}-{what}{self.suffix}"

    def email(self, name: str) -> str:
        """The e-mail address of a member of this run."""
        return f"{name}+{self.tag}@example.com" if self.tag else f"{name}@example.com"

    async def wait_event(self, staff: Account, stream_id: str, after: int, *types: str) -> Document:
        """The first event of ``types`` on ``stream_id`` after ``after`` (staff's feed)."""
        return await self.client.next_event(
            staff, after=after, types=types, stream_id=stream_id, within=self.timeout
        )

    # 1
    async def sign_up_members(self) -> Cast:
        """Staff signs in; Ann and Ben sign up and sign in."""
        self.report.step("Sign-up: two members join, staff signs in")
        staff = await self.client.sign_in(STAFF_EMAIL, STAFF_PASSWORD, name="Staff")
        ann = await self.client.sign_up(self.email("ann"), "Ann", MEMBER_PASSWORD)
        ben = await self.client.sign_up(self.email("ben"), "Ben", MEMBER_PASSWORD)
        accounts = [
            {"name": a.name, "email": a.email, "member_id": a.member_id, "role": a.role}
            for a in (staff, ann, ben)
        ]
        self.report.table(
            "accounts (POST /auth/sign-up, POST /auth/token)",
            accounts,
            [(k, cell(k)) for k in ("name", "email", "member_id", "role")],
        )
        self.report.check(
            staff.role == "staff" and ann.role == ben.role == "member",
            "sign-up creates members; the configured staff account has the staff role",
        )
        return Cast(staff, ann, ben)

    # 2
    async def stock_catalog(self, cast: Cast) -> None:
        """Staff lists three items and receives their stock; the dress has one unit."""
        self.report.step("Inventory: staff lists items and receives stock")
        items = [
            (self.dress, "Red dress", "dress", "M", 4800, 1),
            (self.bag, "Black bag", "bag", "F", 2500, 2),
            (self.coat, "Navy coat", "coat", "L", 6200, 2),
        ]
        position = 0
        for sku, name, category, size, price, units in items:
            await self.client.command(
                cast.staff,
                "list-item",
                {"sku": sku, "name": name, "category": category, "size": size, "price": price},
            )
            accepted = await self.client.command(
                cast.staff, "receive-stock", {"sku": sku, "quantity": units}
            )
            position = max(position, accepted["position"])
        catalog = await self._catalog(cast.staff, position)
        self.report.table(f"catalog (read at min_position={position})", catalog, CATALOG_COLUMNS)
        dress = next(row for row in catalog if row["sku"] == self.dress)
        self.report.check(
            dress["available"] == 1, f"{self.dress} has exactly one unit left", got=dress
        )

    # 3 and 4
    async def race_for_last_unit(self, cast: Cast) -> Race:
        """Ann and Ben request the dress concurrently; the winner's payment fails once."""
        self.report.step("Race: two members ask for the last unit at the same time")
        before = await self.client.gateway(cast.staff)
        armed = await self.client.inject_gateway_failures(cast.staff, lose_next_response=1)
        self.report.say(
            "the fake gateway is told to lose the answer of its next charge "
            f"(lose_next_response={armed['lose_next_response']})"
        )
        bodies = [
            (member, {"skus": [self.dress], "rental_id": self.rental_id(member, "dress")})
            for member in (cast.ann, cast.ben)
        ]
        answers = await asyncio.gather(
            *(self.client.command(member, "request-rental", body) for member, body in bodies)
        )
        outcomes: dict[str, tuple[Account, Document, Document]] = {}
        for (member, _), accepted in zip(bodies, answers, strict=True):
            settled = await self.wait_event(
                cast.staff,
                accepted["stream_id"],
                accepted["position"],
                "rentals.RentalUnitsReserved",
                "rentals.RentalCancelled",
            )
            outcomes[member.member_id] = (member, accepted, settled)
        reserved = [o for o in outcomes.values() if o[2]["type"] == "rentals.RentalUnitsReserved"]
        cancelled = [o for o in outcomes.values() if o[2]["type"] == "rentals.RentalCancelled"]
        self.report.check(
            len(reserved) == 1 and len(cancelled) == 1,
            "exactly one of the two concurrent requests got the unit",
            got=[o[2]["type"] for o in outcomes.values()],
        )
        (winner, won, _), (loser, lost, cancel) = reserved[0], cancelled[0]
        self.report.check(
            str(cancel["data"].get("reason", "")).startswith("out of stock"),
            f"{loser.name}'s rental was cancelled: {cancel['data'].get('reason')}",
        )
        confirmed = await self.wait_event(
            cast.staff, won["stream_id"], won["position"], "rentals.RentalConfirmed"
        )
        self.report.step("Payment: the gateway's answer is lost, the retry does not charge twice")
        after = await self.client.gateway(cast.staff)
        self.report.table(
            "GET /admin/gateway",
            [before | {"when": "before"}, after | {"when": "after"}],
            [(k, cell(k)) for k in ("when", "charge_calls", "charges", "charged_amount")],
        )
        self.report.check(
            after["charge_calls"] - before["charge_calls"] == 2,
            "the gateway was called twice (the answer of the first call was lost)",
            got=(before, after),
        )
        self.report.check(
            after["charges"] - before["charges"] == 1,
            f"{winner.name} was charged exactly once",
            got=(before, after),
        )
        board = await self.client.list_all(
            cast.staff, "rental-board", min_position=confirmed["position"]
        )
        won_id, lost_id = rental_id_of(won), rental_id_of(lost)
        ours = [r for r in board if r["rental_id"] in (won_id, lost_id)]
        self.report.table("rental-board", ours, RENTAL_COLUMNS)
        mine = await self.client.read(
            winner, "my-rentals", won_id, min_position=confirmed["position"]
        )
        self.report.check(
            mine["status"] == "confirmed",
            f"{winner.name}'s rental {won_id} is confirmed",
            got=mine["status"],
        )
        return Race(winner, loser, won_id, won["stream_id"], lost_id, confirmed["position"])

    # 5
    async def ship(self, cast: Cast, rental_id: str) -> int:
        """Staff ships a confirmed rental; returns the command's position."""
        accepted = await self.client.command(cast.staff, "ship-rental", {"rental_id": rental_id})
        row = await self.client.read(
            cast.staff, "rental-board", rental_id, min_position=accepted["position"]
        )
        self.report.check(
            row["status"] == "shipped", f"rental {rental_id} is shipped", got=row["status"]
        )
        position: int = accepted["position"]
        return position

    async def rent_and_return_in_time(self, cast: Cast, member: Account) -> str:
        """``member`` rents the bag; staff ships it; the member returns it before it is due."""
        self.report.step(f"Ship and return: {member.name} rents a bag and brings it back in time")
        body = {"skus": [self.bag], "rental_id": self.rental_id(member, "bag")}
        accepted = await self.client.command(member, "request-rental", body)
        rental_id = rental_id_of(accepted)
        settled = await self.wait_event(
            cast.staff,
            accepted["stream_id"],
            accepted["position"],
            "rentals.RentalConfirmed",
            "rentals.RentalCancelled",
        )
        self.report.check(
            settled["type"] == "rentals.RentalConfirmed",
            f"{member.name}'s rental {rental_id} was reserved, paid and confirmed",
            got=settled["data"],
        )
        await self.ship(cast, rental_id)
        returned = await self.client.command(member, "return-rental", {"rental_id": rental_id})
        rentals = await self.client.list_all(
            member, "my-rentals", min_position=returned["position"]
        )
        self.report.table(f"my-rentals, as {member.name} sees them", rentals, RENTAL_COLUMNS)
        row = next(r for r in rentals if r["rental_id"] == rental_id)
        self.report.check(
            row["status"] == "returned", f"rental {rental_id} is returned", got=row["status"]
        )
        released = await self.client.next_event(
            cast.staff,
            after=returned["position"],
            types=["inventory.UnitReleased"],
            where=lambda event: event["data"].get("rental_id") == rental_id,
            within=self.timeout,
        )
        catalog = await self._catalog(cast.staff, released["position"])
        bag = next(r for r in catalog if r["sku"] == self.bag)
        self.report.check(
            bag["available"] == 2, f"both {self.bag} units are available again", got=bag
        )
        return rental_id

    # 6
    async def overdue_and_late_return(self, cast: Cast, race: Race) -> None:
        """The winner keeps the dress: reminder, overdue, then a late return."""
        self.report.step(
            f"Overdue: the rental period is {RENTAL_PERIOD:g} s here; {race.winner.name} "
            "keeps the dress"
        )
        stream = race.stream
        reminder = await self.wait_event(
            cast.staff, stream, race.position, "rentals.ReturnReminderDue"
        )
        self.report.say(f"reminder due (event at position {reminder['position']})")
        overdue = await self.wait_event(cast.staff, stream, race.position, "rentals.RentalOverdue")
        self.report.say(f"overdue (event at position {overdue['position']})")
        row = await self.client.read(
            cast.staff, "rental-board", race.won, min_position=overdue["position"]
        )
        self.report.check(
            row["status"] == "overdue" and row.get("overdue") is True,
            f"rental {race.won} is overdue on the board",
            got=row,
        )
        mails = await self.mail_for(race.winner, race.won, "return_reminder", "rental_overdue")
        templates = sorted(m["template"] for m in mails)
        self.report.table(f"outbox, as {race.winner.name} sees it", mails, OUTBOX_COLUMNS)
        self.report.check(
            templates.count("return_reminder") == 1 and templates.count("rental_overdue") == 1,
            "one return reminder and one overdue notice were written",
            got=templates,
        )
        returned = await self.client.command(race.winner, "return-rental", {"rental_id": race.won})
        row = await self.client.read(
            race.winner, "my-rentals", race.won, min_position=returned["position"]
        )
        self.report.check(
            row["status"] == "returned", f"the late return closes {race.won}", got=row["status"]
        )
        await self.all_mail_sent(cast)

    async def mail_for(self, member: Account, rental_id: str, *templates: str) -> list[Document]:
        """``member``'s e-mails about ``rental_id``, once those of ``templates`` are there.

        The outbox is written by subscribers, not by a projection, so there is no position
        to wait for: the condition is re-checked until the deadline.
        """

        async def written() -> list[Document] | None:
            mails = await self.client.list_all(member, "outbox", rental_id=rental_id)
            present = {m["template"] for m in mails}
            return mails if present.issuperset(templates) else None

        what = f"e-mails {', '.join(templates)} about {rental_id}"
        return await eventually(written, what, within=self.timeout)

    async def all_mail_sent(self, cast: Cast) -> list[Document]:
        """Wait until the mail relay has sent every outbox message; check none twice."""
        outbox = await self.client.list_all(cast.staff, "outbox")

        async def relayed() -> list[Document] | None:
            current = await self.client.list_all(cast.staff, "outbox")
            return current if all(m.get("sent_at") for m in current) else None

        outbox = await eventually(relayed, "every outbox message sent", within=self.timeout)
        keys = [(m["event_id"], m["template"]) for m in outbox]
        self.report.check(
            len(keys) == len(set(keys)), "one message per event and template", got=sorted(keys)
        )
        return outbox

    # 7
    async def rebuild_projection(
        self,
        cast: Cast,
        *,
        uri: str,
        database: str,
        projection: str = "rental_board",
        read_model: str = "rental-board",
    ) -> None:
        """Rebuild a projection with the CLI while the service runs; it must read the same."""
        self.report.step(
            f"Rebuild: `cqrs-kit projections rebuild {projection}` while the service runs"
        )
        settled = await self.settled_position(cast.staff)
        before = await self.client.list_all(
            cast.staff, read_model, sort="rental_id", min_position=settled
        )
        await rebuild_with_cli(projection, uri=uri, database=database, console=self.report.console)
        after = await self.client.list_all(
            cast.staff, read_model, sort="rental_id", min_position=settled
        )
        self.report.table(f"{read_model} after the rebuild", after, RENTAL_COLUMNS)
        self.report.check(
            strip_volatile(after) == strip_volatile(before),
            f"{read_model} reads the same after the rebuild ({len(after)} rentals)",
        )

    async def summary(self, cast: Cast) -> None:
        """Print the staff-only read models and the projections' state."""
        self.report.step("The other read models")
        revenue = await self.client.list_all(cast.staff, "revenue")
        self.report.table(
            "revenue",
            revenue,
            [(k, cell(k)) for k in ("day", "charged", "refunded", "net", "charges", "refunds")],
        )
        usage = await self.client.list_all(cast.staff, "utilisation")
        usage_keys = ("category", "units_total", "available", "reserved", "rented_out")
        self.report.table(
            "utilisation", usage, [(k, cell(k)) for k in (*usage_keys, "utilisation")]
        )
        outbox = await self.client.list_all(cast.staff, "outbox")
        self.report.table("outbox (every e-mail)", outbox, OUTBOX_COLUMNS)
        projections = await self.client.get(cast.staff, "/admin/projections")
        keys = ("name", "state", "position", "head", "lag")
        self.report.table("GET /admin/projections", projections, [(k, cell(k)) for k in keys])

    async def settled_position(self, staff: Account) -> int:
        """The head of the log once every projection has caught up with it."""

        async def caught_up() -> int | None:
            rows = await self.client.get(staff, "/admin/projections")
            head = max(row["head"] for row in rows)
            return head if all(row["position"] >= head for row in rows) else None

        return await eventually(caught_up, "every projection caught up", within=self.timeout)

    async def run(self, *, uri: str, database: str) -> None:
        """Every step, in order."""
        cast = await self.sign_up_members()
        await self.stock_catalog(cast)
        race = await self.race_for_last_unit(cast)
        self.report.step(f"Ship: staff ships {race.winner.name}'s dress")
        await self.ship(cast, race.won)
        await self.rent_and_return_in_time(cast, race.loser)
        await self.overdue_and_late_return(cast, race)
        await self.rebuild_projection(cast, uri=uri, database=database)
        await self.summary(cast)

    async def _catalog(self, staff: Account, position: int) -> list[Document]:
        ours = (self.dress, self.bag, self.coat)
        catalog = await self.client.list_all(staff, "catalog", min_position=position)
        return [row for row in catalog if row["sku"] in ours]


def rental_id_of(accepted: Document) -> str:
    """The rental id from the answer to ``request-rental`` (its ``location`` ends with it)."""
    location = accepted.get("location") or ""
    if location:
        return str(location).rstrip("/").rsplit("/", 1)[-1]
    return str(accepted["stream_id"]).removeprefix("rental-")


def strip_volatile(rows: Sequence[Document]) -> list[Document]:
    """Documents without their bookkeeping fields (``_position`` and the like)."""
    return [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]


async def rebuild_with_cli(
    name: str, *, uri: str, database: str, console: Console, drop_grace: float = 0.5
) -> None:
    """``cqrs-kit projections rebuild NAME`` against the service's database."""
    args = ["projections", "rebuild", name, "--uri", uri, "--database", database]
    # A short lease: the rebuild looks for the live runner's hand-over every third of it.
    args += ["--app", APP_SPEC, "--drop-grace", str(drop_grace), "--lease-ttl", "2"]
    await run_cli(args, console=console)


async def run_cli(args: Sequence[str], *, console: Console, within: float = 120.0) -> None:
    """Run ``cqrs-kit ARGS``, showing its output as it comes (a progress bar on a terminal).

    Raises:
        ExpectationFailed: It exited non-zero or did not finish within ``within`` seconds.
    """
    script = Path(sys.executable).with_name("cqrs-kit")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cqrs_kit.cli"]
    console.print(f"  $ cqrs-kit {' '.join(args)}", highlight=False, soft_wrap=True)
    console.file.flush()
    process = await asyncio.create_subprocess_exec(*command, *args, cwd=REPO_ROOT)
    try:
        code = await asyncio.wait_for(process.wait(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise ExpectationFailed(f"cqrs-kit {args[0]} did not finish in {within:.0f} s") from None
    if code != 0:
        raise ExpectationFailed(f"cqrs-kit {' '.join(args[:3])} exited with {code}")


# -- the program -----------------------------------------------------------------------------


async def run_demo(console: Console, *, environ: Mapping[str, str] = os.environ) -> int:
    """Start a database and the service, play the scenario, stop everything; the exit code."""
    report = Report(console)
    workdir = Path(tempfile.mkdtemp(prefix="rental-demo-"))
    server: EmbeddedServer | None = None
    service: ServiceProcess | None = None
    try:
        uri = environ.get("MONGODB_URI", "")
        if uri:
            database = f"rental_demo_{uuid.uuid4().hex[:8]}"
            console.print(f"using MONGODB_URI, database {database}", highlight=False)
        else:
            database = "rental_service"
            server = EmbeddedServer(workdir / "rental.db", workdir=workdir / "mongo").start()
            uri = server.uri
            console.print(f"embedded nx-27017 server at {uri}", highlight=False)
        service = ServiceProcess(
            workdir / "service", mongodb_uri=uri, settings=demo_settings(database)
        )
        service.start()
        console.print(
            f"rental service (pid {service.pid}) at {service.base_url}; log: {service.log_path}",
            highlight=False,
        )
        async with ServiceClient(service.base_url) as client:
            await RentalScenario(client, report).run(uri=uri, database=database)
        service.stop()
    except (ExpectationFailed, ServiceProcessError, httpx.HTTPError) as exc:
        console.print("\n[bold red]scenario failed[/bold red]")
        # Plain prints: rich would re-wrap the log lines.
        print(f"scenario failed: {exc}", file=sys.stderr, flush=True)
        if service is not None and not isinstance(exc, ServiceProcessError):
            print(service.failure("the service's log", lines=40), file=sys.stderr, flush=True)
        return 1
    finally:
        if service is not None:
            service.kill()
        if server is not None:
            server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    console.print(
        f"\n[bold green]scenario passed:[/bold green] {report.steps} steps, "
        f"{report.checks} checks held",
        highlight=False,
    )
    return 0


def main() -> int:
    """Entry point of ``python -m examples.rental_service.scenario``."""
    # On a terminal rich fits the tables to its width; piped output gets room to breathe.
    width = None if sys.stdout.isatty() else 120
    return asyncio.run(run_demo(Console(highlight=False, width=width)))


if __name__ == "__main__":
    raise SystemExit(main())
