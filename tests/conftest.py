"""The suite's configuration.

The myapp pytest toolkit (``myapp.testing``, loaded by the package's pytest11
entry point) is configured in setup.cfg like any project would configure it
(``myapp_ini``, ``myapp_alembic_ini``, ``myapp_db_prefix``): it provides the
fixtures ``db``, ``dbsession``, ``tm``, ``app``, ``testapp``, ``app_request``,
``dbengine``, ``committed_rows``.

The slow tests: ``@pytest.mark.slow`` in the test files, and the list below
(load, kill, callgrind and browser tests, the longest migration round trips in
subprocesses; whole files or single tests) marked here, so one place says
what ``make test`` leaves out (``-m "not slow"``); ``make test-all`` and CI
run everything. A listed test that no longer exists
is a collection error, so the list cannot rot silently.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import ForeignKeyConstraint

#: node id prefix (a file, or file::test) -> why it is slow
SLOW: dict[str, str] = {
    "tests/reliability/test_load.py": "load: 10,000 requests on a real server",
    "tests/reliability/test_killed_connections.py": "kill: backends terminated mid-request",
    "tests/benchmarks/test_smoke.py": "the benchmarks' smoke runs, callgrind instruction counts",
    "tests/dashboard/test_dashboard_browser.py": "browser: Chromium against a real server",
    "tests/dashboard/test_api_explorer_browser.py": "browser: Chromium, the offline API explorer",
    "tests/dashboard/test_demo_browser.py": "browser: Chromium, the README demo on a real server",
    "tests/observability/test_gunicorn.py": "two gunicorn workers on a real server",
    "tests/reliability/test_races.py": "20-way races on real connections",
    "tests/reliability/test_route_matrix.py": "every route x method x caller x body",
    "tests/reliability/test_operations.py": "real servers: HEAD, limits, smuggling, trusted hosts",
    "tests/db/test_replicas.py": "private PostgreSQL primary and streaming replica",
    "tests/commands/test_demo.py": "the README demo through `myapp` subprocesses",
    "tests/commands/test_papercuts.py::test_an_unreachable_database_is_one_clean_line_in_every_"
    "command": "every command in a subprocess against a dead database",
    "tests/services/test_domain_commands.py::test_generate_on_a_terminal_shows_a_progress_bar": (
        "a `myapp` subprocess on a pseudo-terminal"
    ),
    "tests/services/test_domain_commands.py::test_a_failing_run_says_what_was_committed_and_a_"
    "rerun_finishes": "`myapp` subprocesses, a failing run and its rerun",
    "tests/services/test_invoicing_real.py::"
    "test_sigkill_at_random_points_then_a_rerun_invoices_each_booking_once": "kill: SIGKILL",
    "tests/toolkit/test_backends.py::test_a_killed_runs_database_is_dropped_by_the_next_run": (
        "kill: SIGKILL of an inner pytest run"
    ),
    "tests/toolkit/test_backends.py::test_xdist_one_database_per_worker": (
        "an inner pytest-xdist run in a subprocess"
    ),
    # the three longest CLI tests: whole migration histories through `myapp` subprocesses
    "tests/commands/test_database_commands.py::test_migrate_downgrade_upgrade_round_trip": (
        "migrations: every revision down and up again, in subprocesses"
    ),
    "tests/commands/test_database_commands.py::test_initdb_creates_the_schema_and_check_follows": (
        "migrations: initdb then check, in subprocesses"
    ),
    "tests/commands/test_database_commands.py::test_migrate_revision_autogenerate": (
        "migrations: autogenerate a revision, in subprocesses"
    ),
    # two-phase commit: private PostgreSQL clusters with prepared transactions
    "tests/db/twophase/test_coordinator.py": "a private PostgreSQL cluster, two databases",
    "tests/db/twophase/test_crash_recovery.py": "kill: SIGKILL at each step of a two-phase commit",
    "tests/db/twophase/test_load.py": "8 threads of two-phase units, racing recover",
    "tests/services/test_invoicing_ledger.py": "a private cluster: invoices and ledger, CLI",
    "tests/benchmarks/test_twophase.py": "a private cluster behind the counting proxy",
}


@compiles(ForeignKeyConstraint, "mysql")
@compiles(ForeignKeyConstraint, "mariadb")
def _immediate_foreign_keys_on_mysql(element: Any, compiler: Any, **kw: Any) -> str:
    """InnoDB has no deferred constraints (it checks a foreign key at each statement).

    A few test tables declare ``DEFERRABLE`` keys to make a COMMIT fail; on the
    mysql backend they are created with ordinary keys, and the tests that need a
    deferred check are marked ``not_mysql``.
    """
    text = compiler.visit_foreign_key_constraint(element, **kw)
    return text.replace(" DEFERRABLE INITIALLY DEFERRED", "").replace(" DEFERRABLE", "")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seen_files = set()
    used = set()
    for item in items:
        nodeid = item.nodeid
        seen_files.add(nodeid.split("::")[0])
        for prefix in SLOW:
            if nodeid == prefix or nodeid.startswith((prefix + "::", prefix + "[")):
                item.add_marker(pytest.mark.slow)
                used.add(prefix)
    # judged only for files collected whole (no "file::test" argument)
    stale = [p for p in SLOW if p not in used and p.split("::")[0] in seen_files]
    if stale and not any("::" in arg for arg in config.args):
        raise pytest.UsageError(f"tests/conftest.py SLOW lists tests that do not exist: {stale}")
