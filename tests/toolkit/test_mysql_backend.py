"""The toolkit's third backend: ``--dburl mysql://...`` (MySQL/MariaDB), in inner pytest runs.

A fresh database per run, named like PostgreSQL's, ``utf8mb4``/``utf8mb4_nopad_bin``,
dropped after; the run's three backends in one command; ``not_mysql`` (not generated, listed
with its reason) and ``mysql_only`` (deselected without the backend).
"""

from __future__ import annotations

import textwrap

import pytest
from sqlalchemy import text

from myapp.db import create_engine_for

from .conftest import INNER_INI
from .conftest import PREFIX as DATABASE_PREFIX

pytestmark = pytest.mark.mysql_only

INNER_TESTS = """
    import pytest
    from sqlalchemy import text

    from myapp.models import Company

    def test_record(db, backend):
        name = db.session.scalar(text("SELECT DATABASE()" if backend == "mysql" else "SELECT 1"))
        db.session.add(Company(name="c"))
        db.session.commit()
        print("DATABASE", backend, name)

    @pytest.mark.not_mysql(reason="a reason the summary shows")
    def test_not_on_mysql(db, backend):
        assert backend != "mysql"

    @pytest.mark.mysql_only
    def test_only_on_mysql(db, backend):
        assert backend == "mysql"
"""


def _databases(url: str) -> dict[str, str]:
    engine = create_engine_for(url)
    try:
        with engine.connect() as conn:
            return dict(
                conn.execute(
                    text(
                        "SELECT schema_name, default_collation_name"
                        " FROM information_schema.schemata"
                        " WHERE schema_name LIKE :prefix"
                    ),
                    {"prefix": DATABASE_PREFIX + "%"},
                ).all()
            )
    finally:
        engine.dispose()


def test_a_fresh_mysql_database_per_run_dropped_after(inner, backend) -> None:
    inner.pytester.makepyfile(test_inner_mysql=textwrap.dedent(INNER_TESTS))
    before = _databases(inner.dburl)
    result = inner.run("-rP")
    result.assert_outcomes(passed=2)  # test_not_on_mysql is not generated for mysql
    line = next(x for x in result.stdout.lines if x.startswith("DATABASE mysql "))
    name = line.split()[-1]
    assert name.startswith(DATABASE_PREFIX) and name not in before
    assert name not in _databases(inner.dburl)  # dropped after the run
    result.stdout.fnmatch_lines(
        [
            "*not run on mysql: 1 test(s) (not_mysql)*",
            "*test_inner_mysql.py::test_not_on_mysql: a reason the summary shows",
        ]
    )


def test_three_backends_in_one_command_and_mysql_only_deselected(
    inner, backend, request, monkeypatch
) -> None:
    from myapp.testing.plugin import ENV_DBURL, server_url

    monkeypatch.delenv(ENV_DBURL, raising=False)
    inner.pytester.makepyfile(test_inner_mysql=textwrap.dedent(INNER_TESTS))
    inner.pytester.makeini(INNER_INI)
    pg = server_url(request.config, "postgresql")
    args = ["--dburl", inner.dburl, "-v"] + (["--dburl", pg] if pg else [])
    result = inner.pytester.runpytest(*args)
    backends = "sqlite, mysql, postgresql" if pg else "sqlite, mysql"
    result.stdout.fnmatch_lines([f"myapp backends: {backends}"])
    result.stdout.fnmatch_lines(
        ["*test_record[[]sqlite[]] PASSED*", "*test_record[[]mysql[]] PASSED*"]
    )
    outcomes = result.parseoutcomes()
    # test_record and test_not_on_mysql on every backend but mysql; test_only_on_mysql once
    assert outcomes["passed"] == (3 if pg else 2) * 2 - 1 + 1
    assert "skipped" not in outcomes
    # without the mysql backend: mysql_only is deselected, not skipped
    result = inner.pytester.runpytest("--backends", "sqlite", "-v")
    outcomes = result.parseoutcomes()
    assert outcomes.get("deselected") == 1 and "skipped" not in outcomes
