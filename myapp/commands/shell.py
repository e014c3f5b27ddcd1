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

from .base import Command, CommandContext, UnitOfWork, register

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
                from .base import CommandError

                raise CommandError("IPython is not installed (pip install ipython)") from None
        else:
            print(banner)
            start_ipython(argv=[], user_ns=namespace)
            return
    code.interact(banner=banner, local=namespace, exitmsg="")


@register
class Shell(Command):
    name = "shell"
    help = "Python shell with dbsession, tm, db, request, registry and the models loaded"
    description = (
        "Start an interactive Python shell (IPython if installed) inside one unit of work, "
        "committed when the shell ends normally and aborted on an error. "
        "With -C CODE, or with code on standard input, run it and exit."
    )
    atomic = True

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
    ) -> None:
        namespace = shell_namespace(ctx.request, ctx.registry, ctx.app)
        if code is not None:
            exec(compile(code, "<myapp shell -C>", "exec"), namespace)
            return
        if not sys.stdin.isatty():  # `myapp shell < script.py`
            exec(compile(sys.stdin.read(), "<stdin>", "exec"), namespace)
            return
        names = ", ".join(
            name for name in sorted(namespace) if not name.startswith("_") and name != "app"
        )
        banner = BANNER.format(
            config=ctx.config_uri,
            database=ctx.db.engine.url.render_as_string(hide_password=True),
            names=names,
        )
        _interact(namespace, banner, interface)


def pshell_setup(env: dict[str, Any]) -> Iterator[None]:
    """``[pshell] setup``: the names of ``myapp shell``, in the same kind of unit of work.

    The database scope is the request's session; one unit of work is begun,
    committed when pshell exits (``tm.commit()``/``tm.abort()`` as in
    ``myapp shell``). The session is closed by pshell's closer.
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
    with db.scope(session=request.dbsession), UnitOfWork(request.tm, note="pshell"):
        yield
