"""pyramid_retry replays requests that hit a real PostgreSQL serialization failure.

The view runs at SERIALIZABLE. On the attempts the test chooses, it lets a
second connection (another thread, real engine) commit a conflicting change
in the middle of the view, so PostgreSQL raises SQLSTATE 40001 either at the
view's write or at COMMIT. Attempts are recorded from ``environ["retry.attempt"]``.

pyramid_tm 2.6 never tags these errors for pyramid_retry once a catch-all
exception view rendered them: at COMMIT time it renders the error from its
commit handler and tags nothing; at write time it would tag the squashed
exception, but only *after* the commit veto, which already aborted because
the error response is a 5xx. Only ``tag_retryable`` in myapp's catch-all
error view makes them retryable; the contrast test shows that a catch-all
view without it stops the retries in both cases.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from pyramid.config import Configurator
from sqlalchemy import func, insert, select, text, update
from stack_helpers import ITEMS, RealStack, add_view, threaded

from myapp.models import Item

pytestmark = pytest.mark.postgresql_only


def _in_other_thread(fn: Callable[[], None]) -> None:
    """Run ``fn`` on another thread (its own connection) and wait for it."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # reported in the view's thread
            errors.append(exc)

    worker = threading.Thread(target=run, name="concurrent-writer")
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the concurrent writer is stuck"
    if errors:
        raise errors[0]


def _serializable(request: Any) -> None:
    request.dbsession.execute(text("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"))


class Scenario:
    """The two conflicting views and what they saw, for one test."""

    def __init__(self, real: RealStack, conflicting_attempts: int) -> None:
        self.real = real
        self.conflicting_attempts = conflicting_attempts
        self.attempts: list[int] = []
        self.returned: list[int] = []  # attempts whose view returned (a failure was at COMMIT)
        self.item_id = real.insert("-counter")

    # -- a write-time conflict: concurrent update of the row the view updates
    def update_view(self, request: Any) -> dict[str, Any]:
        attempt = request.environ["retry.attempt"]
        self.attempts.append(attempt)
        _serializable(request)
        item = request.dbsession.get(Item, self.item_id)  # the snapshot is taken here
        if attempt < self.conflicting_attempts:
            _in_other_thread(lambda: self._concurrent_update(attempt))
        item.name = f"{item.name}+view"
        request.dbsession.flush()  # 40001: could not serialize access due to concurrent update
        self.returned.append(attempt)
        return {"name": item.name, "attempt": attempt}

    def _concurrent_update(self, attempt: int) -> None:
        with self.real.engine.begin() as conn:
            conn.execute(
                update(ITEMS)
                .where(ITEMS.c.id == self.item_id)
                .values(name=self.real.name(f"-other{attempt}"))
            )

    # -- a commit-time conflict: write skew between two SERIALIZABLE transactions
    def skew_view(self, request: Any) -> dict[str, Any]:
        attempt = request.environ["retry.attempt"]
        self.attempts.append(attempt)
        _serializable(request)
        name_a, name_b = self.real.name("-A"), self.real.name("-B")
        seen_a = request.dbsession.scalar(
            select(func.count()).select_from(Item).where(Item.name == name_a)
        )
        request.dbsession.add(Item(name=name_b))
        request.dbsession.flush()  # succeeds: the conflict is only detected at COMMIT
        if attempt < self.conflicting_attempts:
            _in_other_thread(lambda: self._concurrent_skew(name_a, name_b))
        self.returned.append(attempt)
        return {"attempt": attempt, "seen_a": seen_a}

    def _concurrent_skew(self, name_a: str, name_b: str) -> None:
        with self.real.engine.begin() as conn:
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            conn.scalar(select(func.count()).select_from(ITEMS).where(ITEMS.c.name == name_b))
            conn.execute(insert(ITEMS).values(name=name_a))

    def configure(self, config: Configurator) -> None:
        add_view(config, "/t/update", self.update_view, request_method="POST")
        add_view(config, "/t/skew", self.skew_view, request_method="POST")


def test_write_conflict_is_retried(real: RealStack) -> None:
    scenario = Scenario(real, conflicting_attempts=1)
    response = real.app(scenario.configure).post("/t/update", status=200)
    assert scenario.attempts == [0, 1]
    assert scenario.returned == [1]
    expected = real.name("-other0+view")
    assert response.json == {"name": expected, "attempt": 1}
    assert real.names() == [expected]


def test_write_conflict_on_every_attempt_gives_409(real: RealStack) -> None:
    scenario = Scenario(real, conflicting_attempts=3)
    response = real.app(scenario.configure, **{"retry.attempts": "3"}).post("/t/update", status=409)
    assert scenario.attempts == [0, 1, 2]
    assert scenario.returned == []
    assert response.content_type == "application/json"
    assert response.json == {"error": "the request conflicted with concurrent updates; retry it"}
    assert response.headers["Retry-After"] == "1"
    assert real.names() == [real.name("-other2")]  # only the concurrent writer committed


def test_commit_time_serialization_failure_is_retried(real: RealStack) -> None:
    scenario = Scenario(real, conflicting_attempts=1)
    response = real.app(scenario.configure).post("/t/skew", status=200)
    assert scenario.attempts == [0, 1]
    assert scenario.returned == [0, 1]  # attempt 0's view succeeded: it failed at COMMIT
    assert response.json == {"attempt": 1, "seen_a": 1}
    names = real.names()
    assert names.count(real.name("-A")) == 1 and names.count(real.name("-B")) == 1


def test_commit_time_serialization_failure_on_every_attempt_gives_409(real: RealStack) -> None:
    scenario = Scenario(real, conflicting_attempts=2)
    app = real.app(scenario.configure, **{"retry.attempts": "2"})
    response = app.post("/t/skew", status=409)
    assert scenario.attempts == [0, 1]
    assert scenario.returned == [0, 1]
    assert response.json == {"error": "the request conflicted with concurrent updates; retry it"}
    assert real.names().count(real.name("-B")) == 0  # no attempt of the view committed


def _app_with_plain_catch_all(real: RealStack, scenario: Scenario) -> Any:
    """myapp.db.pyramid with a catch-all JSON error view that does NOT call tag_retryable."""

    def plain_error(exc: Exception, request: Any) -> dict[str, Any]:
        request.response.status = 500
        return {"error": type(exc).__name__}

    settings = {"myapp.database": real.database, "retry.attempts": "3"}
    with Configurator(settings=settings) as config:
        config.include("myapp.db.pyramid")
        config.add_exception_view(plain_error, context=Exception, renderer="json")
        scenario.configure(config)
    return threaded(config.make_wsgi_app(), real.request_thread)


def test_without_tag_retryable_nothing_is_retried(real: RealStack) -> None:
    """The contrast: a catch-all view that does not tag stops retries (commit and write time)."""
    scenario = Scenario(real, conflicting_attempts=1)
    app = _app_with_plain_catch_all(real, scenario)
    response = app.post("/t/skew", status=500)
    assert response.json == {"error": "OperationalError"}
    assert scenario.attempts == [0]  # not retried
    assert real.names().count(real.name("-B")) == 0

    write_time = Scenario(real, conflicting_attempts=1)
    app = _app_with_plain_catch_all(real, write_time)
    response = app.post("/t/update", status=500)
    assert response.json == {"error": "OperationalError"}
    assert write_time.attempts == [0]  # the commit veto aborted before pyramid_tm could tag
