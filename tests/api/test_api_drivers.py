"""A company's drivers: create, list (with the active filter), read, update, (de)activate."""

from __future__ import annotations

from typing import Any

from api_helpers import Tenant

from myapp.models import Driver
from myapp.testing.factories import DriverFactory


def test_create_read_update(testapp: Any, db: Any, acme: Tenant) -> None:
    response = testapp.post_json(
        acme.url("/drivers"), {"name": "Ada"}, headers=acme.headers, status=201
    )
    driver = response.json
    assert driver == {"id": driver["id"], "company_id": acme.id, "name": "Ada", "active": True}
    assert response.location.endswith(acme.url(f"/drivers/{driver['id']}"))
    assert testapp.get(acme.url(f"/drivers/{driver['id']}"), headers=acme.headers).json == driver

    updated = testapp.patch_json(
        acme.url(f"/drivers/{driver['id']}"),
        {"active": False, "name": "Ada L."},
        headers=acme.headers,
    ).json
    assert updated == {**driver, "active": False, "name": "Ada L."}
    db.session.expire_all()
    stored = db.session.get(Driver, driver["id"])
    assert (stored.name, stored.active) == ("Ada L.", False)


def test_create_inactive(testapp: Any, acme: Tenant) -> None:
    body = testapp.post_json(
        acme.url("/drivers"), {"name": "Bob", "active": False}, headers=acme.headers
    ).json
    assert body["active"] is False


def test_list_filters_and_pages(testapp: Any, db: Any, acme: Tenant, globex: Tenant) -> None:
    drivers = [DriverFactory(company_id=acme.id, active=i % 2 == 0) for i in range(5)]
    DriverFactory(company_id=globex.id)
    db.session.commit()
    everyone = testapp.get(acme.url("/drivers"), headers=acme.headers).json
    assert [d["id"] for d in everyone["items"]] == [d.id for d in drivers]
    assert everyone["total"] == 5
    active = testapp.get(acme.url("/drivers?active=true"), headers=acme.headers).json
    assert [d["id"] for d in active["items"]] == [drivers[0].id, drivers[2].id, drivers[4].id]
    inactive = testapp.get(acme.url("/drivers?active=false&per_page=1"), headers=acme.headers).json
    assert inactive["total"] == 2 and inactive["pages"] == 2
    assert [d["id"] for d in inactive["items"]] == [drivers[1].id]


def test_another_companys_driver_is_not_found(
    testapp: Any, db: Any, acme: Tenant, globex: Tenant
) -> None:
    theirs = DriverFactory(company_id=globex.id, name="Theirs")
    db.session.commit()
    testapp.get(acme.url(f"/drivers/{theirs.id}"), headers=acme.headers, status=404)
    testapp.patch_json(
        acme.url(f"/drivers/{theirs.id}"), {"name": "Stolen"}, headers=acme.headers, status=404
    )
    db.session.expire_all()
    assert db.session.get(Driver, theirs.id).name == "Theirs"


def test_bad_input(testapp: Any, acme: Tenant, rows: Any) -> None:
    for payload, field in (
        ({"name": ""}, "name"),
        ({"name": "A", "active": "yes"}, "active"),
        ({"active": True}, "name"),
        ({"name": "A", "company_id": 2}, "company_id"),
    ):
        response = testapp.post_json(
            acme.url("/drivers"), payload, headers=acme.headers, status=400
        )
        assert response.json["field"] == field
    response = testapp.get(acme.url("/drivers?active=maybe"), headers=acme.headers, status=400)
    assert response.json["field"] == "active"
    response = testapp.get(acme.url("/drivers/abc"), headers=acme.headers, status=400)
    assert response.json["field"] == "driver_id"
    assert rows(Driver) == 0
