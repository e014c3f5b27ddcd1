"""A load of concurrent cross-database units of work on a real server: no disagreement, no leak.

Eight threads commit units of work that write to ``main`` and ``ledger`` (some
fail on purpose, some write to one database only), first alone, then while
``recover()`` runs in a loop with no age bound, racing the coordinators
(the worst an operator could do). Afterwards every id is in both databases or
in neither, and no prepared transaction is left.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from sqlalchemy import text

from myapp.db import Database, current_session, db_transaction
from myapp.db.twophase import TwoPhaseCommitError, recover

from .conftest import Pair

THREADS = 8
UNITS = 40


class Boom(Exception):
    pass


def _run_units(db: Database, base: int, outcomes: dict[int, str], lock: threading.Lock) -> None:
    with db.scope():
        for n in range(UNITS):
            id_ = base + n
            kind = ("both", "both", "both", "fail", "main-only")[n % 5]
            try:
                with db_transaction():
                    current_session().execute(
                        text("INSERT INTO entries VALUES (:i, 'm')"), {"i": id_}
                    )
                    if kind != "main-only":
                        current_session("ledger").execute(
                            text("INSERT INTO entries VALUES (:i, 'l')"), {"i": id_}
                        )
                    if kind == "fail":
                        raise Boom
                result = "committed"
            except Boom:
                result = "failed"
            except TwoPhaseCommitError as exc:  # only when a recovery raced us
                result = "in doubt" if exc.in_doubt else "aborted by recovery"
            with lock:
                outcomes[id_] = f"{kind}:{result}"


def _load(db: Database) -> dict[int, str]:
    outcomes: dict[int, str] = {}
    lock = threading.Lock()
    threads = [
        threading.Thread(target=_run_units, args=(db, 1000 * (t + 1), outcomes, lock))
        for t in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(outcomes) == THREADS * UNITS
    return outcomes


def _disagreements(pair: Pair, outcomes: dict[int, str]) -> list[Any]:
    main = {r[0] for r in pair.rows("main")}
    ledger = {r[0] for r in pair.rows("ledger")}
    bad = []
    for id_, outcome in outcomes.items():
        kind, result = outcome.split(":")
        if kind == "main-only":
            if (id_ in main) != (result == "committed") or id_ in ledger:
                bad.append((id_, outcome))
        elif (id_ in main) != (id_ in ledger):
            bad.append((id_, outcome, id_ in main, id_ in ledger))
        elif result == "committed" and id_ not in main:
            bad.append((id_, outcome, "lost"))
        elif result in ("failed", "aborted by recovery") and id_ in main:
            bad.append((id_, outcome, "committed anyway"))
    return bad


def test_concurrent_cross_database_units_agree_and_leak_nothing(pair: Pair) -> None:
    db = pair.database()
    try:
        outcomes = _load(db)
    finally:
        db.dispose()
    assert _disagreements(pair, outcomes) == []
    assert pair.prepared() == []
    results = {o.split(":")[1] for o in outcomes.values()}
    assert results == {"committed", "failed"}
    both = sum(1 for o in outcomes.values() if o == "both:committed")
    assert both == THREADS * UNITS * 3 // 5
    assert len([d for d in pair.decisions() if d[1] == "commit"]) == both


def test_units_racing_an_unbounded_recovery_still_agree(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="myapp.db.twophase")  # the races are logged
    db = pair.database()
    stop = threading.Event()
    recoveries: list[Any] = []

    def recover_in_a_loop() -> None:
        while not stop.is_set():
            recoveries.append(recover(db, min_age=0))

    recoverer = threading.Thread(target=recover_in_a_loop)
    recoverer.start()
    try:
        outcomes = _load(db)
    finally:
        stop.set()
        recoverer.join(timeout=60)
    try:
        final = recover(db, min_age=0)  # whatever the races left in doubt
        assert final.failed == []
        assert pair.prepared() == []
    finally:
        db.dispose()
    assert _disagreements(pair, outcomes) == []
    assert len(recoveries) > 1
    # a race with a coordinator is "resolved elsewhere", never a failure
    assert [r.failed for r in recoveries if r.failed] == []
