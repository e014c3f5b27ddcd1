"""myapp's pytest toolkit (registered as the ``myapp`` pytest plugin). Guide: docs/testing.md.

Fixtures (see :mod:`myapp.testing.plugin`): ``backend``, ``dbengine``, ``database``,
``app``, ``db``, ``dbsession``, ``tm``, ``testapp``, ``app_request``; the
``@pytest.mark.doomed`` mode; the leak guard. Factories: :mod:`myapp.testing.factories`.
Helpers named after the seeds (000, 001) are importable from here.
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
