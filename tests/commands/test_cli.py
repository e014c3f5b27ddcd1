"""The ``myapp`` console script: help, routes, and its error paths (one line, exit status)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from myapp.commands import main

from .conftest import assert_one_error_line, clean_environ, run_myapp, write_ini

BUILTIN = ("check", "initdb", "migrate", "routes", "shell")
UNREACHABLE = "postgresql+psycopg://127.0.0.1:1/nope"


@pytest.fixture
def ini(tmp_path: Path) -> Path:
    """An ini file whose SQLite database does not exist (commands that need it must say so)."""
    return write_ini(tmp_path / "app.ini", f"sqlite:///{tmp_path}/db/app.sqlite")


def test_top_level_help_lists_the_commands() -> None:
    result = run_myapp("--help")
    assert result.returncode == 0, result
    assert result.stdout.startswith("usage: myapp")
    for name in BUILTIN:
        assert f"\n    {name} " in result.stdout
    # Python 3.13's argparse writes "-c, --config FILE"
    assert "-c FILE, --config FILE" in result.stdout or "-c, --config FILE" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    "argv",
    [
        [name, "--help"]
        for name in BUILTIN
        if name != "migrate"  # below, with its actions
    ]
    + [["migrate", "--help"]]
    + [
        ["migrate", action, "--help"]
        for action in ("upgrade", "downgrade", "current", "history", "revision", "check", "stamp")
    ],
    ids=lambda argv: " ".join(argv[:-1]),
)
def test_every_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """In-process (the same main() as the console script) to keep the subprocess count down."""
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"usage: myapp {' '.join(argv[:-1])}")
    assert "--config FILE" in out  # global options are accepted after the command too
    assert err == ""


def test_routes_lists_the_application_routes(ini: Path, tmp_path: Path) -> None:
    # the ini is found through $MYAPP_CONFIG, no -c
    env = clean_environ(MYAPP_CONFIG=str(ini))
    table = run_myapp("routes", env=env, cwd=tmp_path)
    assert table.returncode == 0, table
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["Name", "Pattern", "Methods", "View"]
    rows = [line.split() for line in lines[2:]]
    assert ["items", "/items", "POST", "myapp.views.items.create_item"] in rows
    assert ["items", "/items", "GET", "myapp.views.items.list_items"] in rows
    assert ["item", "/items/{id}", "GET", "myapp.views.items.get_item"] in rows

    as_json = run_myapp("-c", str(ini), "routes", "--json", cwd=tmp_path)
    assert as_json.returncode == 0, as_json
    routes = json.loads(as_json.stdout)
    assert {
        "name": "items",
        "pattern": "/items",
        "methods": ["GET"],
        "view": "myapp.views.items.list_items",
    } in routes
    assert not (tmp_path / "db" / "app.sqlite").exists(), "routes must not touch the database"


def test_missing_config_file(tmp_path: Path) -> None:
    default = run_myapp("check", cwd=tmp_path)  # no development.ini here
    assert_one_error_line(default, 2, "config file not found: development.ini", "-c/--config")

    explicit = run_myapp("shell", "-c", str(tmp_path / "missing.ini"), "-C", "print(1)")
    assert_one_error_line(explicit, 2, f"config file not found: {tmp_path / 'missing.ini'}")
    assert explicit.stdout == ""


@pytest.mark.parametrize(
    "argv",
    [["initdb"], ["check"], ["shell", "-C", "dbsession.execute(select(1))"]],
    ids=["initdb", "check", "shell"],
)
def test_unreachable_database(ini: Path, argv: list[str]) -> None:
    env = clean_environ(DATABASE_URL=UNREACHABLE)
    result = run_myapp("-c", str(ini), *argv, env=env)
    assert_one_error_line(result, 1, f"cannot connect to the database {UNREACHABLE}", "refused")


def test_missing_sqlite_database_for_check(ini: Path, tmp_path: Path) -> None:
    result = run_myapp("-c", str(ini), "check")
    assert_one_error_line(result, 1, "does not exist", "myapp initdb")
    assert not (tmp_path / "db" / "app.sqlite").exists()


def test_broken_config_is_one_line(tmp_path: Path) -> None:
    ini = write_ini(tmp_path / "broken.ini", "nosuchdialect://host/db")
    result = run_myapp("-c", str(ini), "check")
    assert_one_error_line(result, 1, "nosuchdialect")


def test_unknown_command_is_a_usage_error() -> None:
    result = run_myapp("nosuch")
    line = assert_one_error_line(result, 2, "invalid choice: 'nosuch'", "myapp --help")
    for name in BUILTIN:
        assert name in line


BAD_ARGUMENTS = [
    ([], "choose a command: "),
    (["shell", "--bogus"], "unrecognized arguments: --bogus"),
    (["routes", "extra"], "unrecognized arguments: extra"),
    (["migrate", "downgrade"], "the following arguments are required: REV"),
    (["migrate", "revision"], "the following arguments are required: -m/--message"),
    (["migrate", "sideways"], "invalid choice: 'sideways'"),
    (["shell", "-i", "bpython"], "invalid choice: 'bpython'"),
]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [pytest.param(*case, id=" ".join(case[0]) or "no-command") for case in BAD_ARGUMENTS],
)
def test_bad_arguments(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith("myapp: error: ") and fragment in lines[0], err
    assert "--help" in lines[0]
