"""Deadlocks (SQLSTATE 40P01; InnoDB's 1213) are retried, in requests and units of work; once.

Two real threads, each on its own connection, lock two rows in opposite
orders; a barrier makes sure both hold their first row before asking for the
second, so PostgreSQL detects a real deadlock (after ``deadlock_timeout``) and
aborts one of them. Each unit of work also inserts a row and registers an
``on_commit`` hook: across the retry, each row is committed exactly once and
each hook runs exactly once. With a single attempt, the loser gets a clear
409 JSON (request) or the 40P01 error (unit of work), and nothing it did is
kept.

Serialization failures (40001) are already proven the same way:
``tests/db/stack/test_retry.py`` (requests, at write and at commit time, 409
after the last attempt) and ``tests/db/units/test_transaction.py::
test_attempts_retries_a_real_serialization_failure`` (``db_transaction``).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import pytest
from reliability_helpers import Live, add_view, client, run_threads
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from myapp.db import current_session, db_transaction, is_transient, on_commit
from myapp.db.mysql import error_code
from myapp.models import Item

pytestmark = pytest.mark.server_only  # PostgreSQL (40P01) and MySQL/MariaDB (InnoDB's 1213)

ORDERS = ("ab", "ba")


class Deadlock:
    """Two rows, and units of work that lock them in the order their label says."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.rows = {"a": live.insert_item("-lock-a"), "b": live.insert_item("-lock-b")}
        self.barrier = threading.Barrier(2, timeout=30)
        self.attempts: dict[str, list[int]] = defaultdict(list)
        self.hooks: list[str] = []
        self.lock = threading.Lock()

    def work(self, session: Any, label: str, attempt: int) -> None:
        """Insert this unit's row, register its hook, then take the two locks (deadlock)."""
        with self.lock:
            self.attempts[label].append(attempt)
        session.add(Item(name=self.live.name(f"-row-{label}")))
        session.flush()
        on_commit(lambda: self.hooks.append(label))
        first, second = (self.rows[c] for c in label)
        session.execute(select(Item.id).where(Item.id == first).with_for_update())
        if attempt == 0:
            self.barrier.wait()  # both units hold their first row now
        session.execute(select(Item.id).where(Item.id == second).with_for_update())

    def rows_written(self) -> dict[str, int]:
        names = self.live.item_names()
        return {label: names.count(self.live.name(f"-row-{label}")) for label in ORDERS}

    def view(self, request: Any) -> dict[str, Any]:
        label = request.matchdict["label"]
        attempt = request.environ["retry.attempt"]
        self.work(request.dbsession, label, attempt)
        return {"label": label, "attempt": attempt}

    def configure(self, config: Any) -> None:
        add_view(config, "/t/deadlock/{label}", self.view, request_method="POST")


def test_a_deadlocked_request_is_retried_and_both_succeed_once(live: Live) -> None:
    scenario = Deadlock(live)
    app = live.app(scenario.configure, **{"retry.attempts": "3"})

    def post(label: str) -> Any:
        return client(app).post(f"/t/deadlock/{label}", status=200).json

    answers = run_threads(lambda: post("ab"), lambda: post("ba"))
    assert sorted(a["label"] for a in answers) == ["ab", "ba"]
    # exactly one of the two was chosen as the deadlock victim and replayed once
    assert sorted(map(tuple, scenario.attempts.values())) == [(0,), (0, 1)]
    loser = next(label for label, tries in scenario.attempts.items() if tries == [0, 1])
    assert next(a for a in answers if a["label"] == loser)["attempt"] == 1
    assert scenario.rows_written() == {"ab": 1, "ba": 1}
    assert sorted(scenario.hooks) == ["ab", "ba"]  # each hook once, the aborted one never
    assert live.engine.pool.checkedout() == 0


def test_a_deadlock_on_the_last_attempt_is_a_409_json_and_writes_nothing(live: Live) -> None:
    scenario = Deadlock(live)
    app = live.app(scenario.configure, **{"retry.attempts": "1"})

    def post(label: str) -> Any:
        response = client(app).post(f"/t/deadlock/{label}", expect_errors=True)
        return label, response.status_int, response.content_type, response.json, response.headers

    results = run_threads(lambda: post("ab"), lambda: post("ba"))
    statuses = sorted(status for _, status, *_ in results)
    assert statuses == [200, 409]
    label, _, content_type, body, headers = next(r for r in results if r[1] == 409)
    assert content_type == "application/json"
    assert body == {"error": "the request conflicted with concurrent updates; retry it"}
    assert headers["Retry-After"] == "1"
    winner = "ba" if label == "ab" else "ab"
    assert scenario.rows_written() == {label: 0, winner: 1}
    assert scenario.hooks == [winner]
    assert dict(scenario.attempts) == {"ab": [0], "ba": [0]}


def test_a_deadlocked_unit_of_work_is_retried_and_both_succeed_once(live: Live) -> None:
    """The same deadlock in ``@db_transaction(attempts=3)`` functions (management commands)."""
    scenario = Deadlock(live)

    def command(label: str) -> int:
        calls = 0

        @db_transaction(attempts=3)
        def run() -> None:
            nonlocal calls
            calls += 1
            scenario.work(current_session(), label, calls - 1)

        with live.database.scope():
            run()
        return calls

    calls = run_threads(lambda: command("ab"), lambda: command("ba"))
    assert sorted(calls) == [1, 2]
    assert scenario.rows_written() == {"ab": 1, "ba": 1}
    assert sorted(scenario.hooks) == ["ab", "ba"]


def test_a_unit_of_work_out_of_attempts_raises_the_deadlock_and_writes_nothing(
    live: Live,
) -> None:
    scenario = Deadlock(live)

    def command(label: str) -> BaseException | None:
        @db_transaction(attempts=1)
        def run() -> None:
            scenario.work(current_session(), label, 0)

        with live.database.scope():
            try:
                run()
            except OperationalError as exc:
                return exc
        return None

    results = run_threads(lambda: command("ab"), lambda: command("ba"))
    outcomes = dict(zip(ORDERS, results, strict=True))
    failed = [label for label, exc in outcomes.items() if exc is not None]
    assert len(failed) == 1
    error = outcomes[failed[0]]
    assert is_transient(error)
    if live.engine.dialect.name in ("mysql", "mariadb"):
        assert error_code(error) == 1213  # InnoDB: "Deadlock found when trying to get lock"
    else:
        assert getattr(error.orig, "sqlstate", None) == "40P01"
    winner = "ba" if failed[0] == "ab" else "ab"
    assert scenario.rows_written() == {failed[0]: 0, winner: 1}
    assert scenario.hooks == [winner]
