"""Issue 3, items 8 and 11: the example scripts run as written, in a real process.

``examples/seed003_usage.py`` runs seed 003's usage snippets; the docs'
examples live in ``examples/session_management.py``. Each runs in a
subprocess against a fresh SQLite file and against the run's PostgreSQL
database (where it cleans up after itself).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from myapp.models import Event, Item

ROOT = Path(__file__).resolve().parents[3]


def run_example(name: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MYAPP_ENV")}
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), url],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def target_url(backend: str, dbengine: Any, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'example.sqlite'}"  # a fresh file: init_db() makes it
    return dbengine.url.render_as_string(hide_password=False)


def leftovers(dbengine: Any) -> tuple[int, int]:
    with dbengine.connect() as conn:
        events = conn.scalar(select(func.count()).select_from(Event))
        items = conn.scalar(select(func.count()).select_from(Item))
    return events, items


def test_seed003_usage(backend: str, dbengine: Any, tmp_path: Path) -> None:
    before = leftovers(dbengine)
    result = run_example("seed003_usage.py", target_url(backend, dbengine, tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "basic/update: [('ev_001', 'Updated Title')]" in lines
    assert "basic/delete: []" in lines
    assert "transaction/failed: IntegrityError" in lines
    assert "transaction/none: [('ev_001', 'Event 1'), ('ev_002', 'Event 2')]" in lines
    assert "savepoint/failed: IntegrityError" in lines
    assert (
        "savepoint/independent: [('ev_001', 'Event 1'), ('ev_002', 'Event 2'), "
        "('ev_003', 'Event 3')]" in lines
    )
    assert lines[-1] == "seed 003 usage: ok"
    assert result.stderr == ""  # no warnings either
    assert leftovers(dbengine) == before


def test_session_management_examples(backend: str, dbengine: Any, tmp_path: Path) -> None:
    before = leftovers(dbengine)
    result = run_example("session_management.py", target_url(backend, dbengine, tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "session management examples: ok"
    assert result.stderr == ""  # no warnings either
    assert leftovers(dbengine) == before


@pytest.mark.parametrize("name", ["seed003_usage.py", "session_management.py"])
def test_examples_explain_their_usage(name: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "python examples/" + name in result.stderr
