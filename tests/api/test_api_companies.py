"""Companies: the admin's CRUD, tokens stored hashed, a company reading itself."""

from __future__ import annotations

from typing import Any

from api_helpers import Tenant

from myapp.models import Company
from myapp.services.tokens import hash_token


def test_create_returns_the_token_once_and_stores_only_its_hash(
    testapp: Any, db: Any, admin: dict[str, str], rows: Any
) -> None:
    response = testapp.post_json(
        "/api/companies", {"name": "  Initech  "}, headers=admin, status=201
    )
    body = response.json
    assert body == {"id": body["id"], "name": "Initech", "api_token": body["api_token"]}
    assert response.location == f"http://example.com/api/companies/{body['id']}"
    token = body["api_token"]
    assert token.startswith("mya_") and len(token) >= 40

    company = db.session.get(Company, body["id"])
    assert company.api_token_hash == hash_token(token)
    assert token not in (company.api_token_hash, company.name)

    # the token works at once, and is never shown again
    auth = {"Authorization": f"Bearer {token}"}
    assert testapp.get(f"/api/companies/{body['id']}", headers=auth).json == {
        "id": body["id"],
        "name": "Initech",
    }
    assert "api_token" not in testapp.get(f"/api/companies/{body['id']}", headers=admin).json
    assert rows(Company) == 1


def test_list_is_paginated_by_id(testapp: Any, db: Any, admin: dict[str, str]) -> None:
    ids = [
        testapp.post_json("/api/companies", {"name": f"C{i}"}, headers=admin).json["id"]
        for i in range(5)
    ]
    page = testapp.get("/api/companies?per_page=2&page=2", headers=admin).json
    assert page == {
        "items": [{"id": ids[2], "name": "C2"}, {"id": ids[3], "name": "C3"}],
        "page": 2,
        "per_page": 2,
        "total": 5,
        "pages": 3,
    }
    default = testapp.get("/api/companies", headers=admin).json
    assert (default["page"], default["per_page"], default["pages"]) == (1, 20, 1)
    assert [c["id"] for c in default["items"]] == ids
    past_the_end = testapp.get("/api/companies?page=9", headers=admin).json
    assert past_the_end["items"] == [] and past_the_end["total"] == 5


def test_update(testapp: Any, admin: dict[str, str], acme: Tenant) -> None:
    body = testapp.patch_json(acme.url(), {"name": "Acme Cabs SA"}, headers=admin).json
    assert body == {"id": acme.id, "name": "Acme Cabs SA"}
    assert testapp.get(acme.url(), headers=acme.headers).json["name"] == "Acme Cabs SA"


def test_update_unknown_company_is_404(testapp: Any, admin: dict[str, str]) -> None:
    response = testapp.patch_json("/api/companies/424242", {"name": "X"}, headers=admin, status=404)
    assert response.json == {"error": "not found"}


def test_bad_input_names_the_field_and_writes_nothing(
    testapp: Any, admin: dict[str, str], acme: Tenant, rows: Any
) -> None:
    cases = [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": 12}, "name"),
        ({}, "name"),
        ({"name": "ok", "api_token_hash": "0" * 64}, "api_token_hash"),
    ]
    for payload, field in cases:
        response = testapp.post_json("/api/companies", payload, headers=admin, status=400)
        assert response.json["field"] == field, response.json
        assert response.json["error"].startswith(f"{field}: ")
    response = testapp.patch_json(acme.url(), {}, headers=admin, status=400)
    assert response.json["field"] == "body"
    assert rows(Company) == 1


def test_rotating_the_token_revokes_the_old_one(
    testapp: Any, db: Any, acme: Tenant, admin: dict[str, str]
) -> None:
    new = testapp.post(acme.url("/token"), headers=acme.headers).json
    assert new["id"] == acme.id and new["api_token"] != acme.token
    testapp.get(acme.url(), headers=acme.headers, status=401)
    testapp.get(acme.url(), headers={"Authorization": f"Bearer {new['api_token']}"}, status=200)
    # the admin may rotate any company's token
    newer = testapp.post(acme.url("/token"), headers=admin).json["api_token"]
    testapp.get(acme.url(), headers={"Authorization": f"Bearer {new['api_token']}"}, status=401)
    testapp.get(acme.url(), headers={"Authorization": f"Bearer {newer}"}, status=200)
    db.session.expire_all()
    assert db.session.get(Company, acme.id).api_token_hash == hash_token(newer)


def test_a_company_cannot_list_create_or_rename(testapp: Any, acme: Tenant, rows: Any) -> None:
    testapp.get("/api/companies", headers=acme.headers, status=403)
    testapp.post_json("/api/companies", {"name": "Mine"}, headers=acme.headers, status=403)
    testapp.patch_json(acme.url(), {"name": "Mine"}, headers=acme.headers, status=403)
    assert rows(Company) == 1
