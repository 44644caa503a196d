"""The operations router (health, readiness, status, metrics) and a trace from request to effect."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient

import cqrs_kit.metrics
from _ops_app import Balances, Charged, make_bus, record_charge, registry
from cqrs_kit import EventRegistry, EventStore, ProjectionRunner, UsageError
from cqrs_kit.fastapi import (
    LagThreshold,
    NotReadyProblem,
    Readiness,
    command_router,
    install_problem_handlers,
    operations_router,
)
from cqrs_kit.logs import ContextFilter
from cqrs_kit.metrics import Metrics
from cqrs_kit.routing import Subscriber, Worker
from cqrs_kit.scheduling import ManualClock
from cqrs_kit.status import SystemStatus
from cqrs_kit.testing import free_port
from cqrs_kit.tracing import TraceContext, from_headers

PROBLEM = "application/problem+json"


@pytest.fixture
def event_registry() -> EventRegistry:
    return registry()


def client_for(*routers: Any) -> httpx.AsyncClient:
    app = FastAPI()
    for router in routers:
        app.include_router(router)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://ops")


def exposition(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_liveness_and_readiness_without_thresholds(event_store: EventStore) -> None:
    async with client_for(operations_router(event_store)) as client:
        live = await client.get("/health/live")
        assert (live.status_code, live.json()) == (200, {"status": "ok"})
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        assert Readiness.model_validate(ready.json()).checks[0].name == "database"


async def test_readiness_fails_past_a_lag_threshold_and_recovers(event_store: EventStore) -> None:
    runner = ProjectionRunner(event_store, [Balances()])
    await event_store.append("account-a", [Charged(account="a", cents=5)])
    clock = ManualClock(datetime.now(UTC))  # read lag from just after the append
    router = operations_router(
        event_store, projections=runner, max_lag={"balances": 30.0}, clock=clock
    )
    async with client_for(router) as client:
        ready = await client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        (database, balances) = Readiness.model_validate(ready.json()).checks
        assert (database.ok, balances.name, balances.ok, balances.lag_events) == (
            True, "balances", True, 1,
        )  # fmt: skip
        assert balances.max_lag_seconds == 30.0

        clock.advance(45)
        behind = await client.get("/health/ready")
        assert behind.status_code == 503
        assert behind.headers["content-type"] == PROBLEM
        problem = NotReadyProblem.model_validate(behind.json())
        assert (problem.type, problem.status, problem.instance) == (
            "urn:problem:not-ready", 503, "/health/ready",
        )  # fmt: skip
        assert problem.behind == ["balances"]
        assert problem.detail is not None
        assert "projection 'balances' is 1 events and 45" in problem.detail
        assert [c.ok for c in problem.checks] == [True, False]
        assert problem.checks[1].lag_seconds is not None
        assert problem.checks[1].lag_seconds >= 45

        await runner.catch_up()
        again = await client.get("/health/ready")
        assert again.status_code == 200, again.text
        assert Readiness.model_validate(again.json()).checks[1].lag_seconds == 0.0


async def test_event_count_thresholds_and_the_wildcard(event_store: EventStore) -> None:
    runner = ProjectionRunner(event_store, [Balances()])
    router = operations_router(
        event_store,
        projections=runner,
        subscribers=["ledger"],
        max_lag={"*": LagThreshold(events=1)},
    )
    await event_store.append("account-a", [Charged(account="a", cents=1)] * 2)
    async with client_for(router) as client:
        behind = await client.get("/health/ready")
        assert behind.status_code == 503
        assert behind.json()["behind"] == ["balances", "ledger"]
        await runner.catch_up()
        assert (await client.get("/health/ready")).json()["behind"] == ["ledger"]


async def test_readiness_fails_when_the_database_is_unreachable() -> None:
    uri = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    client: Any = AsyncMongoClient(uri, serverSelectionTimeoutMS=100)
    try:
        store = EventStore(client["nowhere"], registry())
        async with client_for(operations_router(store, timeout=5)) as http:
            assert (await http.get("/health/live")).status_code == 200
            answer = await http.get("/health/ready")
            assert answer.status_code == 503
            assert answer.headers["content-type"] == PROBLEM
            problem = NotReadyProblem.model_validate(answer.json())
            assert problem.behind == []
            assert [(c.name, c.ok) for c in problem.checks] == [("database", False)]
            assert problem.detail is not None
            assert problem.detail.startswith("the database cannot be reached")
    finally:
        await client.close()


async def test_status_returns_the_declared_model(event_store: EventStore) -> None:
    runner = ProjectionRunner(event_store, [Balances()])
    await event_store.append("account-a", [Charged(account="a", cents=5)])
    app = FastAPI()
    app.include_router(operations_router(event_store, projections=[Balances()], subscribers=["x"]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://o") as c:
        status = SystemStatus.model_validate((await c.get("/status")).json())
        assert status.head == 1
        assert [(p.name, p.kind, p.state, p.lag_events) for p in status.projections] == [
            ("balances", "handler", "stopped", 1)
        ]
        assert [(s.name, s.kind, s.lag_events) for s in status.subscribers] == [
            ("x", "subscriber", 1)
        ]
        await runner.catch_up()
        status = SystemStatus.model_validate((await c.get("/status")).json())
        assert (status.projections[0].position, status.projections[0].lag_seconds) == (1, 0.0)
    schema = app.openapi()
    answer = schema["paths"]["/status"]["get"]["responses"]["200"]["content"]
    assert answer["application/json"]["schema"] == {"$ref": "#/components/schemas/SystemStatus"}
    assert "NotReadyProblem" in schema["components"]["schemas"]


async def test_metrics_move_by_the_expected_amounts(event_store: EventStore) -> None:
    runner = ProjectionRunner(event_store, [Balances()])
    bus = make_bus(event_store)
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(command_router(bus), prefix="/commands")
    app.include_router(operations_router(event_store, projections=runner))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://o") as c:

        async def scrape() -> dict[Any, float]:
            answer = await c.get("/metrics")
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/plain")
            return exposition(answer.text)

        category = (("category", "account"),)
        ok = (("command", "Charge"), ("outcome", "ok"))
        rejected = (("command", "Charge"), ("outcome", "rejected"))
        lag = (("consumer", "projection:balances"),)
        before = await scrape()
        assert before[("cqrs_consumer_lag_events", lag)] == 0
        for account, cents in (("a", 5), ("b", 7), ("a", -1)):
            await c.post("/commands/charge", json={"account": account, "cents": cents})
        await event_store.append("account-c", [Charged(account="c", cents=1)] * 3)
        after = await scrape()

        def moved(name: str, labels: tuple[tuple[str, str], ...]) -> float:
            return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

        assert moved("cqrs_appends_total", category) == 3
        assert moved("cqrs_appended_events_total", category) == 5
        assert moved("cqrs_append_seconds_count", category) == 3
        assert moved("cqrs_commands_total", ok) == 2
        assert moved("cqrs_commands_total", rejected) == 1
        assert moved("cqrs_command_seconds_count", ok) == 2
        assert after[("cqrs_consumer_lag_events", lag)] == 5
        assert after[("cqrs_consumer_lag_seconds", lag)] >= 0
        state = (("consumer", "projection:balances"), ("state", "stopped"))
        assert after[("cqrs_consumer_state", state)] == 1

        await runner.catch_up()
        caught_up = await scrape()
        assert caught_up[("cqrs_consumer_lag_events", lag)] == 0
        assert caught_up[("cqrs_consumer_lag_seconds", lag)] == 0
        assert caught_up[("cqrs_consumer_position", lag)] == 5
        batches = caught_up[("cqrs_consumer_batch_size_count", lag)]
        assert batches - after.get(("cqrs_consumer_batch_size_count", lag), 0.0) == 1
        assert (
            caught_up[("cqrs_consumer_batch_size_sum", lag)]
            - after.get(("cqrs_consumer_batch_size_sum", lag), 0.0)
            == 5
        )

        openmetrics = await c.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.rstrip().endswith("# EOF")


async def test_metrics_without_the_extra_answer_501(
    event_store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cqrs_kit.metrics, "_prom", None)
    async with client_for(operations_router(event_store, metrics=Metrics())) as client:
        answer = await client.get("/metrics")
        assert answer.status_code == 501
        assert answer.headers["content-type"] == PROBLEM
        body = answer.json()
        assert body["type"] == "urn:problem:metrics-unavailable"
        assert "pip install 'cqrs-kit[metrics]'" in body["detail"]
    with pytest.raises(UsageError) as caught:
        cqrs_kit.metrics.serve_metrics(free_port())
    assert caught.value.code == "metrics-extra-missing"
    async with client_for(operations_router(event_store, metrics=False)) as client:
        assert (await client.get("/metrics")).status_code == 404


async def test_bad_thresholds_are_usage_errors(event_store: EventStore) -> None:
    runner = ProjectionRunner(event_store, [Balances()])
    with pytest.raises(UsageError, match=r"\['nope'\].*known: balances, ledger") as caught:
        operations_router(
            event_store, projections=runner, subscribers=["ledger"], max_lag={"nope": 1.0}
        )
    assert caught.value.code == "bad-lag-threshold"
    for bad in (-1.0, "soon", True):
        with pytest.raises(UsageError) as caught:
            operations_router(event_store, projections=runner, max_lag={"balances": bad})
        assert caught.value.code == "bad-lag-threshold"
    with pytest.raises(UsageError):
        LagThreshold()
    with pytest.raises(UsageError):
        LagThreshold(events=-3)


# -- one trace from the request to the projection and the side effect ----------------------


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def find(self, logger: str, text: str) -> logging.LogRecord:
        matches = [r for r in self.records if r.name == logger and text in r.getMessage()]
        assert matches, [r.getMessage() for r in self.records]
        return matches[-1]


@pytest.fixture
def collected() -> Iterator[Collect]:
    handler = Collect()
    loggers = [logging.getLogger("cqrs_kit"), logging.getLogger("ops_app")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


async def until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 15
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def shop(event_store: EventStore) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(command_router(make_bus(event_store)), prefix="/commands")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://o") as c:
        yield c


async def test_a_traceparent_reaches_the_event_the_projector_and_the_subscriber(
    event_store: EventStore, shop: httpx.AsyncClient, collected: Collect
) -> None:
    trace = TraceContext.new()
    answer = await shop.post(
        "/commands/charge",
        json={"account": "t", "cents": 9},
        headers={"traceparent": trace.traceparent, "X-Correlation-ID": "corr-9"},
    )
    assert answer.status_code == 201, answer.text
    (event,) = [e async for e in event_store.read_all()]
    assert from_headers(event.metadata.headers) == trace

    await ProjectionRunner(event_store, [Balances()]).catch_up()
    applied = collected.find("cqrs_kit.projections", "applied billing.Charged")
    in_handler = collected.find("ops_app", "balance of t moves by 9")
    for record in (applied, in_handler):
        assert record.trace_id == trace.trace_id
        assert record.consumer == "projection:balances"
        assert record.correlation_id == "corr-9"
        assert record.causation_id == str(answer.json()["command_id"])
        assert record.stream_id == "account-t"
        assert record.position == event.position

    ledger = Subscriber("ledger", record_charge, patterns=[_Charges()])
    async with Worker(event_store, [ledger], poll_interval=0.05):
        await until(
            lambda: any(r.getMessage().endswith("t sent to the ledger") for r in collected.records)
        )
    sent = collected.find("ops_app", "charge of t sent to the ledger")
    assert sent.trace_id == trace.trace_id
    assert sent.consumer == "subscriber:ledger"
    assert sent.causation_id == applied.causation_id
    assert sent.event_id == str(event.event_id)


async def test_a_request_without_traceparent_records_no_trace(
    event_store: EventStore, shop: httpx.AsyncClient
) -> None:
    bad = {"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"}
    for headers in ({}, bad):
        answer = await shop.post(
            "/commands/charge", json={"account": "u", "cents": 1}, headers=headers
        )
        assert answer.status_code in (201, 202), answer.text
    assert [e.metadata.headers async for e in event_store.read_all()] == [{}, {}]


class _Charges:
    def matches(self, document: Any) -> bool:
        return bool(document["type"] == "billing.Charged")
