"""Example applications built on cqrs-kit."""
