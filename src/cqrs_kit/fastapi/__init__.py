"""FastAPI routers for cqrs-kit: commands, queries, a live feed, problem-JSON errors.

Install the extra first: ``pip install 'cqrs-kit[fastapi]'``. Then:

    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(command_router(bus, auth=authenticate), prefix="/commands")
    app.include_router(query_router(db, [orders], auth=authenticate), prefix="/queries")
    app.include_router(feed_router(store, auth=authenticate))
    app.include_router(operations_router(store, projections=runner, max_lag={"*": 60}))

The command and query routers are independent ``APIRouter`` objects: mount
them in one app, or in different apps, processes and scaling groups.
``docs/http.md`` walks through a whole service.
"""

try:
    import fastapi as _fastapi  # noqa: F401 - only checks that the extra is installed
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "cqrs_kit.fastapi needs FastAPI, which is not installed; "
        "install the extra with: pip install 'cqrs-kit[fastapi]'"
    ) from exc

from cqrs_kit.fastapi.auth import AuthDependency, Principal
from cqrs_kit.fastapi.commands import CommandAccepted, CommandEndpoint, command_router
from cqrs_kit.fastapi.feed import feed_router
from cqrs_kit.fastapi.operations import (
    LagThreshold,
    NotReadyProblem,
    Readiness,
    ReadinessCheck,
    operations_router,
)
from cqrs_kit.fastapi.problems import (
    PROBLEM_MEDIA_TYPE,
    ConcurrencyProblem,
    FieldError,
    LagProblem,
    Problem,
    ProblemError,
    ValidationProblem,
    install_problem_handlers,
)
from cqrs_kit.fastapi.queries import (
    MIN_POSITION_HEADER,
    POSITION_HEADER,
    Filter,
    Page,
    ReadModelSpec,
    query_router,
)

__all__ = [
    "MIN_POSITION_HEADER",
    "POSITION_HEADER",
    "PROBLEM_MEDIA_TYPE",
    "AuthDependency",
    "CommandAccepted",
    "CommandEndpoint",
    "ConcurrencyProblem",
    "FieldError",
    "Filter",
    "LagProblem",
    "LagThreshold",
    "NotReadyProblem",
    "Page",
    "Principal",
    "Problem",
    "ProblemError",
    "ReadModelSpec",
    "Readiness",
    "ReadinessCheck",
    "ValidationProblem",
    "command_router",
    "feed_router",
    "install_problem_handlers",
    "operations_router",
    "query_router",
]
