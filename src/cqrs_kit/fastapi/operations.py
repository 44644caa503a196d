"""Health, status and metrics over HTTP, for load balancers, orchestrators and Prometheus.

::

    app.include_router(operations_router(
        store,
        projections=runner,                 # a ProjectionRunner, or the projections
        subscribers=worker,                 # a Worker, or subscriber ids
        max_lag={"stock_levels": 30.0,      # seconds; or LagThreshold(seconds=, events=)
                 "*": 300.0},               # every other projection and subscriber
    ))

gives four ``GET`` routes:

* ``/health/live``: 200 while the process answers (liveness: restart me if not).
* ``/health/ready``: 200 when the database answers a ping within ``timeout``
  and every consumer with a lag threshold is within it; else 503 with a
  `NotReadyProblem` naming the database or the consumers behind
  (readiness: send me traffic, or not).
* ``/status``: the `SystemStatus` of every projection
  and subscriber given, the document ``cqrs-kit projections status --json`` prints.
* ``/metrics``: the Prometheus exposition of `cqrs_kit.metrics`, with the
  lag, state, dead-letter and parked gauges refreshed from the database first.
  Without the ``metrics`` extra it answers 501 with a problem saying what to install.

The routes build their answers themselves (problem documents included), so
they work in an app without `install_problem_handlers`.
Readiness reads only the consumers that have a threshold; mount the router
on an internal port, or add ``dependencies=[...]`` that authenticate, if the
status of your consumers is not for everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from cqrs_kit.errors import TransientStoreError, UsageError
from cqrs_kit.fastapi.problems import PROBLEM_MEDIA_TYPE, Problem, problem_responses, type_uri
from cqrs_kit.metrics import Metrics, get_metrics
from cqrs_kit.projections import ProjectionRunner
from cqrs_kit.status import Clock, ConsumerStatus, StatusReader, SystemStatus, publish

if TYPE_CHECKING:
    from cqrs_kit.projections import Projection
    from cqrs_kit.routing.worker import Worker
    from cqrs_kit.store import EventStore

#: The ``max_lag`` key that applies to every consumer without its own entry.
EVERY: Final = "*"


@dataclass(frozen=True, slots=True)
class LagThreshold:
    """How far behind a consumer may be before the service is not ready.

    Attributes:
        seconds: Largest age, in seconds, of the oldest event not handled yet.
        events: Largest number of events not handled yet.
    """

    seconds: float | None = None
    events: int | None = None

    def __post_init__(self) -> None:
        for name, value in (("seconds", self.seconds), ("events", self.events)):
            if value is not None and (isinstance(value, bool) or value < 0):
                raise UsageError(
                    f"LagThreshold.{name} must be a non-negative number, not {value!r}",
                    code="bad-lag-threshold",
                )
        if self.seconds is None and self.events is None:
            raise UsageError(
                "a LagThreshold needs seconds=, events= or both", code="bad-lag-threshold"
            )

    def exceeded_by(self, status: ConsumerStatus) -> bool:
        """Whether ``status`` is further behind than this threshold allows."""
        return (self.seconds is not None and status.lag_seconds > self.seconds) or (
            self.events is not None and status.lag_events > self.events
        )


class ReadinessCheck(BaseModel):
    """One thing readiness looked at.

    Attributes:
        name: ``database``, a projection name or a subscriber id.
        kind: ``database``, ``projection`` or ``subscriber``.
        ok: Whether it passed.
        detail: Why it failed.
        lag_events: The consumer's lag in events.
        lag_seconds: The consumer's lag in seconds.
        max_lag_events: Its threshold in events, if any.
        max_lag_seconds: Its threshold in seconds, if any.
    """

    name: str
    kind: Literal["database", "projection", "subscriber"]
    ok: bool
    detail: str | None = None
    lag_events: int | None = None
    lag_seconds: float | None = None
    max_lag_events: int | None = None
    max_lag_seconds: float | None = None


class Liveness(BaseModel):
    """The answer of ``/health/live``."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """The answer of a ready ``/health/ready``: every check passed."""

    status: Literal["ready"] = "ready"
    checks: list[ReadinessCheck]


class NotReadyProblem(Problem):
    """503: the database is unreachable, or consumers are further behind than allowed.

    Attributes:
        behind: Names of the projections and subscribers past their threshold.
        checks: Every check, passed or not.
    """

    behind: list[str]
    checks: list[ReadinessCheck]


def _threshold(key: str, value: float | LagThreshold) -> LagThreshold:
    if isinstance(value, LagThreshold):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(
            f"max_lag[{key!r}] must be seconds or a LagThreshold, not {value!r}",
            code="bad-lag-threshold",
        )
    return LagThreshold(seconds=float(value))


def _limits(
    max_lag: Mapping[str, float | LagThreshold] | None, reader: StatusReader
) -> tuple[dict[str, LagThreshold], dict[str, LagThreshold]]:
    """Thresholds by projection name and by subscriber id, after checking every key."""
    given = {key: _threshold(key, value) for key, value in (max_lag or {}).items()}
    projections, subscribers = reader.projection_names, reader.subscriber_ids
    unknown = sorted(set(given) - {EVERY, *projections, *subscribers})
    if unknown:
        known = ", ".join([*projections, *subscribers]) or "none; pass projections= or subscribers="
        raise UsageError(
            f"max_lag names {unknown}, which are neither projections nor subscribers of this "
            f"router; known: {known}",
            code="bad-lag-threshold",
        )
    default = given.get(EVERY)

    def pick(names: Iterable[str]) -> dict[str, LagThreshold]:
        chosen = {name: given.get(name, default) for name in names}
        return {name: limit for name, limit in chosen.items() if limit is not None}

    return pick(projections), pick(subscribers)


def _problem(
    request: Request, status: int, kind: str, title: str, detail: str, **extra: Any
) -> Response:
    document = Problem(
        type=type_uri(kind),
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path,
        **extra,
    )
    return JSONResponse(
        document.model_dump(mode="json"), status_code=status, media_type=PROBLEM_MEDIA_TYPE
    )


def operations_router(
    store: EventStore,
    *,
    projections: ProjectionRunner | Sequence[Projection] | None = None,
    subscribers: Worker | Iterable[str] | None = None,
    max_lag: Mapping[str, float | LagThreshold] | None = None,
    metrics: Metrics | bool = True,
    timeout: float = 2.0,
    clock: Clock | None = None,
    tags: Sequence[str] = ("operations",),
    dependencies: Sequence[Any] = (),
) -> APIRouter:
    """An ``APIRouter`` with ``/health/live``, ``/health/ready``, ``/status`` and ``/metrics``.

    Args:
        store: The event store (its database is what readiness pings).
        projections: A `ProjectionRunner`, or the
            projections to report (the router only reads their status; it does
            not run them).
        subscribers: A `Worker`, or subscriber ids.
        max_lag: Readiness thresholds by projection name or subscriber id, in
            seconds or as `LagThreshold`; the key ``"*"`` applies to every
            consumer without its own entry. Consumers without a threshold never
            make the service unready.
        metrics: ``True`` serves the process-wide metrics, a `Metrics`
            serves that one, ``False`` leaves ``/metrics`` out.
        timeout: Seconds readiness waits for the database before answering 503.
        clock: Where lag gets the current time (default: the system clock).
        tags: OpenAPI tags of the routes.
        dependencies: Extra FastAPI dependencies run before every route.

    Raises:
        UsageError: ``max_lag`` names an unknown consumer or holds an invalid
            threshold (code ``bad-lag-threshold``).
    """
    runner: ProjectionRunner | None
    if projections is None or isinstance(projections, ProjectionRunner):
        runner = projections
    else:
        runner = ProjectionRunner(store, list(projections))
    reader = StatusReader(store, projections=runner, subscribers=subscribers, clock=clock)
    projection_limits, subscriber_limits = _limits(max_lag, reader)
    router = APIRouter(tags=list(tags), dependencies=list(dependencies))

    @router.get(
        "/health/live",
        response_model=Liveness,
        summary="Liveness: the process answers",
    )
    async def live() -> Liveness:
        return Liveness()

    @router.get(
        "/health/ready",
        response_model=Readiness,
        summary="Readiness: the database answers and no consumer is past its lag threshold",
        responses=problem_responses(
            [503],
            models={503: NotReadyProblem},
            descriptions={
                503: "The database is unreachable, or projections or subscribers are "
                "behind their threshold (`behind` names them)"
            },
        ),
    )
    async def ready(request: Request) -> Any:
        try:
            await asyncio.wait_for(store.database.ping(), timeout)
            status = await reader.read(
                projections=sorted(projection_limits), subscribers=sorted(subscriber_limits)
            )
        except (TransientStoreError, TimeoutError) as exc:
            reason = str(exc) or f"no answer within {timeout:g} s"
            check = ReadinessCheck(name="database", kind="database", ok=False, detail=reason)
            return _problem(
                request,
                503,
                "not-ready",
                "Not ready",
                f"the database cannot be reached: {reason}",
                behind=[],
                checks=[check.model_dump(mode="json")],
            )
        checks = [ReadinessCheck(name="database", kind="database", ok=True)]
        behind: list[str] = []
        measured: list[tuple[ConsumerStatus, LagThreshold, Literal["projection", "subscriber"]]]
        measured = [(s, projection_limits[s.name], "projection") for s in status.projections]
        measured += [(s, subscriber_limits[s.name], "subscriber") for s in status.subscribers]
        details: list[str] = []
        for consumer, limit, kind in measured:
            late = limit.exceeded_by(consumer)
            detail = None
            if late:
                behind.append(consumer.name)
                detail = (
                    f"{kind} {consumer.name!r} is {consumer.lag_events} events and "
                    f"{consumer.lag_seconds:g} s behind"
                )
                details.append(detail)
            checks.append(
                ReadinessCheck(
                    name=consumer.name,
                    kind=kind,
                    ok=not late,
                    detail=detail,
                    lag_events=consumer.lag_events,
                    lag_seconds=consumer.lag_seconds,
                    max_lag_events=limit.events,
                    max_lag_seconds=limit.seconds,
                )
            )
        if behind:
            return _problem(
                request,
                503,
                "not-ready",
                "Not ready",
                "; ".join(details) + " (past the readiness threshold)",
                behind=behind,
                checks=[c.model_dump(mode="json") for c in checks],
            )
        return Readiness(checks=checks)

    @router.get(
        "/status",
        response_model=SystemStatus,
        summary="Position, lag, state, owner, last error and dead letters of every consumer",
        responses=problem_responses([503]),
    )
    async def status(request: Request) -> Any:
        try:
            return await reader.read()
        except TransientStoreError as exc:
            return _problem(
                request, 503, "unavailable", "Database unavailable", f"cannot read status: {exc}"
            )

    if metrics is False:
        return router
    chosen = get_metrics() if metrics is True else metrics

    @router.get(
        "/metrics",
        response_class=Response,
        summary="Prometheus metrics",
        responses={
            200: {
                "content": {"text/plain": {"schema": {"type": "string"}}},
                "description": "The Prometheus (or, when asked for, OpenMetrics) exposition",
            },
            **problem_responses([501], descriptions={501: "The metrics extra is not installed"}),
        },
    )
    async def metrics_route(request: Request) -> Response:
        if not chosen.enabled:
            return _problem(
                request,
                501,
                "metrics-unavailable",
                "Metrics unavailable",
                "metrics need prometheus-client: pip install 'cqrs-kit[metrics]'",
            )
        if reader.projection_names or reader.subscriber_ids:
            # Database down: serve what the process recorded; the gauges keep their last values.
            with contextlib.suppress(TransientStoreError):
                publish(await reader.read(), chosen)
        body, content_type = chosen.render(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    return router
