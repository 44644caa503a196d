"""The HTTP surface: authentication, the command and query routers, admin routes.

The command and query routers come from ``cqrs_kit.fastapi``; this module
declares which commands and read models they expose, who may use them, and
adds what is specific to the service: sign-up and token issue, and the
staff-only admin routes of the fake gateway and the mail sender.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from cqrs_kit import Command, CommandResult
from cqrs_kit.fastapi import (
    CommandEndpoint,
    Filter,
    Principal,
    ProblemError,
    ReadModelSpec,
    command_router,
    query_router,
)
from examples.rental_service.inventory import (
    ItemAlreadyListed,
    ItemNotFound,
    ListItem,
    ReceiveStock,
    RetireUnit,
    UnitNotAvailable,
)
from examples.rental_service.members import Email, SignUp
from examples.rental_service.notifications import OUTBOX, OutboxMessage, SentMail
from examples.rental_service.read_models import (
    BoardRow,
    CatalogItem,
    CategoryUtilisation,
    DailyRevenue,
    RentalView,
)
from examples.rental_service.rentals import (
    InvalidRentalState,
    NotAMember,
    RentalAlreadyExists,
    RentalNotFound,
    RequestRental,
    ReturnRental,
    ShipRental,
    TooManyItems,
    UnknownItems,
)
from examples.rental_service.security import (
    InvalidToken,
    TokenClaims,
    hash_password,
    issue_token,
    read_token,
    verify_password,
)
from examples.rental_service.service import RentalService

STAFF = "staff"
MEMBER = "member"
Authenticate = Callable[..., Awaitable[Principal]]
_bearer = HTTPBearer(auto_error=False, description="An access token from POST /auth/token.")


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401, "unauthorized", "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"}
    )


def _principal(token: str | None, secret: str) -> Principal:
    if not token:
        raise _unauthorized("send an access token: Authorization: Bearer <token>")
    try:
        claims = read_token(token, secret=secret)
    except InvalidToken as exc:
        raise _unauthorized(f"the access token is not valid ({exc})") from None
    return Principal(
        id=claims.member_id, roles=frozenset({claims.role}), claims={"email": claims.email}
    )


def authenticators(secret: str) -> tuple[Authenticate, Authenticate]:
    """The bearer-token dependency, and a variant that also reads ``?access_token=``.

    Browsers' ``EventSource`` cannot send headers, so the live feed accepts the
    token as a query parameter too; nothing else does.
    """

    async def authenticate(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        return _principal(credentials.credentials if credentials else None, secret)

    async def authenticate_feed(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        access_token: Annotated[str | None, Query(max_length=4096)] = None,
    ) -> Principal:
        token = credentials.credentials if credentials else access_token
        return _principal(token, secret)

    return authenticate, authenticate_feed


def require_staff(authenticate: Authenticate) -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets only staff through (403 problem otherwise)."""

    async def staff(principal: Principal = Depends(authenticate)) -> Principal:  # noqa: B008
        if STAFF not in principal.roles:
            raise ProblemError(403, "forbidden", "Forbidden", "this route is for staff only")
        return principal

    return staff


# -- authentication routes --------------------------------------------------------------------


class SignUpRequest(BaseModel):
    """A new member account."""

    model_config = ConfigDict(extra="forbid")

    email: Email
    name: str = Field(min_length=1, max_length=100, examples=["Ann"])
    password: str = Field(min_length=8, max_length=128, examples=["correct horse"])


class SignedUp(BaseModel):
    """The account that was created."""

    member_id: str
    email: str
    name: str
    role: str
    position: int | None


class TokenRequest(BaseModel):
    """Credentials to exchange for an access token."""

    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=1, max_length=254)
    password: str = Field(min_length=1, max_length=128)


class TokenIssued(BaseModel):
    """An access token (send it as ``Authorization: Bearer <access_token>``)."""

    access_token: str
    token_type: str = "bearer"
    expires_in: int
    member_id: str
    role: str


class Me(BaseModel):
    """Who the token says you are."""

    member_id: str
    email: str
    role: str


def auth_router(service: RentalService, authenticate: Authenticate) -> APIRouter:
    """``/auth``: sign-up, token issue, and who-am-I."""
    router = APIRouter(prefix="/auth", tags=["auth"])
    settings = service.settings
    secret = settings.jwt_secret.get_secret_value()
    ttl = settings.token_ttl_minutes * 60

    @router.post("/sign-up", status_code=201, response_model=SignedUp)
    async def sign_up(body: SignUpRequest) -> SignedUp:
        """Create a member account (409 ``email_taken`` if the address is in use)."""
        password_hash = await asyncio.to_thread(hash_password, body.password)
        command = SignUp(email=body.email, name=body.name, password_hash=password_hash)
        result = await service.bus.dispatch(command)
        return SignedUp(
            member_id=command.aggregate_id,
            email=body.email.strip().lower(),
            name=body.name,
            role=MEMBER,
            position=result.position,
        )

    @router.post("/token", response_model=TokenIssued)
    async def token(body: TokenRequest) -> TokenIssued:
        """Exchange an e-mail address and password for an access token."""
        member = await service.directory.by_email(body.email)
        valid = member is not None and await asyncio.to_thread(
            verify_password, body.password, member.password_hash
        )
        if member is None or not valid:
            raise _unauthorized("wrong e-mail address or password")
        claims = TokenClaims(member_id=member.member_id, role=member.role, email=member.email)
        return TokenIssued(
            access_token=issue_token(claims, secret=secret, ttl_seconds=ttl),
            expires_in=ttl,
            member_id=member.member_id,
            role=member.role,
        )

    @router.get("/me", response_model=Me)
    async def me(principal: Principal = Depends(authenticate)) -> Me:  # noqa: B008
        """The caller's identity, from the token."""
        role = next(iter(principal.roles), MEMBER)
        return Me(member_id=principal.id, email=str(principal.claims.get("email", "")), role=role)

    return router


# -- commands ---------------------------------------------------------------------------------


def _rental_location(command: Command, result: CommandResult) -> str:
    return "/queries/my-rentals/" + result.stream_id.removeprefix("rental-")


def command_endpoints() -> list[CommandEndpoint]:
    """The commands served over HTTP, with who may send them."""
    rental_link = "/queries/my-rentals/{rental_id}"
    catalog_link = "/queries/catalog/{sku}"
    return [
        CommandEndpoint(ListItem, roles=[STAFF], location=catalog_link, errors=[ItemAlreadyListed]),
        CommandEndpoint(ReceiveStock, roles=[STAFF], location=catalog_link, errors=[ItemNotFound]),
        CommandEndpoint(
            RetireUnit,
            roles=[STAFF],
            location=catalog_link,
            errors=[ItemNotFound, UnitNotAvailable],
        ),
        CommandEndpoint(
            RequestRental,
            roles=[MEMBER],
            creates=True,
            location=_rental_location,
            errors=[TooManyItems, UnknownItems, RentalAlreadyExists, NotAMember],
            example={"skus": ["DRESS-RED-M", "BAG-BLACK-F"]},
        ),
        CommandEndpoint(
            ShipRental,
            roles=[STAFF],
            location=rental_link,
            errors=[RentalNotFound, InvalidRentalState],
        ),
        CommandEndpoint(
            ReturnRental,
            roles=[MEMBER, STAFF],
            location=rental_link,
            errors=[RentalNotFound, InvalidRentalState],
        ),
    ]


def commands_router(service: RentalService, authenticate: Authenticate) -> APIRouter:
    """``/commands``: one ``POST`` route per command members and staff may send."""
    return command_router(service.bus, command_endpoints(), auth=authenticate)


# -- queries ----------------------------------------------------------------------------------


class Status(StrEnum):
    """A rental's status, as a query filter."""

    REQUESTED = "requested"
    AWAITING_PAYMENT = "awaiting_payment"
    CONFIRMED = "confirmed"
    SHIPPED = "shipped"
    OVERDUE = "overdue"
    RETURNED = "returned"
    CANCELLED = "cancelled"


def _own(principal: Principal) -> dict[str, Any] | None:
    """Members see their own documents; staff see everything."""
    return None if STAFF in principal.roles else {"member_id": principal.id}


def read_model_specs() -> list[ReadModelSpec]:
    """The read models served over HTTP."""
    return [
        ReadModelSpec(
            name="catalog",
            model=CatalogItem,
            projection="catalog",
            id_field="sku",
            filters={
                "category": Filter(str),
                "size": Filter(str),
                "min_available": Filter(int, op="gte", field="available"),
            },
            sortable=["price", "available"],
        ),
        ReadModelSpec(
            name="my-rentals",
            model=RentalView,
            projection="member_rentals",
            id_field="rental_id",
            filters={"status": Filter(Status)},
            sortable=["requested_at"],
            default_sort="-requested_at",
            scope=_own,
        ),
        ReadModelSpec(
            name="rental-board",
            model=BoardRow,
            projection="rental_board",
            id_field="rental_id",
            filters={"status": Filter(Status), "member_id": Filter(str)},
            sortable=["requested_at", "updated_at"],
            default_sort="-updated_at",
            max_page_size=200,
            roles=[STAFF],
        ),
        ReadModelSpec(
            name="revenue",
            model=DailyRevenue,
            projection="revenue",
            id_field="day",
            default_sort="-day",
            roles=[STAFF],
        ),
        ReadModelSpec(
            name="utilisation",
            model=CategoryUtilisation,
            projection="utilisation",
            id_field="category",
            roles=[STAFF],
        ),
        ReadModelSpec(
            name="outbox",
            model=OutboxMessage,
            collection=OUTBOX,
            id_field="message_id",
            filters={"template": Filter(str), "rental_id": Filter(str)},
            sortable=["created_at"],
            default_sort="created_at",
            scope=_own,
        ),
    ]


def queries_router(service: RentalService, authenticate: Authenticate) -> APIRouter:
    """``/queries``: the read models, with read-your-writes through ``min_position``."""
    return query_router(
        service.database,
        read_model_specs(),
        auth=authenticate,
        max_wait=service.settings.read_your_writes_timeout,
    )


# -- admin ------------------------------------------------------------------------------------


class ProjectionLag(BaseModel):
    """How far one read model is behind the event log."""

    name: str
    state: str
    position: int
    head: int
    lag: int
    lag_seconds: float
    error: str | None = None


class GatewayControl(BaseModel):
    """Failures to inject into the fake gateway (omitted fields are left as they are)."""

    model_config = ConfigDict(extra="forbid")

    fail_next: int | None = Field(default=None, ge=0, le=1000)
    lose_next_response: int | None = Field(default=None, ge=0, le=1000)
    declined_members: list[str] | None = Field(default=None, max_length=1000)


class GatewayState(BaseModel):
    """The fake gateway's counters and pending injected failures."""

    charges: int
    charge_calls: int
    charged_amount: int
    refunds: int
    fail_next: int
    lose_next_response: int
    declined_members: list[str]


class MailState(BaseModel):
    """Every call of the fake mail sender (a message sent twice appears twice)."""

    count: int
    sent: list[SentMail]


def admin_router(service: RentalService, authenticate: Authenticate) -> APIRouter:
    """``/admin``: projection lag, and the fake gateway's and mail sender's controls (staff)."""
    router = APIRouter(
        prefix="/admin", tags=["admin"], dependencies=[Depends(require_staff(authenticate))]
    )

    @router.get("/projections", response_model=list[ProjectionLag])
    async def projections() -> list[ProjectionLag]:
        """Every read model's position, the log's head, and the lag between them."""
        return [
            ProjectionLag(
                name=s.name,
                state=str(s.state.value if hasattr(s.state, "value") else s.state),
                position=s.position,
                head=s.head,
                lag=s.lag_events,
                lag_seconds=s.lag_seconds,
                error=s.last_error.message if s.last_error else None,
            )
            for s in await service.runner.status()
        ]

    @router.get("/gateway", response_model=GatewayState)
    async def gateway() -> GatewayState:
        """The fake gateway: distinct charges really taken, calls made, pending failures."""
        return GatewayState.model_validate(await service.gateway.snapshot())

    @router.post("/gateway", response_model=GatewayState)
    async def control_gateway(body: GatewayControl) -> GatewayState:
        """Inject failures into the fake gateway."""
        await service.gateway.inject(
            fail_next=body.fail_next,
            lose_next_response=body.lose_next_response,
            declined_members=body.declined_members,
        )
        return GatewayState.model_validate(await service.gateway.snapshot())

    @router.get("/mail", response_model=MailState)
    async def mail() -> MailState:
        """Every call of the fake mail sender, oldest first."""
        sent = await service.mail.sent()
        return MailState(count=len(sent), sent=sent)

    return router
