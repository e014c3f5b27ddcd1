"""Alembic environment: configured from the Pyramid ini file (``alembic -c development.ini``).

The URL comes from the same place as the application's (``DATABASE_URL``
beats ``sqlalchemy.url``). Programmatic callers (``myapp migrate``, the test
toolkit) may pass an open connection as ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from myapp.db.engine import engine_from_settings
from myapp.models import Base

config = context.config
target_metadata = Base.metadata


def _settings() -> dict:
    """The ``[app:main]`` settings of the ini file alembic was given (``-c``)."""
    import plaster

    loader = plaster.get_loader(config.config_file_name, protocols=["wsgi"])
    return dict(loader.get_wsgi_app_settings())


#: tables that are not the models' (``alembic check`` and autogenerate leave them alone)
NOT_MODELS = {"myapp_migration_journal"}


def _include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    return not (type_ == "table" and name in NOT_MODELS)


def _configure(connection: Connection) -> None:
    on_version_apply = config.attributes.get("on_version_apply")  # myapp migrate (MySQL)
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=_include_name,
        on_version_apply=[on_version_apply] if on_version_apply else (),
    )


def run_migrations_offline() -> None:
    from myapp.db.settings import database_url

    context.configure(
        url=database_url(_settings()), target_metadata=target_metadata, literal_binds=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_settings(_settings())
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
