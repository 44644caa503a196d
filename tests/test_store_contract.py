"""The event-store contract, bound to every backend by the plugin's fixtures."""

from cqrs_kit.testing.store_contract import EventStoreContract


class TestEventStore(EventStoreContract):
    pass
