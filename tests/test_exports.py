"""The public surface: ``cqrs_kit.__all__`` is exactly what the package exports."""

from __future__ import annotations

import types

import cqrs_kit


def test_all_is_sorted_and_unique() -> None:
    assert list(cqrs_kit.__all__) == sorted(set(cqrs_kit.__all__))


def test_every_name_in_all_is_importable() -> None:
    for name in cqrs_kit.__all__:
        assert hasattr(cqrs_kit, name), name


def test_all_equals_the_public_names() -> None:
    public = {
        name
        for name, value in vars(cqrs_kit).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(cqrs_kit.__all__)


def test_nothing_private_leaks() -> None:
    for name in cqrs_kit.__all__:
        obj = getattr(cqrs_kit, name)
        module = getattr(obj, "__module__", "cqrs_kit")
        assert not any(part.startswith("_") for part in module.split(".")), (name, module)
