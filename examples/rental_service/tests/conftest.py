"""Fixtures of the rental service's tests: the service on a database, with an HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import httpx
import pytest
import pytest_asyncio

from cqrs_kit.testing import Backend, EmbeddedServer, temporary_database
from examples.rental_service.app import build_app
from examples.rental_service.clock import ServiceClock
from examples.rental_service.members import SignUp, member_id_for
from examples.rental_service.security import TokenClaims, hash_password, issue_token
from examples.rental_service.service import RentalService
from examples.rental_service.settings import Settings

T = TypeVar("T")
MEMBER_PASSWORD = "password-1"
STAFF_EMAIL = "staff@example.com"
STAFF_PASSWORD = "staff-password"


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    what: str,
    limit: float = 15.0,
    interval: float = 0.02,
) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``limit`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    last: T | None = None
    while loop.time() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"gave up waiting for {what}; last value: {last!r}")


class Harness:
    """A running rental service, an HTTP client on its app, and shortcuts for the tests."""

    def __init__(self, service: RentalService, client: httpx.AsyncClient) -> None:
        self.service = service
        self.client = client
        self.clock: ServiceClock = service.clock
        self.staff: dict[str, str] = {}

    async def token(self, email: str, password: str) -> dict[str, str]:
        """Bearer headers for an existing account."""
        answer = await self.client.post("/auth/token", json={"email": email, "password": password})
        assert answer.status_code == 200, answer.text
        return {"Authorization": f"Bearer {answer.json()['access_token']}"}

    def bearer(self, member_id: str, email: str, role: str = "member") -> dict[str, str]:
        """Bearer headers with a token issued directly (no password check: it is slow)."""
        token = issue_token(
            TokenClaims(member_id=member_id, role=role, email=email),
            secret=self.service.settings.jwt_secret.get_secret_value(),
            ttl_seconds=600,
        )
        return {"Authorization": f"Bearer {token}"}

    async def member(self, name: str) -> tuple[str, dict[str, str]]:
        """Sign a member up; returns its id and bearer headers.

        The account is created through the command bus with a password hash made
        once per session: hashing is deliberately slow, and the sign-up and token
        routes have their own tests.
        """
        email = f"{name.lower()}@example.com"
        command = SignUp(email=email, name=name, password_hash=_password_hash())
        await self.service.bus.dispatch(command)
        return command.aggregate_id, self.bearer(command.aggregate_id, email)

    async def command(
        self, name: str, body: dict[str, Any], headers: dict[str, str], *, status: int | None = None
    ) -> dict[str, Any]:
        """Send a command; check its status (any 2xx by default)."""
        answer = await self.client.post(f"/commands/{name}", json=body, headers=headers)
        if status is None:
            assert answer.is_success, answer.text
        else:
            assert answer.status_code == status, answer.text
        result: dict[str, Any] = answer.json()
        return result

    async def stock(self, sku: str, *, units: int = 1, price: int = 4800) -> None:
        """List an item and receive ``units`` of it."""
        await self.command(
            "list-item",
            {"sku": sku, "name": sku.title(), "category": "dress", "size": "M", "price": price},
            self.staff,
        )
        await self.command("receive-stock", {"sku": sku, "quantity": units}, self.staff)

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Any:
        """GET a 200 answer's JSON."""
        answer = await self.client.get(path, headers=headers or self.staff)
        assert answer.status_code == 200, answer.text
        return answer.json()

    async def rental(self, rental_id: str, *, until: Callable[[dict[str, Any]], bool]) -> Any:
        """The staff board's row of a rental, once ``until`` holds for it."""

        async def probe() -> dict[str, Any] | None:
            answer = await self.client.get(f"/queries/rental-board/{rental_id}", headers=self.staff)
            row: dict[str, Any] | None = answer.json() if answer.status_code == 200 else None
            return row if row is not None and until(row) else None

        return await eventually(probe, what=f"rental {rental_id}")

    async def settled(self, rental_id: str) -> Any:
        """The rental once payment has been decided (confirmed or cancelled)."""
        return await self.rental(rental_id, until=lambda r: r["status"] in SETTLED)

    async def catalog(self, sku: str) -> Any:
        """The catalogue entry of ``sku``."""
        return await self.get(f"/queries/catalog/{sku}")

    async def gateway(self) -> Any:
        """The fake gateway's books."""
        return await self.get("/admin/gateway")

    async def mails(self, template: str) -> list[dict[str, Any]]:
        """Every send call of the fake mail sender for ``template``."""
        sent = (await self.get("/admin/mail"))["sent"]
        return [m for m in sent if m["template"] == template]


SETTLED = ("confirmed", "cancelled")


@functools.cache
def _password_hash() -> str:
    return hash_password(MEMBER_PASSWORD)


class HarnessFactory(Protocol):
    """Starts a harness with settings overrides."""

    def __call__(self, **overrides: Any) -> contextlib.AbstractAsyncContextManager[Harness]: ...


def _factory(database: Any, *, poll_interval: float) -> HarnessFactory:
    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Harness]:
        settings = Settings(
            _env_file=None,
            staff_email=STAFF_EMAIL,
            staff_password=STAFF_PASSWORD,
            payment_retry_delay=0.05,
            **overrides,
        )
        service = RentalService(database, settings, poll_interval=poll_interval)
        app = build_app(service)
        await service.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://rental") as client:
                harness = Harness(service, client)
                harness.staff = harness.bearer(member_id_for(STAFF_EMAIL), STAFF_EMAIL, "staff")
                yield harness
        finally:
            await service.stop()

    return start


@pytest_asyncio.fixture
async def on_mongomock() -> AsyncIterator[HarnessFactory]:
    """Start the service on a fresh mongomock database."""
    async with temporary_database(Backend("mongomock", "mongomock", None)) as database:
        yield _factory(database, poll_interval=0.05)


@pytest.fixture(params=["mongomock", "nx-27017"])
def backend_name(request: pytest.FixtureRequest) -> str:
    """The backends the key scenarios run on."""
    name: str = request.param
    return name


@pytest_asyncio.fixture
async def on_each_backend(
    backend_name: str, request: pytest.FixtureRequest
) -> AsyncIterator[HarnessFactory]:
    """Start the service on a fresh database of mongomock, then of nx-27017."""
    # Without change streams (mongomock) the runtimes poll, so they poll often; with
    # them (nx-27017) the poll is only a safety net, and frequent polls only load the server.
    poll_interval = 0.05
    if backend_name == "mongomock":
        backend = Backend("mongomock", "mongomock", None)
    else:
        poll_interval = 1.0
        server: EmbeddedServer = request.getfixturevalue("nx_server")
        backend = Backend("nx-pymongo", "pymongo", server.uri)
    async with temporary_database(backend) as database:
        yield _factory(database, poll_interval=poll_interval)
