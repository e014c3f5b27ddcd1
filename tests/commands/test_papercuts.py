"""What a new user meets on the command line: clear one-line errors, readable output, helpers.

Each test runs the real console script in a subprocess, as the user would.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from myapp.services.tokens import ADMIN_SETTING, hash_token

from .conftest import Cli, assert_one_error_line, clean_environ, run_myapp, write_ini

UNREACHABLE = "postgresql+psycopg://127.0.0.1:1/nope"

#: every command that touches the database, with the arguments it needs
DATABASE_COMMANDS = [
    ["initdb"],
    ["check"],
    ["migrate", "current"],
    ["migrate", "upgrade"],
    ["shell", "-C", "dbsession.execute(select(1))"],
    ["seed"],
    ["seed", "--reset"],
    ["dispatch", "--all"],
    ["dispatch", "--company", "1"],
    ["invoices", "generate", "--period", "2026-10"],
    ["invoices", "list", "--period", "2026-10"],
]


@pytest.fixture
def ini(tmp_path: Path) -> Path:
    return write_ini(tmp_path / "app.ini", f"sqlite:///{tmp_path}/db/app.sqlite")


@pytest.mark.parametrize("argv", DATABASE_COMMANDS, ids=[" ".join(a) for a in DATABASE_COMMANDS])
def test_an_unreachable_database_is_one_clean_line_in_every_command(
    ini: Path, argv: list[str]
) -> None:
    result = run_myapp("-c", str(ini), *argv, env=clean_environ(DATABASE_URL=UNREACHABLE))
    line = assert_one_error_line(result, 1, f"cannot connect to the database {UNREACHABLE}: ")
    assert "refused" in line
    for noise in ("sqlalche.me", "BatchFailed", "run it again", "OperationalError", "Background"):
        assert noise not in line, line


@pytest.mark.parametrize(
    ("value", "shown", "hidden"),
    [
        ("notaurl", "'notaurl'", None),
        ("postgresql://bob:s3cret@127.0.0.1:notaport/db", "bob:***@127.0.0.1:notaport", "s3cret"),
        ("nosuchdialect://alice:pa55@host/db", "unknown database dialect", "pa55"),
    ],
    ids=["not-a-url", "bad-port", "unknown-dialect"],
)
def test_a_bad_database_url_names_the_variable_and_hides_the_password(
    ini: Path, value: str, shown: str, hidden: str | None
) -> None:
    result = run_myapp("-c", str(ini), "check", env=clean_environ(DATABASE_URL=value))
    assert_one_error_line(result, 1, "DATABASE_URL", "is not a usable database URL", shown)
    if hidden:
        assert hidden not in result.stderr and hidden not in result.stdout


def test_a_bad_url_in_the_ini_file_names_the_setting(tmp_path: Path) -> None:
    ini = write_ini(tmp_path / "app.ini", "notaurl")
    result = run_myapp("-c", str(ini), "check")
    assert_one_error_line(result, 1, "sqlalchemy.url", "'notaurl'", "is not a usable database URL")


def test_routes_are_readable(ini: Path, tmp_path: Path) -> None:
    table = run_myapp("-c", str(ini), "routes", cwd=tmp_path)
    assert table.returncode == 0, table
    assert "object at 0x" not in table.stdout
    assert "MultiView" not in table.stdout
    routes = json.loads(run_myapp("-c", str(ini), "routes", "--json", cwd=tmp_path).stdout)
    assert all("object at 0x" not in row["view"] for row in routes)
    # a route with several views (one per method) is listed view by view
    bookings = {
        tuple(row["methods"]): row["view"] for row in routes if row["name"] == "api.bookings"
    }
    assert bookings[("GET",)] == "myapp.api.views.bookings.list_bookings"
    assert bookings[("POST",)] == "myapp.api.views.bookings.create_booking"


def test_tokens_create_admin_prints_a_token_and_its_setting(ini: Path) -> None:
    result = run_myapp("-c", str(ini), "tokens", "create-admin")
    assert result.returncode == 0, result
    assert result.stderr == ""  # no RuntimeWarning, no log noise
    token = result.stdout.split("it is not stored): ", 1)[1].split()[0]
    assert token.startswith("mya_") and len(token) == 47
    assert f"{ADMIN_SETTING} = {hash_token(token)}" in result.stdout
    again = run_myapp("-c", str(ini), "tokens", "create-admin")
    assert token not in again.stdout  # a new one each time


@pytest.mark.postgresql_only  # SQLite creates its file by itself
def test_initdb_creates_a_missing_postgresql_database(cli: Cli) -> None:
    if cli.backend != "postgresql":
        pytest.skip("PostgreSQL only: SQLite creates its file by itself")
    url = make_url(cli.url)
    name = f"{url.database}_new_{uuid.uuid4().hex[:8]}"
    target = url.set(database=name).render_as_string(hide_password=False)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        result = run_myapp("-c", str(cli.ini), "initdb", env=clean_environ(DATABASE_URL=target))
        assert result.returncode == 0, result
        assert f"created the database {name}" in result.stdout
        again = run_myapp("-c", str(cli.ini), "initdb", env=clean_environ(DATABASE_URL=target))
        assert again.returncode == 0, again
        assert "already at" in again.stdout and "created" not in again.stdout
        check = run_myapp("-c", str(cli.ini), "check", env=clean_environ(DATABASE_URL=target))
        assert check.returncode == 0, check
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.postgresql_only
def test_initdb_says_what_to_run_when_it_cannot_create_the_database(cli: Cli) -> None:
    if cli.backend != "postgresql":
        pytest.skip("PostgreSQL only")
    url = make_url(cli.url)
    role = f"nocreate_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN NOCREATEDB'))
    name = f"{url.database}_denied"
    target = url.set(database=name, username=role).render_as_string(hide_password=False)
    try:
        result = run_myapp("-c", str(cli.ini), "initdb", env=clean_environ(DATABASE_URL=target))
        assert_one_error_line(
            result, 1, f"the database '{name}' does not exist and could not be created",
            f"createdb -h {url.host}", f"-U {role} {name}",
        )  # fmt: skip
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def test_the_docs_speak_to_users_not_of_the_projects_history() -> None:
    """README.md and docs/ name what they mean ("`benchmarks/flask_items.py`'s Flask app"), not the
    project's history ("seed 004's Flask app"); ``--seed 42`` and ``seed 42:`` (the demo
    command's option and output) are not history."""
    root = Path(__file__).resolve().parents[2]
    history = re.compile(r"\bseeds? 0\d\d\b|\bseed 0\d\d's\b", re.IGNORECASE)
    found = [
        f"{path.relative_to(root)}:{n}: {line.strip()}"
        for path in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if history.search(line)
    ]
    assert len(list((root / "docs").rglob("*.md"))) >= 5  # the docs are really read
    assert found == []
