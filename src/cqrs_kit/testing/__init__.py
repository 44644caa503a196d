"""Test support for cqrs-kit and its users: backends, an embedded server, contract suites."""

from cqrs_kit.testing.backends import Backend, make_client, temporary_database
from cqrs_kit.testing.harness import InMemoryEventStore, Outcome, Scenario
from cqrs_kit.testing.server import EmbeddedServer, EmbeddedServerError, free_port

__all__ = [
    "Backend",
    "EmbeddedServer",
    "EmbeddedServerError",
    "InMemoryEventStore",
    "Outcome",
    "Scenario",
    "free_port",
    "make_client",
    "temporary_database",
]
