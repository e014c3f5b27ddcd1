"""Engines from Pyramid settings.

SQLite write intent: a deferred SQLite transaction that reads first and then
writes must upgrade its read lock, and in WAL mode that fails at once with
"database is locked" (no busy timeout) when another connection committed
since the read began. Under concurrent writers (8 waitress threads) that was
a 409 for about a third of the API's writes, each of which reads first (the
token, the company). Inside :func:`sqlite_write_intent` (the request guard
sets it for POST, PUT, PATCH and DELETE requests), SQLite engines begin their
transactions with ``BEGIN IMMEDIATE`` instead: the write lock is taken first,
waiting on the busy timeout, and the upgrade can no longer fail. Readers are
never blocked (WAL). Other backends are unaffected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url

from . import sqlite
from .settings import database_url, engine_options

#: SQLite transactions begun inside the block take the write lock at once (BEGIN IMMEDIATE).
sqlite_write_intent = sqlite.write_intent


def engine_from_settings(settings: Mapping[str, Any], prefix: str = "sqlalchemy.") -> Engine:
    """Create the engine described by ``settings`` (see :mod:`myapp.db.settings`).

    SQLite engines get the transactional workaround of :mod:`myapp.db.sqlite`
    and their directory is created; PostgreSQL URLs use psycopg 3.
    """
    return create_engine_for(database_url(settings, prefix), **engine_options(settings, prefix))


def create_engine_for(url: str, **options: Any) -> Engine:
    """``create_engine`` with myapp's per-dialect rules applied."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
            options.pop("pool_pre_ping", None)
        else:
            for key in ("pool_size", "max_overflow", "pool_timeout"):
                options.pop(key, None)
        options.setdefault("connect_args", {})["check_same_thread"] = False
        return sqlite.install(create_engine(parsed, **options))
    return create_engine(parsed, **options)
