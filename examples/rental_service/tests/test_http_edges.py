"""The HTTP edge: who may read and do what, bad input, idempotent retries, the staff page."""

from __future__ import annotations

from typing import Any

import httpx

from examples.rental_service.tests.conftest import Harness, HarnessFactory

PROBLEM = "application/problem+json"


def _problem(answer: httpx.Response, status: int, type_: str | None = None) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = answer.json()
    assert body["status"] == status
    if type_ is not None:
        assert body["type"] == type_, body
    return body


async def _confirmed_rental(h: Harness, headers: dict[str, str]) -> str:
    accepted = await h.command("request-rental", {"skus": ["DRESS-1"]}, headers, status=201)
    rental_id: str = accepted["location"].rsplit("/", 1)[1]
    assert (await h.settled(rental_id))["status"] == "confirmed"
    return rental_id


async def test_a_member_cannot_read_or_act_on_another_members_rental(
    on_mongomock: HarnessFactory,
) -> None:
    async with on_mongomock() as h:
        await h.stock("DRESS-1")
        ann_id, ann = await h.member("Ann")
        _, bob = await h.member("Bob")
        rental_id = await _confirmed_rental(h, ann)
        await h.command("ship-rental", {"rental_id": rental_id}, h.staff)

        mine = await h.get(f"/queries/my-rentals/{rental_id}", ann)
        assert mine["member_id"] == ann_id
        _problem(
            await h.client.get(f"/queries/my-rentals/{rental_id}", headers=bob),
            404,
            "urn:problem:not-found",
        )
        assert (await h.get("/queries/my-rentals", bob))["items"] == []
        assert (await h.get("/queries/outbox", bob))["items"] == []
        _problem(
            await h.client.post(
                "/commands/return-rental", json={"rental_id": rental_id}, headers=bob
            ),
            404,
            "urn:problem:domain:rental_not_found",
        )
        # Members are not staff, and nobody without a token gets anything.
        for path in ("/queries/rental-board", "/queries/revenue", "/admin/gateway", "/events"):
            _problem(await h.client.get(path, headers=bob), 403)
        _problem(
            await h.client.post("/commands/ship-rental", json={"rental_id": "x"}, headers=bob),
            403,
        )
        _problem(await h.client.get("/queries/my-rentals"), 401)
        _problem(await h.client.get("/events?access_token=not-a-token"), 401)
        _problem(await h.client.get("/auth/me", headers={"Authorization": "Bearer forged"}), 401)
        # Staff see everyone's rentals; the member can still return their own.
        assert (await h.get(f"/queries/my-rentals/{rental_id}"))["member_id"] == ann_id
        await h.command("return-rental", {"rental_id": rental_id}, ann)
        await h.rental(rental_id, until=lambda r: r["status"] == "returned")


async def test_bad_input_is_answered_with_problem_documents_and_writes_nothing(
    on_mongomock: HarnessFactory,
) -> None:
    async with on_mongomock(max_items_per_rental=2) as h:
        await h.stock("DRESS-1")
        _, ann = await h.member("Ann")
        events_before = len([e async for e in h.service.store.read_all(after=0)])

        bad_sign_up = await h.client.post(
            "/auth/sign-up", json={"email": "not-an-email", "name": "", "password": "short"}
        )
        body = _problem(bad_sign_up, 422, "urn:problem:validation")
        assert {e["loc"] for e in body["errors"]} == {
            "body.email",
            "body.name",
            "body.password",
        }
        for skus, where in (([], "body.skus"), (["lower-case"], "body.skus[0]")):
            answer = await h.client.post(
                "/commands/request-rental", json={"skus": skus}, headers=ann
            )
            body = _problem(answer, 422, "urn:problem:validation")
            assert body["errors"][0]["loc"] == where
        _problem(
            await h.client.post(
                "/commands/request-rental", json={"skus": ["A", "B", "C"]}, headers=ann
            ),
            422,
            "urn:problem:domain:too_many_items",
        )
        _problem(
            await h.client.post("/commands/request-rental", json={"skus": ["NOPE"]}, headers=ann),
            422,
            "urn:problem:domain:unknown_items",
        )
        _problem(
            await h.client.post(
                "/commands/receive-stock", json={"sku": "DRESS-1", "quantity": 0}, headers=h.staff
            ),
            422,
        )
        _problem(
            await h.client.post(
                "/commands/list-item",
                content=b"{not json",
                headers={**h.staff, "content-type": "application/json"},
            ),
            422,
        )
        _problem(await h.client.get("/queries/catalog?colour=red", headers=ann), 422)
        _problem(
            await h.client.post("/admin/gateway", json={"fail_next": -1}, headers=h.staff), 422
        )
        _problem(
            await h.client.post(
                "/auth/sign-up",
                json={"email": "ann@example.com", "name": "Ann", "password": "password-2"},
            ),
            409,
            "urn:problem:domain:email_taken",
        )
        assert len([e async for e in h.service.store.read_all(after=0)]) == events_before


async def test_a_retried_request_with_the_same_idempotency_key_rents_once(
    on_mongomock: HarnessFactory,
) -> None:
    async with on_mongomock() as h:
        await h.stock("DRESS-1", units=2)
        _, ann = await h.member("Ann")
        headers = {**ann, "Idempotency-Key": "checkout-42"}
        first = await h.client.post(
            "/commands/request-rental", json={"skus": ["DRESS-1"]}, headers=headers
        )
        again = await h.client.post(
            "/commands/request-rental", json={"skus": ["DRESS-1"]}, headers=headers
        )

        assert (first.status_code, again.status_code) == (201, 201)
        assert again.json()["stream_id"] == first.json()["stream_id"]
        assert again.json()["replayed"] is True
        rental_id = first.json()["location"].rsplit("/", 1)[1]
        assert (await h.settled(rental_id))["status"] == "confirmed"
        mine = await h.get("/queries/my-rentals", ann)
        assert [r["rental_id"] for r in mine["items"]] == [rental_id]
        assert (await h.gateway())["charges"] == 1


async def test_read_your_writes_and_the_staff_page(on_mongomock: HarnessFactory) -> None:
    async with on_mongomock() as h:
        accepted = await h.command(
            "list-item",
            {"sku": "HAT-1", "name": "Hat", "category": "hat", "size": "F", "price": 1200},
            h.staff,
        )
        item = await h.get(f"/queries/catalog/HAT-1?min_position={accepted['position']}")
        assert item["price"] == 1200

        page = await h.client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        for element in ('id="login-form"', 'id="board-rows"', 'id="projection-lag"', "EventSource"):
            assert element in page.text
        lag = await h.get("/admin/projections")
        assert {p["name"] for p in lag} == {
            "catalog",
            "member_rentals",
            "rental_board",
            "revenue",
            "utilisation",
        }
        me = await h.get("/auth/me")
        assert me["role"] == "staff"


async def test_sign_up_then_sign_in(on_mongomock: HarnessFactory) -> None:
    async with on_mongomock() as h:
        signed_up = await h.client.post(
            "/auth/sign-up",
            json={"email": "Cy@Example.com", "name": "Cy", "password": "long-enough"},
        )
        assert signed_up.status_code == 201, signed_up.text
        assert signed_up.json()["email"] == "cy@example.com"

        headers = await h.token("cy@example.com", "long-enough")
        me = await h.get("/auth/me", headers)
        assert me == {
            "member_id": signed_up.json()["member_id"],
            "email": "cy@example.com",
            "role": "member",
        }
        wrong = await h.client.post(
            "/auth/token", json={"email": "cy@example.com", "password": "not-it"}
        )
        _problem(wrong, 401, "urn:problem:unauthorized")
        unknown = await h.client.post(
            "/auth/token", json={"email": "nobody@example.com", "password": "not-it"}
        )
        _problem(unknown, 401, "urn:problem:unauthorized")
