"""Read-model updates returned by handler projections, and how a batch folds them per document."""

from __future__ import annotations

import copy
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cqrs_kit.errors import UsageError

# -- read-model updates (handler projections) ---------------------------------------------


def _check_paths(paths: Iterable[str], what: str) -> None:
    for path in paths:
        if not isinstance(path, str) or not path or path.startswith("$"):
            raise UsageError(f"{what}: invalid field path {path!r}", code="bad-update")
        if path.split(".", 1)[0] in {"_id", "_position"}:
            raise UsageError(
                f"{what}: {path!r} is managed by the projector and cannot be written",
                code="bad-update",
            )


@dataclass(frozen=True, slots=True)
class Upsert:
    """Create or update one read-model document.

    Attributes:
        id: The document's ``_id``.
        set: Field paths to set (dotted paths reach into sub-documents).
        inc: Field paths to increment (a missing field counts as 0).
        set_on_insert: Fields written only when the document is created.
        unset: Field paths to remove.
    """

    id: Any
    set: Mapping[str, Any] = field(default_factory=dict)
    inc: Mapping[str, int | float] = field(default_factory=dict)
    set_on_insert: Mapping[str, Any] = field(default_factory=dict)
    unset: Sequence[str] = ()

    def __post_init__(self) -> None:
        _check_paths([*self.set, *self.inc, *self.set_on_insert, *self.unset], "Upsert")
        for path, amount in self.inc.items():
            if isinstance(amount, bool) or not isinstance(amount, int | float):
                raise UsageError(
                    f"Upsert.inc[{path!r}] must be a number, not {amount!r}", code="bad-update"
                )


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete one read-model document (``id`` is its ``_id``)."""

    id: Any


#: What an ``@on`` handler may return: one update, several, or ``None``.
Update = Upsert | Delete


def _freeze(value: Any) -> Hashable:
    """A hashable stand-in for a document key (keys may be sub-documents)."""
    if isinstance(value, Mapping):
        return ("__doc__", tuple((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return ("__list__", tuple(_freeze(v) for v in value))
    return value  # type: ignore[no-any-return]


def _is_under(path: str, ancestor: str) -> bool:
    return path.startswith(ancestor + ".")


def _nested(doc: dict[str, Any], path: str, *, create: bool) -> tuple[dict[str, Any], str]:
    """The dict holding the last segment of ``path`` inside ``doc``, and that segment."""
    *parents, leaf = path.split(".")
    node = doc
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            if not create or child is not None:
                raise UsageError(
                    f"cannot write {path!r}: {part!r} is not a sub-document",
                    code="conflicting-update-paths",
                )
            child = node[part] = {}
        node = child
    return node, leaf


class _Change:
    """The folded effect of a batch's updates on one document.

    MongoDB refuses one update that touches a path and its parent twice, so a
    sequence of updates is folded into one: ``set`` then ``inc`` of the same
    path becomes one ``set`` of the sum, a later ``set`` replaces earlier
    writes under it, and a ``Delete`` followed by an ``Upsert`` becomes a
    replacement by a fresh document.
    """

    __slots__ = ("deleted", "exists", "inc", "on_insert", "position", "set", "unset", "upserts")

    def __init__(self) -> None:
        self.deleted = False  # a Delete happened: the stored document is gone or replaced
        self.exists = True  # a document exists after the last update
        self.set: dict[str, Any] = {}
        self.inc: dict[str, int | float] = {}
        self.unset: set[str] = set()
        self.on_insert: dict[str, Any] = {}
        self.position = 0
        self.upserts = 0  # Upserts since the batch began or the last Delete

    def apply(self, update: Update, position: int) -> None:
        self.position = max(self.position, position)
        if isinstance(update, Delete):
            self.deleted, self.exists, self.upserts = True, False, 0
            self.set, self.inc, self.unset, self.on_insert = {}, {}, set(), {}
            return
        self.exists = True
        # Only the first upsert can be the one that inserts the document: later
        # ones find it in place, so their set_on_insert never applies.
        if self.upserts == 0:
            self.on_insert = {p: copy.deepcopy(v) for p, v in update.set_on_insert.items()}
        self.upserts += 1
        for path in update.unset:
            self._drop(path)
            if self._set_ancestor(path) is not None:
                holder, leaf = _nested(self.set, path, create=False)
                holder.pop(leaf, None)
            else:
                self.unset.add(path)
        for path, value in update.set.items():
            self._assign(path, copy.deepcopy(value))
        for path, amount in update.inc.items():
            self._add(path, amount)

    def _set_ancestor(self, path: str) -> str | None:
        return next((p for p in self.set if _is_under(path, p)), None)

    def _drop(self, path: str) -> None:
        for table in (self.set, self.inc):
            for p in [p for p in table if p == path or _is_under(p, path)]:
                del table[p]
        self.unset = {p for p in self.unset if not (p == path or _is_under(p, path))}

    def _conflict(self, path: str) -> None:
        for p in [*self.inc, *self.unset]:
            if _is_under(path, p) or _is_under(p, path):
                raise UsageError(
                    f"updates of {p!r} and {path!r} in one batch cannot be combined; "
                    "write the parent document with set= instead",
                    code="conflicting-update-paths",
                )

    def _assign(self, path: str, value: Any) -> None:
        ancestor = self._set_ancestor(path)
        if ancestor is not None:
            holder, leaf = _nested(self.set, path, create=True)
            holder[leaf] = value
            return
        self._drop(path)
        self._conflict(path)
        self.set[path] = value

    def _add(self, path: str, amount: int | float) -> None:
        ancestor = self._set_ancestor(path)
        if path in self.set or ancestor is not None:
            holder, leaf = _nested(self.set, path, create=True) if ancestor else (self.set, path)
            current = holder.get(leaf, 0)
            if isinstance(current, bool) or not isinstance(current, int | float):
                raise UsageError(
                    f"cannot increment {path!r}: it was set to {current!r} in the same batch",
                    code="conflicting-update-paths",
                )
            holder[leaf] = current + amount
            return
        if path in self.unset:
            self.unset.discard(path)
            self.set[path] = amount
            return
        self._conflict(path)
        self.inc[path] = self.inc.get(path, 0) + amount

    def fresh_document(self) -> dict[str, Any]:
        """The document the batch's updates create when none exists before them.

        The first upsert's ``set_on_insert`` values come first, then ``set``
        (a path is never in both ``set`` and ``inc``: the fold merged them),
        then the increments, added to an inserted value where there is one.
        """
        doc: dict[str, Any] = {}
        for table in (self.on_insert, self.set):
            for path, value in table.items():
                holder, leaf = _nested(doc, path, create=True)
                holder[leaf] = copy.deepcopy(value)
        for path, amount in self.inc.items():
            holder, leaf = _nested(doc, path, create=True)
            current = holder.get(leaf, 0)
            if isinstance(current, bool) or not isinstance(current, int | float):
                raise UsageError(
                    f"cannot increment {path!r}: set_on_insert made it {current!r}",
                    code="conflicting-update-paths",
                )
            holder[leaf] = current + amount
        return doc

    def operators(self) -> dict[str, Any]:
        """Update operators for a document that exists (``set_on_insert`` cannot apply)."""
        ops: dict[str, Any] = {"$set": {**self.set, "_position": self.position}}
        if self.inc:
            ops["$inc"] = dict(self.inc)
        if self.unset:
            ops["$unset"] = {p: "" for p in sorted(self.unset)}
        return ops
