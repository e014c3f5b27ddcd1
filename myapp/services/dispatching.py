"""Running a dispatch from the CLI, the API or the dashboard, and remembering what it did.

Every dispatch a person triggers goes through :func:`dispatch_and_record`, so
each one (``myapp dispatch``, ``POST /api/companies/{id}/dispatch``, the
dashboard's "Dispatch now") is a :class:`~myapp.models.dispatch.DispatchRun`
that the dashboard and ``GET /api/companies/{id}/dispatch-runs`` show.

Transactional contract: :func:`dispatch_and_record` runs **outside any unit of
work** (a durable route, see :mod:`myapp.db.pyramid.durable`, a command or a script's scope). It
calls the dispatch engine, whose durable unit of work commits the assignments
by itself, then records a :class:`~myapp.models.dispatch.DispatchRun` in a
second, short unit of work. The two commits are independent: if the second
fails, the assignments stand (running the dispatch again is harmless: it only
assigns what is still pending) and the error propagates. In maintenance mode it
refuses (:class:`~myapp.db.MaintenanceMode`) before the engine takes any lock.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from myapp.db import MaintenanceMode, current_scope, db_transaction
from myapp.models.dispatch import DispatchRun
from myapp.observability.units import observe_unit
from myapp.services import dispatch as engine

#: where a dispatch can be triggered (``DispatchRun.source``)
SOURCES = ("cli", "api", "dashboard")


def dispatch_and_record(
    company_id: int, *, source: str, now: datetime | None = None
) -> dict[str, Any] | None:
    """Dispatch ``company_id``; return the recorded run as JSON data (None: no such company).

    ``now``: dispatch as if it were that instant (default: the current time).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}")
    database = current_scope().database
    if database is not None and database.maintenance:
        reason = f" ({database.maintenance.reason})" if database.maintenance.reason else ""
        raise MaintenanceMode(
            f"the service is in read-only maintenance mode{reason}: the dispatch was refused "
            "and nothing was written"
        )
    with observe_unit("dispatch"):
        return _dispatch_and_record(company_id, source, now)


def _dispatch_and_record(
    company_id: int, source: str, now: datetime | None
) -> dict[str, Any] | None:
    result = engine.run(company_id, now=now)
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
