"""Real crashes: a process SIGKILLed at each step of a two-phase commit, then ``myapp recover``.

The child process (``crash_child.py``) commits one unit of work writing to
``main`` and ``ledger`` and stops at the step under test; the test kills it
with SIGKILL (nothing runs after that: no ``finally``, no rollback by the
client), then runs the real ``myapp recover`` twice. Whatever the step,
nothing stays prepared, both databases agree (both have the unit's row or
neither has), and the second run does nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from myapp.db import Database
from myapp.db.twophase import in_doubt_lines
from myapp.testing.cli import ROOT, clean_environ, run_myapp

from .conftest import Pair

CHILD = Path(__file__).with_name("crash_child.py")

#: the step where the child dies -> does the unit's row survive recovery?
POINTS = {
    "before-prepare": False,
    "after-first-prepare": False,
    "after-both-prepares": False,
    "after-decision": True,
    "after-first-commit": True,
}


def _crash(pair: Pair, id_: int, point: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), pair.main_url, pair.ledger_url, str(id_), point],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_environ(),
    )
    try:
        line = proc.stdout.readline() if proc.stdout is not None else ""
        assert line.strip() == f"AT {point}", (line, proc.stderr.read() if proc.stderr else "")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def recover_cli(pair: Pair, *args: str) -> str:
    env = clean_environ(
        DATABASE_URL=pair.main_url, MYAPP_DATABASES="ledger", LEDGER_DATABASE_URL=pair.ledger_url
    )
    result = run_myapp("-c", str(ROOT / "testing.ini"), "recover", *args, env=env)
    assert result.returncode == 0, str(result)
    return result.stdout


def test_a_crash_at_every_step_is_resolved_by_recover_and_the_databases_agree(
    pair: Pair,
) -> None:
    for id_, point in enumerate(POINTS, start=1):
        _crash(pair, id_, point)
    in_doubt = pair.prepared()
    # the steps between the first PREPARE and the last COMMIT PREPARED leave prepared ones
    assert len(in_doubt) == 1 + 2 + 2 + 1, in_doubt

    out = recover_cli(pair, "--min-age", "0")
    # after-decision: 2 committed, after-first-commit: 1; after-first-prepare: 1 rolled
    # back, after-both-prepares: 2
    assert "recover: 3 committed, 3 rolled back, 0 left alone" in out, out
    assert pair.prepared() == []
    survivors = [i for i, kept in enumerate(POINTS.values(), start=1) if kept]
    assert [r[0] for r in pair.rows("main")] == survivors == [4, 5]
    assert [r[0] for r in pair.rows("ledger")] == survivors
    assert {outcome for _txid, outcome in pair.decisions()} == {"commit", "abort"}

    again = recover_cli(pair, "--min-age", "0")
    assert "recover: 0 committed, 0 rolled back, 0 left alone" in again, again
    assert again.count("\n") == 1  # nothing but the summary
    # the decision records (2 commits, 2 recovery aborts) go once everything is resolved
    purge = recover_cli(pair, "--min-age", "0", "--purge-after", "0")
    assert "4 old decision record(s) purged" in purge, purge
    assert pair.decisions() == []


def test_recover_leaves_young_prepared_transactions_alone(pair: Pair) -> None:
    _crash(pair, 1, "after-both-prepares")
    out = recover_cli(pair)  # the default bound: 30 s
    assert "0 committed, 0 rolled back, 2 left alone" in out, out
    assert len(pair.prepared()) == 2
    recover_cli(pair, "--min-age", "0")
    assert pair.prepared() == []
    assert pair.rows("main") == [] and pair.rows("ledger") == []


def test_myapp_check_warns_about_old_in_doubt_transactions(pair: Pair) -> None:
    _crash(pair, 1, "after-decision")
    env = clean_environ(
        DATABASE_URL=pair.main_url, MYAPP_DATABASES="ledger", LEDGER_DATABASE_URL=pair.ledger_url
    )
    check = run_myapp("-c", str(ROOT / "testing.ini"), "check", env=env)
    # (the test databases have no alembic history: check also says migrations are pending)
    assert "warning: 2 in-doubt prepared transaction(s)" not in check.stdout, check  # 60 s bound
    assert "two-phase commit: no in-doubt transaction older than 60 s" in check.stdout, check

    db = Database.from_url(pair.main_url, databases={"ledger": pair.ledger_url})
    try:
        lines = in_doubt_lines(db, older_than=0)
    finally:
        db.dispose()
    assert lines == [
        "warning: 1 in-doubt prepared transaction(s) on main older than 0 s (oldest "
        + lines[0].split("(oldest ")[1],
        "warning: 1 in-doubt prepared transaction(s) on ledger older than 0 s (oldest "
        + lines[1].split("(oldest ")[1],
    ]
    assert "run 'myapp recover'" in lines[0]
    recover_cli(pair, "--min-age", "0")
    assert pair.prepared() == []
    assert pair.rows("main") == [(1, "main")] and pair.rows("ledger") == [(1, "ledger")]
