"""Commands and their registry: :class:`Command`, :func:`register`, the argument parser.

See the package docstring (:mod:`myapp.commands`) for how to write a command.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import textwrap
from typing import Any, ClassVar, TypeVar

from .context import CommandContext
from .errors import CommandError, UsageError, describe_error

PROG = "myapp"
#: Default ini file when neither ``-c/--config`` nor ``MYAPP_CONFIG`` is given.
DEFAULT_CONFIG = "development.ini"
#: Environment variable naming the ini file (``-c/--config`` wins).
CONFIG_ENV = "MYAPP_CONFIG"
#: Entry-point group through which other distributions add commands.
ENTRY_POINT_GROUP = "myapp.commands"

_NAME_PART = re.compile(r"^[a-z][a-z0-9_-]*$")
INTERNAL = "_myapp_"  # prefix of the argparse dests the runner keeps for itself

C = TypeVar("C", bound="type[Command]")


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
        dest=INTERNAL + "config",
        metavar="FILE",
        default=default,
        help=f"the ini file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})",
    )
    group.add_argument(
        "--traceback",
        dest=INTERNAL + "traceback",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print the full traceback of an error",
    )
    group.add_argument(
        "-v",
        "--verbose",
        dest=INTERNAL + "verbose",
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
        parser.set_defaults(**{INTERNAL + "group": ()})
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
            title="commands", metavar="COMMAND", dest=INTERNAL + "sub_" + str(len(prefix))
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
                sub.set_defaults(**{INTERNAL + "command": command})
            else:
                path = (*prefix, name)
                help = value or f"{' '.join(path)} commands"
                sub = subparsers.add_parser(name, help=help, description=help)
                sub.set_defaults(**{INTERNAL + "group": path})
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
