"""Property tests for EventPattern: invariants that must hold for any event."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from cqrs_kit.routing import EventPattern

KEYS = st.sampled_from(["a", "b", "c"])
NUMBERS = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=False, allow_infinity=False),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=6))
LEAF_VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4))


def objects(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(KEYS, values, max_size=3)


# Nested objects whose leaves are scalars or arrays of scalars.
DOCUMENTS = st.recursive(
    objects(LEAF_VALUES), lambda inner: objects(st.one_of(LEAF_VALUES, inner)), max_leaves=10
)
# The same, with arrays of objects (and of mixed elements) as well.
DOCUMENTS_WITH_ARRAYS = st.recursive(
    objects(LEAF_VALUES),
    lambda inner: objects(
        st.one_of(LEAF_VALUES, inner, st.lists(st.one_of(inner, SCALARS), max_size=3))
    ),
    max_leaves=10,
)


def build_pattern(document: dict[str, Any], keep: Callable[[], bool]) -> dict[str, Any]:
    """A pattern naming the leaves ``keep()`` selects, each with its own value."""
    pattern: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, dict):
            nested = build_pattern(value, keep)
            if nested:
                pattern[key] = nested
        elif isinstance(value, list):
            if value and keep():
                pattern[key] = list(value)
        elif keep():
            pattern[key] = [value]
    return pattern


@given(document=DOCUMENTS, data=st.data())
def test_a_pattern_built_from_an_event_matches_that_event(
    document: dict[str, Any], data: st.DataObject
) -> None:
    pattern = build_pattern(document, lambda: data.draw(st.booleans(), label="keep"))
    pattern = pattern or build_pattern(document, lambda: True)
    assume(pattern)
    assert EventPattern.parse(pattern).matches(document)


@given(
    excluded=st.one_of(
        st.lists(st.text(max_size=4), min_size=1, max_size=4),
        st.lists(NUMBERS, min_size=1, max_size=4),
    ),
    data=st.data(),
)
def test_anything_but_is_the_complement_of_the_same_exact_values(
    excluded: list[Any], data: st.DataObject
) -> None:
    value = data.draw(st.one_of(SCALARS, st.sampled_from(excluded)), label="value")
    single = len(excluded) == 1 and data.draw(st.booleans(), label="single")
    spec = excluded[0] if single else excluded
    event = {"detail": {"f": value}}
    anything_but = EventPattern.parse({"detail": {"f": [{"anything-but": spec}]}})
    exact = EventPattern.parse({"detail": {"f": excluded}})
    assert anything_but.matches(event) is not exact.matches(event)


@given(document=DOCUMENTS_WITH_ARRAYS, path=st.lists(KEYS, min_size=1, max_size=3))
def test_exists_true_and_exists_false_are_complementary(
    document: dict[str, Any], path: list[str]
) -> None:
    def pattern(flag: bool) -> dict[str, Any]:
        node: Any = [{"exists": flag}]
        for key in reversed(path):
            node = {key: node}
        result: dict[str, Any] = node
        return result

    present = EventPattern.parse(pattern(True)).matches(document)
    absent = EventPattern.parse(pattern(False)).matches(document)
    assert present is not absent


LIMIT = 5e9
BOUNDS = st.one_of(
    st.integers(min_value=-5 * 10**9, max_value=5 * 10**9),
    st.floats(min_value=-LIMIT, max_value=LIMIT, allow_nan=False),
)
VALUES = st.one_of(
    BOUNDS,
    st.floats(min_value=-1e10, max_value=1e10, allow_nan=False),
    st.integers(min_value=-(10**10), max_value=10**10),
)
OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


@given(
    lower=st.none() | st.tuples(st.sampled_from([">", ">="]), BOUNDS),
    upper=st.none() | st.tuples(st.sampled_from(["<", "<="]), BOUNDS),
    value=VALUES,
    swap=st.booleans(),
)
def test_numeric_ranges_agree_with_python_comparisons(
    lower: tuple[str, float] | None,
    upper: tuple[str, float] | None,
    value: float,
    swap: bool,
) -> None:
    assume(lower is not None or upper is not None)
    if lower is not None and upper is not None:
        assume(lower[1] < upper[1])
    pairs = [pair for pair in (lower, upper) if pair is not None]
    if swap:
        pairs.reverse()
    spec = [item for pair in pairs for item in pair]
    expected = -LIMIT <= value <= LIMIT and all(OPS[op](value, bound) for op, bound in pairs)
    pattern = EventPattern.parse({"n": [{"numeric": spec}]})
    assert pattern.matches({"n": value}) is expected


@given(target=BOUNDS, value=VALUES, same=st.booleans())
def test_numeric_equality_agrees_with_python_equality(
    target: float, value: float, same: bool
) -> None:
    if same:
        value = float(target)
    pattern = EventPattern.parse({"n": [{"numeric": ["=", target]}]})
    assert pattern.matches({"n": value}) is (value == target)


@given(text=st.text(max_size=12), data=st.data())
def test_prefix_and_suffix_agree_with_startswith_and_endswith(
    text: str, data: st.DataObject
) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(text)), label="cut")
    candidates = st.sampled_from([text[:cut], text[cut:], text[cut:] + "x"])
    affix = data.draw(st.one_of(st.text(max_size=4), candidates), label="affix")
    event = {"f": text}
    assert EventPattern.parse({"f": [{"prefix": affix}]}).matches(event) is text.startswith(affix)
    assert EventPattern.parse({"f": [{"suffix": affix}]}).matches(event) is text.endswith(affix)


@given(
    wildcard=st.text(alphabet="ab*", max_size=8).filter(lambda w: "**" not in w),
    text=st.text(alphabet="ab", max_size=10),
)
def test_wildcard_agrees_with_an_equivalent_regex(wildcard: str, text: str) -> None:
    regex = ".*".join(re.escape(part) for part in wildcard.split("*"))
    expected = re.fullmatch(regex, text, re.DOTALL) is not None
    assert EventPattern.parse({"f": [{"wildcard": wildcard}]}).matches({"f": text}) is expected
