"""Prometheus metrics for appends, commands, consumers and leases.

Uses the official ``prometheus_client`` (the ``metrics`` extra). Without it,
every recording call is a no-op, so the library never requires it. One
`Metrics` object is shared per process (`get_metrics`); pass a
fresh ``CollectorRegistry`` to `Metrics` in tests.

Label values are kept low-cardinality on purpose: appends are labelled by
stream *category* (the part of the stream id before the first ``-``), never
by stream id.
"""

from __future__ import annotations

import threading
from typing import Any

try:  # optional dependency
    import prometheus_client as _prom
except ImportError:  # pragma: no cover - exercised only without the extra
    _prom = None  # type: ignore[assignment]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)
#: The values of ``cqrs_kit.checkpoints.ConsumerState`` (not imported: this module has no deps).
_STATES = ("stopped", "catching_up", "running", "faulted", "rebuilding")


def stream_category(stream_id: str) -> str:
    """The category of a stream id: ``rental-42`` → ``rental``."""
    return stream_id.split("-", 1)[0]


class Metrics:
    """The library's metric families.

    Args:
        registry: Where to register; defaults to the process-wide registry.
    """

    def __init__(self, registry: Any = None) -> None:
        self.enabled = _prom is not None
        if _prom is None:
            return
        reg = registry if registry is not None else _prom.REGISTRY
        self.registry = reg
        self.appends = _prom.Counter(
            "cqrs_appends", "Appends stored, by stream category.", ["category"], registry=reg
        )
        self.appended_events = _prom.Counter(
            "cqrs_appended_events", "Events stored, by stream category.", ["category"], registry=reg
        )
        self.append_seconds = _prom.Histogram(
            "cqrs_append_seconds",
            "Append latency, by stream category.",
            ["category"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.commands = _prom.Counter(
            "cqrs_commands", "Commands handled, by type and outcome.", ["command", "outcome"],
            registry=reg,
        )  # fmt: skip
        self.command_seconds = _prom.Histogram(
            "cqrs_command_seconds",
            "Command latency, by type and outcome.",
            ["command", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.lag_events = _prom.Gauge(
            "cqrs_consumer_lag_events", "Events not yet handled.", ["consumer"], registry=reg
        )
        self.lag_seconds = _prom.Gauge(
            "cqrs_consumer_lag_seconds",
            "Age of the oldest event not yet handled.",
            ["consumer"],
            registry=reg,
        )
        self.position = _prom.Gauge(
            "cqrs_consumer_position", "Last handled global position.", ["consumer"], registry=reg
        )
        self.batch_size = _prom.Histogram(
            "cqrs_consumer_batch_size",
            "Events per handled batch.",
            ["consumer"],
            buckets=_BATCH_BUCKETS,
            registry=reg,
        )
        self.retries = _prom.Counter(
            "cqrs_consumer_retries", "Failed attempts that will be retried.", ["consumer"],
            registry=reg,
        )  # fmt: skip
        self.dead_letters = _prom.Counter(
            "cqrs_dead_letters", "Events moved to the dead-letter collection.", ["consumer"],
            registry=reg,
        )  # fmt: skip
        self.lease_changes = _prom.Counter(
            "cqrs_lease_changes", "Leases acquired, released or lost.", ["lease", "change"],
            registry=reg,
        )  # fmt: skip
        self.state = _prom.Gauge(
            "cqrs_consumer_state",
            "1 for the consumer's current state (stopped, catching_up, running, faulted, "
            "rebuilding), 0 for the others.",
            ["consumer", "state"],
            registry=reg,
        )
        self.dead_letters_waiting = _prom.Gauge(
            "cqrs_dead_letters_waiting", "Dead letters stored and not yet retried or discarded.",
            ["consumer"], registry=reg,
        )  # fmt: skip
        self.parked = _prom.Gauge(
            "cqrs_consumer_parked", "Events parked for a retry or held back behind one.",
            ["consumer"], registry=reg,
        )  # fmt: skip

    def record_append(self, stream_id: str, events: int, seconds: float) -> None:
        """Count one append of ``events`` events that took ``seconds``."""
        if not self.enabled:
            return
        category = stream_category(stream_id)
        self.appends.labels(category).inc()
        self.appended_events.labels(category).inc(events)
        self.append_seconds.labels(category).observe(seconds)

    def record_command(self, command: str, outcome: str, seconds: float) -> None:
        """Count one command with its outcome (``ok``, ``replayed``, ``rejected``, ``error``)."""
        if not self.enabled:
            return
        self.commands.labels(command, outcome).inc()
        self.command_seconds.labels(command, outcome).observe(seconds)

    def record_batch(self, consumer: str, size: int, position: int) -> None:
        """Record a handled batch and the consumer's new position."""
        if not self.enabled:
            return
        self.batch_size.labels(consumer).observe(size)
        self.position.labels(consumer).set(position)

    def record_lag(self, consumer: str, events: int, seconds: float) -> None:
        """Set a consumer's lag gauges."""
        if not self.enabled:
            return
        self.lag_events.labels(consumer).set(events)
        self.lag_seconds.labels(consumer).set(seconds)

    def record_retry(self, consumer: str) -> None:
        """Count a failed attempt that will be retried."""
        if self.enabled:
            self.retries.labels(consumer).inc()

    def record_dead_letter(self, consumer: str) -> None:
        """Count an event moved to the dead-letter collection."""
        if self.enabled:
            self.dead_letters.labels(consumer).inc()

    def record_lease_change(self, lease: str, change: str) -> None:
        """Count a lease ``acquired``, ``released`` or ``lost``."""
        if self.enabled:
            self.lease_changes.labels(lease, change).inc()

    def record_status(
        self, consumer: str, state: str, *, position: int, dead_letters: int, parked: int
    ) -> None:
        """Set a consumer's state, position, waiting dead letters and parked events."""
        if not self.enabled:
            return
        for known in _STATES:
            self.state.labels(consumer, known).set(1 if known == state else 0)
        self.position.labels(consumer).set(position)
        self.dead_letters_waiting.labels(consumer).set(dead_letters)
        self.parked.labels(consumer).set(parked)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry in the format an HTTP ``Accept`` header asks for, and its content type.

        Prometheus text format by default; OpenMetrics when the scraper asks for it.
        Without the extra, empty text.
        """
        if not self.enabled:
            return b"", "text/plain; charset=utf-8"
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept or "")
        data: bytes = encoder(self.registry)
        return data, content_type

    def exposition(self) -> bytes:
        """The registry in Prometheus text format (empty without the extra)."""
        if not self.enabled:
            return b""
        data: bytes = _prom.generate_latest(self.registry)
        return data


_lock = threading.Lock()
_default: Metrics | None = None


def get_metrics() -> Metrics:
    """The process-wide metrics (created on first use)."""
    global _default
    with _lock:
        if _default is None:
            _default = Metrics()
        return _default


def serve_metrics(port: int, *, addr: str = "127.0.0.1") -> None:
    """Expose ``/metrics`` on ``port`` from a background thread (needs the extra)."""
    if _prom is None:
        from cqrs_kit.errors import UsageError

        raise UsageError(
            "metrics need prometheus-client: pip install 'cqrs-kit[metrics]'",
            code="metrics-extra-missing",
        )
    _prom.start_http_server(port, addr=addr, registry=get_metrics().registry)
