"""How a routed handler is called: its signature, its request, its delivery context.

A handler is ``async def handler(request)`` or ``async def handler(request,
delivery)``. `inspect_handler` reads once, from the annotation of
``request``, what to build for it: the ``RecordedEvent`` itself, the decoded
domain event, a pydantic request model, or a plain dict. The request's
fields come from the event's ``data`` or, when the subscriber has an
``input`` mapping, from JSON paths into the event document, the way an
EventBridge input transformer's ``InputPathsMap`` picks values: dot
notation and array indices (``$.data.lines[0].sku``), ``$`` for the whole
document.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import BaseModel

from cqrs_kit.errors import UsageError
from cqrs_kit.events import Event, RecordedEvent


@dataclass(frozen=True, slots=True)
class Delivery:
    """Context handed to a handler with each event.

    Attributes:
        subscriber: The subscriber id.
        event: The event being delivered.
        attempt: 1 on first delivery, counting up on retries.
        idempotency_key: ``<subscriber>:<event id>``; stable across redeliveries.
            Key every effect with it (an upsert ``_id``, an external API's
            idempotency key) to make the effect exactly-once.
    """

    subscriber: str
    event: RecordedEvent
    attempt: int
    idempotency_key: str


# -- input mapping (EventBridge input-transformer style JSON paths) -------------------------

_PATH_TOKEN = re.compile(r"\.([A-Za-z0-9_\-]+)|\[(\d+)\]")


def compile_path(path: str) -> tuple[str | int, ...]:
    """Parse ``$``, ``$.data.order_id`` or ``$.data.lines[0].sku`` into path steps.

    Raises:
        ValueError: The path is not in that dot-and-index notation.
    """
    if not path.startswith("$"):
        raise ValueError(f"{path!r} must start with '$' (like $.data.order_id)")
    steps: list[str | int] = []
    rest = path[1:]
    while rest:
        match = _PATH_TOKEN.match(rest)
        if match is None:
            raise ValueError(f"{path!r}: cannot parse {rest!r} (use $.field and [index])")
        steps.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        rest = rest[match.end() :]
    return tuple(steps)


#: What `extract` returns for a path that is absent from the document.
MISSING: Any = object()


def extract(document: Any, steps: Sequence[str | int]) -> Any:
    """Follow ``steps`` into ``document``; returns `MISSING` when a step is absent."""
    value = document
    for step in steps:
        if isinstance(step, int):
            if not isinstance(value, list) or step >= len(value):
                return MISSING
            value = value[step]
        else:
            if not isinstance(value, Mapping) or step not in value:
                return MISSING
            value = value[step]
    return value


# -- handler signatures --------------------------------------------------------------------


class RequestKind(Enum):
    """What a handler's first parameter asks for."""

    RECORDED = "recorded"  # the RecordedEvent itself
    EVENT = "event"  # the decoded domain event (upcast through the registry)
    MODEL = "model"  # a pydantic request model built from the payload or input mapping
    MAPPING = "mapping"  # the payload (or mapped input) as a dict


@dataclass(frozen=True, slots=True)
class HandlerPlan:
    """How to call a handler, read from its signature once."""

    kind: RequestKind
    model: type[BaseModel] | None
    wants_delivery: bool


def inspect_handler(handler: Any) -> HandlerPlan:
    """Read what a handler takes: ``async def h(request[, delivery])``.

    The first parameter's annotation decides the request: ``RecordedEvent``,
    an ``Event`` subclass (decoded through the registry), another pydantic
    model (validated from the payload or the ``input`` mapping), or anything
    else (a plain dict).

    Raises:
        UsageError: The handler is not an ``async`` callable of one or two
            positional parameters, or its annotations cannot be resolved.
    """
    if not callable(handler):
        raise UsageError(f"{handler!r} is not callable", code="bad-handler")
    is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - async callable objects
    )
    if not is_async:
        raise UsageError(
            f"handler {getattr(handler, '__qualname__', handler)!r} must be an async function",
            code="bad-handler",
        )
    params = [
        p
        for p in inspect.signature(handler).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(params) not in (1, 2):
        raise UsageError(
            "a handler takes (request) or (request, delivery), "
            f"not {len(params)} positional parameters",
            code="bad-handler",
        )
    target = handler if inspect.isroutine(handler) else type(handler).__call__
    try:
        hints = typing.get_type_hints(target)
    except Exception as exc:
        raise UsageError(
            f"cannot resolve the annotations of {handler!r}: {exc}", code="bad-handler"
        ) from exc
    annotation = hints.get(params[0].name, Any)
    if annotation is RecordedEvent:
        return HandlerPlan(RequestKind.RECORDED, None, len(params) == 2)
    if isinstance(annotation, type) and issubclass(annotation, Event):
        return HandlerPlan(RequestKind.EVENT, annotation, len(params) == 2)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return HandlerPlan(RequestKind.MODEL, annotation, len(params) == 2)
    return HandlerPlan(RequestKind.MAPPING, None, len(params) == 2)
