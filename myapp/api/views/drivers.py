"""A company's drivers."""

from __future__ import annotations

from typing import Any

from pyramid.request import Request
from sqlalchemy import select

from myapp.models import Driver

from ..lookups import body, company_or_404, created, driver_or_404
from ..pagination import paginate
from . import api_view


def serialize_driver(driver: Driver) -> dict[str, Any]:
    return {
        "id": driver.id,
        "company_id": driver.company_id,
        "name": driver.name,
        "active": driver.active,
    }


@api_view(route_name="api.drivers", request_method="GET", permission="company")
def list_drivers(request: Request) -> dict[str, Any]:
    company = company_or_404(request)
    stmt = select(Driver).where(Driver.company_id == company.id).order_by(Driver.id)
    active = request.openapi_validated.parameters.query.get("active")
    if active is not None:
        stmt = stmt.where(Driver.active.is_(bool(active)))
    return paginate(request, stmt, serialize_driver)


@api_view(route_name="api.drivers", request_method="POST", permission="company")
def create_driver(request: Request) -> dict[str, Any]:
    company = company_or_404(request)
    data = body(request)
    driver = Driver(
        company_id=company.id, name=data["name"].strip(), active=data.get("active", True)
    )
    request.dbsession.add(driver)
    request.dbsession.flush()
    created(request, "api.driver", company_id=company.id, driver_id=driver.id)
    return serialize_driver(driver)


@api_view(route_name="api.driver", request_method="GET", permission="company")
def get_driver(request: Request) -> dict[str, Any]:
    company = company_or_404(request)
    return serialize_driver(driver_or_404(request, company.id))


@api_view(route_name="api.driver", request_method="PATCH", permission="company")
def update_driver(request: Request) -> dict[str, Any]:
    company = company_or_404(request)
    driver = driver_or_404(request, company.id)
    data = body(request)
    if "name" in data:
        driver.name = data["name"].strip()
    if "active" in data:
        driver.active = bool(data["active"])
    request.dbsession.flush()
    return serialize_driver(driver)
