"""Triggering a dispatch from the API or the dashboard, and remembering what it did.

Transactional contract: :func:`dispatch_and_record` runs **outside any unit of
work** (a durable route, see :mod:`myapp.api.durable`, or a script's scope). It
calls the dispatch engine, whose durable unit of work commits the assignments
by itself, then records a :class:`~myapp.models.dispatch.DispatchRun` in a
second, short unit of work. The two commits are independent: if the second
fails, the assignments stand (running the dispatch again is harmless: it only
assigns what is still pending) and the error propagates. In maintenance mode it
refuses (:class:`~myapp.db.MaintenanceMode`) before the engine takes any lock.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from myapp.db import MaintenanceMode, current_scope, db_read_only, db_transaction
from myapp.models.dispatch import DispatchRun
from myapp.services import dispatch as engine

SOURCES = ("api", "dashboard")


def dispatch_and_record(company_id: int, *, source: str) -> dict[str, Any] | None:
    """Dispatch ``company_id``; return the recorded run as JSON data (None: no such company)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}")
    database = current_scope().database
    if database is not None and database.maintenance:
        reason = f" ({database.maintenance.reason})" if database.maintenance.reason else ""
        raise MaintenanceMode(
            f"the service is in read-only maintenance mode{reason}: the dispatch was refused "
            "and nothing was written"
        )
    result = engine.run(company_id)
    if result.reason == engine.COMPANY_NOT_FOUND:
        return None
    data = result.as_dict()
    with db_transaction() as session:
        run = DispatchRun(
            company_id=company_id,
            assigned_count=len(result.assigned),
            unassigned_count=len(result.unassigned),
            reason=result.reason,
            source=source,
            details={"assigned": data["assigned"], "unassigned": data["unassigned"]},
        )
        session.add(run)
        session.flush()
        recorded = run.serialize()
    return recorded


def last_run(session: Any, company_id: int) -> DispatchRun | None:
    """The company's latest recorded dispatch (in the caller's unit of work)."""
    stmt = (
        select(DispatchRun)
        .where(DispatchRun.company_id == company_id)
        .order_by(DispatchRun.id.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


def last_run_data(company_id: int) -> dict[str, Any] | None:
    """:func:`last_run` as JSON data, read in a read-only unit of work of its own."""
    with db_read_only() as session:
        run = last_run(session, company_id)
        return run.serialize() if run is not None else None
