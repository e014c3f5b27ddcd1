"""Running a command: bootstrap the application, run ``handle()`` in its unit of work, report.

:func:`run_command` bootstraps the application from the ini file, opens the
database scope of the bootstrap request's session and runs the command:

* ``atomic = True``: inside ONE ``db_transaction()`` (myapp.db's own unit of
  work), committed when ``handle()`` returns ``None``/``0``, rolled back when
  it raises or returns another status;
* ``atomic = False``: in the scope only; the command runs its own units of
  work (``db_transaction()``, ``db_batch_operation()``, alembic).

Either way the session is closed and the engine disposed at the end, and
:mod:`myapp.observability` logs one record for the command (outcome,
duration, statements, database time). :func:`main` is the console script:
errors are one line on stderr, with an exit status.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from myapp.db import db_transaction

from .context import CommandContext
from .errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CommandError,
    UsageError,
    connection_error_message,
    database_url_error,
    describe_error,
    find_connection_error,
    one_line,
)
from .registry import (
    CONFIG_ENV,
    DEFAULT_CONFIG,
    INTERNAL,
    PROG,
    Command,
    CommandRegistry,
    default_registry,
    load_commands,
)


class _RolledBack(Exception):
    """Raised inside the command's unit of work to roll it back with a non-zero status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def config_path(config_uri: str) -> str | None:
    """The file behind a plaster URI (``development.ini#main`` → ``development.ini``)."""
    if "://" in config_uri:
        return None
    return config_uri.split("#", 1)[0]


def _setup_logging(config_uri: str, verbose: bool) -> None:
    if verbose:
        from pyramid.paster import setup_logging

        setup_logging(config_uri)
    elif not logging.getLogger().handlers:
        # quiet by default: stderr carries the command's own error line (and logged errors)
        logging.basicConfig(level=logging.ERROR, format=f"{PROG}: %(levelname)s: %(message)s")


def _bootstrap(config_uri: str) -> dict[str, Any]:
    """``pyramid.paster.bootstrap``; a database URL that cannot be used is one clear line."""
    from pyramid.paster import bootstrap, get_appsettings

    try:
        return bootstrap(config_uri)
    except Exception as exc:
        try:
            settings = get_appsettings(config_uri)
        except Exception:  # the ini file itself is broken: report the first error
            settings = None
        message = database_url_error(exc, settings)
        if message is not None:
            raise CommandError(message) from exc
        raise


def exit_status(value: Any) -> int:
    """``handle()``'s return value as an exit status (``None`` is 0)."""
    if value is None:
        return EXIT_OK
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"handle() must return None or an int exit status, not {value!r}")
    return value


def _handle_atomically(command: Command, ctx: CommandContext, options: dict[str, Any]) -> int:
    """``handle()`` in one ``db_transaction()``: committed on status 0, else rolled back."""
    try:
        with db_transaction():
            try:
                status = exit_status(command.handle(ctx, **options))
            except SystemExit as exc:  # sys.exit() inside the command
                if exc.code is not None and not isinstance(exc.code, int):
                    raise
                status = exc.code or EXIT_OK
            if status != EXIT_OK:
                raise _RolledBack(status)
    except _RolledBack as rolled_back:
        return rolled_back.status
    return EXIT_OK


def run_command(
    command: Command,
    options: dict[str, Any],
    *,
    config_uri: str,
    verbose: bool = False,
) -> int:
    """Bootstrap the application from ``config_uri`` and run ``command`` (see :class:`Command`).

    Whatever happens, the unit of work is finished (committed or rolled
    back), the session closed and the engine's pooled connections disposed.
    """
    from myapp.observability.units import observe_command

    path = config_path(config_uri)
    if path is not None and not os.path.isfile(path):
        raise UsageError(
            f"config file not found: {path} (give one with -c/--config FILE or ${CONFIG_ENV})"
        )
    _setup_logging(config_uri, verbose)
    env = _bootstrap(config_uri)
    db = None
    try:
        ctx = CommandContext(
            env,
            command=command,
            config_uri=config_uri,
            config_file=os.path.abspath(path) if path else config_uri,
            verbose=verbose,
        )
        db = ctx.db
        with db.scope(session=ctx.dbsession), observe_command(command.name, db.engine):
            if not command.atomic:
                return exit_status(command.handle(ctx, **options))
            return _handle_atomically(command, ctx, options)
    except Exception as exc:
        unreachable = find_connection_error(exc) if db is not None else None
        if unreachable is not None:
            raise CommandError(connection_error_message(unreachable, db.engine)) from exc
        raise
    finally:
        try:
            env["closer"]()
        finally:
            if db is not None:
                db.dispose()


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None, *, registry: CommandRegistry | None = None) -> int:
    """The ``myapp`` console script. Returns the exit status.

    Exit status: 0 success; 1 a runtime error (the command failed, the
    database is unreachable, ...); 2 a usage error (bad arguments, missing
    config file); 130 interrupted. Errors are one line on stderr
    (``myapp: error: ...``); ``--traceback`` adds the traceback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--traceback" in args
    try:
        if registry is None:
            registry = default_registry
            load_commands()
        parser = registry.build_parser()
        namespace = parser.parse_args(args)
        values = vars(namespace)
        show_traceback = bool(values.get(INTERNAL + "traceback"))
        command: Command | None = values.get(INTERNAL + "command")
        if command is None:
            group = values[INTERNAL + "group"]
            where = f"{PROG} {' '.join(group)}" if group else PROG
            choices = ", ".join(registry.subcommands(group))
            raise UsageError(f"choose a command: {choices} (see '{where} --help')")
        config_uri = values.get(INTERNAL + "config") or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
        options = {k: v for k, v in values.items() if not k.startswith(INTERNAL)}
        return run_command(
            command,
            options,
            config_uri=config_uri,
            verbose=bool(values.get(INTERNAL + "verbose")),
        )
    except SystemExit as exc:  # --help, or sys.exit() inside a command
        if exc.code is None:
            return EXIT_OK
        if isinstance(exc.code, int):
            return exc.code
        _error(one_line(str(exc.code)))
        return EXIT_ERROR
    except KeyboardInterrupt:
        if show_traceback:
            traceback.print_exc()
        _error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `myapp routes | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:
        if show_traceback:
            traceback.print_exc()
        _error(describe_error(exc))
        return exc.returncode if isinstance(exc, CommandError) else EXIT_ERROR
