"""W3C trace context carried through events, so one trace spans command to side effect.

The ``traceparent`` of an incoming request is stored in the metadata headers
of every event the command produces. When a projector or subscriber handles
such an event, `use_trace` makes that trace current again: log records
carry its trace id, and, when the OpenTelemetry API is installed (the
``otel`` extra), spans started by the handler join the original trace.
Without OpenTelemetry everything here is a cheap no-op beyond the context
variable.
"""

from __future__ import annotations

import contextvars
import re
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

_TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A parsed ``traceparent`` (version 00).

    Attributes:
        trace_id: 32 lowercase hex characters.
        span_id: 16 lowercase hex characters (the parent span).
        flags: Trace flags (``01`` means sampled).
        state: The ``tracestate`` header, if any.
    """

    trace_id: str
    span_id: str
    flags: str = "01"
    state: str | None = None

    @classmethod
    def parse(cls, traceparent: str | None, tracestate: str | None = None) -> TraceContext | None:
        """Parse a header value; returns ``None`` for a missing or malformed one."""
        if not traceparent:
            return None
        match = _TRACEPARENT_RE.match(traceparent.strip().lower())
        if match is None:
            return None
        trace_id, span_id, flags = match.groups()
        if trace_id == "0" * 32 or span_id == "0" * 16:
            return None
        return cls(trace_id, span_id, flags, tracestate)

    @classmethod
    def new(cls) -> TraceContext:
        """Start a fresh trace."""
        return cls(secrets.token_hex(16), secrets.token_hex(8))

    @property
    def traceparent(self) -> str:
        """The header value."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def headers(self) -> dict[str, str]:
        """The context as event metadata headers."""
        out = {TRACEPARENT: self.traceparent}
        if self.state:
            out[TRACESTATE] = self.state
        return out


_current: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar(
    "cqrs_kit_trace", default=None
)


def current_trace() -> TraceContext | None:
    """The trace context of the work in progress, if any."""
    otel = _otel_current()
    return otel if otel is not None else _current.get()


def from_headers(headers: Mapping[str, str]) -> TraceContext | None:
    """Read a trace context from HTTP or event metadata headers (case-insensitive)."""
    if TRACEPARENT in headers:  # the spelling the library writes: no need to fold case
        return TraceContext.parse(headers[TRACEPARENT], headers.get(TRACESTATE))
    lowered = {k.lower(): v for k, v in headers.items()}
    return TraceContext.parse(lowered.get(TRACEPARENT), lowered.get(TRACESTATE))


@contextmanager
def use_trace(trace: TraceContext | None) -> Iterator[TraceContext | None]:
    """Make ``trace`` current for the body (and for OpenTelemetry, when installed)."""
    token = _current.set(trace)
    otel_token = _otel_attach(trace) if trace is not None else None
    try:
        yield trace
    finally:
        if otel_token is not None:
            _otel_detach(otel_token)
        _current.reset(token)


@contextmanager
def continue_trace(
    traceparent: str | None, tracestate: str | None = None
) -> Iterator[TraceContext | None]:
    """Join the trace of an incoming request for the body.

    A trace that is already current (an OpenTelemetry server span, or an outer
    `use_trace`) wins, since it is the request's own span; otherwise the
    request's ``traceparent`` (and ``tracestate``) headers become current.
    """
    current = current_trace()
    if current is not None:
        yield current
        return
    with use_trace(TraceContext.parse(traceparent, tracestate)) as trace:
        yield trace


def spans_recorded() -> bool:
    """Whether `span` records anything (an OpenTelemetry SDK provider is configured)."""
    return _otel_tracer() is not None


@contextmanager
def span(name: str, attributes: Mapping[str, str | int] | None = None) -> Iterator[None]:
    """An OpenTelemetry span around the body, child of the current trace (no-op without OTel)."""
    tracer = _otel_tracer()
    if tracer is None:
        yield
        return
    with tracer.start_as_current_span(name, attributes=dict(attributes or {})):
        yield


# -- optional OpenTelemetry bridge ---------------------------------------------------------

_api: list[Any] = []  # [(opentelemetry.context, opentelemetry.trace)] or [None], looked up once
_tracer: list[Any] = []  # the tracer, once an SDK's provider is configured


def _otel() -> Any:
    if not _api:
        try:
            from opentelemetry import context as otel_context
            from opentelemetry import trace as otel_trace
        except ImportError:
            _api.append(None)
        else:
            _api.append((otel_context, otel_trace))
    return _api[0]


def _otel_tracer() -> Any:
    """The library's tracer, or ``None`` until an OpenTelemetry SDK provider is configured.

    Without an SDK the API's spans record nothing yet cost tens of microseconds
    each, which a projector pays per event: so no spans are started then.
    """
    if _tracer:
        return _tracer[0]
    api = _otel()
    if api is None:
        return None
    otel_trace = api[1]
    provider = otel_trace.get_tracer_provider()
    if isinstance(provider, otel_trace.ProxyTracerProvider | otel_trace.NoOpTracerProvider):
        return None
    _tracer.append(provider.get_tracer("cqrs_kit"))
    return _tracer[0]


def _otel_current() -> TraceContext | None:
    api = _otel()
    if api is None:
        return None
    span_context = api[1].get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return TraceContext(
        f"{span_context.trace_id:032x}",
        f"{span_context.span_id:016x}",
        f"{int(span_context.trace_flags):02x}",
    )


def _otel_attach(trace: TraceContext) -> Any:
    api = _otel()
    if api is None:
        return None
    otel_context, otel_trace = api
    state = otel_trace.TraceState.from_header([trace.state]) if trace.state else None
    remote = otel_trace.SpanContext(
        trace_id=int(trace.trace_id, 16),
        span_id=int(trace.span_id, 16),
        is_remote=True,
        trace_flags=otel_trace.TraceFlags(int(trace.flags, 16)),
        trace_state=state,
    )
    return otel_context.attach(otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(remote)))


def _otel_detach(token: Any) -> None:
    _otel()[0].detach(token)
