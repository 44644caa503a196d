"""Structured logging: context fields on every record, and an optional JSON formatter.

The library logs through the standard `logging` module under the
``cqrs_kit`` logger. While a command or an event is being handled,
`log_context` binds fields (correlation id, causation id, stream id,
position, projection or subscriber name); `ContextFilter` copies them,
and the current trace id, onto each record, and `JsonFormatter`
renders records as one JSON object per line for log shippers.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from cqrs_kit.tracing import current_trace, from_headers, span, spans_recorded, use_trace

if TYPE_CHECKING:
    from cqrs_kit.events import RecordedEvent

#: Fields bound by the library, in the order the JSON formatter writes them.
CONTEXT_FIELDS = (
    "correlation_id",
    "causation_id",
    "stream_id",
    "position",
    "event_id",
    "event_type",
    "command_type",
    "consumer",
)

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "cqrs_kit_log_context", default=_EMPTY
)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind ``fields`` to every log record emitted in the body (nested calls merge)."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


@contextmanager
def event_context(event: RecordedEvent, *, consumer: str, traced: bool = True) -> Iterator[None]:
    """The context of a consumer handling ``event``: its fields on log records, its trace current.

    Binds the event's correlation and causation ids, stream id, position, id and
    type and the consumer's name; makes the ``traceparent`` stored in the
    event's metadata the current trace, so the handler's log records and
    OpenTelemetry spans join the trace of the request that caused the event.

    Args:
        event: The event being handled.
        consumer: The projection or subscriber key (``projection:<name>``, ``subscriber:<id>``).
        traced: Also open an OpenTelemetry span for the handling (when an SDK is configured).
    """
    # Projectors enter this once per event: one dict and one context-variable set,
    # rather than nested log_context() calls.
    metadata = event.metadata
    fields = {
        **_context.get(),
        "consumer": consumer,
        "event_id": str(event.event_id),
        "event_type": event.event_type,
        "stream_id": event.stream_id,
        "position": event.position,
    }
    if metadata.correlation_id is not None:
        fields["correlation_id"] = metadata.correlation_id
    if metadata.causation_id is not None:
        fields["causation_id"] = metadata.causation_id
    token = _context.set(fields)
    try:
        with use_trace(from_headers(metadata.headers) if metadata.headers else None):
            if not (traced and spans_recorded()):
                yield
                return
            attributes: dict[str, str | int] = {
                "cqrs.consumer": consumer,
                "cqrs.event_type": event.event_type,
                "cqrs.stream_id": event.stream_id,
                "cqrs.position": event.position,
            }
            with span(f"handle {event.event_type}", attributes):
                yield
    finally:
        _context.reset(token)


def bound_context() -> Mapping[str, Any]:
    """The fields bound right now."""
    return _context.get()


class ContextFilter(logging.Filter):
    """Copies bound context fields and the current trace id onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate ``record``; never drops it."""
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        trace = current_trace()
        if trace is not None and not hasattr(record, "trace_id"):
            record.trace_id = trace.trace_id
            record.span_id = trace.span_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context, exception."""

    _STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as JSON."""
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(*, json_format: bool = False, level: int | str = logging.INFO) -> None:
    """Set up the root logger for a cqrs-kit process (CLI, workers, the example app).

    Args:
        json_format: Emit JSON lines instead of plain text.
        level: Minimum level.
    """
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
