"""Replica settings: the ini list, the environment variable, the bounds."""

from __future__ import annotations

from typing import Any

import pytest

from myapp.db.settings import DatabaseConfigError, engine_options, replica_options, replica_urls


def test_the_ini_list_accepts_lines_commas_and_the_older_single_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATABASE_REPLICA_URLS", raising=False)
    settings = {
        "sqlalchemy.replica_urls": "\n postgresql://a/app,postgres://b/app\n  postgresql://a/app",
        "sqlalchemy.replica.url": "postgresql://c/app",
    }
    assert replica_urls(settings) == [
        "postgresql+psycopg://a/app",
        "postgresql+psycopg://b/app",
        "postgresql+psycopg://c/app",
    ]
    assert replica_urls({}) == []


def test_the_environment_wins_and_empty_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = {"sqlalchemy.replica_urls": "postgresql://a/app"}
    monkeypatch.setenv("DATABASE_REPLICA_URLS", "postgresql://x/app postgresql://y/app")
    assert replica_urls(settings) == ["postgresql+psycopg://x/app", "postgresql+psycopg://y/app"]
    monkeypatch.setenv("DATABASE_REPLICA_URLS", "")
    assert replica_urls(settings) == []


def test_bounds_are_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    assert replica_options({}) == {"max_lag": 5.0, "check_interval": 2.0, "read_your_writes": 10.0}
    got = replica_options({"sqlalchemy.replica_max_lag": "0.5", "sqlalchemy.read_your_writes": "0"})
    assert got["max_lag"] == 0.5 and got["read_your_writes"] == 0.0
    with pytest.raises(DatabaseConfigError, match="replica_max_lag must be a number of seconds"):
        replica_options({"sqlalchemy.replica_max_lag": "soon"})
    with pytest.raises(DatabaseConfigError, match="must not be negative"):
        replica_options({"sqlalchemy.replica_check_interval": "-1"})


def test_no_profile_pre_pings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MYAPP_ENV", raising=False)
    for profile in ("testing", "local", "dev", "prod"):
        assert engine_options({"myapp.env": profile})["pool_pre_ping"] is False
    options = engine_options({"myapp.env": "prod", "sqlalchemy.pool_pre_ping": "true"})
    assert options["pool_pre_ping"] is True


def test_the_pipelined_begin_can_be_turned_off(dbengine: Any) -> None:
    from sqlalchemy import text

    from myapp.db import create_engine_for

    url = dbengine.url.render_as_string(hide_password=False)
    for pipelined in (True, False):
        engine = create_engine_for(url, pipeline_begin=pipelined)
        try:
            begin = vars(engine.dialect).get("do_begin")  # pipeline_begin()'s own do_begin
            assert getattr(begin, "__qualname__", "").startswith("pipeline_begin") is (
                pipelined and engine.dialect.driver == "psycopg"
            )
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar() == 1
        finally:
            engine.dispose()
    assert (
        engine_options({"myapp.env": "prod", "sqlalchemy.pipeline_begin": "false"})[
            "pipeline_begin"
        ]
        is False
    )
