"""Errors as RFC 9457 problem documents (``application/problem+json``).

Every error the routers can meet becomes one JSON object with the standard
members ``type``, ``title``, ``status``, ``detail`` and ``instance``, plus
extension members that carry the error's context (the field path of a
validation error, the versions of a concurrency conflict, the current
position of a lagging projection):

    {"type": "urn:problem:concurrency-conflict", "title": "Concurrency conflict",
     "status": 409, "detail": "stream 'order-7' is at version 3, expected 2",
     "instance": "/commands/cancel-order",
     "stream_id": "order-7", "expected_version": 2, "actual_version": 3}

``type`` is built from a base (``urn:problem:`` by default, or a URL such as
``https://errors.example.com/``) and a kind; a `DomainError`
subclass gets ``domain:<snake_case_class_name>`` and the HTTP status of its
``status_code``. `install_problem_handlers` registers the handlers on a
FastAPI app, adds a last-resort middleware that answers any other exception
with a generic 500 document (and logs it, with an ``error_id`` that is also in
the document) and labels the problem responses of the OpenAPI document with
the ``application/problem+json`` media type.
"""

from __future__ import annotations

import http
import logging
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_jsonable_python
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cqrs_kit.errors import (
    ConcurrencyError,
    CqrsKitError,
    DomainError,
    EventEncodingError,
    EventTooLargeError,
    IndeterminateCommitError,
    InvalidStreamIdError,
    TransientStoreError,
)

log = logging.getLogger("cqrs_kit.fastapi")

#: The media type of every problem document.
PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
#: The default base of problem ``type`` URIs.
DEFAULT_TYPE_BASE: Final = "urn:problem:"
#: Marks problem responses in route declarations; see `install_problem_handlers`.
_MARKER: Final = "x-cqrs-kit-problem"
_RESERVED: Final = frozenset({"type", "title", "status", "detail", "instance"})
_SCALARS = (str, int, float, bool, Decimal, uuid.UUID)


# -- the documents --------------------------------------------------------------------------


class Problem(BaseModel):
    """An RFC 9457 problem document; extension members are allowed.

    Attributes:
        type: URI identifying the kind of problem.
        title: Short summary of the kind of problem.
        status: The HTTP status code.
        detail: What went wrong this time.
        instance: The request path the problem occurred at.
    """

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


class FieldError(BaseModel):
    """One invalid input: where (``body.items[0].sku``), what, and the error code."""

    loc: str
    msg: str
    type: str


class ValidationProblem(Problem):
    """422: the request did not validate; ``errors`` names every bad field."""

    errors: list[FieldError] = Field(default_factory=list)


class ConcurrencyProblem(Problem):
    """409: the stream changed under the command (optimistic concurrency)."""

    stream_id: str
    expected_version: int | None
    actual_version: int


class LagProblem(Problem):
    """503: the serving projection did not reach the requested position in time."""

    projection: str
    position: int
    min_position: int


class ProblemError(CqrsKitError):
    """An HTTP answer that is a problem document; raise it from endpoints or dependencies.

    Args:
        status: The HTTP status code.
        kind: The problem kind, appended to the type base (``"not-found"``,
            ``"domain/insufficient_funds"``); ``"/"`` separates levels.
        title: Short summary of the kind of problem.
        detail: What went wrong this time.
        headers: Extra response headers (``Retry-After``, ``WWW-Authenticate``).
        extensions: Extension members of the document.
    """

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.extensions = extensions


def type_uri(kind: str, base: str = DEFAULT_TYPE_BASE) -> str:
    """The ``type`` URI of problem ``kind`` under ``base``.

    A URN base (ending in ``:``) joins levels with ``:``
    (``urn:problem:domain:insufficient_funds``); a URL base joins them with ``/``.
    """
    if kind == "about:blank":
        return kind
    if base.endswith(":"):
        return base + kind.replace("/", ":")
    return base.rstrip("/") + "/" + kind


def snake_case(name: str) -> str:
    """``InsufficientFunds`` -> ``insufficient_funds`` (``HTTPError`` -> ``http_error``)."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def format_loc(loc: Sequence[Any]) -> str:
    """Render a pydantic error location as a path: ``("body", "items", 0, "sku")`` -> ``body.items[0].sku``."""  # noqa: E501
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


# -- turning exceptions into documents -------------------------------------------------------


def _domain_extensions(exc: DomainError) -> dict[str, Any]:
    """A domain error's context: its ``problem_extensions()``, else its public scalar attributes."""
    custom = getattr(exc, "problem_extensions", None)
    if callable(custom):
        return dict(to_jsonable_python(custom()))
    out: dict[str, Any] = {}
    for name, value in vars(exc).items():
        if name.startswith("_") or name in _RESERVED or name == "status_code":
            continue
        if value is None or isinstance(value, _SCALARS):
            out[name] = to_jsonable_python(value)
    return out


def domain_status(exc_type: type[DomainError]) -> int:
    """The HTTP status a domain error class answers with (its 4xx ``status_code``, else 400)."""
    status = getattr(exc_type, "status_code", 409)
    return status if isinstance(status, int) and 400 <= status <= 499 else 400


def _validation_errors(errors: Sequence[Any]) -> list[dict[str, str]]:
    return [
        {
            "loc": format_loc(err.get("loc", ())),
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "value_error")),
        }
        for err in errors
    ]


class _Renderer:
    """Builds problem responses under one ``type`` base."""

    def __init__(self, type_base: str) -> None:
        self.type_base = type_base

    def response(
        self,
        request: Request | None,
        *,
        status: int,
        kind: str,
        title: str,
        detail: str | None,
        extensions: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        path: str | None = None,
    ) -> JSONResponse:
        document: dict[str, Any] = {
            "type": type_uri(kind, self.type_base),
            "title": title,
            "status": status,
        }
        if detail is not None:
            document["detail"] = detail
        instance = path if path is not None else (request.url.path if request else None)
        if instance is not None:
            document["instance"] = instance
        for key, value in (extensions or {}).items():
            if key not in _RESERVED:
                document[key] = value
        return JSONResponse(
            to_jsonable_python(document),
            status_code=status,
            headers=dict(headers or {}),
            media_type=PROBLEM_MEDIA_TYPE,
        )

    def for_exception(self, request: Request, exc: Exception) -> JSONResponse:
        """The problem response for ``exc``, or a generic 500 (logged)."""
        if isinstance(exc, ProblemError):
            return self.response(
                request,
                status=exc.status,
                kind=exc.kind,
                title=exc.title,
                detail=exc.detail,
                extensions=exc.extensions,
                headers=exc.headers,
            )
        if isinstance(exc, RequestValidationError):
            errors = _validation_errors(exc.errors())
            summary = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:3])
            more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
            return self.response(
                request,
                status=422,
                kind="validation",
                title="Request validation failed",
                detail=f"{summary}{more}" if errors else None,
                extensions={"errors": errors},
            )
        if isinstance(exc, StarletteHTTPException):
            status = exc.status_code
            phrase = _phrase(status)
            detail = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else None
            return self.response(
                request,
                status=status,
                kind="about:blank",
                title=phrase,
                detail=detail,
                headers=exc.headers,
            )
        if isinstance(exc, DomainError):
            name = type(exc).__name__
            return self.response(
                request,
                status=domain_status(type(exc)),
                kind=f"domain/{snake_case(name)}",
                title=snake_case(name).replace("_", " ").capitalize(),
                detail=str(exc) or None,
                extensions=_domain_extensions(exc),
            )
        if isinstance(exc, ConcurrencyError):
            return self.response(
                request,
                status=409,
                kind="concurrency-conflict",
                title="Concurrency conflict",
                detail=str(exc),
                extensions={
                    "stream_id": exc.stream_id,
                    "expected_version": exc.expected,
                    "actual_version": exc.actual,
                },
            )
        if isinstance(exc, IndeterminateCommitError):
            log.warning("%s %s: %s", request.method, request.url.path, exc)
            return self.response(
                request,
                status=503,
                kind="commit-indeterminate",
                title="Commit result unknown",
                detail="the database connection failed while the command was being stored; "
                "retry with the same Idempotency-Key",
                extensions={"stream_id": exc.stream_id},
                headers={"Retry-After": "1"},
            )
        if isinstance(exc, TransientStoreError):
            log.warning("%s %s: %s", request.method, request.url.path, exc)
            return self.response(
                request,
                status=503,
                kind="unavailable",
                title="Database unavailable",
                detail="the database cannot be reached right now; retry later",
                headers={"Retry-After": "1"},
            )
        if isinstance(exc, EventTooLargeError):
            return self.response(
                request,
                status=413,
                kind="too-large",
                title="Content too large",
                detail=str(exc),
                extensions={"size": exc.size, "limit": exc.limit},
            )
        if isinstance(exc, EventEncodingError):
            return self.response(
                request,
                status=422,
                kind="unstorable-event",
                title="Event cannot be stored",
                detail=str(exc),
                extensions={"event_type": exc.event_type},
            )
        if isinstance(exc, InvalidStreamIdError):
            return self.response(
                request,
                status=400,
                kind="invalid-stream-id",
                title="Invalid stream id",
                detail=str(exc),
            )
        return self.internal(request, exc)

    def internal(
        self, request: Request | None, exc: BaseException, path: str | None = None
    ) -> JSONResponse:
        """A generic 500 document; the exception is logged with the document's ``error_id``."""
        error_id = uuid.uuid4().hex
        where = path or (request.url.path if request else "?")
        log.error("unhandled error %s while serving %s", error_id, where, exc_info=exc)
        return self.response(
            request,
            status=500,
            kind="internal-error",
            title="Internal server error",
            detail="the server failed to handle the request; the error has been logged",
            extensions={"error_id": error_id},
            path=path,
        )


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class ProblemMiddleware:
    """Last resort: answers any exception no handler took with a generic 500 problem.

    Starlette's own 500 handler re-raises the exception after answering, so the
    server logs it a second time; this middleware logs it once and ends the
    request. When the response has already started (a stream failed midway)
    nothing can be sent, and the exception is only logged.
    """

    def __init__(self, app: ASGIApp, *, type_base: str = DEFAULT_TYPE_BASE) -> None:
        self.app = app
        self._renderer = _Renderer(type_base)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; answer an escaped exception with a 500 problem."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            response = self._renderer.internal(None, exc, path=str(scope.get("path", "")))
            if not started:
                await response(scope, receive, send)


def install_problem_handlers(app: FastAPI, *, type_base: str = DEFAULT_TYPE_BASE) -> None:
    """Answer every error of ``app`` with an RFC 9457 problem document.

    Registers exception handlers for request validation (422), HTTP exceptions
    (their status, ``type: about:blank``), `ProblemError` and every
    `CqrsKitError` (409 concurrency conflicts, domain errors
    with their ``status_code``, 503 when the database is unreachable, ...),
    adds `ProblemMiddleware` for everything else (500, logged, never a
    stack trace), and rewrites the OpenAPI document so that the problem
    responses the routers declare have the ``application/problem+json`` media type.

    Args:
        app: The application (before it has served a request).
        type_base: Base of the ``type`` URIs: a URN prefix ending in ``:`` or a URL.
    """
    renderer = _Renderer(type_base)

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return renderer.for_exception(request, exc)

    for exc_type in (RequestValidationError, StarletteHTTPException, CqrsKitError):
        app.add_exception_handler(exc_type, handle)
    app.add_middleware(ProblemMiddleware, type_base=type_base)

    original: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _relabel_problem_responses(original())
        assert app.openapi_schema is not None
        return app.openapi_schema

    setattr(app, "openapi", openapi)  # noqa: B010 - assigning to a method


def _relabel_problem_responses(schema: dict[str, Any]) -> None:
    """Move the schema of marked responses from ``application/json`` to ``application/problem+json``."""  # noqa: E501
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            for response in operation.get("responses", {}).values():
                if not response.pop(_MARKER, False):
                    continue
                content = response.setdefault("content", {})
                moved = content.pop("application/json", None)
                if moved is not None:
                    content[PROBLEM_MEDIA_TYPE] = moved


_DESCRIPTIONS: Final[Mapping[int, str]] = {
    400: "Bad request: a domain rule refused the command, or the input is unusable",
    401: "Not authenticated",
    403: "Not allowed for this principal",
    404: "Not found",
    409: "Conflict: a concurrency conflict or a domain rule",
    413: "The events the command recorded are too large to store",
    422: "Request validation failed; `errors` names each field",
    500: "Unexpected server error (logged with `error_id`)",
    503: "Database unreachable; retry after `Retry-After` seconds",
}


def problem_responses(
    statuses: Sequence[int],
    *,
    models: Mapping[int, type[Problem]] | None = None,
    descriptions: Mapping[int, str] | None = None,
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries declaring problem documents for ``statuses``.

    Pass the result to ``APIRouter.add_api_route(responses=...)``; after
    `install_problem_handlers` their media type is ``application/problem+json``.
    """
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        model: type[Problem] = (models or {}).get(status) or (
            ValidationProblem if status == 422 else Problem
        )
        description = (
            (descriptions or {}).get(status) or _DESCRIPTIONS.get(status) or _phrase(status)
        )
        out[status] = {"model": model, "description": description, _MARKER: True}
    return out
