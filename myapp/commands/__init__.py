"""The ``myapp`` management command line (Django style).

``myapp [-c FILE] COMMAND [options]`` bootstraps the application from an ini
file (``-c/--config``, else ``$MYAPP_CONFIG``, else ``development.ini``) with
``pyramid.paster.bootstrap`` and runs one command. Built in: ``initdb``,
``migrate``, ``check``, ``shell``, ``routes``, ``seed``,
``dispatch``, ``invoices generate|list``, ``tokens create-admin``. ``myapp --help`` and
``myapp COMMAND --help`` describe them; docs/cli.md is the user guide.

The transaction a command runs in
---------------------------------
By default (``atomic = True``) ``handle()`` runs inside ONE unit of work,
an outermost ``db_transaction()`` of :mod:`myapp.db`; the current database
scope is the bootstrap request's session, so business code finds it with
``current_session()`` and a nested ``db_transaction()`` is a savepoint. When
``handle()`` returns ``None``/``0`` the unit of work commits; when it raises
or returns a non-zero status it is rolled back and nothing is committed.

A command that manages its own transactions (batch jobs using
``db_batch_operation``, which refuses to run inside a transaction, or
anything committing several times) sets ``atomic = False``: it runs inside
the database scope with no transaction open, commits with
``db_transaction()`` / ``db_batch_operation()`` / ``session.commit()``, and
whatever it leaves uncommitted is discarded at the end.

Either way the session is closed and the engine disposed when the command
ends, and one ``myapp.units`` log record says how the command ended
(:mod:`myapp.observability`).

Where things are: :mod:`.registry` (``Command``, ``register``, the parser),
:mod:`.context` (``CommandContext``), :mod:`.runner` (``run_command``,
``main``), :mod:`.errors` (one-line messages), :mod:`.progress` (progress
bars on a terminal), :mod:`.arguments` (argument types); one module per
command or group of commands. Errors are printed as one line, ``myapp: error: ...`` (``--traceback``
for the traceback); exit status 0 success, 1 runtime error, 2 usage error,
130 interrupted. Raise :class:`CommandError` for errors the user can fix.

Adding a command
----------------
Put a module in this package (``myapp/commands/invoices.py``); every module
here is imported when ``myapp`` starts. Modules of other distributions
register through the ``myapp.commands`` entry-point group instead
(``[project.entry-points."myapp.commands"] invoices = "pkg.module"``, or
pointing at a Command class)::

    from myapp.commands import Command, CommandError, register, register_group
    from myapp.db import db_batch_operation

    register_group("invoices", help="Invoices: generate and list them")


    @register
    class GenerateInvoices(Command):
        name = "invoices generate"          # myapp invoices generate --period 2026-10
        help = "Invoice the completed bookings of a period"
        atomic = False                      # batches commit by themselves

        def add_arguments(self, parser):
            parser.add_argument("--period", required=True, help="YYYY-MM")

        def handle(self, ctx, *, period):
            if len(period) != 7:
                raise CommandError(f"--period: expected YYYY-MM, got {period!r}")
            with db_batch_operation(batch_size=500) as (session, commit_batch):
                ...
            ctx.out("done")

``handle(ctx, **options)`` receives a :class:`CommandContext` (``ctx.db``,
``ctx.dbsession``, ``ctx.tm``, ``ctx.request``, ``ctx.registry``,
``ctx.settings``, ``ctx.out()``) and the parsed options by ``dest``. Its
return value is the exit status (``None`` means 0). A name with spaces puts
the command in a group (groups nest); ``register_group`` only gives a group
its help line.
"""

from .context import CommandContext
from .errors import CommandError, UsageError
from .registry import (
    Command,
    CommandRegistry,
    default_registry,
    load_commands,
    register,
    register_group,
)
from .runner import main, run_command

__all__ = [
    "Command",
    "CommandContext",
    "CommandError",
    "CommandRegistry",
    "UsageError",
    "default_registry",
    "load_commands",
    "main",
    "register",
    "register_group",
    "run_command",
]
