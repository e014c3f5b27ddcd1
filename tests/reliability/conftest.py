"""Fixtures for the reliability tests (issue 6); helpers in reliability_helpers.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from reliability_helpers import Live
from sqlalchemy.engine import Engine


@pytest.fixture
def live(dbengine: Engine) -> Iterator[Live]:
    """Real commits on the run's database (per backend), cleaned up afterwards.

    Fails the test if a connection of its engine is still checked out at the end.
    """
    stack = Live(dbengine.url.render_as_string(hide_password=False))
    try:
        yield stack
        assert stack.engine.pool.checkedout() == 0, "a connection is still checked out"
    finally:
        stack.cleanup()
