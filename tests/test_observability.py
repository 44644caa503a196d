"""Metrics, lag, log context and trace context, through the public API."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, ClassVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cqrs_kit import Event, EventMetadata, EventRegistry, EventStore, NewEvent
from cqrs_kit.logs import ContextFilter, JsonFormatter, log_context
from cqrs_kit.metrics import get_metrics
from cqrs_kit.subscriptions import measure_lag
from cqrs_kit.tracing import TraceContext, current_trace, from_headers, use_trace


class Ticked(Event):
    event_type: ClassVar[str] = "obs.Ticked"


@pytest.fixture
def event_registry() -> EventRegistry:
    return EventRegistry(Ticked)


def _sample(name: str, labels: dict[str, str]) -> float:
    text = get_metrics().exposition().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def test_append_metrics_move_by_known_amounts(event_store: EventStore) -> None:
    before_appends = _sample("cqrs_appends_total", {"category": "obsmetric"})
    before_events = _sample("cqrs_appended_events_total", {"category": "obsmetric"})
    before_hist = _sample("cqrs_append_seconds_count", {"category": "obsmetric"})
    await event_store.append("obsmetric-1", [Ticked(), Ticked(), Ticked()])
    await event_store.append("obsmetric-2", [Ticked()])
    assert _sample("cqrs_appends_total", {"category": "obsmetric"}) == before_appends + 2
    assert _sample("cqrs_appended_events_total", {"category": "obsmetric"}) == before_events + 4
    assert _sample("cqrs_append_seconds_count", {"category": "obsmetric"}) == before_hist + 2


async def test_lag_in_seconds_grows_while_behind_and_is_zero_when_caught_up(
    event_store: EventStore,
) -> None:
    await event_store.append("s", [Ticked()])
    first = await measure_lag(event_store, 0)
    await asyncio.sleep(0.3)
    later = await measure_lag(event_store, 0)
    assert first.events == later.events == 1
    assert later.seconds > first.seconds
    assert later.seconds >= 0.3
    caught_up = await measure_lag(event_store, await event_store.head_position())
    assert (caught_up.events, caught_up.seconds) == (0, 0.0)


def test_json_log_lines_carry_bound_context_and_trace() -> None:
    record_holder: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            record_holder.append(self.format(record))

    handler = Collect()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("cqrs_kit.test_obs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    trace = TraceContext.new()
    try:
        with use_trace(trace), log_context(correlation_id="corr-1", consumer="proj", position=7):
            assert current_trace() is not None
            logger.info("handled")
    finally:
        logger.removeHandler(handler)
    line = json.loads(record_holder[0])
    assert line["message"] == "handled"
    assert (line["correlation_id"], line["consumer"], line["position"]) == ("corr-1", "proj", 7)
    assert line["trace_id"] == trace.trace_id


def test_traceparent_parsing() -> None:
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    trace = TraceContext.parse(good)
    assert trace is not None
    assert trace.traceparent == good
    assert from_headers({"TraceParent": good}) == trace
    for bad in ("", "garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "01-xyz"):
        assert TraceContext.parse(bad) is None


async def test_trace_headers_round_trip_through_event_metadata(event_store: EventStore) -> None:
    trace = TraceContext.new()
    meta = EventMetadata(headers=trace.headers())
    await event_store.append("s", [NewEvent(Ticked(), metadata=meta)])
    recorded: list[Any] = [r async for r in event_store.read_all()]
    assert from_headers(recorded[0].metadata.headers) == trace
