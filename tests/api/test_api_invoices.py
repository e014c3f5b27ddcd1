"""Invoices: a company's own, by period, paginated."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from api_helpers import Tenant

from myapp.testing.factories import BookingFactory, DriverFactory, InvoiceFactory


def _invoice(company_id: int, when: datetime, amount: str) -> Any:
    driver = DriverFactory(company_id=company_id)
    booking = BookingFactory(driver=driver, status="completed", pickup_time=when)
    return InvoiceFactory(booking=booking, amount=Decimal(amount))


def test_list_by_period(testapp: Any, db: Any, acme: Tenant, globex: Tenant) -> None:
    october = [
        _invoice(acme.id, datetime(2040, 10, day, 9, tzinfo=UTC), f"{day}.5") for day in (1, 2, 3)
    ]
    november = _invoice(acme.id, datetime(2040, 11, 1, 9, tzinfo=UTC), "42")
    _invoice(globex.id, datetime(2040, 10, 1, 9, tzinfo=UTC), "99")
    db.session.commit()

    page = testapp.get(acme.url("/invoices?period=2040-10"), headers=acme.headers).json
    assert page["items"] == [
        {
            "id": inv.id,
            "company_id": acme.id,
            "booking_id": inv.booking_id,
            "amount": f"{inv.amount:.2f}",
            "period": "2040-10",
        }
        for inv in october
    ]
    assert page["items"][0]["amount"] == "1.50"
    everything = testapp.get(acme.url("/invoices?per_page=3"), headers=acme.headers).json
    assert everything["total"] == 4 and everything["pages"] == 2
    assert [i["period"] for i in everything["items"]] == ["2040-10"] * 3
    last = testapp.get(acme.url("/invoices?per_page=3&page=2"), headers=acme.headers).json
    assert [i["id"] for i in last["items"]] == [november.id]
    assert last["items"][0]["amount"] == "42.00"
    assert (
        testapp.get(acme.url("/invoices?period=2039-01"), headers=acme.headers).json["total"] == 0
    )


def test_bad_period(testapp: Any, acme: Tenant) -> None:
    for period in ("2040-13", "2040-1", "October", "2040-10-01"):
        response = testapp.get(
            acme.url(f"/invoices?period={period}"), headers=acme.headers, status=400
        )
        assert response.json["field"] == "period"
