"""myapp's pytest toolkit (the ``myapp`` pytest plugin). Guide: docs/testing.md.

Configure it with ini options (:mod:`myapp.testing.config`); the fixtures
(:mod:`myapp.testing.fixtures`: ``backend``, ``dbengine``, ``database``,
``app_settings``, ``app``, ``db``, ``dbsession``, ``tm``, ``testapp``,
``app_request``, ``request_thread``, ``committed_rows``) exist only then. The
``@pytest.mark.doomed`` mode; the leak guard (:mod:`myapp.testing.tracker`).

Importable from here: the rollback helpers (:mod:`myapp.testing.helpers`),
:class:`CommittedRows` (real commits, cleaned up), :func:`isolated_db`,
:func:`track` (put an engine of your own under the leak guard), :class:`TestDB`
and :class:`LeakError`.
"""

from .committed import CommittedRows
from .helpers import (
    capture_original_values,
    ensure_committed,
    nested_savepoint,
    persisted_fixture,
    verify_rollback_restores_values,
)
from .isolation import TestDB, isolated_db
from .tracker import LeakError, track

__all__ = [
    "CommittedRows",
    "LeakError",
    "TestDB",
    "capture_original_values",
    "ensure_committed",
    "isolated_db",
    "nested_savepoint",
    "persisted_fixture",
    "track",
    "verify_rollback_restores_values",
]
