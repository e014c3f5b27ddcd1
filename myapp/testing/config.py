"""The toolkit's configuration: pytest ini options, read once when pytest starts.

Set them in ``[pytest]`` (pytest.ini, tox.ini), ``[tool:pytest]`` (setup.cfg)
or ``[tool.pytest.ini_options]`` (pyproject.toml); paths are relative to that
file. The plugin's fixtures exist only when at least one of
``myapp_ini``, ``myapp_app``, ``myapp_metadata``, ``myapp_script_location``
or ``myapp_alembic_ini`` is set: unconfigured, the plugin adds its options
and nothing else.

=========================  ==================================================================
``myapp_ini``              a PasteDeploy ini file: its ``[app:main]`` gives the WSGI app
                           factory (``use = egg:...``) and its settings; its ``[alembic]``
                           section the migrations, unless a schema option says otherwise
``myapp_app``              ``package.module:factory``: the WSGI app factory
                           (``factory(global_config, **settings)``), instead of the ini's
``myapp_settings``         extra ``key = value`` settings for the app, one a line
``myapp_metadata``         ``package.module:attribute``: a ``MetaData`` (or a declarative base
                           with ``.metadata``) whose ``create_all`` builds the test schema
``myapp_script_location``  alembic script location (``package:alembic``): ``upgrade head``
                           builds the test schema
``myapp_alembic_ini``      an alembic config file whose ``[alembic]`` section names the
                           migrations
``myapp_db_prefix``        prefix of the PostgreSQL test databases (default ``test_``)
=========================  ==================================================================
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

#: name -> (pytest ini type, help)
INI_OPTIONS: dict[str, tuple[str, str]] = {
    "myapp_ini": (
        "string",
        "PasteDeploy ini file: [app:main] gives the app factory and settings of the app/testapp "
        "fixtures, [alembic] the migrations (relative to the ini file of pytest)",
    ),
    "myapp_app": ("string", "WSGI app factory 'package.module:factory' (instead of the ini's)"),
    "myapp_settings": ("linelist", "extra app settings, one 'key = value' a line"),
    "myapp_metadata": (
        "string",
        "'package.module:attribute' of a MetaData (or declarative base) to create_all",
    ),
    "myapp_script_location": (
        "string",
        "alembic script location ('package:alembic') whose 'upgrade head' builds the schema",
    ),
    "myapp_alembic_ini": ("string", "alembic config file whose [alembic] names the migrations"),
    "myapp_db_prefix": ("string", "prefix of the PostgreSQL test databases (default test_)"),
}
#: the options whose presence turns the fixtures on
ACTIVATING = ("myapp_ini", "myapp_app", "myapp_metadata", "myapp_script_location")
ACTIVATING += ("myapp_alembic_ini",)


def resolve(dotted: str, option: str) -> Any:
    """``package.module:attr.attr`` -> the object, or a UsageError naming ``option``."""
    module_name, _, attrs = dotted.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for attr in filter(None, attrs.split(".")):
            obj = getattr(obj, attr)
    except (ImportError, AttributeError) as exc:
        raise pytest.UsageError(f"{option} = {dotted}: cannot import it: {exc}") from exc
    return obj


@dataclass
class ToolkitConfig:
    """What the fixtures build, from the ini options (see the module docstring)."""

    base: Path
    ini: Path | None = None
    app: str | None = None
    settings: dict[str, str] = field(default_factory=dict)
    metadata: str | None = None
    script_location: str | None = None
    alembic_ini: Path | None = None
    db_prefix: str | None = None
    active: bool = False

    @classmethod
    def from_pytest(cls, config: pytest.Config) -> ToolkitConfig:
        base = config.inipath.parent if config.inipath is not None else config.rootpath

        def path(value: str | None) -> Path | None:
            return (base / value).resolve() if value else None

        values = {name: config.getini(name) for name in INI_OPTIONS}
        settings = {}
        for line in values["myapp_settings"]:
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                raise pytest.UsageError(f"myapp_settings: {line!r} is not 'key = value'")
            settings[key.strip()] = value.strip()
        app_ini = config.getoption("--app-ini", None)
        ini = path(app_ini or values["myapp_ini"] or None)
        if ini is not None and not ini.is_file():
            raise pytest.UsageError(f"myapp_ini: {ini} does not exist")
        alembic_ini = path(values["myapp_alembic_ini"] or None)
        if alembic_ini is not None and not alembic_ini.is_file():
            raise pytest.UsageError(f"myapp_alembic_ini: {alembic_ini} does not exist")
        return cls(
            base=base,
            ini=ini,
            app=values["myapp_app"] or None,
            settings=settings,
            metadata=values["myapp_metadata"] or None,
            script_location=values["myapp_script_location"] or None,
            alembic_ini=alembic_ini,
            db_prefix=values["myapp_db_prefix"] or None,
            active=bool(app_ini) or any(values[name] for name in ACTIVATING),
        )

    # -- the app -------------------------------------------------------------------------

    def _appconfig(self) -> Any:
        from paste.deploy import appconfig

        assert self.ini is not None
        return appconfig(f"config:{self.ini}")

    def app_settings(self) -> dict[str, Any]:
        """The ini's ``[app:main]`` settings (if any), then ``myapp_settings``."""
        settings: dict[str, Any] = {}
        if self.ini is not None:
            settings.update(self._appconfig().local_conf)
        settings.update(self.settings)
        return settings

    def app_factory(self) -> Callable[..., Any]:
        """``myapp_app``, else the factory the ini's ``[app:main]`` uses."""
        if self.app is not None:
            factory = resolve(self.app, "myapp_app")
        elif self.ini is not None:
            factory = self._appconfig().context.object
        else:
            raise pytest.UsageError(
                "the app/testapp fixtures need an application: set myapp_app "
                "('package.module:main') or myapp_ini (a PasteDeploy ini file) in the pytest "
                "configuration"
            )
        if not callable(factory):
            raise pytest.UsageError(f"myapp_app = {self.app}: not callable")
        return factory

    def global_config(self) -> dict[str, Any]:
        if self.ini is not None:
            return dict(self._appconfig().global_conf)
        return {"here": str(self.base)}

    # -- the schema ----------------------------------------------------------------------

    def schema_builder(self) -> Callable[[Connection], None]:
        """How the run's database gets its schema: ``create_all`` or ``alembic upgrade head``."""
        from .database import build_schema

        if self.metadata is not None:
            metadata = resolve(self.metadata, "myapp_metadata")
            metadata = getattr(metadata, "metadata", metadata)
            if not isinstance(metadata, MetaData):
                raise pytest.UsageError(f"myapp_metadata = {self.metadata}: not a MetaData")
            return lambda connection: build_schema(connection, metadata=metadata)
        if self.script_location is not None or self.alembic_ini is not None:
            location, alembic_ini = self.script_location, self.alembic_ini
        elif self.ini is not None and _has_alembic_section(self.ini):
            location, alembic_ini = None, self.ini
        else:
            raise pytest.UsageError(
                "the dbengine fixture needs a schema: set myapp_metadata "
                "('package.models:Base.metadata'), myapp_script_location ('package:alembic') "
                "or myapp_alembic_ini in the pytest configuration"
            )
        ini = str(alembic_ini) if alembic_ini is not None else None
        return lambda connection: build_schema(
            connection, script_location=location, alembic_ini=ini
        )


def _has_alembic_section(path: Path) -> bool:
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path)
    return parser.has_option("alembic", "script_location")
