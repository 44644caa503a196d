"""The query side over HTTP: read models as ``GET`` routes, with read-your-writes.

A `ReadModelSpec` declares what a read model offers; `query_router`
turns a list of them into one ``APIRouter``:

    orders = ReadModelSpec(
        name="orders", model=OrderView, projection="orders", id_field="order_id",
        filters={"status": Filter(OrderStatus),
                 "min_total": Filter(float, op="gte", field="total")},
        sortable=["total", "placed_at"], default_sort="-placed_at",
        scope=lambda p: None if "staff" in p.roles else {"customer": p.id},
    )
    app.include_router(query_router(database, [orders], auth=authenticate), prefix="/queries")

Each spec gets ``GET /orders/{order_id}`` (404 problem when absent, or not the
caller's) and ``GET /orders`` (declared filters, ``sort``, ``limit`` and an
opaque ``cursor``; the answer is a `Page`).

Keyset pagination
-----------------
A list is sorted by ``(sort field, _id)``, a total order, and a page after a
cursor asks for the documents strictly after the cursor's ``(value, _id)``.
A document inserted between two page fetches therefore never shifts the
pages: nothing already seen comes again and nothing after the cursor is
skipped (an insert *before* the cursor is simply not part of the rest of the
listing). A document whose sort field *changes* can move across the cursor;
sort by fields that do not change when that matters.

Read-your-writes
----------------
A command answers with the global position of its last event. A query that
sends it back (``X-Min-Position: N`` or ``?min_position=N``) waits, at most
``max_wait`` seconds, until the checkpoint of the read model's projection
reaches ``N``, re-reading the checkpoint after every change-stream ring and at
least every ``poll_interval``. If it does not get there in time, the answer is
``503`` with a `LagProblem` (the current
position, and ``Retry-After``): the server cannot serve that consistency *yet*,
which is neither the client's fault (4xx) nor permanent. Every answer carries
``X-Projection-Position``: the position the read model reflected, at least,
when it was read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import inspect
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Final, Generic, Literal, TypeVar, cast

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from cqrs_kit._mongo import MongoDatabase, adapt
from cqrs_kit.errors import UsageError
from cqrs_kit.fastapi._doorbell import Doorbell
from cqrs_kit.fastapi.auth import AuthDependency, Principal, principal_dependency
from cqrs_kit.fastapi.problems import ProblemError, problem_responses
from cqrs_kit.projections import projection_key

M = TypeVar("M", bound=BaseModel)

#: Response header with the position the read model reflected (at least) when read.
POSITION_HEADER: Final = "X-Projection-Position"
#: Request header asking for read-your-writes.
MIN_POSITION_HEADER: Final = "X-Min-Position"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_OPS: Final = frozenset({"eq", "ne", "gt", "gte", "lt", "lte", "in", "prefix"})
_MAX_CURSOR: Final = 4096

FilterOp = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "prefix"]
#: Returns the extra filter that limits what a principal sees (``None``: everything).
ScopeFunction = Callable[[Principal], "Mapping[str, Any] | None"]


class Page(BaseModel, Generic[M]):
    """One page of a listing.

    Attributes:
        items: The documents of this page, in order.
        next_cursor: Pass as ``cursor`` to get the next page; ``None`` on the last page.
    """

    items: list[M]
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class Filter:
    """A query parameter that filters a listing.

    Attributes:
        type: The parameter's type (``str``, ``int``, ``float``, ``bool``,
            ``datetime``, an ``Enum`` stored by value, ``uuid.UUID`` stored as text).
        op: ``eq``, ``ne``, ``gt``, ``gte``, ``lt``, ``lte``, ``in`` (the
            parameter may repeat) or ``prefix`` (strings).
        field: The stored field (dotted paths allowed); default: the parameter name.
        description: Shown in the OpenAPI document.
    """

    type: Any = str
    op: FilterOp = "eq"
    field: str | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class ReadModelSpec:
    """What a read model offers over HTTP.

    Attributes:
        name: Route segment and OpenAPI tag (``/orders``).
        model: The pydantic model of one document in answers.
        projection: The projection whose read model this is: its physical
            collection is looked up behind the alias on every request, and its
            checkpoint serves read-your-writes.
        collection: A plain collection name instead of ``projection``.
        checkpoint: The checkpoint to wait on for a plain ``collection``
            (read-your-writes is off without one).
        id_field: The model field that holds the document's ``_id``.
        id_type: Type of the id in the path (``str`` by default).
        filters: Query parameter name -> `Filter`.
        sortable: Model fields a listing may be sorted by (the id always is).
        default_sort: The sort of a listing without ``sort``; ``-`` for
            descending (default: the id, ascending).
        max_page_size: Largest ``limit`` accepted.
        default_page_size: ``limit`` when none is given.
        scope: Given the principal, returns the filter limiting what it sees
            (``{"customer": p.id}``), or ``None`` for everything. Needs ``auth``.
        roles: Roles needed to read this model (one of them).
    """

    name: str
    model: type[BaseModel]
    projection: str | None = None
    collection: str | None = None
    checkpoint: str | None = None
    id_field: str = "id"
    id_type: Any = str
    filters: Mapping[str, Filter] = field(default_factory=dict)
    sortable: Sequence[str] = ()
    default_sort: str | None = None
    max_page_size: int = 100
    default_page_size: int = 20
    scope: ScopeFunction | None = None
    roles: Iterable[str] = ()

    def __post_init__(self) -> None:
        def bad(reason: str) -> UsageError:
            return UsageError(f"read model {self.name!r}: {reason}", code="bad-read-model")

        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise bad("name must be letters, digits, '_' or '-', starting with a letter")
        if (self.projection is None) == (self.collection is None):
            raise bad("give exactly one of projection= and collection=")
        if self.projection is not None and self.checkpoint is not None:
            raise bad("checkpoint= is for plain collections; a projection has its own")
        if not (isinstance(self.model, type) and issubclass(self.model, BaseModel)):
            raise bad(f"model must be a pydantic model class, not {self.model!r}")
        fields = self.model.model_fields
        if self.id_field not in fields:
            raise bad(f"id_field {self.id_field!r} is not a field of {self.model.__name__}")
        for name in self.sortable:
            if name not in fields:
                raise bad(f"sortable field {name!r} is not a field of {self.model.__name__}")
        if self.default_sort is not None and self.default_sort not in self.sort_options:
            raise bad(f"default_sort {self.default_sort!r} is not one of {self.sort_options}")
        for param, spec in self.filters.items():
            if not param.isidentifier() and not re.match(r"^[A-Za-z][A-Za-z0-9_.-]*$", param):
                raise bad(f"filter parameter {param!r} is not a usable name")
            if spec.op not in _OPS:
                raise bad(f"filter {param!r} has unknown op {spec.op!r}; use one of {sorted(_OPS)}")
            if param in {"sort", "limit", "cursor", "min_position"}:
                raise bad(f"filter parameter {param!r} clashes with a built-in parameter")
        if not 1 <= self.default_page_size <= self.max_page_size:
            raise bad("need 1 <= default_page_size <= max_page_size")

    @property
    def sort_options(self) -> list[str]:
        """The values ``sort`` accepts."""
        names = [self.id_field, *[n for n in self.sortable if n != self.id_field]]
        return [option for name in names for option in (name, f"-{name}")]

    @property
    def checkpoint_key(self) -> str | None:
        """The checkpoint that says how far this read model is."""
        if self.projection is not None:
            return projection_key(self.projection)
        return self.checkpoint

    def stored_field(self, name: str) -> str:
        """The stored field behind model field ``name``."""
        return "_id" if name == self.id_field else name


# -- cursors ------------------------------------------------------------------------------


def _tag(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return {"$d": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {"$u": str(value)}
    if isinstance(value, Decimal):
        return {"$n": str(value)}
    raise UsageError(
        f"cannot page over a value of type {type(value).__name__}; sort fields and _id "
        "must hold strings, numbers, booleans, datetimes, UUIDs or Decimals",
        code="unpageable-value",
    )


def _untag(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        ((tag, text),) = value.items()
        if tag == "$d":
            return datetime.fromisoformat(text)
        if tag == "$u":
            return uuid.UUID(text)
        if tag == "$n":
            return Decimal(text)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ValueError("unknown value in cursor")


def encode_cursor(sort: str, value: Any, id: Any) -> str:
    """An opaque cursor: base64url of the sort, and the last item's sort value and ``_id``."""
    raw = json.dumps({"s": sort, "v": _tag(value), "i": _tag(id)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str, sort: str) -> tuple[Any, Any]:
    """The ``(sort value, _id)`` in ``cursor``.

    Raises:
        ValueError: The cursor is malformed or was made for another sort.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValueError("not a cursor of this API") from None
    if not isinstance(data, dict) or set(data) != {"s", "v", "i"}:
        raise ValueError("not a cursor of this API")
    if data["s"] != sort:
        raise ValueError(f"the cursor was made for sort={data['s']!r}, not sort={sort!r}")
    return _untag(data["v"]), _untag(data["i"])


def _after(stored: str, direction: int, value: Any, id: Any) -> dict[str, Any]:
    """Filter for documents strictly after ``(value, id)`` in ``(stored, _id)`` order.

    Null and missing values sort before everything else in MongoDB, and
    ``$gt``/``$lt`` never match them, so they get their own clauses. Null is
    matched as ``$in: [null]`` / ``$nin: [null]`` (the same sets as ``null`` and
    ``$ne: null`` on MongoDB), because nx-27017 mismatches the shorter forms
    next to other conditions.
    """
    beyond = "$gt" if direction > 0 else "$lt"
    if stored == "_id":
        return {"_id": {beyond: id}}
    if value is None:
        ties = {stored: {"$in": [None]}, "_id": {beyond: id}}
        return {"$or": [{stored: {"$nin": [None]}}, ties]} if direction > 0 else ties
    clauses: list[dict[str, Any]] = [
        {stored: {beyond: value}},
        {stored: value, "_id": {beyond: id}},
    ]
    if direction < 0:
        clauses.append({stored: {"$in": [None]}})
    return {"$or": clauses}


def _stored_value(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _condition(spec: Filter, stored: str, value: Any) -> dict[str, Any]:
    if spec.op == "in":
        return {stored: {"$in": [_stored_value(v) for v in value]}}
    if spec.op == "prefix":
        return {stored: {"$regex": "^" + re.escape(str(value))}}
    if spec.op == "eq":
        return {stored: _stored_value(value)}
    return {stored: {f"${spec.op}": _stored_value(value)}}


# -- the router ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Located:
    collection: str
    position: int | None


class _ReadModelRoutes:
    """The two routes of one read model, sharing its resolution and waiting logic."""

    def __init__(
        self,
        spec: ReadModelSpec,
        database: MongoDatabase,
        checkpoints: str,
        bell: Doorbell,
        max_wait: float,
        poll_interval: float,
    ) -> None:
        self.spec = spec
        self.database = database
        self.checkpoints = database.collection(checkpoints)
        self.bell = bell
        self.max_wait = max_wait
        self.poll_interval = poll_interval
        fields = spec.model.model_fields
        self.keys = {name: info.alias or name for name, info in fields.items()}
        self.id_key = self.keys[spec.id_field]

    async def locate(self) -> _Located:
        """The physical collection and checkpoint position, read together."""
        spec = self.spec
        key = spec.checkpoint_key
        if key is None:
            assert spec.collection is not None
            return _Located(spec.collection, None)
        doc = await self.checkpoints.find_one(
            {"_id": key}, projection={"read_model": 1, "position": 1}
        )
        position = int(doc.get("position", 0)) if doc else 0
        if spec.collection is not None:
            return _Located(spec.collection, position)
        # Collection and position come from one document, which a rebuild swaps in
        # one update: the position always describes the collection it comes with.
        model = (doc or {}).get("read_model") or {}
        return _Located(str(model.get("collection") or f"{spec.projection}__v1"), position)

    async def located(self, min_position: int | None) -> _Located:
        """Where to read, after waiting for ``min_position`` if asked to."""
        found = await self.locate()
        if min_position is None or found.position is None or found.position >= min_position:
            return found
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        delay = min(0.005, self.poll_interval)
        async with self.bell.listen() as rung:
            while True:
                rung.clear()
                found = await self.locate()
                assert found.position is not None
                if found.position >= min_position:
                    return found
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise ProblemError(
                        503,
                        "projection-lagging",
                        "Read model not yet up to date",
                        f"{self.spec.name} reflects position {found.position}, not yet "
                        f"{min_position}; retry shortly",
                        headers={"Retry-After": "1", POSITION_HEADER: str(found.position)},
                        projection=self.spec.projection or self.spec.checkpoint,
                        position=found.position,
                        min_position=min_position,
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(rung.wait(), min(delay, remaining))
                delay = min(delay * 2, self.poll_interval)

    def scope_filter(self, principal: Principal | None) -> dict[str, Any] | None:
        if self.spec.scope is None:
            return None
        assert principal is not None  # guaranteed by query_router
        extra = self.spec.scope(principal)
        return dict(extra) if extra else None

    def to_model(self, doc: Mapping[str, Any]) -> BaseModel:
        known = set(self.keys.values())
        data = {k: v for k, v in doc.items() if k in known and k != self.id_key}
        data[self.id_key] = doc["_id"]
        return self.spec.model.model_validate(data)

    def headers(self, found: _Located) -> dict[str, str]:
        return {} if found.position is None else {POSITION_HEADER: str(found.position)}

    async def get_one(
        self, id: Any, principal: Principal | None, min_position: int | None
    ) -> JSONResponse:
        found = await self.located(min_position)
        clauses: list[dict[str, Any]] = [{"_id": _stored_value(id)}]
        scope = self.scope_filter(principal)
        if scope:
            clauses.append(scope)
        query = clauses[0] if len(clauses) == 1 else {"$and": clauses}
        doc = await self.database.collection(found.collection).find_one(query)
        if doc is None:
            # Someone else's document is reported exactly like a missing one.
            raise ProblemError(
                404,
                "not-found",
                "Not found",
                f"{self.spec.name} has no document with {self.spec.id_field} {id!r}",
                headers=self.headers(found),
            )
        item = self.to_model(doc)
        return JSONResponse(
            item.model_dump(mode="json", by_alias=True), headers=self.headers(found)
        )

    async def list_page(
        self,
        principal: Principal | None,
        filters: Mapping[str, Any],
        sort: str,
        limit: int,
        cursor: str | None,
        min_position: int | None,
    ) -> JSONResponse:
        spec = self.spec
        descending = sort.startswith("-")
        stored = spec.stored_field(sort.lstrip("-"))
        direction = -1 if descending else 1
        clauses: list[dict[str, Any]] = []
        for param, value in filters.items():
            if value is None or value == []:
                continue
            flt = spec.filters[param]
            clauses.append(_condition(flt, spec.stored_field(flt.field or param), value))
        scope = self.scope_filter(principal)
        if scope:
            clauses.append(scope)
        if cursor is not None:
            try:
                last_value, last_id = decode_cursor(cursor, sort)
            except ValueError as exc:
                raise RequestValidationError(
                    [{"loc": ("query", "cursor"), "msg": str(exc), "type": "cursor_invalid"}]
                ) from None
            clauses.append(_after(stored, direction, last_value, last_id))
        query: dict[str, Any] = {"$and": clauses} if clauses else {}
        order = (
            [(stored, direction)] if stored == "_id" else [(stored, direction), ("_id", direction)]
        )
        found = await self.located(min_position)
        docs = await self.database.collection(found.collection).find_list(
            query, sort=order, limit=limit + 1
        )
        items = [self.to_model(doc) for doc in docs[:limit]]
        next_cursor = None
        if len(docs) > limit:
            last = docs[limit - 1]
            next_cursor = encode_cursor(sort, _lookup(last, stored), last["_id"])
        body = {
            "items": [item.model_dump(mode="json", by_alias=True) for item in items],
            "next_cursor": next_cursor,
        }
        return JSONResponse(body, headers=self.headers(found))


def _lookup(doc: Mapping[str, Any], path: str) -> Any:
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _min_position(query: int | None, header: int | None) -> int | None:
    given = [p for p in (query, header) if p is not None]
    return max(given) if given else None


def query_router(
    database: Any,
    read_models: Iterable[ReadModelSpec],
    *,
    auth: AuthDependency | None = None,
    roles: Iterable[str] = (),
    checkpoints: str = "checkpoints",
    max_wait: float = 2.0,
    poll_interval: float = 0.1,
    dependencies: Sequence[Any] = (),
) -> APIRouter:
    """An ``APIRouter`` with ``GET /{name}/{id}`` and ``GET /{name}`` per read model.

    Args:
        database: The database holding the read models and checkpoints (a
            driver database object or an adapted one).
        read_models: The read models to serve.
        auth: FastAPI dependency returning the `Principal`; needed by
            read models with a ``scope`` or ``roles``.
        roles: Roles every route of this router needs (one of them).
        checkpoints: The checkpoints collection name.
        max_wait: Longest read-your-writes wait, in seconds, before answering 503.
        poll_interval: Longest pause between checkpoint reads while waiting
            (a change stream on the checkpoints wakes waiters sooner where available).
        dependencies: Extra FastAPI dependencies run before every route.

    Raises:
        UsageError: Two read models share a name, or a read model needs ``auth``.
    """
    db = adapt(database)
    specs = list(read_models)
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise UsageError(f"two read models share a name in {names}", code="duplicate-route")
    if max_wait < 0 or poll_interval <= 0:
        raise UsageError("need max_wait >= 0 and poll_interval > 0", code="bad-read-model")
    keys = sorted({k for k in (spec.checkpoint_key for spec in specs) if k is not None})
    bell = Doorbell(db, checkpoints, [{"$match": {"documentKey._id": {"$in": keys}}}])
    router = APIRouter(dependencies=list(dependencies))
    for spec in specs:
        if spec.scope is not None and auth is None:
            raise UsageError(
                f"read model {spec.name!r} has a scope, which needs the principal; pass auth=...",
                code="scope-without-auth",
            )
        routes = _ReadModelRoutes(spec, db, checkpoints, bell, max_wait, poll_interval)
        principal_of = principal_dependency(auth, frozenset(roles) | set(spec.roles))
        _add_get(router, routes, principal_of, auth is not None)
        _add_list(router, routes, principal_of, auth is not None)
    return router


_KW = inspect.Parameter.KEYWORD_ONLY
# Optional parameters are annotated with their bare type and a ``None`` default, so
# that the OpenAPI document says "integer, optional" rather than "integer or null":
# a header or query value can be absent, but never null.


def _position_query(spec: ReadModelSpec) -> list[str]:
    return [] if spec.checkpoint_key is None else ["min_position"]


def _position_params(spec: ReadModelSpec) -> list[inspect.Parameter]:
    if spec.checkpoint_key is None:
        return []
    help_text = (
        "Read your writes: wait (boundedly) until the read model reflects this global "
        "position, e.g. the `position` a command answered with."
    )
    return [
        inspect.Parameter(
            "min_position_query",
            _KW,
            annotation=int,
            default=Query(None, alias="min_position", ge=0, description=help_text),
        ),
        inspect.Parameter(
            "min_position_header",
            _KW,
            annotation=int,
            default=Header(None, alias=MIN_POSITION_HEADER, ge=0, description=help_text),
        ),
    ]


def _only_known_query(allowed: Iterable[str]) -> Any:
    """A dependency refusing query parameters the route does not declare.

    A misspelt filter (``?custmer=bob``) would otherwise be ignored and widen
    the answer to everything the caller may see.
    """
    known = frozenset(allowed)

    async def check(request: Request) -> None:
        unknown = sorted({name for name in request.query_params if name not in known})
        if unknown:
            raise RequestValidationError(
                [
                    {
                        "loc": ("query", name),
                        "msg": f"unknown query parameter; this route takes {sorted(known)}",
                        "type": "extra_forbidden",
                    }
                    for name in unknown
                ]
            )

    return Depends(check)


def _responses(spec: ReadModelSpec, statuses: list[int], with_auth: bool) -> dict[int | str, Any]:
    if with_auth:
        statuses = [*statuses, 401, 403]
    out = problem_responses(
        sorted(statuses),
        descriptions={
            503: "Database unreachable, or (`type` ...projection-lagging) the read model did "
            "not reach `min_position` in time; `position` tells where it is",
        },
    )
    if spec.checkpoint_key is not None:
        out[200] = {
            "headers": {
                POSITION_HEADER: {
                    "description": "The global position the read model reflected, at least, "
                    "when it was read.",
                    "schema": {"type": "integer"},
                }
            }
        }
    return out


def _add_get(
    router: APIRouter, routes: _ReadModelRoutes, principal_of: Callable[..., Any], with_auth: bool
) -> None:
    spec = routes.spec

    async def get_one(**params: Any) -> JSONResponse:
        return await routes.get_one(
            params["id"],
            params["principal"],
            _min_position(params.get("min_position_query"), params.get("min_position_header")),
        )

    get_one.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                "id",
                _KW,
                annotation=spec.id_type,
                default=Path(alias=spec.id_field, description=f"The {spec.id_field}."),
            ),
            inspect.Parameter("principal", _KW, annotation=Any, default=Depends(principal_of)),
            *_position_params(spec),
        ]
    )
    router.add_api_route(
        f"/{spec.name}/{{{spec.id_field}}}",
        get_one,
        methods=["GET"],
        response_model=spec.model,
        responses=_responses(spec, [404, 422, 500, 503], with_auth),
        dependencies=[_only_known_query(_position_query(spec))],
        summary=f"One {spec.name} document",
        name=f"get_{spec.name}",
        tags=[spec.name],
    )


def _add_list(
    router: APIRouter, routes: _ReadModelRoutes, principal_of: Callable[..., Any], with_auth: bool
) -> None:
    spec = routes.spec
    filter_params: dict[str, str] = {}  # python parameter name -> query parameter name
    parameters = [
        inspect.Parameter("principal", _KW, annotation=Any, default=Depends(principal_of))
    ]
    for n, (param, flt) in enumerate(spec.filters.items()):
        python_name = f"filter_{n}"
        filter_params[python_name] = param
        annotation: Any = list[flt.type] if flt.op == "in" else flt.type  # type: ignore[name-defined]
        description = flt.description or f"`{flt.field or param}` {flt.op} this value"
        parameters.append(
            inspect.Parameter(
                python_name,
                _KW,
                annotation=annotation,
                default=Query(None, alias=param, description=description),
            )
        )
    sort_type: Any = cast(Any, Literal)[tuple(spec.sort_options)]
    default_sort = spec.default_sort or spec.id_field
    parameters += [
        inspect.Parameter(
            "sort",
            _KW,
            annotation=sort_type,
            default=Query(
                default_sort,
                description="Sort field, `-` for descending; ties are broken by the id.",
            ),
        ),
        inspect.Parameter(
            "limit",
            _KW,
            annotation=int,
            default=Query(spec.default_page_size, ge=1, le=spec.max_page_size),
        ),
        inspect.Parameter(
            "cursor",
            _KW,
            annotation=str,
            default=Query(
                None,
                max_length=_MAX_CURSOR,
                description="`next_cursor` of the previous page (same `sort`).",
            ),
        ),
        *_position_params(spec),
    ]

    async def list_page(**params: Any) -> JSONResponse:
        return await routes.list_page(
            params["principal"],
            {param: params[python] for python, param in filter_params.items()},
            params["sort"],
            params["limit"],
            params["cursor"],
            _min_position(params.get("min_position_query"), params.get("min_position_header")),
        )

    list_page.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    page_model: Any = cast(Any, Page)[spec.model]
    router.add_api_route(
        f"/{spec.name}",
        list_page,
        methods=["GET"],
        response_model=page_model,
        responses=_responses(spec, [422, 500, 503], with_auth),
        dependencies=[
            _only_known_query(
                [*filter_params.values(), "sort", "limit", "cursor", *_position_query(spec)]
            )
        ],
        summary=f"List {spec.name} documents",
        name=f"list_{spec.name}",
        tags=[spec.name],
    )
