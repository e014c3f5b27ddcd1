"""Alembic environment: ``alembic -c testing.ini upgrade head``, or programmatic.

The test toolkit (and any programmatic caller) passes an open connection as
``config.attributes["connection"]``: the migrations then run on it, in the
caller's transaction (alembic's "sharing a connection" recipe). Otherwise
the URL comes from the ini file's ``[app:main]`` (``DATABASE_URL`` wins),
through ``myapp.db.engine_from_settings``.
"""

from __future__ import annotations

from alembic import context
from notes_service.models import Base
from sqlalchemy.engine import Connection

from myapp.db import engine_from_settings

config = context.config


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    import plaster

    settings = plaster.get_loader(
        config.config_file_name, protocols=["wsgi"]
    ).get_wsgi_app_settings()
    engine = engine_from_settings(dict(settings))
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported by this example")
run_migrations_online()
