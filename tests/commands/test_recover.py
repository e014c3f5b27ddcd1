"""``myapp recover`` on the command line: one-line errors, and nothing to do on SQLite.

Its real work (in-doubt transactions left by SIGKILLed processes) is proved in
``tests/db/twophase/test_crash_recovery.py``, on private PostgreSQL clusters.
"""

from __future__ import annotations

from pathlib import Path

from myapp.testing.cli import assert_one_error_line, clean_environ, run_myapp, write_ini

UNREACHABLE = "postgresql+psycopg://127.0.0.1:1/nope"


def test_an_unreachable_database_is_one_clean_line(tmp_path: Path) -> None:
    ini = write_ini(tmp_path / "app.ini", f"sqlite:///{tmp_path}/app.sqlite")
    result = run_myapp("-c", str(ini), "recover", env=clean_environ(DATABASE_URL=UNREACHABLE))
    line = assert_one_error_line(result, 1, f"cannot connect to the database {UNREACHABLE}: ")
    assert "refused" in line and "Traceback" not in result.stderr


def test_sqlite_has_nothing_to_recover_and_bad_arguments_are_usage_errors(
    tmp_path: Path,
) -> None:
    ini = write_ini(tmp_path / "app.ini", f"sqlite:///{tmp_path}/app.sqlite")
    result = run_myapp("-c", str(ini), "recover", env=clean_environ())
    assert result.returncode == 0, result
    assert result.stdout == "recover: nothing to do (SQLite has no prepared transactions)\n"
    bad = run_myapp("-c", str(ini), "recover", "--min-age", "-1", env=clean_environ())
    assert_one_error_line(bad, 2, "--min-age", "must not be negative")
