"""Configuring more than one database: names, URLs, and the refusals (no server needed)."""

from __future__ import annotations

import pytest

from myapp.db import Database, NoScope, current_session
from myapp.db.settings import DatabaseConfigError, database_names, named_database_url
from myapp.db.twophase import make_gid, parse_gid


def test_names_come_from_the_environment_else_the_ini_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MYAPP_DATABASES", raising=False)
    assert database_names({}) == []
    assert database_names({"myapp.databases": "ledger, archive ledger"}) == ["ledger", "archive"]
    monkeypatch.setenv("MYAPP_DATABASES", "")
    assert database_names({"myapp.databases": "ledger"}) == []
    monkeypatch.setenv("MYAPP_DATABASES", "ledger")
    assert database_names({}) == ["ledger"]


@pytest.mark.parametrize("bad", ["main", "Ledger", "1ledger", "led-ger"])
def test_invalid_names_are_refused(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.delenv("MYAPP_DATABASES", raising=False)
    with pytest.raises(DatabaseConfigError, match="invalid database name"):
        database_names({"myapp.databases": bad})


def test_a_named_database_url_comes_from_its_variable_else_the_ini_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LEDGER_DATABASE_URL", raising=False)
    settings = {"database.ledger.url": "postgresql://h/ledger"}
    assert named_database_url(settings, "ledger") == "postgresql+psycopg://h/ledger"
    monkeypatch.setenv("LEDGER_DATABASE_URL", "postgres://other/l")
    assert named_database_url(settings, "ledger") == "postgresql+psycopg://other/l"
    monkeypatch.delenv("LEDGER_DATABASE_URL")
    with pytest.raises(DatabaseConfigError, match=r"LEDGER_DATABASE_URL or database\.ledger\.url"):
        named_database_url({}, "ledger")


def test_sqlite_next_to_another_database_is_refused_at_configuration() -> None:
    with pytest.raises(DatabaseConfigError, match="needs PostgreSQL for every database"):
        Database.from_url("sqlite://", databases={"ledger": "sqlite://"})


def test_a_mix_of_sqlite_and_postgresql_is_refused_both_ways() -> None:
    with pytest.raises(DatabaseConfigError, match="SQLite has no prepared transactions"):
        Database.from_url("sqlite://", databases={"ledger": "postgresql://127.0.0.1:1/x"})
    with pytest.raises(DatabaseConfigError, match=r"'ledger' \(sqlite\)"):
        Database.from_url("postgresql://127.0.0.1:1/x", databases={"ledger": "sqlite://"})


def test_from_settings_refuses_sqlite_with_a_ledger(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "MYAPP_DATABASES", "LEDGER_DATABASE_URL", "MYAPP_ENV"):
        monkeypatch.delenv(name, raising=False)
    settings = {
        "sqlalchemy.url": "sqlite://",
        "myapp.env": "testing",
        "myapp.databases": "ledger",
        "database.ledger.url": "sqlite://",
    }
    with pytest.raises(DatabaseConfigError, match="needs PostgreSQL"):
        Database.from_settings(settings)


def test_one_database_configured_has_no_named_session() -> None:
    db = Database.from_url("sqlite://")
    try:
        assert not db.has_database("ledger") and db.has_database("main")
        with db.scope() as session:
            assert current_session("main") is session is current_session()
            with pytest.raises(NoScope, match=r"no database named 'ledger'.*configured: main"):
                current_session("ledger")
    finally:
        db.dispose()


def test_gids_carry_the_coordinator_transaction_id() -> None:
    gid = make_gid("0" * 31 + "a", "ledger", 1)
    assert gid == "myapp-2pc:" + "0" * 31 + "a:ledger:1"
    assert parse_gid(gid) == "0" * 31 + "a"
    assert parse_gid("_sa_0123") is None  # another application's: never touched
