"""myapp's database layer: sessions joined to the ``transaction`` manager.

Liftable into another project: nothing here imports from the domain. The
public API:

* wiring: :class:`Database`, :func:`make_session_factory`,
  :func:`engine_from_settings`, ``config.include("myapp.db.pyramid")``;
* finding the unit of work: :func:`current_session`, :func:`current_scope`;
* units of work: :class:`db_transaction`, :class:`savepoint`,
  :func:`db_read_only`, :func:`db_batch_operation`, :func:`is_in_transaction`,
  :func:`get_rollback`, :func:`set_rollback`, :func:`mark_for_rollback_on_error`,
  :func:`on_commit`;
* the transaction manager: :func:`get_tm`, :func:`current_transaction`,
  :func:`join_transaction`, :func:`mark_changed`;
* models: :class:`Base`, :class:`BaseModel`, :func:`init_db`;
* more than one database: ``Database.add_database()``, ``current_session(name)``,
  :class:`TwoPhaseCommitError`, recovery in :mod:`myapp.db.twophase`
  (docs/multiple-databases.md);
* errors: see :mod:`myapp.db.errors`.
"""

from .batch import BatchProgress, db_batch_operation
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
from .manager import current_transaction, get_tm
from .model import Base, BaseModel, UTCDateTime, init_db, utcnow
from .retry import is_disconnect, is_transient
from .scope import Database, Scope, current_scope, current_session, make_session_factory
from .session import Session
from .session import join_session as join_transaction
from .session import mark_session_changed as mark_changed
from .twophase import TwoPhaseCommitError
from .units import (
    db_read_only,
    db_transaction,
    get_rollback,
    is_in_transaction,
    mark_for_rollback_on_error,
    on_commit,
    savepoint,
    set_rollback,
)
from .writes import MaintenanceSwitch

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
    "TwoPhaseCommitError",
    "UTCDateTime",
    "create_engine_for",
    "current_scope",
    "current_session",
    "current_transaction",
    "db_batch_operation",
    "db_read_only",
    "db_transaction",
    "engine_from_settings",
    "get_rollback",
    "get_tm",
    "init_db",
    "is_disconnect",
    "is_in_transaction",
    "is_transient",
    "join_transaction",
    "make_session_factory",
    "mark_changed",
    "mark_for_rollback_on_error",
    "on_commit",
    "savepoint",
    "set_rollback",
    "utcnow",
]
