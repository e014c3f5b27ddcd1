"""The dispatch trigger (a durable route: no request transaction) and the runs' history."""

from __future__ import annotations

from typing import Any

from pyramid.httpexceptions import HTTPNotFound
from pyramid.request import Request
from sqlalchemy import select

from myapp.models.dispatch import DispatchRun
from myapp.services.dispatching import dispatch_and_record

from ..lookups import company_or_404, path_id
from ..pagination import paginate
from . import api_view


@api_view(route_name="api.dispatch", request_method="POST", permission="company")
def dispatch_now(request: Request) -> dict[str, Any]:
    """Served outside pyramid_tm: the engine commits by itself, then the run is recorded.

    No transaction is open while the engine runs (the token was checked in a
    read-only unit of work that has ended).
    """
    recorded = dispatch_and_record(path_id(request, "company_id"), source="api")
    if recorded is None:
        raise HTTPNotFound()
    return recorded


@api_view(route_name="api.dispatch_runs", request_method="GET", permission="company")
def list_dispatch_runs(request: Request) -> dict[str, Any]:
    company = company_or_404(request)
    stmt = (
        select(DispatchRun)
        .where(DispatchRun.company_id == company.id)
        .order_by(DispatchRun.id.desc())
    )
    return paginate(request, stmt, DispatchRun.serialize)
