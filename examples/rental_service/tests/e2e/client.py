"""A small HTTP client of the rental service, as its README describes the API.

Every call checks the answer's status and raises :class:`ExpectationFailed` with the
problem document when it is not the expected one. Nothing here sleeps and hopes: a read
after a command passes the command's position (``min_position``) so that the service
answers only once the read model has caught up, and downstream effects are awaited on the
event feed (``/events``, Server-Sent Events) or by re-checking a condition until a deadline.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
Document = dict[str, Any]
Params = list[tuple[str, str | int | float | bool | None]]


class ExpectationFailed(AssertionError):
    """The service did not do what the scenario expects."""


@dataclass(frozen=True)
class Account:
    """A signed-in member or staff user.

    Attributes:
        email: Sign-in e-mail address.
        name: Display name.
        member_id: The service's id of the account.
        role: ``member`` or ``staff``.
        token: The bearer access token.
    """

    email: str
    name: str
    member_id: str
    role: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header."""
        return {"Authorization": f"Bearer {self.token}"}


def describe(answer: httpx.Response) -> str:
    """``METHOD path -> status: body`` of an answer, for failure messages."""
    body = answer.text if len(answer.text) < 2000 else answer.text[:2000] + "..."
    return f"{answer.request.method} {answer.request.url.path} -> {answer.status_code}: {body}"


def expect_status(answer: httpx.Response, *statuses: int) -> httpx.Response:
    """Return ``answer`` if its status is one of ``statuses``.

    Raises:
        ExpectationFailed: Another status.
    """
    if answer.status_code not in statuses:
        wanted = " or ".join(str(s) for s in statuses)
        raise ExpectationFailed(f"expected {wanted}: {describe(answer)}")
    return answer


class ServiceClient:
    """The rental service's HTTP API at ``base_url``.

    Args:
        base_url: For example ``http://127.0.0.1:8000``.
        timeout: Seconds for one request (a read-your-writes query may wait up to the
            service's ``READ_YOUR_WRITES_TIMEOUT`` on top of its own work).
    """

    def __init__(self, base_url: str, *, timeout: float = 20.0, lag_patience: float = 30.0) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self.lag_patience = lag_patience

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- accounts ---------------------------------------------------------------------------

    async def sign_in(self, email: str, password: str, *, name: str = "") -> Account:
        """Get an access token (``POST /auth/token``)."""
        answer = expect_status(
            await self.http.post("/auth/token", json={"email": email, "password": password}),
            200,
        )
        body = answer.json()
        return Account(
            email=email,
            name=name or email.split("@")[0],
            member_id=body["member_id"],
            role=body["role"],
            token=body["access_token"],
        )

    async def sign_up(self, email: str, name: str, password: str) -> Account:
        """Create a member account (``POST /auth/sign-up``) and sign in with it."""
        expect_status(
            await self.http.post(
                "/auth/sign-up", json={"email": email, "name": name, "password": password}
            ),
            201,
        )
        return await self.sign_in(email, password, name=name)

    # -- commands and queries ---------------------------------------------------------------

    async def send(
        self,
        who: Account,
        command: str,
        body: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        """``POST /commands/<command>`` and return the raw answer, whatever its status."""
        headers = dict(who.headers)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return await self.http.post(f"/commands/{command}", json=dict(body), headers=headers)

    async def command(
        self,
        who: Account,
        command: str,
        body: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> Document:
        """Send a command that must be accepted (201 or 202); return the answer's body."""
        answer = await self.send(who, command, body, idempotency_key=idempotency_key)
        document: Document = expect_status(answer, 201, 202).json()
        return document

    async def get(
        self,
        who: Account,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        min_position: int | None = None,
    ) -> Any:
        """``GET path`` that must answer 200; return its JSON body.

        A read-your-writes query answers 503 while the read model is behind ``min_position``
        (after a restart, until the new process has taken the projections over); it is
        asked again, as ``Retry-After`` says, for up to ``lag_patience`` seconds.
        """
        query = dict(params or {})
        if min_position is not None:
            query["min_position"] = min_position
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lag_patience
        while True:
            answer = await self.http.get(path, params=query, headers=who.headers)
            lagging = answer.status_code == 503 and answer.text.find("projection-lagging") > 0
            if not lagging or loop.time() > deadline:
                return expect_status(answer, 200).json()
            retry_after = float(answer.headers.get("Retry-After", "1"))
            await asyncio.sleep(min(max(retry_after, 0.1), 1.0))

    async def read(
        self, who: Account, model: str, doc_id: str, *, min_position: int | None = None
    ) -> Document:
        """One document of a read model (``GET /queries/<model>/<id>``)."""
        document: Document = await self.get(
            who, f"/queries/{model}/{doc_id}", min_position=min_position
        )
        return document

    async def list_all(
        self,
        who: Account,
        model: str,
        *,
        min_position: int | None = None,
        **filters: Any,
    ) -> list[Document]:
        """Every document of a read model that ``filters`` select, following the cursors."""
        items: list[Document] = []
        params: dict[str, Any] = {"limit": 100, **filters}
        while True:
            page = await self.get(
                who, f"/queries/{model}", params=params, min_position=min_position
            )
            items.extend(page["items"])
            if not page.get("next_cursor"):
                return items
            params["cursor"] = page["next_cursor"]

    # -- the fake gateway and mail sender (staff) -------------------------------------------

    async def gateway(self, staff: Account) -> Document:
        """The fake payment gateway's counters (``GET /admin/gateway``)."""
        state: Document = await self.get(staff, "/admin/gateway")
        return state

    async def inject_gateway_failures(self, staff: Account, **failures: Any) -> Document:
        """Arm the fake gateway (``POST /admin/gateway``: ``fail_next``, ...)."""
        answer = await self.http.post("/admin/gateway", json=failures, headers=staff.headers)
        state: Document = expect_status(answer, 200).json()
        return state

    async def mail(self, staff: Account) -> Document:
        """What the fake mail sender sent (``GET /admin/mail``)."""
        sent: Document = await self.get(staff, "/admin/mail")
        return sent

    # -- waiting ----------------------------------------------------------------------------

    async def next_event(
        self,
        staff: Account,
        *,
        after: int,
        types: Collection[str],
        stream_id: str | None = None,
        where: Callable[[Document], bool] | None = None,
        within: float = 15.0,
    ) -> Document:
        """The first event of ``types`` (on ``stream_id``, for which ``where`` holds) after
        position ``after``.

        Follows the service's event feed, which starts at ``after`` and sends events in
        their global order, so an event recorded before this call is found as well.

        Raises:
            ExpectationFailed: None came within ``within`` seconds.
        """
        params: Params = [("after", after)]
        params += [("type", t) for t in sorted(types)]
        if stream_id is not None:
            params.append(("stream_id", stream_id))
        on_stream = f" on {stream_id}" if stream_id else ""
        try:
            async with asyncio.timeout(within):
                return await self._first_event(staff, params, where)
        except TimeoutError:
            raise ExpectationFailed(
                f"no {' or '.join(sorted(types))} event{on_stream} after position {after} "
                f"within {within:.0f} s"
            ) from None

    async def _first_event(
        self, staff: Account, params: Params, where: Callable[[Document], bool] | None
    ) -> Document:
        timeout = httpx.Timeout(10.0, read=None)  # the outer deadline bounds the wait
        async with self.http.stream(
            "GET", "/events", params=params, headers=staff.headers, timeout=timeout
        ) as answer:
            if answer.status_code != 200:
                await answer.aread()
                raise ExpectationFailed(f"the event feed refused: {describe(answer)}")
            data: list[str] = []
            async for line in answer.aiter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif not line and data:  # a blank line ends a message
                    document: Document = json.loads("\n".join(data))
                    if where is None or where(document):
                        return document
                    data = []
        raise ExpectationFailed("the event feed ended before the awaited event")


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    what: str,
    *,
    within: float = 15.0,
    interval: float = 0.1,
) -> T:
    """Call ``probe`` until it returns something other than ``None``; return that.

    For state that no event announces (an external system's counters, a mail relay). The
    deadline makes a missing effect a clear failure instead of a hang.

    Raises:
        ExpectationFailed: Still ``None`` after ``within`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = await probe()
        if result is not None:
            return result
        if loop.time() > deadline:
            raise ExpectationFailed(f"{what}: not reached within {within:.0f} s")
        await asyncio.sleep(interval)
