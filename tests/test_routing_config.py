"""The routing file: loading, errors with file/line/path, and routing events to subscribers."""

from __future__ import annotations

import asyncio
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from cqrs_kit import Event, EventRegistry, EventStore, RecordedEvent, RoutingFileError
from cqrs_kit.routing.config import RoutingConfig, load_routing, parse_routing
from cqrs_kit.routing.handlers import Delivery
from cqrs_kit.routing.process_managers import ProcessContext, ProcessManager, reacts_to
from cqrs_kit.routing.subscribers import Ordering
from cqrs_kit.routing.worker import Worker
from cqrs_kit.scheduling import ManualClock

# -- what the routing files below point at (this module is importable by name) ----------------


class OrderPlaced(Event):
    event_type: ClassVar[str] = "orders.Placed"
    order_id: str
    currency: str
    total: int


class OrderShipped(Event):
    event_type: ClassVar[str] = "orders.Shipped"
    order_id: str


registry = EventRegistry(OrderPlaced, OrderShipped)
received: list[tuple[str, Any]] = []


@pytest.fixture
def event_registry() -> EventRegistry:
    return registry


class ChargeRequest(BaseModel):
    order: str
    amount: int


async def charge(request: ChargeRequest, delivery: Delivery) -> None:
    received.append(("billing", (request.order, request.amount, delivery.idempotency_key)))


async def audit(event: RecordedEvent) -> None:
    received.append(("audit", event.event_type))


async def japan_desk(event: OrderPlaced) -> None:
    received.append(("japan", event.order_id))


def not_async(event: RecordedEvent) -> None:
    """Handlers must be coroutines."""


class Mailer:
    def __init__(self, sender: str) -> None:
        self.sender = sender

    async def shipped(self, request: dict[str, Any]) -> None:
        received.append(("mail", (self.sender, request["order_id"])))


class Stats:
    async def count(self, event: RecordedEvent) -> None:
        received.append(("stats", event.event_type))


class RunReport(BaseModel):
    command_id: str = ""
    kind: str


class NoteState(BaseModel):
    notes: int = 0


class Notes(ProcessManager[NoteState]):
    state_type = NoteState

    @reacts_to("orders.Placed", correlate="$.data.order_id", starts=True)
    async def placed(self, state: NoteState, event: OrderPlaced, ctx: ProcessContext) -> None:
        state.notes += 1


VALID = """\
version: 1
registry: test_routing_config:registry
routes:
  placed-in-japan:
    pattern:
      type: [orders.Placed]
      data: {currency: [JPY]}
    subscribers: [japan, audit]
  placed:
    pattern: {type: [orders.Placed]}
    subscribers: [billing, audit]
  shipped:
    pattern: {type: [orders.Shipped]}
    subscribers: [mail, audit, stats]
subscribers:
  billing:
    handler: test_routing_config:charge
    input: {order: $.data.order_id, amount: $.data.total}
    retry: {max_attempts: 3, initial_delay: 0.5, max_delay: 60, multiplier: 3, jitter: 0}
    timeout: 5
  audit:
    handler: test_routing_config:audit
    ordering: none
  japan:
    handler: test_routing_config:japan_desk
  mail:
    handler: test_routing_config:Mailer.shipped
  stats:
    handler: test_routing_config:Stats.count
process_managers:
  notes:
    manager: test_routing_config:Notes
schedules:
  report:
    rate: 5 minutes
    command: test_routing_config:RunReport
    args: {kind: daily}
"""


def load(text: str = VALID) -> RoutingConfig:
    return parse_routing(text, file="routing.yaml", services={Mailer: Mailer("ops@example")})


def document(event_type: str, **data: Any) -> dict[str, Any]:
    return {"id": "e", "type": event_type, "stream_id": "s", "metadata": {}, "data": data}


def test_a_valid_file_loads_with_everything_resolved() -> None:
    config = load()
    assert [r.name for r in config.routes] == ["placed-in-japan", "placed", "shipped"]
    billing = config.subscribers["billing"]
    assert billing.handler is charge
    assert (billing.retry.max_attempts, billing.retry.multiplier, billing.timeout) == (3, 3, 5)
    assert config.subscribers["audit"].ordering is Ordering.NONE
    assert config.subscribers["audit"].routes == ("placed-in-japan", "placed", "shipped")
    assert config.registry is registry
    (schedule,) = config.schedules
    assert (schedule.name, schedule.rate, schedule.command_type) == (
        "report",
        timedelta(minutes=5),
        RunReport,
    )
    rows = [(r.route, r.subscriber, r.handler, r.retry, r.ordering) for r in config.table()]
    assert rows[0] == (
        "placed-in-japan",
        "japan",
        "test_routing_config:japan_desk",
        "5x 1s..5m x2",
        "per-stream",
    )
    billing_row = (
        "placed",
        "billing",
        "test_routing_config:charge",
        "3x 0.5s..1m x3",
        "per-stream",
    )
    assert billing_row in rows
    assert rows[-1][:3] == ("(process manager)", "notes", "test_routing_config:Notes.placed")


def test_an_event_reaches_exactly_the_subscribers_whose_patterns_match() -> None:
    config = load()
    placed_jp = document("orders.Placed", order_id="1", currency="JPY", total=5)
    placed_us = document("orders.Placed", order_id="2", currency="USD", total=5)
    shipped = document("orders.Shipped", order_id="1")
    other = document("orders.Cancelled", order_id="1")
    assert sorted(config.subscribers_for(placed_jp)) == ["audit", "billing", "japan", "notes"]
    assert sorted(config.subscribers_for(placed_us)) == ["audit", "billing", "notes"]
    assert sorted(config.subscribers_for(shipped)) == ["audit", "mail", "stats"]
    assert config.subscribers_for(other) == []


async def test_routed_events_are_delivered_once_per_matching_subscriber(
    event_store: EventStore, mongo_database: Any, tmp_path: Path
) -> None:
    received.clear()
    path = tmp_path / "routing.yaml"
    path.write_text(VALID)
    config = load_routing(path, services={Mailer: Mailer("ops@example")})
    dispatched: list[Any] = []

    async def dispatch(command: Any) -> None:
        dispatched.append(command)

    worker = Worker.from_routing(
        event_store, config, dispatch=dispatch, clock=ManualClock(), poll_interval=0.05
    )
    await worker.ensure_indexes()
    assert set(worker.runtimes) == {"billing", "audit", "japan", "mail", "stats", "notes"}
    await event_store.append("o-1", [OrderPlaced(order_id="o-1", currency="JPY", total=70)])
    await event_store.append("o-2", [OrderPlaced(order_id="o-2", currency="EUR", total=30)])
    await event_store.append("o-1", [OrderShipped(order_id="o-1")])
    async with worker:
        states = mongo_database["process_states"]
        for _ in range(1500):
            if len(received) >= 8 and await states.count_documents({}) == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # a duplicate or a stray delivery would show up now
    notes = {d["correlation"]: d["state"] async for d in states.find({})}
    assert notes == {"o-1": {"notes": 1}, "o-2": {"notes": 1}}
    by_target: dict[str, list[Any]] = {}
    for target, what in received:
        by_target.setdefault(target, []).append(what)
    billed = sorted(by_target.pop("billing"))
    assert [(order, amount) for order, amount, _ in billed] == [("o-1", 70), ("o-2", 30)]
    assert all(key.startswith("billing:") for _, _, key in billed)
    assert sorted(by_target.pop("audit")) == ["orders.Placed", "orders.Placed", "orders.Shipped"]
    assert by_target == {
        "japan": ["o-1"],
        "mail": [("ops@example", "o-1")],
        "stats": ["orders.Shipped"],
    }


def error_for(text: str) -> RoutingFileError:
    with pytest.raises(RoutingFileError) as info:
        load(textwrap.dedent(text))
    assert info.value.file == "routing.yaml"
    return info.value


BASE_SUBSCRIBER = """\
subscribers:
  audit:
    handler: test_routing_config:audit
"""


@pytest.mark.parametrize(
    ("text", "line", "path", "reason"),
    [
        pytest.param(
            "routes:\n  a:\n    pattern: {type: [x]\n    subscribers: [audit]\n",
            4, "", "invalid YAML", id="bad-yaml",
        ),
        pytest.param("- just\n- a list\n", 1, "", "must be a mapping", id="not-a-mapping"),
        pytest.param("# nothing\n", None, "", "empty", id="empty"),
        pytest.param(
            "routes:\n  a:\n    pattern: {type: [x]}\n    subscribers: [audit]\n" + BASE_SUBSCRIBER
            + "    retry: {max_attemps: 3}\n",
            8, "subscribers.audit.retry.max_attemps", "Extra inputs", id="typo-in-key",
        ),
        pytest.param(
            "routes:\n  a:\n    pattern: {type: [x]}\n    subscribers: [audit]\n" + BASE_SUBSCRIBER
            + "    timeout: -1\n",
            8, "subscribers.audit.timeout", "greater than 0", id="negative-timeout",
        ),
        pytest.param(
            "routes:\n  a:\n    pattern: {type: [x]}\n    subscribers: [audit, audti]\n"
            + BASE_SUBSCRIBER,
            4, "routes.a.subscribers[1]", "unknown subscriber 'audti'", id="unknown-subscriber",
        ),
        pytest.param(
            "routes:\n  a:\n    pattern: {type: [x]}\n    subscribers: [audit]\n"
            "subscribers:\n  audit:\n    handler: no_such_module_xyz:audit\n",
            7, "subscribers.audit.handler", "cannot import module 'no_such_module_xyz'",
            id="unknown-module",
        ),
        pytest.param(
            "routes:\n  a:\n    pattern: {type: [x]}\n    subscribers: [audit]\n"
            "subscribers:\n  audit:\n    handler: test_routing_config:nope\n",
            7, "subscribers.audit.handler", "has no attribute 'nope'", id="unknown-function",
        ),
        pytest.param(
            "routes:\n  a:\n    pattern: {type: [x]}\n    subscribers: [audit]\n"
            "subscribers:\n  audit:\n    handler: test_routing_config:Stats.nope\n",
            7, "subscribers.audit.handler", "no attribute 'nope'", id="unknown-method",
        ),
        pytest.param(
            "routes:\n  a:\n    pattern: {type: [x]}\n    subscribers: [audit]\n"
            "subscribers:\n  audit:\n    handler: test_routing_config:not_async\n",
            7, "subscribers.audit.handler", "must be an async function", id="sync-handler",
        ),
        pytest.param(
            "routes:\n  a:\n    pattern: {type: [x]}\n    subscribers: [audit]\n"
            "subscribers:\n  audit:\n    handler: not a target\n",
            7, "subscribers.audit.handler", "should match pattern", id="malformed-target",
        ),
        pytest.param(
            "routes:\n  a:\n    pattern: {type: [x]}\n    subscribers: [b]\n"
            "subscribers:\n  b:\n    handler: test_routing_config:charge\n"
            "    input:\n      order: $.data.order_id\n      amout: $.data.total\n",
            8, "subscribers.b.input", "amout", id="input-field-not-in-model",
        ),
        pytest.param(
            "routes:\n  a:\n    pattern: {type: [x]}\n    subscribers: [b]\n"
            "subscribers:\n  b:\n    handler: test_routing_config:charge\n"
            "    input:\n      order: data.order_id\n",
            9, "subscribers.b.input.order", "must start with '$'", id="input-path",
        ),
        pytest.param(
            "routes:\n  a:\n    pattern: {type: [x]}\n    subscribers: [audit]\n" + BASE_SUBSCRIBER
            + "  unused:\n    handler: test_routing_config:audit\n",
            8, "subscribers.unused", "not named by any route", id="subscriber-without-route",
        ),
        pytest.param(
            "routes:\n  a:\n    pattern: {type: [x]}\n    subscribers: [audit]\n" + BASE_SUBSCRIBER
            + "routes:\n  b: {}\n",
            8, "routes", "duplicate key 'routes'", id="duplicate-key",
        ),
        pytest.param(
            "routes:\n  a:\n    pattern: {type: [x]}\n    subscribers: [audit]\n" + BASE_SUBSCRIBER
            + "schedules:\n  r:\n    cron: '61 * * * *'\n"
            "    command: test_routing_config:RunReport\n",
            9, "schedules.r", "invalid cron", id="bad-cron",
        ),
        pytest.param(
            "routes:\n  a:\n    pattern: {type: [x]}\n    subscribers: [audit]\n" + BASE_SUBSCRIBER
            + "schedules:\n  r:\n    rate: 5 minutes\n    command: test_routing_config:RunReport\n"
            "    args: {kind: 3}\n",
            12, "schedules.r.args.kind", "valid string", id="bad-command-args",
        ),
        pytest.param(
            "registry: test_routing_config:audit\nroutes:\n  a:\n    pattern: {type: [x]}\n"
            "    subscribers: [audit]\n" + BASE_SUBSCRIBER,
            1, "registry", "is not an EventRegistry", id="bad-registry",
        ),
        pytest.param(
            "routes:\n  a:\n    pattern: {type: [x]}\n    subscribers: [audit]\n" + BASE_SUBSCRIBER
            + "process_managers:\n  pm:\n    manager: test_routing_config:Stats\n",
            10, "process_managers.pm.manager", "not a ProcessManager", id="bad-manager",
        ),
    ],
)  # fmt: skip
def test_errors_name_file_line_and_path(
    text: str, line: int | None, path: str, reason: str
) -> None:
    error = error_for(text)
    assert (error.line, error.path) == (line, path), str(error)
    assert reason in error.reason, str(error)
    assert str(error).startswith("routing.yaml: " if line is None else f"routing.yaml:{line}: ")


def test_an_invalid_pattern_is_reported_at_its_line() -> None:
    error = error_for(
        """\
        routes:
          a:
            pattern:
              type: [orders.Placed]
              data:
                total: [{numeric: [">", "lots"]}]
            subscribers: [audit]
        subscribers:
          audit:
            handler: test_routing_config:audit
        """
    )
    assert error.path.startswith("routes.a.pattern.data.total"), error.path
    assert error.line == 6


def test_a_class_handler_needs_arguments_or_a_service() -> None:
    text = VALID
    with pytest.raises(RoutingFileError, match=r"services=\{Class: instance\}") as info:
        parse_routing(text, file="routing.yaml")
    assert info.value.path == "subscribers.mail.handler"
    mail_line = text.splitlines().index("    handler: test_routing_config:Mailer.shipped") + 1
    assert info.value.line == mail_line


def test_an_unreadable_file_is_a_routing_file_error(tmp_path: Path) -> None:
    with pytest.raises(RoutingFileError, match="cannot read") as info:
        load_routing(tmp_path / "missing.yaml")
    assert info.value.line is None


def test_an_invalid_branch_of_an_or_is_reported_with_its_full_path() -> None:
    error = error_for(
        """\
        routes:
          a:
            pattern:
              $or:
                - type: [orders.Placed]
                - data: "not a list"
            subscribers: [audit]
        subscribers:
          audit:
            handler: test_routing_config:audit
        """
    )
    assert error.path == "routes.a.pattern.$or[1].data", error.path
    assert error.line == 6
