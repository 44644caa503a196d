"""Authentication and authorisation hooks shared by the routers.

The routers do not authenticate anyone themselves. They take a FastAPI
dependency that returns a `Principal` (or raises, typically an
``HTTPException(401)``), and optionally the roles a principal needs:

    bearer = HTTPBearer(auto_error=False)

    async def authenticate(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> Principal:
        if credentials is None:
            raise HTTPException(401, headers={"WWW-Authenticate": "Bearer"})
        claims = verify(credentials.credentials)  # your token check
        return Principal(id=claims["sub"], roles=frozenset(claims["roles"]))

    commands = command_router(bus, auth=authenticate)

The principal's id becomes ``CommandMetadata.principal`` of every command, and
from there ``EventMetadata.principal`` of every event it records (the audit
trail); query routers hand it to a read model's scope function.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends

from cqrs_kit.errors import UsageError
from cqrs_kit.fastapi.problems import ProblemError

#: A FastAPI dependency that returns the authenticated `Principal`.
AuthDependency = Callable[..., "Principal | Awaitable[Principal]"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling.

    Attributes:
        id: Stable identifier of the user or service (recorded in event metadata).
        roles: The roles the principal holds.
        claims: Anything else the authentication dependency wants to pass on.
    """

    id: str
    roles: frozenset[str] = frozenset()
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def has_any_role(self, roles: Iterable[str]) -> bool:
        """Whether the principal holds at least one of ``roles`` (true for none)."""
        wanted = frozenset(roles)
        return not wanted or bool(wanted & self.roles)


async def _anonymous() -> None:
    return None


def principal_dependency(
    auth: AuthDependency | None, roles: Iterable[str] = ()
) -> Callable[..., Awaitable[Principal | None]]:
    """A dependency yielding the principal (``None`` without ``auth``), checking ``roles``.

    Args:
        auth: The authentication dependency, or ``None`` for anonymous access.
        roles: The principal must hold one of these (403 problem otherwise).

    Raises:
        UsageError: ``roles`` were given without ``auth``.
    """
    required = frozenset(roles)
    if auth is None:
        if required:
            raise UsageError(
                f"roles {sorted(required)} need an authentication dependency; pass auth=...",
                code="roles-without-auth",
            )
        return _anonymous
    if not callable(auth):
        raise UsageError(
            f"auth must be a FastAPI dependency callable, not {auth!r}", code="bad-auth"
        )

    async def principal(found: Any = Depends(auth)) -> Principal | None:  # noqa: B008
        if inspect.isawaitable(found):  # pragma: no cover - FastAPI awaits dependencies
            found = await found
        if not isinstance(found, Principal):
            raise UsageError(
                f"the auth dependency returned {found!r}; it must return a Principal",
                code="bad-auth",
            )
        if not found.has_any_role(required):
            raise ProblemError(
                403,
                "forbidden",
                "Forbidden",
                f"this operation needs one of the roles {sorted(required)}",
            )
        return found

    return principal
