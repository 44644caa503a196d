"""Bad input at the HTTP edge: 422 problem documents that name the field, and no write."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from examples.rental_service.scenario import STAFF_EMAIL, STAFF_PASSWORD, RentalScenario
from examples.rental_service.tests.e2e.client import Account, ServiceClient, describe

pytestmark = pytest.mark.slow


def field_errors(answer: httpx.Response) -> list[tuple[str, ...]]:
    """The ``loc`` of every error of a 422 validation problem, after checking its shape."""
    assert answer.status_code == 422, describe(answer)
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["type"] == "urn:problem:validation", problem
    assert problem["status"] == 422
    assert problem["errors"], problem
    return [location(error["loc"]) for error in problem["errors"]]


def location(loc: str | list[str | int]) -> tuple[str, ...]:
    """``body.skus.0`` (or ``["body", "skus", 0]``) as ``("body", "skus", "0")``."""
    parts = loc.split(".") if isinstance(loc, str) else loc
    return tuple(str(part) for part in parts)


def names(answer: httpx.Response, field: str) -> bool:
    return any(field in loc for loc in field_errors(answer))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-address", "name": "Eve", "password": "long-enough-1"}, "email"),
        ({"email": "eve@example.com", "name": "Eve", "password": "short"}, "password"),
        ({"email": "eve@example.com", "password": "long-enough-1"}, "name"),
    ],
)
async def test_sign_up_names_the_bad_field(
    client: ServiceClient, body: dict[str, Any], field: str
) -> None:
    answer = await client.http.post("/auth/sign-up", json=body)
    assert names(answer, field), describe(answer)
    # Nothing was written: the address is still free afterwards.
    if "@" in str(body.get("email", "")) and field != "email":
        token = await client.http.post(
            "/auth/token", json={"email": body["email"], "password": body["password"]}
        )
        assert token.status_code == 401, describe(token)


@pytest.mark.parametrize(
    ("command", "body", "field"),
    [
        ("request-rental", {"skus": []}, "skus"),
        ("request-rental", {"skus": "DRESS"}, "skus"),
        ("request-rental", {}, "skus"),
        ("return-rental", {"rental_id": 7}, "rental_id"),
    ],
)
async def test_member_commands_name_the_bad_field(
    client: ServiceClient, member: Account, command: str, body: Any, field: str
) -> None:
    answer = await client.send(member, command, body)
    assert names(answer, field), describe(answer)
    rentals = await client.list_all(member, "my-rentals")
    assert rentals == []


@pytest.mark.parametrize(
    ("command", "body", "field"),
    [
        (
            "list-item",
            {"sku": "HAT-9", "name": "Hat", "category": "hat", "size": "F", "price": "cheap"},
            "price",
        ),
        ("list-item", {"sku": "HAT-9", "name": "Hat", "category": "hat", "size": "F"}, "price"),
        ("receive-stock", {"sku": "HAT-9", "quantity": "two"}, "quantity"),
        ("receive-stock", {"quantity": 2}, "sku"),
    ],
)
async def test_staff_commands_name_the_bad_field(
    client: ServiceClient, command: str, body: dict[str, Any], field: str
) -> None:
    staff = await client.sign_in(STAFF_EMAIL, STAFF_PASSWORD)
    answer = await client.send(staff, command, body)
    assert names(answer, field), describe(answer)


async def test_rules_on_a_request_answer_422_domain_problems(
    scenario: RentalScenario, client: ServiceClient
) -> None:
    cast = await scenario.sign_up_members()
    await scenario.stock_catalog(cast)
    too_many = [scenario.dress, scenario.bag, scenario.coat, "HAT-1"]
    answer = await client.send(cast.ann, "request-rental", {"skus": too_many})
    assert answer.status_code == 422, describe(answer)
    assert answer.json()["type"] == "urn:problem:domain:too_many_items", describe(answer)

    answer = await client.send(cast.ann, "request-rental", {"skus": [scenario.bag, "NO-SUCH"]})
    assert answer.status_code == 422, describe(answer)
    assert answer.json()["type"] == "urn:problem:domain:unknown_items", describe(answer)
    assert "NO-SUCH" in answer.json()["detail"], describe(answer)
    assert await client.list_all(cast.ann, "my-rentals") == []


async def test_a_body_that_is_not_json_is_a_422_problem(
    client: ServiceClient, member: Account
) -> None:
    answer = await client.http.post(
        "/commands/request-rental",
        content=b'{"skus": [',
        headers={**member.headers, "Content-Type": "application/json"},
    )
    field_errors(answer)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"min_position": "soon"}, "min_position"),
        ({"limit": "0"}, "limit"),
        ({"status": "lost"}, "status"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_queries_name_the_bad_parameter(
    client: ServiceClient, member: Account, params: dict[str, str], field: str
) -> None:
    answer = await client.http.get("/queries/my-rentals", params=params, headers=member.headers)
    assert names(answer, field), describe(answer)
