"""A small shop served through cqrs_kit.fastapi: the app the HTTP tests, schemathesis and
the uvicorn test run.

``build_app(database)`` builds it on any database object. ``create_app()`` is the
factory for ``uvicorn --factory _http_app:create_app``: it reads the server from
``CQRS_KIT_HTTP_MONGODB_URI`` and the database name from ``CQRS_KIT_HTTP_DATABASE``,
and runs the projection in the background for the app's lifetime.

Authentication is a toy bearer token ``test-<user>`` or ``test-<user>:<role>,<role>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from cqrs_kit import (
    Aggregate,
    Command,
    CommandBus,
    ConcurrencyError,
    DomainError,
    Event,
    EventRegistry,
    EventStore,
    RecordedEvent,
    applies,
)
from cqrs_kit.fastapi import (
    CommandEndpoint,
    Filter,
    Principal,
    ReadModelSpec,
    command_router,
    feed_router,
    install_problem_handlers,
    query_router,
)
from cqrs_kit.projections import HandlerProjection, ProjectionRunner, Upsert, on
from cqrs_kit.testing import Backend, make_client

# -- events -----------------------------------------------------------------------------------


class OrderLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sku: str = Field(pattern=r"^[A-Z]{3}-[0-9]{3}$", examples=["ABC-123"])
    quantity: int = Field(gt=0, le=1000)
    price_cents: int = Field(ge=0, le=10_000_000)


class OrderPlaced(Event):
    event_type: ClassVar[str] = "shop.OrderPlaced"
    customer: str
    lines: list[OrderLine]
    total: Decimal


class OrderCancelled(Event):
    event_type: ClassVar[str] = "shop.OrderCancelled"
    reason: str


class NoteAdded(Event):
    event_type: ClassVar[str] = "shop.NoteAdded"
    text: str


ITEMS_EXAMPLE = [{"sku": "ABC-123", "quantity": 2, "price_cents": 950}]


def shop_registry() -> EventRegistry:
    return EventRegistry(OrderPlaced, OrderCancelled, NoteAdded)


# -- domain errors ------------------------------------------------------------------------------


class OrderAlreadyPlaced(DomainError):
    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id!r} is already placed")
        self.order_id = order_id


class OrderNotFound(DomainError):
    status_code = 404

    def __init__(self, order_id: str) -> None:
        super().__init__(f"there is no order {order_id!r}")
        self.order_id = order_id


class OrderAlreadyCancelled(DomainError):
    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id!r} is already cancelled")
        self.order_id = order_id


class NoteRejected(DomainError):
    status_code = 400

    def __init__(self, order_id: str, word: str) -> None:
        super().__init__(f"notes must not contain {word!r}")
        self.order_id = order_id
        self.word = word


# -- the aggregate ------------------------------------------------------------------------------


class OrderState(BaseModel):
    placed: bool = False
    cancelled: bool = False
    customer: str = ""
    total: Decimal = Decimal(0)


class Order(Aggregate[OrderState]):
    stream_prefix = "order-"

    def place(self, customer: str, lines: list[OrderLine]) -> None:
        if self.state.placed:
            raise OrderAlreadyPlaced(self.id)
        total = Decimal(sum(line.price_cents * line.quantity for line in lines)) / 100
        self.record(OrderPlaced(customer=customer, lines=lines, total=total))

    def cancel(self, reason: str) -> None:
        self._require_placed()
        if self.state.cancelled:
            raise OrderAlreadyCancelled(self.id)
        self.record(OrderCancelled(reason=reason))

    def add_note(self, text: str) -> None:
        self._require_placed()
        if "spam" in text.lower():
            raise NoteRejected(self.id, "spam")
        self.record(NoteAdded(text=text))

    def _require_placed(self) -> None:
        if not self.state.placed:
            raise OrderNotFound(self.id)

    @applies(OrderPlaced)
    def _placed(self, event: OrderPlaced) -> None:
        self.state.placed = True
        self.state.customer = event.customer
        self.state.total = event.total

    @applies(OrderCancelled)
    def _cancelled(self, event: OrderCancelled) -> None:
        self.state.cancelled = True

    @applies(NoteAdded)
    def _noted(self, event: NoteAdded) -> None:
        pass


# -- commands ---------------------------------------------------------------------------------

OrderId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$", examples=["o-1"])]


class PlaceOrder(Command):
    """Place a new order for the calling customer."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"order_id": "o-1", "items": ITEMS_EXAMPLE}]}
    )

    order_id: OrderId
    items: list[OrderLine] = Field(min_length=1, max_length=20)


class CancelOrder(Command):
    """Cancel an order (staff only); ``expected_version`` guards against concurrent changes."""

    order_id: OrderId
    reason: str = Field(min_length=1, max_length=200)
    expected_version: int | None = Field(default=None, ge=1, le=1_000_000)


class AddNote(Command):
    """Add a note to an order."""

    order_id: OrderId
    text: str = Field(min_length=1, max_length=500)


def shop_bus(store: EventStore) -> CommandBus:
    bus = CommandBus(store, retry_delay=0.001)

    @bus.handles(PlaceOrder, aggregate=Order, aggregate_id=lambda c: c.order_id)
    def place(command: PlaceOrder, order: Order) -> None:
        order.place(command.metadata.principal or "anonymous", command.items)

    @bus.handles(CancelOrder, aggregate=Order, aggregate_id=lambda c: c.order_id)
    def cancel(command: CancelOrder, order: Order) -> None:
        expected = command.expected_version
        if order.version and expected is not None and expected != order.version:
            raise ConcurrencyError(order.stream_id, expected=expected, actual=order.version)
        order.cancel(command.reason)

    @bus.handles(AddNote, aggregate=Order, aggregate_id=lambda c: c.order_id)
    def note(command: AddNote, order: Order) -> None:
        order.add_note(command.text)

    return bus


# -- the read side --------------------------------------------------------------------------------


def order_id_of(recorded: RecordedEvent) -> str:
    return recorded.stream_id.removeprefix(Order.stream_prefix)


class OrdersProjection(HandlerProjection):
    name = "orders"

    @on(OrderPlaced)
    def placed(self, event: OrderPlaced, recorded: RecordedEvent) -> Upsert:
        return Upsert(
            order_id_of(recorded),
            set={
                "customer": event.customer,
                "status": "placed",
                "total": float(event.total),
                "lines": len(event.lines),
            },
            set_on_insert={"notes": 0},
        )

    @on(OrderCancelled)
    def cancelled(self, event: OrderCancelled, recorded: RecordedEvent) -> Upsert:
        return Upsert(order_id_of(recorded), set={"status": "cancelled"})

    @on(NoteAdded)
    def noted(self, event: NoteAdded, recorded: RecordedEvent) -> Upsert:
        return Upsert(order_id_of(recorded), inc={"notes": 1})


class OrderStatus(StrEnum):
    PLACED = "placed"
    CANCELLED = "cancelled"


class OrderView(BaseModel):
    order_id: str
    customer: str
    status: OrderStatus
    total: float
    lines: int
    notes: int = 0


class ProductView(BaseModel):
    sku: str
    name: str
    price: float | None = None
    category: Literal["tools", "toys", "food"]


ORDERS = ReadModelSpec(
    name="orders",
    model=OrderView,
    projection="orders",
    id_field="order_id",
    filters={
        "status": Filter(OrderStatus),
        "customer": Filter(str),
        "min_total": Filter(float, op="gte", field="total"),
    },
    sortable=["total", "customer"],
    default_sort="order_id",
    max_page_size=50,
    # Customers see their own orders; staff see all.
    scope=lambda principal: None if "staff" in principal.roles else {"customer": principal.id},
)

PRODUCTS = ReadModelSpec(
    name="products",
    model=ProductView,
    collection="products",
    id_field="sku",
    filters={
        "category": Filter(str, op="in"),
        "name": Filter(str, op="prefix"),
        "max_price": Filter(float, op="lte", field="price"),
    },
    sortable=["price", "name"],
    max_page_size=25,
    default_page_size=10,
)


# -- authentication ------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False)


async def authenticate(
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
) -> Principal:
    """Toy bearer tokens: ``test-<user>`` or ``test-<user>:<role>,<role>``."""
    token = credentials.credentials if credentials is not None else ""
    if not token.startswith("test-") or not token[5:].split(":")[0]:
        raise HTTPException(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
    user, _, roles = token[5:].partition(":")
    return Principal(id=user, roles=frozenset(r for r in roles.split(",") if r))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer test-{token}"}


# -- the app --------------------------------------------------------------------------------------


class Shop:
    """The parts of the app, for tests that want to reach behind the HTTP surface."""

    def __init__(self, database: Any) -> None:
        self.database = database
        self.store = EventStore(database, shop_registry())
        self.bus = shop_bus(self.store)

    def runner(self, *, poll_interval: float = 0.05) -> ProjectionRunner:
        return ProjectionRunner(self.store, [OrdersProjection()], poll_interval=poll_interval)


def build_app(
    database: Any,
    *,
    max_wait: float = 2.0,
    query_poll: float = 0.1,
    heartbeat: float = 15.0,
    feed_poll: float = 1.0,
    run_projections: bool = False,
    lifespan_extra: Any = None,
) -> FastAPI:
    shop = Shop(database)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await shop.store.ensure_indexes()
        stop = asyncio.Event()
        task = None
        if run_projections:
            task = asyncio.create_task(shop.runner().run(stop))
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                await task
            if lifespan_extra is not None:
                await lifespan_extra()

    app = FastAPI(title="cqrs-kit test shop", lifespan=lifespan)
    app.state.shop = shop
    install_problem_handlers(app)
    app.include_router(
        command_router(
            shop.bus,
            [
                CommandEndpoint(PlaceOrder, errors=(OrderAlreadyPlaced,)),
                CommandEndpoint(
                    CancelOrder, roles={"staff"}, errors=(OrderNotFound, OrderAlreadyCancelled)
                ),
                CommandEndpoint(
                    AddNote,
                    errors=(OrderNotFound, NoteRejected),
                    example={"order_id": "o-1", "text": "leave at the door"},
                ),
            ],
            auth=authenticate,
            location="/queries/orders/{order_id}",
        ),
        prefix="/commands",
    )
    app.include_router(
        query_router(
            database,
            [ORDERS, PRODUCTS],
            auth=authenticate,
            max_wait=max_wait,
            poll_interval=query_poll,
        ),
        prefix="/queries",
    )
    app.include_router(
        feed_router(shop.store, auth=authenticate, heartbeat=heartbeat, poll_interval=feed_poll)
    )
    return app


def create_app() -> FastAPI:
    """The uvicorn factory: the server from the environment, projections running."""
    uri = os.environ["CQRS_KIT_HTTP_MONGODB_URI"]
    client = make_client(Backend("nx-pymongo", "pymongo", uri))

    async def close() -> None:
        await client.close()

    return build_app(
        client[os.environ.get("CQRS_KIT_HTTP_DATABASE", "cqrs_kit_http")],
        heartbeat=float(os.environ.get("CQRS_KIT_HTTP_HEARTBEAT", "15")),
        feed_poll=0.2,
        run_projections=True,
        lifespan_extra=close,
    )
