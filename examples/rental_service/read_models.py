"""The read side: projections that keep the query-shaped collections, and their document models.

* ``catalog`` (handler projection): availability per item (a SKU is a model in one size);
* ``member_rentals`` (handler): each rental and its status, what members see;
* ``rental_board`` (handler): the same plus the member's name and e-mail, for staff;
* ``revenue`` (pipeline): money taken and given back per UTC day;
* ``utilisation`` (pipeline): units per state and category.

Handlers depend on the event alone (a rebuild must compute the same), which
is why inventory events carry their item's category and ``RentalRequested``
carries the member's name and e-mail.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, Field, computed_field

from cqrs_kit import (
    HandlerProjection,
    PipelineProjection,
    Projection,
    ProjectionApp,
    RecordedEvent,
    Sum,
    Upsert,
    on,
)
from examples.rental_service.events import (
    ItemListed,
    PaymentCharged,
    PaymentRefunded,
    RentalCancelled,
    RentalConfirmed,
    RentalOverdue,
    RentalRequested,
    RentalReturned,
    RentalShipped,
    RentalUnitsReserved,
    ReturnReminderDue,
    StockReceived,
    UnitReleased,
    UnitRentedOut,
    UnitReserved,
    UnitRetired,
    build_registry,
)
from examples.rental_service.rentals import RentalStatus
from examples.rental_service.settings import Settings


def _as_utc(moment: datetime) -> datetime:
    # MongoDB keeps UTC without a zone; drivers hand it back naive unless told otherwise.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


#: A datetime read back from MongoDB, made timezone-aware (UTC).
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]

# -- catalog ----------------------------------------------------------------------------------


class CatalogItem(BaseModel):
    """Availability of one item (one SKU: a model in one size)."""

    sku: str
    name: str = ""
    category: str = ""
    size: str = ""
    price: int = 0
    units_total: int = 0
    available: int = 0
    reserved: int = 0
    rented_out: int = 0
    retired: int = 0


class Catalog(HandlerProjection):
    """Units per state for every item."""

    name = "catalog"
    indexes = ((("category", 1), ("size", 1)),)

    @on(ItemListed)
    def listed(self, event: ItemListed) -> Upsert:
        """A new catalogue entry."""
        return Upsert(
            event.sku,
            set={
                "name": event.name,
                "category": event.category,
                "size": event.size,
                "price": event.price,
            },
        )

    @on(StockReceived)
    def received(self, event: StockReceived) -> Upsert:
        """New units are available."""
        n = len(event.unit_ids)
        return Upsert(event.sku, inc={"units_total": n, "available": n})

    @on(UnitRetired)
    def retired(self, event: UnitRetired) -> Upsert:
        """An available unit left for good."""
        return Upsert(event.sku, inc={"units_total": -1, "available": -1, "retired": 1})

    @on(UnitReserved)
    def reserved(self, event: UnitReserved) -> Upsert:
        """A unit is set aside."""
        return Upsert(event.sku, inc={"available": -1, "reserved": 1})

    @on(UnitRentedOut)
    def rented_out(self, event: UnitRentedOut) -> Upsert:
        """A reserved unit went out."""
        return Upsert(event.sku, inc={"reserved": -1, "rented_out": 1})

    @on(UnitReleased)
    def released(self, event: UnitReleased) -> Upsert:
        """A reserved or rented-out unit is available again."""
        return Upsert(event.sku, inc={"available": 1, event.was: -1})


# -- rentals ----------------------------------------------------------------------------------


class RentalView(BaseModel):
    """A rental as its member sees it."""

    rental_id: str
    member_id: str
    status: RentalStatus
    skus: list[str] = Field(default_factory=list)
    units: dict[str, str] = Field(default_factory=dict)
    amount: int = 0
    payment_id: str | None = None
    reason: str | None = None
    requested_at: UtcDatetime | None = None
    confirmed_at: UtcDatetime | None = None
    due_at: UtcDatetime | None = None
    shipped_at: UtcDatetime | None = None
    returned_at: UtcDatetime | None = None
    reminded: bool = False


class BoardRow(RentalView):
    """A rental as staff see it on the board."""

    member_email: str = ""
    member_name: str = ""
    overdue: bool = False
    updated_at: UtcDatetime | None = None


class MemberRentals(HandlerProjection):
    """Every rental with its status, keyed by rental id."""

    name = "member_rentals"
    indexes: Sequence[Sequence[tuple[str, int]]] = (
        (("member_id", 1), ("requested_at", -1)),
        (("status", 1),),
    )
    #: Whether documents carry the staff board's extra fields.
    board: ClassVar[bool] = False

    def _upsert(self, recorded: RecordedEvent, rental_id: str, **fields: Any) -> Upsert:
        if self.board:
            fields["updated_at"] = recorded.recorded_at
        return Upsert(rental_id, set=fields)

    @on(RentalRequested)
    def requested(self, event: RentalRequested, recorded: RecordedEvent) -> Upsert:
        """A new rental."""
        extra: dict[str, Any] = {}
        if self.board:
            extra = {
                "member_email": event.member_email,
                "member_name": event.member_name,
                "overdue": False,
            }
        return self._upsert(
            recorded,
            event.rental_id,
            member_id=event.member_id,
            status="requested",
            skus=list(event.skus),
            requested_at=recorded.recorded_at,
            reminded=False,
            **extra,
        )

    @on(RentalUnitsReserved)
    def units_reserved(self, event: RentalUnitsReserved, recorded: RecordedEvent) -> Upsert:
        """Units are set aside; payment is due."""
        return self._upsert(
            recorded,
            event.rental_id,
            status="awaiting_payment",
            units=dict(event.units),
            amount=event.amount,
        )

    @on(RentalConfirmed)
    def confirmed(self, event: RentalConfirmed, recorded: RecordedEvent) -> Upsert:
        """Paid."""
        return self._upsert(
            recorded,
            event.rental_id,
            status="confirmed",
            payment_id=event.payment_id,
            amount=event.amount,
            confirmed_at=recorded.recorded_at,
            due_at=event.due_at,
        )

    @on(RentalShipped)
    def shipped(self, event: RentalShipped, recorded: RecordedEvent) -> Upsert:
        """On its way."""
        return self._upsert(
            recorded, event.rental_id, status="shipped", shipped_at=recorded.recorded_at
        )

    @on(ReturnReminderDue)
    def reminded(self, event: ReturnReminderDue, recorded: RecordedEvent) -> Upsert:
        """The reminder went out."""
        return self._upsert(recorded, event.rental_id, reminded=True)

    @on(RentalOverdue)
    def overdue(self, event: RentalOverdue, recorded: RecordedEvent) -> Upsert:
        """Late."""
        extra = {"overdue": True} if self.board else {}
        return self._upsert(recorded, event.rental_id, status="overdue", **extra)

    @on(RentalReturned)
    def returned(self, event: RentalReturned, recorded: RecordedEvent) -> Upsert:
        """Closed."""
        return self._upsert(
            recorded, event.rental_id, status="returned", returned_at=recorded.recorded_at
        )

    @on(RentalCancelled)
    def cancelled(self, event: RentalCancelled, recorded: RecordedEvent) -> Upsert:
        """Ended before shipping."""
        return self._upsert(recorded, event.rental_id, status="cancelled", reason=event.reason)


class RentalBoard(MemberRentals):
    """The staff board: every rental with its member, and when it last changed."""

    name = "rental_board"
    indexes = ((("updated_at", -1),), (("status", 1),), (("member_id", 1),))
    board = True


# -- revenue ----------------------------------------------------------------------------------


class DailyRevenue(BaseModel):
    """Money per UTC day, in yen."""

    day: str
    charged: int = 0
    refunded: int = 0
    net: int = 0
    charges: int = 0
    refunds: int = 0


def _if_type(event_type: str, then: Any, otherwise: Any = 0) -> dict[str, Any]:
    return {"$cond": [{"$eq": ["$type", event_type]}, then, otherwise]}


class RevenuePerDay(PipelineProjection):
    """Charges and refunds summed per day (the day the payment event was recorded)."""

    name = "revenue"
    event_types = (PaymentCharged, PaymentRefunded)
    stages = (
        {
            "$addFields": {
                "day": {"$dateToString": {"format": "%Y-%m-%d", "date": "$recorded_at"}},
                "charged": _if_type(PaymentCharged.event_type, "$data.amount"),
                "refunded": _if_type(PaymentRefunded.event_type, "$data.amount"),
                "charges": _if_type(PaymentCharged.event_type, 1),
                "refunds": _if_type(PaymentRefunded.event_type, 1),
                "net": _if_type(
                    PaymentCharged.event_type,
                    "$data.amount",
                    {"$multiply": [-1, "$data.amount"]},
                ),
            }
        },
    )
    group_by = "$day"
    fields = MappingProxyType(
        {
            "charged": Sum("$charged"),
            "refunded": Sum("$refunded"),
            "net": Sum("$net"),
            "charges": Sum("$charges"),
            "refunds": Sum("$refunds"),
        }
    )


# -- utilisation ------------------------------------------------------------------------------


class CategoryUtilisation(BaseModel):
    """Units per state in one category, and the share that is out of the warehouse."""

    category: str
    units_total: int = 0
    available: int = 0
    reserved: int = 0
    rented_out: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def utilisation(self) -> float:
        """(reserved + rented out) / active units; 0 with no units."""
        if self.units_total <= 0:
            return 0.0
        return round((self.reserved + self.rented_out) / self.units_total, 4)


def _delta(changes: dict[str, int | dict[str, Any]]) -> dict[str, Any]:
    """A ``$switch`` on the event type giving one field's change (0 for other types)."""
    return {
        "$switch": {
            "branches": [
                {"case": {"$eq": ["$type", event_type]}, "then": change}
                for event_type, change in changes.items()
            ],
            "default": 0,
        }
    }


def _released_from(state: str) -> dict[str, Any]:
    return {"$cond": [{"$eq": ["$data.was", state]}, -1, 0]}


class Utilisation(PipelineProjection):
    """Units per state and category, summed on the server."""

    name = "utilisation"
    event_types = (StockReceived, UnitRetired, UnitReserved, UnitReleased, UnitRentedOut)
    stages = (
        {
            "$addFields": {
                "d_total": _delta(
                    {
                        StockReceived.event_type: {"$size": "$data.unit_ids"},
                        UnitRetired.event_type: -1,
                    }
                ),
                "d_available": _delta(
                    {
                        StockReceived.event_type: {"$size": "$data.unit_ids"},
                        UnitRetired.event_type: -1,
                        UnitReserved.event_type: -1,
                        UnitReleased.event_type: 1,
                    }
                ),
                "d_reserved": _delta(
                    {
                        UnitReserved.event_type: 1,
                        UnitRentedOut.event_type: -1,
                        UnitReleased.event_type: _released_from("reserved"),
                    }
                ),
                "d_rented_out": _delta(
                    {
                        UnitRentedOut.event_type: 1,
                        UnitReleased.event_type: _released_from("rented_out"),
                    }
                ),
            }
        },
    )
    group_by = "$data.category"
    fields = MappingProxyType(
        {
            "units_total": Sum("$d_total"),
            "available": Sum("$d_available"),
            "reserved": Sum("$d_reserved"),
            "rented_out": Sum("$d_rented_out"),
        }
    )


def build_projections() -> list[Projection]:
    """Every projection of the service."""
    return [Catalog(), MemberRentals(), RentalBoard(), RevenuePerDay(), Utilisation()]


def projection_app() -> ProjectionApp:
    """The projections for the ``cqrs-kit projections`` command line.

    ``--app examples.rental_service.read_models:projection_app``; the database name
    follows the ``DATABASE`` setting.
    """
    return ProjectionApp(
        registry=build_registry(),
        projections=build_projections(),
        database_name=Settings().database,
    )
