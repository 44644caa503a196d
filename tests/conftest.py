pytest_plugins = ["cqrs_kit.testing.plugin"]
