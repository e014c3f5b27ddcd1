"""The machinery of the ``myapp`` command line: commands, their registry, the runner.

See the package docstring (:mod:`myapp.commands`) for how to write a command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import re
import sys
import textwrap
import traceback
from collections.abc import Sequence
from types import TracebackType
from typing import IO, Any, ClassVar, TypeVar

from myapp.db import current_transaction

PROG = "myapp"
#: Default ini file when neither ``-c/--config`` nor ``MYAPP_CONFIG`` is given.
DEFAULT_CONFIG = "development.ini"
#: Environment variable naming the ini file (``-c/--config`` wins).
CONFIG_ENV = "MYAPP_CONFIG"
#: Entry-point group through which other distributions add commands.
ENTRY_POINT_GROUP = "myapp.commands"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_NAME_PART = re.compile(r"^[a-z][a-z0-9_-]*$")
_INTERNAL = "_myapp_"  # prefix of the argparse dests the runner keeps for itself

C = TypeVar("C", bound="type[Command]")


class CommandError(Exception):
    """An expected failure: the runner prints ``myapp: error: <message>`` and exits.

    Raise it from ``handle()`` for anything the user can fix (bad input, a
    missing row, a pending migration). The unit of work is aborted.
    """

    def __init__(self, message: str, returncode: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.returncode = returncode


class UsageError(CommandError):
    """Bad arguments or a missing config file (exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


class CommandContext:
    """What a command's ``handle()`` receives: the bootstrapped application and its database.

    ``dbsession`` and ``tm`` are the bootstrap request's session and the
    thread's transaction manager; ``db`` is the application's
    :class:`~myapp.db.Database`. Inside ``handle()`` the current database
    scope is set, so ``current_session()`` is ``dbsession``.
    """

    def __init__(
        self,
        env: dict[str, Any],
        *,
        command: Command,
        config_uri: str,
        config_file: str,
        verbose: bool = False,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
    ) -> None:
        self.env = env
        self.command = command
        self.config_uri = config_uri
        self.config_file = config_file
        self.verbose = verbose
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr

    @property
    def registry(self) -> Any:
        """The Pyramid registry."""
        return self.env["registry"]

    @property
    def request(self) -> Any:
        """The request made by ``pyramid.paster.bootstrap``."""
        return self.env["request"]

    @property
    def app(self) -> Any:
        """The WSGI application."""
        return self.env.get("app")

    @property
    def settings(self) -> Any:
        return self.registry.settings

    @property
    def db(self) -> Any:
        """The application's :class:`~myapp.db.Database` (``registry["db"]``)."""
        return self.registry["db"]

    @property
    def dbsession(self) -> Any:
        """The session of this command (``request.dbsession``)."""
        return self.request.dbsession

    @property
    def tm(self) -> Any:
        """The transaction manager (``request.tm``: the thread's, in explicit mode)."""
        return self.request.tm

    def out(self, *parts: Any) -> None:
        """Print to the command's standard output."""
        print(*parts, file=self.stdout)


class Command:
    """Base class of management commands (Django style).

    Class attributes: ``name`` (``"initdb"``, or ``"invoices generate"`` for a
    command inside a group), ``help`` (one line, shown in ``myapp --help``),
    ``description`` (longer text for ``myapp NAME --help``; defaults to
    ``help``) and ``atomic``:

    * ``atomic = True`` (default): ``handle()`` runs inside ONE unit of work
      (``request.tm``). It commits when ``handle()`` returns ``None`` or ``0``;
      it is aborted when ``handle()`` raises or returns a non-zero status.
    * ``atomic = False``: the command manages its own transactions
      (``db_transaction()``, ``db_batch_operation()``, alembic). It runs in a
      database scope with no transaction open; what it leaves uncommitted is
      discarded when it ends.
    """

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    description: ClassVar[str | None] = None
    atomic: ClassVar[bool] = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the command's options and positional arguments on ``parser``."""

    def handle(self, ctx: CommandContext, **options: Any) -> int | None:
        """Do the work. ``options`` holds the parsed arguments, by ``dest``."""
        raise NotImplementedError(f"{type(self).__name__}.handle()")


# ---------------------------------------------------------------------------
# argument parsing


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser with one-line errors, whose sub-parsers take the global options."""

    def error(self, message: str) -> Any:  # argparse's usage errors
        raise UsageError(f"{message} (see '{self.prog} --help')")

    def add_subparsers(self, **kwargs: Any) -> Any:
        kwargs.setdefault("parser_class", CommandParser)
        action = super().add_subparsers(**kwargs)
        add_parser = action.add_parser

        def add_parser_with_globals(name: str, **kw: Any) -> argparse.ArgumentParser:
            kw["parents"] = [*kw.get("parents", ()), _global_options(suppress=True)]
            kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
            return add_parser(name, **kw)

        action.add_parser = add_parser_with_globals
        return action


_GLOBALS: dict[bool, argparse.ArgumentParser] = {}


def _global_options(suppress: bool) -> argparse.ArgumentParser:
    """The options every (sub)command accepts: ``-c/--config``, ``--traceback``, ``-v``.

    Sub-parsers get them with SUPPRESS defaults, so that ``myapp -c a.ini
    shell`` and ``myapp shell -c a.ini`` both work and neither clobbers the other.
    """
    if suppress in _GLOBALS:
        return _GLOBALS[suppress]
    parser = argparse.ArgumentParser(add_help=False)
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("global options")
    group.add_argument(
        "-c",
        "--config",
        dest=_INTERNAL + "config",
        metavar="FILE",
        default=default,
        help=f"the ini file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
    )
    group.add_argument(
        "--traceback",
        dest=_INTERNAL + "traceback",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print the full traceback of an error",
    )
    group.add_argument(
        "-v",
        "--verbose",
        dest=_INTERNAL + "verbose",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="log as the ini file says (warnings, transactions, SQL); default: errors only",
    )
    _GLOBALS[suppress] = parser
    return parser


# ---------------------------------------------------------------------------
# the registry


def format_description(text: str, width: int = 78) -> str:
    """Wrap a description's prose paragraphs; keep indented lines (examples) as written."""
    paragraphs = textwrap.dedent(text).strip("\n").split("\n\n")
    out = []
    for paragraph in paragraphs:
        if any(line.startswith((" ", "\t")) for line in paragraph.splitlines()):
            out.append(paragraph)
        else:
            out.append(textwrap.fill(" ".join(paragraph.split()), width))
    return "\n\n".join(out)


def _ident(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class CommandRegistry:
    """Commands by name, and groups of commands (``myapp invoices generate``)."""

    def __init__(self) -> None:
        self._commands: dict[tuple[str, ...], type[Command]] = {}
        self._groups: dict[tuple[str, ...], str] = {}

    @staticmethod
    def _path(name: str) -> tuple[str, ...]:
        path = tuple(name.split())
        if not path or not all(_NAME_PART.match(part) for part in path):
            raise ValueError(
                f"invalid command name {name!r}: lowercase words such as 'initdb' or "
                "'invoices generate'"
            )
        return path

    def register(self, cls: C) -> C:
        """Register a :class:`Command` subclass (usable as a class decorator)."""
        if not (isinstance(cls, type) and issubclass(cls, Command)):
            raise TypeError(f"{cls!r} is not a Command subclass")
        path = self._path(cls.name)
        existing = self._commands.get(path)
        # the same class imported twice (a reload) replaces itself; anything else is a clash
        if existing is not None and _ident(existing) != _ident(cls):
            raise ValueError(
                f"command {cls.name!r} is registered twice: by {_ident(existing)} and {_ident(cls)}"
            )
        if path in self._groups:
            raise ValueError(f"{cls.name!r} is already a group of commands")
        for depth in range(1, len(path)):
            prefix = path[:depth]
            if prefix in self._commands:
                raise ValueError(f"{' '.join(prefix)!r} is a command, not a group")
            self._groups.setdefault(prefix, "")
        self._commands[path] = cls
        return cls

    def group(self, name: str, help: str = "") -> None:
        """Declare a group of commands (``invoices``) and its one-line help."""
        path = self._path(name)
        if path in self._commands:
            raise ValueError(f"{name!r} is already a command")
        for depth in range(1, len(path) + 1):
            self._groups.setdefault(path[:depth], "")
        if help:
            self._groups[path] = help

    def get(self, name: str) -> type[Command] | None:
        return self._commands.get(tuple(name.split()))

    def names(self) -> list[str]:
        return sorted(" ".join(path) for path in self._commands)

    def build_parser(self) -> CommandParser:
        """The ``myapp`` argument parser, with one sub-parser per group and command."""
        parser = CommandParser(
            prog=PROG,
            description="Manage myapp: the database, its migrations, a shell, the routes.",
            epilog=f"Run '{PROG} COMMAND --help' for the options of a command.",
            parents=[_global_options(suppress=False)],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(**{_INTERNAL + "group": ()})
        self._add_children(parser, ())
        return parser

    def _add_children(self, parser: CommandParser, prefix: tuple[str, ...]) -> None:
        children: dict[str, tuple[str, Any]] = {}
        for path, cls in self._commands.items():
            if len(path) == len(prefix) + 1 and path[:-1] == prefix:
                children[path[-1]] = ("command", cls)
        for path, help in self._groups.items():
            if len(path) == len(prefix) + 1 and path[:-1] == prefix:
                children[path[-1]] = ("group", help)
        if not children:
            return
        subparsers = parser.add_subparsers(
            title="commands", metavar="COMMAND", dest=_INTERNAL + "sub_" + str(len(prefix))
        )
        for name in sorted(children):
            kind, value = children[name]
            if kind == "command":
                command = value()
                sub = subparsers.add_parser(
                    name,
                    help=value.help,
                    description=format_description(value.description or value.help),
                )
                command.add_arguments(sub)
                sub.set_defaults(**{_INTERNAL + "command": command})
            else:
                path = (*prefix, name)
                help = value or f"{' '.join(path)} commands"
                sub = subparsers.add_parser(name, help=help, description=help)
                sub.set_defaults(**{_INTERNAL + "group": path})
                self._add_children(sub, path)

    def subcommands(self, group: tuple[str, ...]) -> list[str]:
        """The names directly under ``group`` (``()`` for the top level)."""
        depth = len(group)
        paths = (*self._commands, *self._groups)
        return sorted({p[depth] for p in paths if len(p) > depth and p[:depth] == group})


#: The registry of the ``myapp`` console script.
default_registry = CommandRegistry()


def register(cls: C) -> C:
    """Class decorator: add a command to ``myapp`` (see :class:`Command`)."""
    return default_registry.register(cls)


def register_group(name: str, help: str = "") -> None:
    """Declare a group of commands, e.g. ``register_group("invoices", "Invoices")``."""
    default_registry.group(name, help)


_loaded = False


def load_commands() -> None:
    """Import the command modules: every module of ``myapp.commands``, then the entry points.

    Importing a module runs its ``@register`` decorators. Idempotent.
    """
    global _loaded
    if _loaded:
        return
    package = importlib.import_module("myapp.commands")
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            _import(f"{package.__name__}.{info.name}")
    from importlib.metadata import entry_points

    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry_point.load()
        except Exception as exc:
            raise CommandError(
                f"cannot load the commands of entry point {entry_point.name!r} "
                f"({entry_point.value}): {describe_error(exc)}"
            ) from exc
        if isinstance(loaded, type) and issubclass(loaded, Command):
            default_registry.register(loaded)
    _loaded = True


def _import(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as exc:
        raise CommandError(f"cannot load the commands of {module}: {describe_error(exc)}") from exc


# ---------------------------------------------------------------------------
# running a command


class UnitOfWork:
    """One unit of work on ``tm`` for a whole command (or a pshell session).

    Begins a transaction at entry. At exit it commits the transaction then
    current (the one begun here, or one the code began after committing it)
    if the block succeeded and ``veto`` is false; otherwise it aborts it.
    ``SystemExit(0)`` counts as success. A failing commit is aborted and
    re-raised, so no transaction is ever left open.
    """

    def __init__(self, tm: Any, note: str = "") -> None:
        self.tm = tm
        self.note = note
        self.veto = False

    def __enter__(self) -> UnitOfWork:
        txn = self.tm.begin()
        if self.note:
            txn.note(self.note)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None:
            commit = not self.veto
        elif isinstance(exc, SystemExit):
            commit = exc.code in (None, 0) and not self.veto
        else:
            commit = False
        if current_transaction(self.tm) is None:
            return False
        if commit:
            try:
                self.tm.commit()
            except BaseException:
                self.tm.abort()
                raise
        else:
            self.tm.abort()
        return False


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


def run_command(
    command: Command,
    options: dict[str, Any],
    *,
    config_uri: str,
    verbose: bool = False,
) -> int:
    """Bootstrap the application from ``config_uri`` and run ``command`` (see :class:`Command`).

    Whatever happens, the unit of work is finished (committed or aborted),
    the session closed and the engine's pooled connections disposed.
    """
    path = config_path(config_uri)
    if path is not None and not os.path.isfile(path):
        raise UsageError(
            f"config file not found: {path} (give one with -c/--config FILE or ${CONFIG_ENV})"
        )
    _setup_logging(config_uri, verbose)
    from pyramid.paster import bootstrap

    env = bootstrap(config_uri)
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
        with db.scope(session=ctx.dbsession):
            if not command.atomic:
                return _status(command.handle(ctx, **options))
            with UnitOfWork(ctx.tm, note=f"{PROG} {command.name}") as unit:
                status = _status(command.handle(ctx, **options))
                unit.veto = status != EXIT_OK
            return status
    except Exception as exc:
        if db is not None and is_connection_error(exc):
            raise CommandError(connection_error_message(exc, db.engine)) from exc
        raise
    finally:
        try:
            env["closer"]()
        finally:
            if db is not None:
                db.dispose()


def _status(value: Any) -> int:
    if value is None:
        return EXIT_OK
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"handle() must return None or an int exit status, not {value!r}")
    return value


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def is_connection_error(exc: BaseException) -> bool:
    """True if ``exc`` says the database could not be reached (no statement was sent)."""
    from sqlalchemy import exc as sa_exc

    return (
        isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) and exc.statement is None
    )


def connection_error_message(exc: BaseException, engine: Any) -> str:
    """``cannot connect to the database <url, password hidden>: <driver's reason>``."""
    reason = getattr(exc, "orig", None) or exc
    url = engine.url.render_as_string(hide_password=True)
    return f"cannot connect to the database {url}: {one_line(str(reason))}"


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
        show_traceback = bool(values.get(_INTERNAL + "traceback"))
        command: Command | None = values.get(_INTERNAL + "command")
        if command is None:
            group = values[_INTERNAL + "group"]
            where = f"{PROG} {' '.join(group)}" if group else PROG
            choices = ", ".join(registry.subcommands(group))
            raise UsageError(f"choose a command: {choices} (see '{where} --help')")
        config_uri = (
            values.get(_INTERNAL + "config") or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
        )
        options = {k: v for k, v in values.items() if not k.startswith(_INTERNAL)}
        return run_command(
            command,
            options,
            config_uri=config_uri,
            verbose=bool(values.get(_INTERNAL + "verbose")),
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
