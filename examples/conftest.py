"""Test configuration for the example applications: cqrs-kit's backend fixtures."""

pytest_plugins = ["cqrs_kit.testing.plugin"]
