"""A company's invoices (written by ``myapp invoices generate``), by period."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pyramid.request import Request
from sqlalchemy import select

from myapp.models import Invoice

from ..lookups import company_or_404
from ..pagination import paginate
from . import api_view


def serialize_invoice(invoice: Invoice) -> dict[str, Any]:
    return {
        "id": invoice.id,
        "company_id": invoice.company_id,
        "booking_id": invoice.booking_id,
        "amount": f"{Decimal(invoice.amount):.2f}",
        "period": invoice.period,
    }


@api_view(route_name="api.invoices", request_method="GET", permission="company")
def list_invoices(request: Request) -> dict[str, Any]:
    company = company_or_404(request)
    stmt = (
        select(Invoice).where(Invoice.company_id == company.id).order_by(Invoice.period, Invoice.id)
    )
    period = request.openapi_validated.parameters.query.get("period")
    if period is not None:
        stmt = stmt.where(Invoice.period == str(period))
    return paginate(request, stmt, serialize_invoice)
