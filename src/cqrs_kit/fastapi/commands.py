"""The command side over HTTP: one ``POST`` route per command type of a bus.

::

    commands = command_router(bus, auth=authenticate,
                              location="/queries/orders/{order_id}")
    app.include_router(commands, prefix="/commands")

For each command class (``PlaceOrder`` -> ``POST /place-order``) the request
body is the command's own pydantic model, minus the fields the server owns
(``command_id`` and ``metadata``), so the OpenAPI document shows its fields,
constraints and ``json_schema_extra`` examples. The router fills those fields:

* ``command_id`` from the ``Idempotency-Key`` header (see `command_id_for`),
  so a client that retries a request gets the first answer again and the
  command is applied once; without the header every request is a new command.
* ``metadata.principal`` from the authentication dependency, and
  ``metadata.correlation_id`` from ``X-Correlation-ID``; the command bus copies
  both into the metadata of every event the command records.

The answer is ``202 Accepted`` (or ``201 Created`` when the command created its
stream) with a `CommandAccepted` body: the stream id, its version and
the global position of the command's last event. A query carrying that
position (``X-Min-Position``) reads its own write; see
`cqrs_kit.fastapi.queries`.
"""

from __future__ import annotations

import hashlib
import inspect
import string
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from fastapi import APIRouter, Body, Depends, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from cqrs_kit.commands import Command, CommandBus, CommandMetadata, CommandResult
from cqrs_kit.errors import DomainError, UsageError
from cqrs_kit.fastapi.auth import AuthDependency, Principal, principal_dependency
from cqrs_kit.fastapi.problems import (
    ProblemError,
    domain_status,
    problem_responses,
    snake_case,
)
from cqrs_kit.tracing import TRACEPARENT, TRACESTATE, continue_trace

#: Namespace of command ids derived from idempotency keys.
IDEMPOTENCY_NAMESPACE: Final = uuid.UUID("6b1c5a8e-3f0d-5b57-9a51-8f8cbbd0c1a4")
#: Event metadata header holding the hash of the request an idempotency key was first used for.
FINGERPRINT_HEADER: Final = "idempotency-fingerprint"
_MANAGED: Final = frozenset({"command_id", "metadata"})
_RESULT_FIELDS: Final = frozenset({"stream_id", "version", "position", "command_id"})

#: Builds the link to the query side from the command and its result.
LocationFactory = Callable[[Command, CommandResult], "str | None"]


class CommandAccepted(BaseModel):
    """What a command did, as answered over HTTP.

    Attributes:
        command_id: The command's id (derived from the ``Idempotency-Key``).
        stream_id: The stream the command addressed.
        version: The stream's version after the command.
        position: Global position of the command's last event, ``None`` when it
            recorded none. Send it as ``X-Min-Position`` to read your own write.
        replayed: True when the command had been applied before and this is the
            first answer again.
        location: Where to read the result on the query side, if configured.
    """

    command_id: uuid.UUID
    stream_id: str
    version: int
    position: int | None
    replayed: bool = False
    location: str | None = None


@dataclass(frozen=True, slots=True)
class CommandEndpoint:
    """How one command type is exposed; every field but ``command_type`` is optional.

    Attributes:
        command_type: The command class (registered on the bus).
        path: Route path; default ``/`` + the class name in kebab case.
        creates: ``True`` answers ``201 Created``; ``False`` always ``202``;
            ``None`` answers ``201`` when the command's events started their
            stream (its version equals the number of events it recorded).
        location: URL template of the query-side resource (placeholders: the
            command's fields and ``stream_id``, ``version``, ``position``,
            ``command_id``), or a callable; overrides the router's.
        roles: The principal must hold one of these roles (403 otherwise).
        summary: OpenAPI summary (default: the class docstring's first line).
        example: An example request body for the OpenAPI document.
        errors: The domain errors the command can raise: their statuses are
            declared in the OpenAPI document.
    """

    command_type: type[Command]
    path: str | None = None
    creates: bool | None = None
    location: str | LocationFactory | None = None
    roles: Iterable[str] = ()
    summary: str | None = None
    example: Mapping[str, Any] | None = None
    errors: Sequence[type[DomainError]] = field(default_factory=tuple)


def kebab_case(name: str) -> str:
    """``PlaceOrder`` -> ``place-order``."""
    return snake_case(name).replace("_", "-")


def command_id_for(key: str, command_type: type[Command], principal: Principal | None) -> uuid.UUID:
    """The command id an ``Idempotency-Key`` stands for.

    The key is scoped to the command type and the principal, so two clients
    (or two commands) that happen to pick the same key do not collide.
    """
    who = principal.id if principal is not None else ""
    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{command_type.__qualname__}\x00{who}\x00{key}")


def body_model(command_type: type[Command]) -> type[BaseModel]:
    """The request body model of ``command_type``: its fields minus ``command_id`` and ``metadata``."""  # noqa: E501
    fields: dict[str, Any] = {
        name: (info.annotation, info)
        for name, info in command_type.model_fields.items()
        if name not in _MANAGED
    }
    config = ConfigDict(**command_type.model_config)
    extra = config.get("json_schema_extra")
    if isinstance(extra, dict):
        listed = extra.get("examples")
        if isinstance(listed, list):
            # Examples written for the whole command may carry the server-owned fields.
            examples: list[Any] = [
                {k: v for k, v in ex.items() if k not in _MANAGED} if isinstance(ex, dict) else ex
                for ex in listed
            ]
            config["json_schema_extra"] = {**extra, "examples": examples}
    config["title"] = command_type.__name__
    model: type[BaseModel] = create_model(
        command_type.__name__,
        __config__=config,
        __doc__=command_type.__doc__,
        __module__=command_type.__module__,
        **fields,
    )
    return model


def _registered(bus: CommandBus) -> list[type[Command]]:
    # The bus keeps its routes privately; a public listing would be nicer.
    listed = getattr(bus, "command_types", None)
    types = list(listed) if listed is not None else list(bus._routes)
    return sorted(types, key=lambda t: t.__name__)


def _template_fields(template: str) -> set[str]:
    names = set()
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None:
            names.add(name.split(".", 1)[0].split("[", 1)[0])
    return names


def _check_location(template: str | LocationFactory | None, command_type: type[Command]) -> None:
    if template is None or callable(template):
        return
    known = set(command_type.model_fields) | _RESULT_FIELDS
    unknown = _template_fields(template) - known
    if unknown:
        raise UsageError(
            f"location template {template!r} for {command_type.__name__} names "
            f"{sorted(unknown)}, which are neither fields of the command nor one of "
            f"{sorted(_RESULT_FIELDS)}",
            code="bad-location-template",
        )


def _location(
    template: str | LocationFactory | None, command: Command, result: CommandResult
) -> str | None:
    if template is None:
        return None
    if callable(template):
        return template(command, result)
    values = command.model_dump(mode="json")
    values.update(
        stream_id=result.stream_id,
        version=result.version,
        position=result.position,
        command_id=str(result.command_id),
    )
    return template.format_map(values)


def _creates(creates: bool | None, result: CommandResult) -> bool:
    if creates is not None:
        return creates
    return bool(result.events) and result.version == len(result.events)


def _fingerprint(command_type: type[Command], body: BaseModel) -> str:
    digest = hashlib.sha256(command_type.__qualname__.encode())
    digest.update(body.model_dump_json().encode())
    return digest.hexdigest()[:32]


async def _check_fingerprint(bus: CommandBus, result: CommandResult, fingerprint: str) -> None:
    """Refuse an idempotency key that was first used for a different request (422)."""
    first_version = result.version - len(result.events) + 1
    async for recorded in bus.store.read_stream(
        result.stream_id, from_version=first_version, limit=1, strict=False
    ):
        stored = recorded.metadata.headers.get(FINGERPRINT_HEADER)
        if stored is not None and stored != fingerprint:
            raise ProblemError(
                422,
                "idempotency-key-reused",
                "Idempotency key reused",
                "this Idempotency-Key was already used for a different request; "
                "use a new key for a new request",
            )


def command_router(
    bus: CommandBus,
    endpoints: Iterable[CommandEndpoint | type[Command]] | None = None,
    *,
    auth: AuthDependency | None = None,
    roles: Iterable[str] = (),
    location: str | LocationFactory | None = None,
    tags: Sequence[str] = ("commands",),
    dependencies: Sequence[Any] = (),
) -> APIRouter:
    """An ``APIRouter`` with one ``POST`` route per command.

    Args:
        bus: The command bus that handles the commands.
        endpoints: The commands to expose, as classes or `CommandEndpoint`
            declarations; default: every command type registered on ``bus``.
        auth: FastAPI dependency returning the `Principal` (or raising
            401); without it commands run anonymously.
        roles: Roles every command of this router needs (one of them).
        location: Default URL template (or callable) of the query-side link,
            sent as the ``Location`` header and the ``location`` member.
        tags: OpenAPI tags of the routes.
        dependencies: Extra FastAPI dependencies run before every route.

    Raises:
        UsageError: A command has no handler on ``bus``, two routes share a
            path, or a location template names unknown fields.
    """
    registered = _registered(bus)
    chosen = registered if endpoints is None else list(endpoints)
    router = APIRouter(tags=list(tags), dependencies=list(dependencies))
    paths: dict[str, str] = {}
    for item in chosen:
        spec = item if isinstance(item, CommandEndpoint) else CommandEndpoint(item)
        if spec.command_type not in registered:
            raise UsageError(
                f"{spec.command_type!r} has no handler on this bus; register one before "
                "building the router",
                code="command-not-registered",
            )
        path = spec.path or "/" + kebab_case(spec.command_type.__name__)
        if path in paths:
            raise UsageError(
                f"{spec.command_type.__name__} and {paths[path]} would both be served at "
                f"{path!r}; give one a path=",
                code="duplicate-route",
            )
        paths[path] = spec.command_type.__name__
        template = spec.location if spec.location is not None else location
        _check_location(template, spec.command_type)
        _add_route(router, bus, spec, path, template, auth, frozenset(roles) | set(spec.roles))
    return router


def _add_route(
    router: APIRouter,
    bus: CommandBus,
    spec: CommandEndpoint,
    path: str,
    template: str | LocationFactory | None,
    auth: AuthDependency | None,
    roles: frozenset[str],
) -> None:
    command_type = spec.command_type
    model = body_model(command_type)
    principal_of = principal_dependency(auth, roles)

    async def endpoint(
        request: Request,
        body: BaseModel,
        principal: Principal | None,
        idempotency_key: str | None,
        correlation_id: str | None,
    ) -> JSONResponse:
        headers: dict[str, str] = {}
        fingerprint = None
        if idempotency_key is not None:
            command_id = command_id_for(idempotency_key, command_type, principal)
            fingerprint = _fingerprint(command_type, body)
            headers[FINGERPRINT_HEADER] = fingerprint
        else:
            command_id = uuid.uuid4()
        metadata = CommandMetadata(
            principal=principal.id if principal is not None else None,
            correlation_id=correlation_id,
            headers=headers,
        )
        try:
            command = command_type.model_validate(
                {
                    **body.model_dump(by_alias=True, exclude_unset=True),
                    "command_id": command_id,
                    "metadata": metadata,
                }
            )
        except ValidationError as exc:
            # The command's own validators (cross-field rules) ran only now.
            raise RequestValidationError(
                [{**err, "loc": ("body", *err["loc"])} for err in exc.errors()]
            ) from None
        # The request's W3C trace context goes into the metadata of the command's events.
        with continue_trace(request.headers.get(TRACEPARENT), request.headers.get(TRACESTATE)):
            result = await bus.dispatch(command)
        if result.replayed and fingerprint is not None and result.events:
            await _check_fingerprint(bus, result, fingerprint)
        link = _location(template, command, result)
        accepted = CommandAccepted(
            command_id=result.command_id,
            stream_id=result.stream_id,
            version=result.version,
            position=result.position,
            replayed=result.replayed,
            location=link,
        )
        response_headers = {"Location": link} if link is not None else {}
        return JSONResponse(
            accepted.model_dump(mode="json"),
            status_code=201 if _creates(spec.creates, result) else 202,
            headers=response_headers,
        )

    examples: dict[str, Any] | None = None
    if spec.example is not None:
        examples = {"example": {"summary": "An example command", "value": dict(spec.example)}}
    keyword = inspect.Parameter.KEYWORD_ONLY
    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request
            ),
            inspect.Parameter(
                "body", keyword, annotation=model, default=Body(openapi_examples=examples)
            ),
            inspect.Parameter("principal", keyword, annotation=Any, default=Depends(principal_of)),
            inspect.Parameter(
                "idempotency_key",
                keyword,
                annotation=str,
                default=Header(
                    None,
                    alias="Idempotency-Key",
                    min_length=1,
                    max_length=255,
                    description="Makes retries safe: the same key (from the same principal, "
                    "for the same command type) applies the command once and answers the "
                    "first result again.",
                ),
            ),
            inspect.Parameter(
                "correlation_id",
                keyword,
                annotation=str,
                default=Header(
                    None,
                    alias="X-Correlation-ID",
                    max_length=128,
                    description="Recorded as the correlation id of the command's events.",
                ),
            ),
        ],
        return_annotation=JSONResponse,
    )

    statuses = [400, 409, 413, 422, 500, 503]
    if auth is not None:
        statuses += [401, 403]
    statuses += [domain_status(err) for err in spec.errors]
    responses = problem_responses(
        sorted(set(statuses)),
        descriptions={
            409: "A concurrency conflict (`stream_id`, `expected_version`, `actual_version`) "
            "or a domain rule (`type` names the domain error)"
        },
    )
    accepted_doc = "The command was applied; its stream, version and global position."
    if spec.creates is None:
        responses[201] = {
            "model": CommandAccepted,
            "description": "The command created its stream.",
        }
    summary = spec.summary or _first_line(command_type.__doc__) or command_type.__name__
    router.add_api_route(
        path,
        endpoint,
        methods=["POST"],
        status_code=201 if spec.creates else 202,
        response_model=CommandAccepted,
        response_description="The command created its stream." if spec.creates else accepted_doc,
        responses=responses,
        summary=summary,
        name=snake_case(command_type.__name__),
        description=inspect.cleandoc(command_type.__doc__ or ""),
    )


def _first_line(doc: str | None) -> str | None:
    if not doc:
        return None
    return inspect.cleandoc(doc).splitlines()[0].strip().rstrip(".") or None
