"""Fixtures of the end-to-end tests: a database server and the service as real processes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from rich.console import Console

from cqrs_kit.testing import EmbeddedServer
from examples.rental_service.scenario import RentalScenario, Report, demo_settings
from examples.rental_service.tests.e2e.client import Account, ServiceClient, describe
from examples.rental_service.tests.e2e.service_process import ServiceFactory, ServiceProcess


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test item, so fixtures can tell that a test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="package")
def e2e_mongo() -> Iterator[EmbeddedServer]:
    """One nx-27017 server (in memory) for the end-to-end tests; each service uses its own
    database on it."""
    server = EmbeddedServer("memory").start()
    try:
        yield server
    finally:
        server.cleanup()


def unique_database() -> str:
    """A database name no other test uses."""
    return f"rental_e2e_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_service(
    request: pytest.FixtureRequest, tmp_path: Path, e2e_mongo: EmbeddedServer
) -> Iterator[ServiceFactory]:
    """Build (not start) services on ``e2e_mongo``; they are stopped after the test, and a
    failed test shows the end of their logs."""
    services: list[ServiceProcess] = []

    def build(*, embedded: bool = False, **settings: str) -> ServiceProcess:
        service = ServiceProcess(
            tmp_path / f"service-{len(services)}",
            mongodb_uri=None if embedded else e2e_mongo.uri,
            settings={**demo_settings(unique_database()), **settings},
        )
        services.append(service)
        return service

    yield build
    for service in services:
        service.kill()
    failed = getattr(request.node, "report_call", None)
    if failed is not None and failed.failed:
        for service in services:
            print(service.failure(f"service {service.data_dir.name}", lines=80))


@pytest.fixture(scope="module")
def shared_service(
    tmp_path_factory: pytest.TempPathFactory, e2e_mongo: EmbeddedServer
) -> Iterator[ServiceProcess]:
    """One running service for a module's tests that only read and send commands (each
    with data of its own); stopped with SIGTERM after the module, which must be clean.

    Module scope, not package: an idle service still polls its database, and on a small
    machine that slows down the tests that come after it."""
    service = ServiceProcess(
        tmp_path_factory.mktemp("shared-service"),
        mongodb_uri=e2e_mongo.uri,
        settings=demo_settings(unique_database()),
    )
    service.start()
    try:
        yield service
    finally:
        service.stop_cleanly()


@pytest.fixture(scope="module")
def member(shared_service: ServiceProcess) -> Account:
    """A member account on the shared service, for tests that only need someone signed in."""
    email = f"member+{uuid.uuid4().hex[:6]}@example.com"
    with httpx.Client(base_url=shared_service.base_url, timeout=20) as http:
        signed_up = http.post(
            "/auth/sign-up", json={"email": email, "name": "Mo", "password": "member-pass-1"}
        )
        assert signed_up.status_code == 201, describe(signed_up)
        token = http.post("/auth/token", json={"email": email, "password": "member-pass-1"})
        assert token.status_code == 200, describe(token)
    body = token.json()
    return Account(email, "Mo", body["member_id"], body["role"], body["access_token"])


@pytest_asyncio.fixture
async def client(shared_service: ServiceProcess) -> AsyncIterator[ServiceClient]:
    """An HTTP client of the shared service."""
    async with ServiceClient(shared_service.base_url) as http:
        yield http


def stdout_report() -> Report:
    """A report on stdout, which pytest shows when a test fails."""
    return Report(Console(width=120, highlight=False))


@pytest.fixture
def scenario(client: ServiceClient) -> RentalScenario:
    """The scenario's steps on the shared service, with names and SKUs of this test's own."""
    return RentalScenario(client, stdout_report(), tag=uuid.uuid4().hex[:6])
