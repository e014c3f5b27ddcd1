"""myapp's database layer: sessions joined to the ``transaction`` manager.

Liftable into another project: nothing here imports from the domain. The
public API:

* wiring: :class:`Database`, :func:`make_session_factory`,
  :func:`engine_from_settings`, ``config.include("myapp.db.pyramid")``;
* finding the unit of work: :func:`current_session`, :func:`current_scope`;
* units of work: :class:`db_transaction`, :class:`savepoint`,
  :func:`db_read_only`, :func:`db_batch_operation`, :func:`is_in_transaction`,
  :func:`on_commit`, :func:`get_tm`;
* models: :class:`Base`, :class:`BaseModel`, :func:`init_db`;
* errors: see :mod:`myapp.db.errors`.
"""

from .bridge import MaintenanceSwitch, Session, get_tm, mark_changed, on_commit
from .engine import create_engine_for, engine_from_settings
from .errors import (
    BatchFailed,
    DatabaseError,
    MaintenanceMode,
    NestedTransactionError,
    NoScope,
    NoUnitOfWork,
    ReadOnlyViolation,
    TransactionFailed,
    TransactionManaged,
)
from .model import Base, BaseModel, UTCDateTime, init_db, utcnow
from .scope import Database, Scope, current_scope, current_session, make_session_factory
from .units import (
    BatchProgress,
    db_batch_operation,
    db_read_only,
    db_transaction,
    is_in_transaction,
    is_transient,
    savepoint,
)

__all__ = [
    "Base",
    "BaseModel",
    "BatchFailed",
    "BatchProgress",
    "Database",
    "DatabaseError",
    "MaintenanceMode",
    "MaintenanceSwitch",
    "NestedTransactionError",
    "NoScope",
    "NoUnitOfWork",
    "ReadOnlyViolation",
    "Scope",
    "Session",
    "TransactionFailed",
    "TransactionManaged",
    "UTCDateTime",
    "create_engine_for",
    "current_scope",
    "current_session",
    "db_batch_operation",
    "db_read_only",
    "db_transaction",
    "engine_from_settings",
    "get_tm",
    "init_db",
    "is_in_transaction",
    "is_transient",
    "make_session_factory",
    "mark_changed",
    "on_commit",
    "savepoint",
    "utcnow",
]
