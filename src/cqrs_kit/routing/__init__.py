"""Event routing: EventBridge-style patterns, subscribers, workers and the routing file."""

from __future__ import annotations

from cqrs_kit.routing.config import RoutingConfig, load_routing, parse_routing
from cqrs_kit.routing.dlq import DeadLetter, DeadLetterQueue, RetryOutcome
from cqrs_kit.routing.handlers import Delivery
from cqrs_kit.routing.patterns import EventPattern
from cqrs_kit.routing.process_managers import (
    ProcessContext,
    ProcessManager,
    ProcessManagerRunner,
    reacts_to,
)
from cqrs_kit.routing.subscribers import (
    IdempotencyStore,
    Ordering,
    RetryPolicy,
    Subscriber,
    SubscriberRuntime,
)
from cqrs_kit.routing.worker import Worker

__all__ = [
    "DeadLetter",
    "DeadLetterQueue",
    "Delivery",
    "EventPattern",
    "IdempotencyStore",
    "Ordering",
    "ProcessContext",
    "ProcessManager",
    "ProcessManagerRunner",
    "RetryOutcome",
    "RetryPolicy",
    "RoutingConfig",
    "Subscriber",
    "SubscriberRuntime",
    "Worker",
    "load_routing",
    "parse_routing",
    "reacts_to",
]
