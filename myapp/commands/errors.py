"""What the ``myapp`` command line says when something goes wrong: one line, an exit status.

:class:`CommandError` (exit 1) and :class:`UsageError` (exit 2) are what
commands raise for errors the user can fix; :func:`describe_error` turns any
other exception into one readable line. A database that cannot be reached
is recognised anywhere in an exception's chain (a failed batch, a failed
invoicing run), so every command says the same ``cannot connect to the
database <url>: <reason>``; a database URL that cannot be used names where
it came from (``DATABASE_URL`` or the ini file's ``sqlalchemy.url``), with
the password hidden.
"""

from __future__ import annotations

import os
import re
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: the environment variable that overrides the ini file's ``sqlalchemy.url``
DATABASE_URL_ENV = "DATABASE_URL"

_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]*:)(?P<password>[^@\s]*)@")


class CommandError(Exception):
    """An expected failure: the runner prints ``myapp: error: <message>`` and exits.

    Raise it from ``handle()`` for anything the user can fix (bad input, a
    missing row, a pending migration). The command's unit of work is rolled back.
    """

    #: how :mod:`myapp.observability` records the unit of work this error ended
    unit_outcome = "refused"

    def __init__(self, message: str, returncode: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.returncode = returncode


class UsageError(CommandError):
    """Bad arguments or a missing config file (exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def hide_password(url: str) -> str:
    """``scheme://user:secret@host`` → ``scheme://user:***@host`` (works on unparsable URLs too)."""
    return _PASSWORD.sub(lambda m: m.group("head") + "***@", url)


def is_connection_error(exc: BaseException) -> bool:
    """True if ``exc`` says the database could not be reached (no statement was sent)."""
    from sqlalchemy import exc as sa_exc

    return (
        isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) and exc.statement is None
    )


def find_connection_error(exc: BaseException | None) -> BaseException | None:
    """The "could not connect" error in ``exc``'s chain (causes and contexts), if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if is_connection_error(exc):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def connection_error_message(exc: BaseException, engine: Any) -> str:
    """``cannot connect to the database <url, password hidden>: <driver's reason>``."""
    reason = getattr(exc, "orig", None) or exc
    url = engine.url.render_as_string(hide_password=True)
    return f"cannot connect to the database {url}: {one_line(str(reason))}"


def database_url_error(exc: BaseException, settings: Any = None) -> str | None:
    """A one-line message for a database URL SQLAlchemy cannot use, naming where it came from.

    ``DATABASE_URL`` when that variable is set (it wins over the ini file), else
    ``sqlalchemy.url``. The value is quoted with its password hidden. None if
    ``exc`` is not about the URL.
    """
    from sqlalchemy import exc as sa_exc

    if not isinstance(exc, sa_exc.ArgumentError | sa_exc.NoSuchModuleError | ValueError):
        return None
    env_value = os.environ.get(DATABASE_URL_ENV)
    if env_value:
        source, value = DATABASE_URL_ENV, env_value
    else:
        source = "sqlalchemy.url (in the ini file)"
        value = str((settings or {}).get("sqlalchemy.url", "")) if settings is not None else ""
    # a ValueError (int(port) and friends) is the URL's only when the value is a URL at all
    if (
        isinstance(exc, ValueError)
        and not isinstance(exc, sa_exc.ArgumentError)
        and (not value or "://" not in value)
    ):
        return None
    reason = one_line(str(exc))
    if isinstance(exc, sa_exc.NoSuchModuleError):
        reason = f"unknown database dialect ({reason})"
    shown = f" {hide_password(value)!r}" if value else ""
    return (
        f"{source}{shown} is not a usable database URL: {hide_password(reason)} "
        "(expected e.g. postgresql://user@host/dbname or sqlite:///path/to/file.sqlite)"
    )


def describe_error(exc: BaseException) -> str:
    """A one-line, human description of ``exc`` (no traceback)."""
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, CommandError):
        return one_line(str(exc))
    try:
        from alembic.util import CommandError as AlembicError
    except ImportError:  # pragma: no cover - alembic is a dependency
        AlembicError = ()  # type: ignore[assignment,misc]
    if isinstance(exc, AlembicError):
        return f"alembic: {one_line(str(exc))}"
    if isinstance(exc, sa_exc.DBAPIError):
        message = one_line(str(exc.orig)) if exc.orig is not None else one_line(str(exc))
        if is_connection_error(exc):
            return f"cannot connect to the database: {message}"
        return f"{type(exc).__name__}: {message}"
    if isinstance(exc, sa_exc.StatementError):
        return f"{type(exc).__name__}: {one_line(str(exc.orig) if exc.orig else str(exc))}"
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"file not found: {exc.filename}"
    message = one_line(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
