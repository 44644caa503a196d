"""Who may read and act on what, over HTTP against the running service."""

from __future__ import annotations

import httpx
import pytest

from examples.rental_service.scenario import Cast, RentalScenario, rental_id_of
from examples.rental_service.tests.e2e.client import Account, ServiceClient, describe

pytestmark = pytest.mark.slow

PROBLEM = "application/problem+json"


async def ann_rents_the_coat(scenario: RentalScenario) -> tuple[Cast, str, int]:
    cast = await scenario.sign_up_members()
    await scenario.stock_catalog(cast)
    accepted = await scenario.client.command(cast.ann, "request-rental", {"skus": [scenario.coat]})
    confirmed = await scenario.wait_event(
        cast.staff, accepted["stream_id"], accepted["position"], "rentals.RentalConfirmed"
    )
    return cast, rental_id_of(accepted), confirmed["position"]


def assert_problem(answer: httpx.Response, status: int) -> None:
    assert answer.status_code == status, describe(answer)
    assert answer.headers["content-type"].startswith(PROBLEM), describe(answer)
    body = answer.json()
    assert body["status"] == status, body
    assert body["type"], body
    assert body["title"], body


async def test_a_member_cannot_see_or_touch_another_members_rental(
    scenario: RentalScenario, client: ServiceClient
) -> None:
    cast, rental_id, position = await ann_rents_the_coat(scenario)
    ann, ben = cast.ann, cast.ben

    own = await client.read(ann, "my-rentals", rental_id, min_position=position)
    assert own["member_id"] == ann.member_id

    other = await client.http.get(
        f"/queries/my-rentals/{rental_id}",
        params={"min_position": position},
        headers=ben.headers,
    )
    assert_problem(other, 404)

    listed = await client.list_all(ben, "my-rentals", min_position=position)
    assert rental_id not in {r["rental_id"] for r in listed}

    mail = await client.list_all(ben, "outbox", rental_id=rental_id)
    assert mail == []

    returned = await client.send(ben, "return-rental", {"rental_id": rental_id})
    assert_problem(returned, 404)
    assert returned.json()["type"] == "urn:problem:domain:rental_not_found"

    # Nothing changed: Ann's rental is still confirmed, as staff sees it.
    row = await client.read(cast.staff, "rental-board", rental_id, min_position=position)
    assert row["status"] == "confirmed"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/queries/rental-board", None),
        ("GET", "/queries/revenue", None),
        ("GET", "/admin/gateway", None),
        ("GET", "/admin/mail", None),
        ("POST", "/admin/gateway", {"fail_next": 3}),
        ("POST", "/commands/ship-rental", {"rental_id": "any"}),
        (
            "POST",
            "/commands/list-item",
            {"sku": "HAT-1", "name": "Hat", "category": "hat", "size": "F", "price": 900},
        ),
        ("POST", "/commands/receive-stock", {"sku": "HAT-1", "quantity": 1}),
    ],
)
async def test_staff_routes_refuse_members(
    client: ServiceClient,
    member: Account,
    method: str,
    path: str,
    body: dict[str, object] | None,
) -> None:
    answer = await client.http.request(method, path, json=body, headers=member.headers)
    assert_problem(answer, 403)


async def test_a_member_cannot_follow_the_event_feed(
    client: ServiceClient, member: Account
) -> None:
    async with client.http.stream("GET", "/events", headers=member.headers) as answer:
        await answer.aread()
        assert_problem(answer, 403)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic c3RhZmY6cHc="}],
    ids=["no token", "garbage token", "wrong scheme"],
)
async def test_without_a_valid_token_everything_answers_401(
    client: ServiceClient, headers: dict[str, str]
) -> None:
    for method, path in [
        ("GET", "/queries/my-rentals"),
        ("GET", "/queries/catalog"),
        ("GET", "/auth/me"),
        ("POST", "/commands/request-rental"),
    ]:
        answer = await client.http.request(
            method, path, headers=headers, json={"skus": ["X"]} if method == "POST" else None
        )
        assert_problem(answer, 401)
