r"""EventBridge event patterns: validate once, match many documents.

A pattern is a JSON object with the shape of the documents it selects. Every
field the pattern names must match (AND); fields it does not name are ignored.
A nested object descends into the nested document object. Every other value is
an array of conditions, and the field matches when **any** condition does (OR).
When the document value is itself an array, the field matches when any element
matches any condition (the two arrays intersect). A nested object pattern over
an array of objects needs one element to satisfy all of its conditions.

Conditions:

* an exact value: ``"text"``, a number, ``true``/``false`` or ``null``. Numbers
  compare by their JSON text, so ``300`` and ``300.0`` differ. ``null`` matches a
  field holding null, never a missing one; ``""`` matches only the empty string;
* ``{"prefix": "us-"}`` / ``{"suffix": ".png"}``, optionally case-insensitive as
  ``{"prefix": {"equals-ignore-case": "us-"}}``;
* ``{"equals-ignore-case": "alice"}``;
* ``{"wildcard": "*/lib/*.so"}``: ``*`` stands for any run of characters
  (including none); ``\*`` is a literal star and ``\\`` a literal backslash
  (written ``"\\*"`` and ``"\\\\"`` in JSON); two wildcards in a row are rejected;
* ``{"anything-but": ...}`` with a string, a number, a list of only strings or
  only numbers, or one of ``{"prefix": s}``, ``{"suffix": s}``,
  ``{"equals-ignore-case": s | [s, ...]}``, ``{"wildcard": s | [s, ...]}``;
  it matches a *present* value that the inner condition does not match;
* ``{"numeric": [">", 0, "<=", 5]}``: ``=`` alone, or at most one lower bound
  (``>``, ``>=``) and one upper bound (``<``, ``<=``), operands within
  ±5e9; only JSON numbers match;
* ``{"exists": true | false}``: whether the field holds a leaf value (a
  scalar or null, or an array with at least one); an object is not a leaf.
  ``false`` means absent from the whole event, in every array element;
* ``{"cidr": "10.0.0.0/24"}``: a string IPv4 or IPv6 address inside the block.

``"$or": [pattern, pattern, ...]`` (two or more non-empty objects) may appear
in any object and matches when one of its sub-patterns matches at that level.
Prefix, suffix, equals-ignore-case, wildcard and cidr only match strings.

Two deliberate limits: a field name containing a dot is only that name (the
docs say EventBridge joins nested names with dots but not to rely on it), and
values that are not JSON (a ``datetime``, say) are opaque leaves that only
``exists`` and ``anything-but`` can match.

>>> p = EventPattern.parse({"source": ["aws.ec2"], "detail": {"state": ["running"]}})
>>> p.matches({"source": "aws.ec2", "detail": {"state": "running", "id": "i-1"}})
True
"""

from __future__ import annotations

import copy
import ipaddress
import json
import math
import operator
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, NoReturn, TypeAlias, TypeGuard

from cqrs_kit.errors import PatternError

__all__ = ["EventPattern"]

#: Operands of ``numeric`` conditions must lie within this magnitude (the
#: documented EventBridge limit); document values outside it never match.
_NUMERIC_LIMIT: Final = 5.0e9

_OPERATORS: Final = (
    "anything-but",
    "cidr",
    "equals-ignore-case",
    "exists",
    "numeric",
    "prefix",
    "suffix",
    "wildcard",
)
_ANYTHING_BUT_OPERATORS: Final = ("equals-ignore-case", "prefix", "suffix", "wildcard")


class _Missing:
    """Marks a field the document does not have (distinct from ``None``/null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()
_EMPTY: Final[Mapping[str, Any]] = {}

# Matchers take the value to test and its *absence view*: what the whole event
# holds at the same path. They are the same object except below an array of
# objects, where the view merges every element (see ``_compile_nested``).
_ObjectMatch: TypeAlias = Callable[[Mapping[str, Any], Mapping[str, Any]], bool]
_FieldMatch: TypeAlias = Callable[[object, object], bool]
_ValueTest: TypeAlias = Callable[[Any], bool]
_Number: TypeAlias = int | float
_ExactKey: TypeAlias = tuple[str, object]


# --------------------------------------------------------------------- helpers


def _fail(path: str, reason: str) -> NoReturn:
    raise PatternError(path, reason)


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    """A JSON-flavoured name for a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return f"a {type(value).__name__}"


def _is_number(value: object) -> TypeGuard[int | float]:
    # bool is an int subclass in Python but a distinct JSON type.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _exact_key(value: object) -> _ExactKey | None:
    """The identity of a scalar under exact matching, or None for non-JSON values.

    EventBridge compares numbers by their JSON text, so ``300`` and ``300.0``
    get different keys; booleans are kept apart from the integers 0 and 1.
    """
    if isinstance(value, str):
        return ("s", str.__str__(value))
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int):
        return ("n", int.__repr__(value))
    if isinstance(value, float):
        return ("n", float.__repr__(value))
    if value is None:
        return ("z", None)
    return None


def _leaves(values: list[Any] | tuple[Any, ...]) -> Iterator[object]:
    """The scalar elements of a document array, nested arrays flattened.

    Objects inside the array are skipped: they are not leaves, so leaf
    conditions (and ``exists``) never see them.
    """
    for item in values:
        if isinstance(item, list | tuple):
            yield from _leaves(item)
        elif not isinstance(item, Mapping):
            yield item


def _objects(values: list[Any] | tuple[Any, ...]) -> Iterator[Mapping[str, Any]]:
    """The object elements of a document array, nested arrays flattened."""
    for item in values:
        if isinstance(item, Mapping):
            yield item
        elif isinstance(item, list | tuple):
            yield from _objects(item)


def _has_leaf(value: object) -> bool:
    """Whether a document value holds a leaf: null counts, objects and ``[]`` do not."""
    if value is _MISSING or isinstance(value, Mapping):
        return False
    if isinstance(value, list | tuple):
        return next(_leaves(value), _MISSING) is not _MISSING
    return True


def _merge(objects: list[Mapping[str, Any]]) -> Mapping[str, Any]:
    """One object whose fields collect the values of every object (as arrays)."""
    if len(objects) == 1:
        return objects[0]
    merged: dict[str, list[Any]] = {}
    for obj in objects:
        for key, value in obj.items():
            merged.setdefault(key, []).append(value)
    return merged


def _plain(value: object) -> object:
    """A deep copy with mappings as dicts and tuples as lists; validation comes later."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------- string matchers


def _require_string(value: object, path: str, what: str) -> str:
    if not isinstance(value, str):
        _fail(path, f"{what} takes a string, got {_kind(value)}")
    return value


def _string_list(value: object, path: str, what: str) -> list[str]:
    """A string, or a non-empty array of strings, as a list."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if not value:
            _fail(path, f"{what} needs at least one string")
        return [_require_string(item, f"{path}[{i}]", what) for i, item in enumerate(value)]
    _fail(path, f"{what} takes a string or an array of strings, got {_kind(value)}")


def _wildcard(pattern: str, path: str) -> Callable[[str], bool]:
    """Compile a wildcard pattern into a linear-time matcher.

    The pattern is split at unescaped ``*`` into literal segments. The first
    segment must be a prefix, the last a suffix, and the middle ones are found
    left to right; taking the leftmost occurrence of each is always safe
    because ``*`` can absorb whatever lies between them. This avoids the
    exponential backtracking a regex can hit on patterns like ``*a*a*a*b``.
    """
    segments: list[str] = []
    current: list[str] = []
    after_star = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            if i + 1 >= len(pattern) or pattern[i + 1] not in "*\\":
                _fail(
                    path,
                    f"invalid escape at position {i} in wildcard {pattern!r}: a backslash may "
                    "only escape '*' or another backslash",
                )
            current.append(pattern[i + 1])
            after_star = False
            i += 2
            continue
        if char == "*":
            if after_star:
                _fail(
                    path,
                    f"consecutive wildcards at position {i} in {pattern!r}; use a single '*'",
                )
            segments.append("".join(current))
            current = []
            after_star = True
        else:
            current.append(char)
            after_star = False
        i += 1
    segments.append("".join(current))

    if len(segments) == 1:
        literal = segments[0]
        return lambda s: s == literal
    head, middle, tail = segments[0], tuple(segments[1:-1]), segments[-1]
    fixed = len(head) + len(tail)

    def match(s: str) -> bool:
        if len(s) < fixed or not s.startswith(head) or not s.endswith(tail):
            return False
        pos, end = len(head), len(s) - len(tail)
        for segment in middle:
            found = s.find(segment, pos, end)
            if found < 0:
                return False
            pos = found + len(segment)
        return True

    return match


def _affix(spec: object, path: str, name: str, *, allow_ignore_case: bool) -> Callable[[str], bool]:
    """A ``prefix`` or ``suffix`` test, plain or with ``equals-ignore-case``."""
    at_start = name == "prefix"
    if isinstance(spec, Mapping) and allow_ignore_case:
        if list(spec) != ["equals-ignore-case"]:
            _fail(
                path,
                f'{name} takes a string or {{"equals-ignore-case": "<string>"}}, '
                f"got an object with keys {sorted(spec)}",
            )
        folded = _require_string(
            spec["equals-ignore-case"], _child(path, "equals-ignore-case"), "equals-ignore-case"
        ).lower()
        if at_start:
            return lambda s: s.lower().startswith(folded)
        return lambda s: s.lower().endswith(folded)
    allowed = ' or {"equals-ignore-case": "<string>"}' if allow_ignore_case else ""
    if not isinstance(spec, str):
        _fail(path, f"{name} takes a string{allowed}, got {_kind(spec)}")
    text = spec
    if at_start:
        return lambda s: s.startswith(text)
    return lambda s: s.endswith(text)


def _cidr(spec: object, path: str) -> Callable[[str], bool]:
    block = _require_string(spec, path, "cidr")
    if "/" not in block:
        _fail(path, f"cidr takes a block such as '10.0.0.0/24' or '2001:db8::/32', got {block!r}")
    try:
        network = ipaddress.ip_network(block, strict=False)
    except ValueError as exc:
        _fail(path, f"invalid CIDR block {block!r}: {exc}")
    version = network.version
    low, high = int(network.network_address), int(network.broadcast_address)

    def match(s: str) -> bool:
        try:
            address = ipaddress.ip_address(s)
        except ValueError:
            return False
        return address.version == version and low <= int(address) <= high

    return match


# --------------------------------------------------------------------- numeric


def _numeric(spec: object, path: str) -> Callable[[_Number], bool]:
    usage = 'numeric takes operator/number pairs, e.g. [">", 0, "<=", 5] or ["=", 3.5]'
    if not isinstance(spec, list) or not spec or len(spec) % 2 or len(spec) > 4:
        _fail(path, usage)
    lower: tuple[_Number, bool] | None = None
    upper: tuple[_Number, bool] | None = None
    equal: _Number | None = None
    for i in range(0, len(spec), 2):
        op, operand = spec[i], spec[i + 1]
        if op not in ("=", "<", "<=", ">", ">="):
            _fail(f"{path}[{i}]", f"unknown numeric operator {op!r}; use =, <, <=, > or >=")
        if not _is_number(operand):
            _fail(f"{path}[{i + 1}]", f"{op!r} needs a number, got {_kind(operand)}")
        if not math.isfinite(operand) or abs(operand) > _NUMERIC_LIMIT:
            _fail(
                f"{path}[{i + 1}]",
                f"numeric operands must be finite and between -5e9 and 5e9, got {operand!r}",
            )
        if op == "=":
            if len(spec) != 2:
                _fail(path, "'=' cannot be combined with another operator")
            equal = operand
        elif op in (">", ">="):
            if lower is not None:
                _fail(f"{path}[{i}]", "a second lower bound; give at most one of > and >=")
            lower = (operand, op == ">=")
        else:
            if upper is not None:
                _fail(f"{path}[{i}]", "a second upper bound; give at most one of < and <=")
            upper = (operand, op == "<=")
    if lower is not None and upper is not None and lower[0] >= upper[0]:
        _fail(
            path,
            f"lower bound {lower[0]!r} is not below upper bound {upper[0]!r}; "
            "the range would be empty (use '=' for a single value)",
        )

    limit = _NUMERIC_LIMIT
    if equal is not None:
        target = equal
        return lambda v: v == target
    # A missing bound becomes the (inclusive) limit: document values beyond
    # ±5e9 are outside what EventBridge compares at all, so they never match.
    lo_cmp = operator.ge if lower is None or lower[1] else operator.gt
    hi_cmp = operator.le if upper is None or upper[1] else operator.lt
    lo = -limit if lower is None else lower[0]
    hi = limit if upper is None else upper[0]
    return lambda v: -limit <= v <= limit and lo_cmp(v, lo) and hi_cmp(v, hi)


# ---------------------------------------------------------------- anything-but


def _anything_but(spec: object, path: str) -> _ValueTest:
    """A test that passes for any present leaf the excluded condition rejects."""
    usage = (
        "anything-but takes a string, a number, an array of only strings or only "
        "numbers, or an object with one of: " + ", ".join(_ANYTHING_BUT_OPERATORS)
    )
    if isinstance(spec, Mapping):
        if len(spec) != 1:
            _fail(path, f"{usage}; got an object with {len(spec)} keys")
        ((name, inner),) = spec.items()
        inner_path = _child(path, str(name))
        string_test: Callable[[str], bool]
        if name in ("prefix", "suffix"):
            # The docs allow a single prefix/suffix here, not a list.
            string_test = _affix(inner, inner_path, name, allow_ignore_case=False)
        elif name == "equals-ignore-case":
            folded = frozenset(s.lower() for s in _string_list(inner, inner_path, name))
            string_test = lambda s: s.lower() in folded  # noqa: E731
        elif name == "wildcard":
            globs = tuple(_wildcard(w, inner_path) for w in _string_list(inner, inner_path, name))
            string_test = lambda s: any(g(s) for g in globs)  # noqa: E731
        else:
            _fail(inner_path, f"unknown operator {name!r} inside anything-but; {usage}")
        # A non-string leaf can never satisfy the string test, so it is "anything but".
        return lambda v: not (isinstance(v, str) and string_test(v))

    is_list = isinstance(spec, list)
    values: list[Any] = spec if isinstance(spec, list) else [spec]
    if not values:
        _fail(path, "anything-but needs at least one value")
    strings = isinstance(values[0], str)
    for i, v in enumerate(values):
        where = f"{path}[{i}]" if is_list else path
        if isinstance(v, str) if strings else _is_number(v):
            if not isinstance(v, str) and not math.isfinite(v):
                _fail(where, "numbers must be finite")
        elif isinstance(v, str) or _is_number(v):
            _fail(where, "an anything-but list holds only strings or only numbers, not both")
        else:
            _fail(where, f"{usage}; got {_kind(v)}")
    excluded = frozenset(_exact_key(v) for v in values)
    return lambda v: _exact_key(v) not in excluded


# ------------------------------------------------------------------ leaf field


class _Leaf:
    """Collects the conditions of one leaf array and builds its field test."""

    def __init__(self) -> None:
        self.exact_str: set[str] = set()
        self.exact_other: set[_ExactKey] = set()
        self.str_tests: list[Callable[[str], bool]] = []
        self.num_tests: list[Callable[[_Number], bool]] = []
        self.any_tests: list[_ValueTest] = []
        self.exists_true = False
        self.exists_false = False

    def add(self, condition: object, path: str) -> None:
        if isinstance(condition, Mapping):
            self._add_operator(condition, path)
            return
        if isinstance(condition, list | tuple):
            _fail(path, "arrays cannot be nested in a condition array; list the values directly")
        if isinstance(condition, float) and not math.isfinite(condition):
            _fail(path, "numbers must be finite")
        key = _exact_key(condition)
        if key is None:
            _fail(
                path,
                f"a condition is a string, number, boolean, null or an operator object; "
                f"got {_kind(condition)}",
            )
        if isinstance(condition, str):
            self.exact_str.add(str.__str__(condition))
        else:
            self.exact_other.add(key)

    def _add_operator(self, condition: Mapping[Any, Any], path: str) -> None:
        if len(condition) != 1:
            _fail(
                path,
                "a condition object holds exactly one operator (one of "
                f"{', '.join(_OPERATORS)}); got {len(condition)} keys",
            )
        ((name, spec),) = condition.items()
        op_path = _child(path, str(name))
        if name in ("prefix", "suffix"):
            self.str_tests.append(_affix(spec, op_path, name, allow_ignore_case=True))
        elif name == "equals-ignore-case":
            folded = _require_string(spec, op_path, name).lower()
            self.str_tests.append(lambda s: s.lower() == folded)
        elif name == "wildcard":
            self.str_tests.append(_wildcard(_require_string(spec, op_path, name), op_path))
        elif name == "cidr":
            self.str_tests.append(_cidr(spec, op_path))
        elif name == "numeric":
            self.num_tests.append(_numeric(spec, op_path))
        elif name == "anything-but":
            self.any_tests.append(_anything_but(spec, op_path))
        elif name == "exists":
            if not isinstance(spec, bool):
                _fail(op_path, f"exists takes true or false, got {_kind(spec)}")
            if spec:
                self.exists_true = True
            else:
                self.exists_false = True
        else:
            _fail(path, f"unknown operator {name!r}; operators are: {', '.join(_OPERATORS)}")

    def build(self) -> _FieldMatch:
        exact_str = frozenset(self.exact_str)
        exact_other = frozenset(self.exact_other)
        str_tests = tuple(self.str_tests)
        num_tests = tuple(self.num_tests)
        any_tests = tuple(self.any_tests)
        exists_true, exists_false = self.exists_true, self.exists_false

        def scalar(v: object) -> bool:
            if isinstance(v, str):
                if v in exact_str:
                    return True
                for test in str_tests:
                    if test(v):
                        return True
            else:
                if exact_other and _exact_key(v) in exact_other:
                    return True
                if num_tests and _is_number(v):
                    for num_test in num_tests:
                        if num_test(v):
                            return True
            return any(any_test(v) for any_test in any_tests)

        # ``absent`` is unused here; it lets ``present`` serve as a field matcher.
        def present(value: object, absent: object = None) -> bool:
            # A missing field and an object (an intermediate node) hold no leaf,
            # so only {"exists": false} can match them; null *is* a leaf value.
            if value is _MISSING or isinstance(value, Mapping):
                return False
            if isinstance(value, list | tuple):
                return any(exists_true or scalar(leaf) for leaf in _leaves(value))
            return exists_true or scalar(value)

        def field(value: object, absent: object) -> bool:
            # {"exists": false} asks about the whole event, hence the absence view.
            return not _has_leaf(absent) or present(value)

        if exists_false:
            return field
        if exact_str and not (exact_other or str_tests or num_tests or any_tests or exists_true):
            # The common case, a list of plain strings: one set lookup.
            def strings_only(value: object, absent: object) -> bool:
                if type(value) is str:
                    return value in exact_str
                return present(value)

            return strings_only
        return present


def _compile_leaf(conditions: list[Any], path: str) -> _FieldMatch:
    if not conditions:
        _fail(path, "an empty array matches nothing; give at least one value or condition")
    leaf = _Leaf()
    for i, condition in enumerate(conditions):
        leaf.add(condition, f"{path}[{i}]")
    return leaf.build()


# -------------------------------------------------------------- object / $or


def _compile_nested(pattern: Mapping[str, Any], path: str) -> _FieldMatch:
    """Descend into a nested object, or into every object of an array.

    For an array of objects, the positive conditions of the sub-pattern must
    all hold in *one* element (values from different elements never combine),
    while ``{"exists": false}`` means absent from *every* element, as for an
    event with the array flattened. So each element is matched with, as its
    absence view, the merge of all elements.
    """
    inner = _compile_object(pattern, path)
    # With nothing below (a missing field, a scalar, an array of scalars) the
    # outcome does not depend on the document: compute it once. It is True
    # only for sub-patterns satisfied by absence, e.g. {"exists": false}.
    if_absent = inner(_EMPTY, _EMPTY)

    def field(value: object, absent: object) -> bool:
        if absent is value:
            if isinstance(value, Mapping):
                return inner(value, value)
            if isinstance(value, list | tuple):
                objects = list(_objects(value))
                if objects:
                    view = _merge(objects)
                    return any(inner(obj, view) for obj in objects)
            return if_absent
        # Already below an array: the absence view is the merged sibling values.
        if isinstance(absent, Mapping):
            view = absent
        elif isinstance(absent, list | tuple):
            view = _merge(list(_objects(absent)))
        else:
            view = _EMPTY
        if isinstance(value, Mapping):
            return inner(value, view)
        if isinstance(value, list | tuple):
            objects = list(_objects(value))
            if objects:
                return any(inner(obj, view) for obj in objects)
        return inner(_EMPTY, view)

    return field


def _compile_or(alternatives: object, path: str) -> tuple[_ObjectMatch, ...]:
    if not isinstance(alternatives, list) or len(alternatives) < 2:
        got = f"{len(alternatives)}" if isinstance(alternatives, list) else _kind(alternatives)
        _fail(path, f"$or takes an array of at least two pattern objects, got {got}")
    compiled = []
    for i, alternative in enumerate(alternatives):
        where = f"{path}[{i}]"
        if not isinstance(alternative, Mapping):
            _fail(where, f"each $or alternative is a pattern object, got {_kind(alternative)}")
        compiled.append(_compile_object(alternative, where))
    return tuple(compiled)


def _compile_object(pattern: Mapping[Any, Any], path: str) -> _ObjectMatch:
    if not pattern:
        _fail(path, "a pattern object must name at least one field")
    fields: list[tuple[str, _FieldMatch]] = []
    groups: list[tuple[_ObjectMatch, ...]] = []
    for key, value in pattern.items():
        if not isinstance(key, str):
            _fail(path, f"field names must be strings, got {key!r}")
        where = _child(path, key)
        if key == "$or":
            groups.append(_compile_or(value, where))
        elif isinstance(value, Mapping):
            fields.append((key, _compile_nested(value, where)))
        elif isinstance(value, list):
            fields.append((key, _compile_leaf(value, where)))
        else:
            _fail(
                where,
                "expected an array of conditions (e.g. [value]) or a nested object, "
                f"got {_kind(value)}",
            )
    field_tests = tuple(fields)
    or_groups = tuple(groups)

    def match(document: Mapping[str, Any], absent: Mapping[str, Any]) -> bool:
        get = document.get
        if absent is document:
            for key, test in field_tests:
                value = get(key, _MISSING)
                if not test(value, value):
                    return False
        else:
            for key, test in field_tests:
                if not test(get(key, _MISSING), absent.get(key, _MISSING)):
                    return False
        for group in or_groups:
            for alternative in group:
                if alternative(document, absent):
                    break
            else:
                return False
        return True

    return match


def _load(pattern: object) -> dict[str, Any]:
    if isinstance(pattern, str | bytes):
        try:
            loaded = json.loads(pattern, parse_constant=_reject_constant)
        except ValueError as exc:
            _fail("", f"not valid JSON: {exc}")
    else:
        loaded = _plain(pattern)
    if not isinstance(loaded, dict):
        _fail("", f"a pattern is a JSON object, got {_kind(loaded)}")
    return loaded


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


# ------------------------------------------------------------------ public API


class EventPattern:
    """An immutable, validated EventBridge event pattern.

    Build one with `parse`; the module documentation describes the
    language. Patterns compare and hash by content.
    """

    __slots__ = ("_canonical", "_match", "_source")

    _source: dict[str, Any]
    _canonical: str
    _match: _ObjectMatch

    def __init__(self, pattern: Mapping[str, Any] | str) -> None:
        """Validate and compile ``pattern``; same as `parse`."""
        source = _load(pattern)
        matcher = _compile_object(source, "")
        canonical = json.dumps(source, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        object.__setattr__(self, "_source", source)
        object.__setattr__(self, "_canonical", canonical)
        object.__setattr__(self, "_match", matcher)

    @classmethod
    def parse(cls, pattern: Mapping[str, Any] | str) -> EventPattern:
        """Validate and compile a pattern given as a mapping or a JSON string.

        Raises:
            PatternError: The pattern is invalid; ``path`` locates the problem.
        """
        return cls(pattern)

    @property
    def source(self) -> dict[str, Any]:
        """The pattern as a plain dict (a fresh copy each time)."""
        return copy.deepcopy(self._source)

    def matches(self, document: Mapping[str, Any]) -> bool:
        """Whether the event document satisfies the pattern."""
        if not isinstance(document, Mapping):
            raise TypeError(f"a document is a mapping, got {type(document).__name__}")
        return self._match(document, document)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("EventPattern is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("EventPattern is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EventPattern):
            return NotImplemented
        return self._canonical == other._canonical

    def __hash__(self) -> int:
        return hash(self._canonical)

    def __repr__(self) -> str:
        text = self._canonical
        if len(text) > 200:
            text = text[:197] + "..."
        return f"EventPattern({text})"

    def __reduce__(self) -> tuple[type[EventPattern], tuple[str]]:
        # The compiled closures cannot be pickled; rebuild from the JSON text.
        return (EventPattern, (self._canonical,))

    def __copy__(self) -> EventPattern:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> EventPattern:
        return self
