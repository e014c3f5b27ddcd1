"""Is this statement a write, and may this session write?

The database refuses writes in read-only units of work, safe-method requests
and maintenance mode (:mod:`myapp.db.readpath`): that is the guarantee, and
it needs no reading of SQL. The functions here only refuse *early*, before
the database sees anything, what the ORM knows to be a write: pending ORM
changes at flush, and ORM/Core ``insert()``/``update()``/``delete()``
constructs (:func:`statement_is_dml`). :func:`statement_writes` (a guess for
``text()``) only decides which statements mark the session changed and count
in a batch; it never refuses anything.
"""

from __future__ import annotations

import re

from sqlalchemy.orm import ORMExecuteState, Session

from .errors import MaintenanceMode, ReadOnlyViolation

#: ``Session.info`` key: the session is read-only (set by ``db_read_only``).
READ_ONLY = "myapp.read_only"
#: ``Session.info`` key: the :class:`MaintenanceSwitch` shared by a factory's sessions.
MAINTENANCE = "myapp.maintenance"


class MaintenanceSwitch:
    """The global read-only switch: while ``on``, every write unit of work fails cleanly."""

    def __init__(self, on: bool = False, reason: str = "") -> None:
        self.on = on
        self.reason = reason

    def __bool__(self) -> bool:
        return self.on


_WRITE_SQL = re.compile(
    r"^\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*"
    r"(insert|update|delete|merge|replace|upsert|create|drop|alter|truncate|grant|revoke|"
    r"copy|with|call|do|lock|comment|reindex|vacuum|cluster|refresh|set\s+(?!transaction))\b",
    re.IGNORECASE | re.DOTALL,
)


def statement_writes(state: ORMExecuteState) -> bool:
    """Does this ``session.execute`` write? ORM/Core DML yes, SELECT no, ``text()`` by keyword.

    A guess for ``text()`` (a ``WITH`` may only read): used to mark the session
    changed and to count batch rows, never to refuse a statement.
    """
    if state.is_select:  # the common case first
        return False
    if state.is_insert or state.is_update or state.is_delete:
        return True
    text = getattr(state.statement, "text", None)
    if text is None:  # some other executable (DDL, ...): assume it writes
        return True
    return bool(_WRITE_SQL.match(text))


def statement_is_dml(state: ORMExecuteState) -> bool:
    """Is this an ORM/Core INSERT, UPDATE or DELETE construct (no SQL text is read)?"""
    return bool(state.is_insert or state.is_update or state.is_delete)


def refuse_in_maintenance(
    session: Session, what: str, outcome: str = "and nothing was written"
) -> None:
    """Raise :class:`MaintenanceMode` if ``session``'s maintenance switch is on."""
    switch = session.info.get(MAINTENANCE)
    if switch:
        reason = f" ({switch.reason})" if switch.reason else ""
        raise MaintenanceMode(
            f"the service is in read-only maintenance mode{reason}: {what} was refused {outcome}"
        )


def refuse_write(session: Session, what: str) -> None:
    """Raise if ``session`` may not write (maintenance mode, a read-only unit of work)."""
    refuse_in_maintenance(session, what)
    if session.info.get(READ_ONLY):
        raise ReadOnlyViolation(
            f"{what} in a read-only unit of work (db_read_only(), or a GET/HEAD/OPTIONS "
            "request): it cannot write; nothing was written. Write in db_transaction(), in a "
            "request whose method may write."
        )
