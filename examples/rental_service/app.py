"""The FastAPI application of the rental service, and how to run it with its database.

``build_app(service)`` assembles the HTTP app around a :class:`RentalService`
(tests call it with a service on mongomock or nx-27017). ``serve(settings)``
is what ``python -m examples.rental_service`` runs: it starts the embedded
nx-27017 server when no ``MONGODB_URI`` is set, connects, starts the
projections, the routing worker and the mail relay, and serves HTTP with
uvicorn until SIGINT or SIGTERM, then stops everything in reverse order.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator

import uvicorn
from fastapi import FastAPI
from pymongo import AsyncMongoClient

from cqrs_kit.fastapi import feed_router, install_problem_handlers, operations_router
from cqrs_kit.testing import EmbeddedServer
from examples.rental_service.api import (
    STAFF,
    admin_router,
    auth_router,
    authenticators,
    commands_router,
    queries_router,
)
from examples.rental_service.service import RentalService
from examples.rental_service.settings import Settings
from examples.rental_service.staff_page import staff_page_router

log = logging.getLogger("rental_service")


def build_app(service: RentalService, *, run_service: bool = False) -> FastAPI:
    """The HTTP app around ``service``.

    Args:
        service: The wired service.
        run_service: Start the service's background parts with the app's
            lifespan and stop them after it (otherwise the caller runs them).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not run_service:
            yield
            return
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="Rental service",
        summary="A clothing-rental backend on cqrs-kit: commands, read models, a live feed.",
        version="1.0.0",
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    secret = service.settings.jwt_secret.get_secret_value()
    authenticate, authenticate_feed = authenticators(secret)
    app.include_router(auth_router(service, authenticate))
    app.include_router(commands_router(service, authenticate), prefix="/commands")
    app.include_router(queries_router(service, authenticate), prefix="/queries")
    app.include_router(
        feed_router(service.store, auth=authenticate_feed, roles=[STAFF], heartbeat=10.0)
    )
    app.include_router(admin_router(service, authenticate))
    app.include_router(
        operations_router(
            service.store,
            projections=service.runner,
            subscribers=service.worker,
            max_lag={"*": 300.0},
        )
    )
    app.include_router(staff_page_router())
    app.state.service = service
    return app


def redact(uri: str) -> str:
    """``uri`` with its password replaced by ``***``."""
    return re.sub(r"^(mongodb(?:\+srv)?://[^:/@]+:)[^@]*@", r"\1***@", uri)


@contextlib.contextmanager
def database_uri(settings: Settings) -> Iterator[str]:
    """The MongoDB URI to use: the configured one, or an embedded server's for the duration."""
    if settings.mongodb_uri:
        log.info("MongoDB at %s", redact(settings.mongodb_uri))
        yield settings.mongodb_uri
        return
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = EmbeddedServer(data_dir / f"{settings.database}.db", workdir=data_dir)
    server.start()
    log.info(
        "embedded MongoDB at %s (nx-27017, pid %s, data in %s)", server.uri, server.pid, data_dir
    )
    try:
        yield server.uri
    finally:
        server.stop()
        log.info("embedded nx-27017 stopped")


async def serve(settings: Settings, uri: str) -> None:
    """Run the service and its HTTP app until SIGINT or SIGTERM."""
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        uri, serverSelectionTimeoutMS=10_000
    )
    try:
        service = RentalService(client[settings.database], settings)
        app = build_app(service, run_service=True)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            lifespan="on",
        )
        # uvicorn handles SIGINT/SIGTERM: it stops accepting requests, runs the
        # lifespan shutdown (which stops the service's background parts) and returns.
        await uvicorn.Server(config).serve()
    finally:
        await client.close()
