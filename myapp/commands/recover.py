"""``myapp recover``: resolve the in-doubt two-phase commits of every configured database."""

from __future__ import annotations

import argparse
from typing import Any

from .context import CommandContext
from .errors import CommandError
from .registry import Command, register


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must not be negative")
    return seconds


@register
class Recover(Command):
    name = "recover"
    help = "Resolve in-doubt two-phase commits (prepared transactions) from the decision record"
    description = """
        List myapp's prepared transactions on every configured database (the main one and
        those of myapp.databases) and resolve each from the decision record of the main
        database: COMMIT PREPARED if its unit of work decided to commit, else ROLLBACK
        PREPARED (no decision means the coordinator never decided commit: recover records
        'abort' first, so a late coordinator cannot commit it any more). Prints what it did.

        Safe at any time and while the application runs: transactions prepared less than
        --min-age seconds ago are left alone (their unit of work may still be committing),
        and another application's prepared transactions are never touched. A second run
        does nothing. Decision records older than --purge-after seconds whose transactions
        are all resolved are deleted. Run it from cron (every few minutes) when more than
        one database is configured; see docs/multiple-databases.md.

        Exit status: 0 nothing left to resolve (or only young transactions left alone);
        1 a transaction could not be resolved, or a database is unreachable.
        """
    atomic = False  # works in autocommit on its own connections

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from myapp.db.twophase import DEFAULT_MIN_AGE, DEFAULT_PURGE_AFTER

        parser.add_argument(
            "--min-age",
            type=_seconds,
            default=DEFAULT_MIN_AGE,
            metavar="SECONDS",
            help=f"leave younger prepared transactions alone (default: {DEFAULT_MIN_AGE:.0f})",
        )
        parser.add_argument(
            "--purge-after",
            type=_seconds,
            default=DEFAULT_PURGE_AFTER,
            metavar="SECONDS",
            help=f"delete resolved decision records older than this (default: "
            f"{DEFAULT_PURGE_AFTER:.0f})",
        )

    def handle(self, ctx: CommandContext, *, min_age: float, purge_after: float, **_: Any) -> None:
        from myapp.db.twophase import recover

        db = ctx.db
        if db.engine.url.get_backend_name() != "postgresql":
            ctx.out("recover: nothing to do (SQLite has no prepared transactions)")
            return
        report = recover(db, min_age=min_age, purge_after=purge_after)
        for line in report.lines():
            ctx.out(line)
        ctx.out(report.summary())
        if report.failed:
            raise CommandError(
                f"{len(report.failed)} prepared transaction(s) could not be resolved (see "
                "above); run 'myapp recover' again"
            )
