"""myapp's pytest toolkit (registered as the ``myapp`` pytest plugin).

Fixtures (see :mod:`myapp.testing.plugin`): ``dbengine``, ``db``, ``dbsession``,
``tm``, ``app``, ``testapp``, ``app_request``. Helpers named after the seeds are
importable from here.
"""

from .helpers import (
    capture_original_values,
    ensure_committed,
    nested_savepoint,
    persisted_fixture,
    verify_rollback_restores_values,
)

__all__ = [
    "capture_original_values",
    "ensure_committed",
    "nested_savepoint",
    "persisted_fixture",
    "verify_rollback_restores_values",
]
