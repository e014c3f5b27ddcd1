"""Fixtures for the request/transaction stack tests (helpers in stack_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from stack_helpers import ConnectionStack, RealStack

from myapp.db import get_tm


@pytest.fixture(params=["connection", "real"])
def stack(request: pytest.FixtureRequest, dbengine: Engine) -> Any:
    """Run the test on the test's connection and on a real engine (real commits).

    (``dbengine`` is named here so that the backend parametrization applies.)
    """
    if request.param == "real":
        return request.getfixturevalue("real")
    return ConnectionStack(
        request.getfixturevalue("db"),
        request.getfixturevalue("database"),
        request.getfixturevalue("request_thread"),
    )


@pytest.fixture
def real(dbengine: Engine, request_thread: Any) -> Iterator[RealStack]:
    """A :class:`RealStack` on the run's database (per backend); cleaned up afterwards."""
    stack = RealStack(dbengine.url.render_as_string(hide_password=False), request_thread)
    try:
        yield stack
        assert stack.open_transaction() is None, "a request left its transaction open"
        assert stack.engine.pool.checkedout() == 0, "a connection is still checked out"
    finally:
        if stack.open_transaction() is not None:  # never leave the shared worker dirty
            request_thread.run(lambda: get_tm().abort())
        stack.cleanup()
