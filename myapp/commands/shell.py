"""``myapp shell``: Python with the application, its database session and the models loaded.

Also :func:`pshell_setup`, the ``[pshell] setup`` hook of the ini files, so
``pshell development.ini`` offers the same names and the same unit of work.
"""

from __future__ import annotations

import argparse
import code
import sys
from collections.abc import Iterator
from typing import Any

from myapp.db import db_transaction

from .context import CommandContext
from .errors import CommandError
from .registry import Command, register

BANNER = """\
myapp shell ({config}) on {database}
Loaded: {names}
A unit of work is open: leaving the shell (Ctrl-D, exit()) commits it.
tm.commit() commits now, tm.abort() discards (the next use of dbsession begins a new one).
"""


def shell_namespace(request: Any, registry: Any, app: Any = None) -> dict[str, Any]:
    """The names a shell starts with: request, registry, db, dbsession, tm, models, helpers."""
    import transaction
    from sqlalchemy import func, select, text

    import myapp.models as models
    from myapp.db import current_session, db_transaction, savepoint

    namespace: dict[str, Any] = {
        "__name__": "__main__",
        "app": app,
        "request": request,
        "registry": registry,
        "settings": registry.settings,
        "db": registry["db"],
        "dbsession": request.dbsession,
        "tm": request.tm,
        "transaction": transaction,
        "models": models,
        "select": select,
        "func": func,
        "text": text,
        "current_session": current_session,
        "db_transaction": db_transaction,
        "savepoint": savepoint,
    }
    for name in models.__all__:
        namespace[name] = getattr(models, name)
    return namespace


def _interact(namespace: dict[str, Any], banner: str, interface: str | None) -> None:
    if interface in (None, "ipython"):
        try:
            from IPython import start_ipython
        except ImportError:
            if interface == "ipython":
                raise CommandError("IPython is not installed (pip install ipython)") from None
        else:
            print(banner)
            start_ipython(argv=[], user_ns=namespace)
            return
    code.interact(banner=banner, local=namespace, exitmsg="")


def commit_the_session() -> None:
    """Commit what the shell's session has not committed yet (its implicit unit of work).

    The session begins a unit of work by itself when first used, and after
    each ``tm.commit()``/``tm.abort()``; an outermost ``db_transaction()``
    adopts that unit and commits it.
    """
    with db_transaction():
        pass


@register
class Shell(Command):
    name = "shell"
    help = "Python shell with dbsession, tm, db, request, registry and the models loaded"
    description = (
        "Start an interactive Python shell (IPython if installed). The session begins a "
        "unit of work when first used; leaving the shell normally (Ctrl-D, exit()) commits "
        "it, an error or a non-zero exit status rolls it back; tm.commit() commits at once. "
        "With -C CODE, or with code on standard input, run it and exit."
    )
    atomic = False  # the shell's user drives the transaction manager (tm.commit(), tm.abort())

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "-C", "--command", dest="code", metavar="CODE", help="run CODE instead of a shell"
        )
        parser.add_argument(
            "-i",
            "--interface",
            choices=("ipython", "python"),
            help="the interactive shell (default: IPython if installed, else python)",
        )

    def handle(
        self, ctx: CommandContext, *, code: str | None = None, interface: str | None = None
    ) -> int | None:
        namespace = shell_namespace(ctx.request, ctx.registry, ctx.app)
        try:
            if code is not None:
                exec(compile(code, "<myapp shell -C>", "exec"), namespace)
            elif not sys.stdin.isatty():  # `myapp shell < script.py`
                exec(compile(sys.stdin.read(), "<stdin>", "exec"), namespace)
            else:
                _interact(namespace, banner(ctx, namespace), interface)
        except SystemExit as exc:  # exit() or sys.exit(): only a success commits
            if exc.code not in (None, 0):
                raise  # the scope rolls the unit of work back
        commit_the_session()
        return None


def banner(ctx: CommandContext, namespace: dict[str, Any]) -> str:
    names = ", ".join(
        name for name in sorted(namespace) if not name.startswith("_") and name != "app"
    )
    return BANNER.format(
        config=ctx.config_uri,
        database=ctx.db.engine.url.render_as_string(hide_password=True),
        names=names,
    )


def pshell_setup(env: dict[str, Any]) -> Iterator[None]:
    """``[pshell] setup``: the names of ``myapp shell``, in the same kind of unit of work.

    The database scope is the request's session; its unit of work is
    committed when pshell exits normally (``tm.commit()``/``tm.abort()`` as in
    ``myapp shell``), rolled back on an error. The session is closed by
    pshell's closer.
    """
    request = env["request"]
    registry = env["registry"]
    env.update(
        {
            k: v
            for k, v in shell_namespace(request, registry, env.get("app")).items()
            if not k.startswith("_") and k != "app"
        }
    )
    db = registry["db"]
    with db.scope(session=request.dbsession):
        yield
        commit_the_session()


def pshell_runner(env: dict[str, Any], help: str) -> None:
    """The ``pyramid.pshell_runner`` named ``myapp``: ``pshell`` with a short banner.

    pshell's own banner lists every name with its whole docstring (12 KB for
    this namespace); this one names them on one line, as ``myapp shell`` does.
    IPython if installed, else the standard interactive console.
    """
    registry = env.get("registry")
    db = env.get("db") or (registry["db"] if registry is not None else None)
    names = ", ".join(
        sorted(name for name in env if not name.startswith("_") and name not in ("app", "root"))
    )
    database = db.engine.url.render_as_string(hide_password=True) if db is not None else "?"
    text = BANNER.format(config="pshell", database=database, names=names)
    _interact(env, text, None)
