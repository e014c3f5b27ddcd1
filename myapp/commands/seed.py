"""``myapp seed``: demo data around now; refuses a database with data (``--reset``)."""

from __future__ import annotations

import argparse
from datetime import datetime

from sqlalchemy import func, select

from myapp.db import db_read_only

from .arguments import count_argument, instant_argument, positive_int
from .context import CommandContext
from .errors import CommandError
from .progress import ProgressBar
from .registry import Command, register


@register
class Seed(Command):
    name = "seed"
    help = "Add demo data around now: companies, drivers, past and upcoming bookings"
    description = """
        Add demo companies, drivers and bookings, drawn from a random generator seeded
        with --seed. Pickup times are on quarter hours around now: a history of completed
        and cancelled bookings over the past --days-back days, and pending, assigned and
        cancelled bookings in the coming --days-ahead days, which 'myapp dispatch --all'
        then assigns. The same seed, sizes and --now give the same data. Rows are written
        in committed batches, with a progress bar on a terminal. Each company gets a fresh
        API token, printed once (only its hash is stored).

        The demo data goes into an empty database: when companies already exist, seed
        refuses and changes nothing. --reset first deletes every company, driver,
        booking, invoice and dispatch run (in one transaction), then seeds.

        examples:
          myapp seed                                  3 companies, 5 drivers and 50 bookings each
          myapp seed --reset --seed 7 --companies 10 --bookings 10000
        """
    atomic = False  # batches commit by themselves

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
        parser.add_argument(
            "--companies", type=count_argument, default=3, metavar="N", help="default: 3"
        )
        parser.add_argument(
            "--drivers",
            type=count_argument,
            default=5,
            metavar="M",
            help="drivers per company (default: 5)",
        )
        parser.add_argument(
            "--bookings",
            type=count_argument,
            default=50,
            metavar="K",
            help="bookings per company (default: 50)",
        )
        parser.add_argument(
            "--days-back",
            type=count_argument,
            default=35,
            metavar="D",
            help="days of history before now (default: 35)",
        )
        parser.add_argument(
            "--days-ahead",
            type=count_argument,
            default=7,
            metavar="D",
            help="days of upcoming bookings after now (default: 7)",
        )
        parser.add_argument(
            "--now",
            type=instant_argument,
            default=None,
            metavar="WHEN",
            help="seed as if it were WHEN (ISO 8601; UTC if no offset). Default: now",
        )
        parser.add_argument(
            "--batch-size",
            type=positive_int,
            default=500,
            metavar="N",
            help="rows per committed batch (default: 500)",
        )
        parser.add_argument(
            "--reset",
            action="store_true",
            help="delete every company, driver, booking, invoice and dispatch run first",
        )
        parser.add_argument(
            "--no-tokens", action="store_true", help="do not create API tokens for the companies"
        )

    def handle(
        self,
        ctx: CommandContext,
        *,
        seed: int,
        companies: int,
        drivers: int,
        bookings: int,
        days_back: int,
        days_ahead: int,
        now: datetime | None,
        batch_size: int,
        reset: bool = False,
        no_tokens: bool = False,
    ) -> None:
        from myapp.models import Company
        from myapp.services.demo_data import delete_demo_data, expected_rows, generate_demo_data

        if days_back + days_ahead < 1:
            raise CommandError("--days-back and --days-ahead cannot both be 0")
        if reset:
            deleted = delete_demo_data()
            ctx.out(
                "reset: deleted "
                + ", ".join(f"{count} {table}" for table, count in deleted.items())
            )
        else:
            with db_read_only() as session:
                existing = session.scalar(select(func.count()).select_from(Company))
            if existing:
                raise CommandError(
                    f"the database already has {existing} company(ies): seed adds demo data to "
                    "an empty database only, and changed nothing. Run 'myapp seed --reset' to "
                    "delete every company, driver, booking, invoice and dispatch run and seed "
                    "again"
                )
        total = expected_rows(companies, drivers, bookings)
        with ProgressBar(ctx.stdout, "seed", total=total) as bar:
            summary = generate_demo_data(
                seed=seed,
                companies=companies,
                drivers=drivers,
                bookings=bookings,
                now=now,
                days_back=days_back,
                days_ahead=days_ahead,
                batch_size=batch_size,
                with_tokens=not no_tokens,
                progress=lambda state: bar.update(state.rows, total),
            )
        ctx.out(
            f"seed {summary.seed}: {len(summary.companies)} company(ies), {summary.drivers} "
            f"driver(s), {summary.bookings} booking(s) from {summary.start:%Y-%m-%d} to "
            f"{summary.end:%Y-%m-%d} (UTC) ({summary.batches} batch(es) committed)"
        )
        if summary.bookings:
            ctx.out(
                "bookings: "
                + ", ".join(
                    f"{summary.statuses[status]} {status}"
                    for status in ("completed", "assigned", "pending", "cancelled")
                )
            )
        for company in summary.companies:
            line = f"company {company.id}: {company.name}"
            if company.token:
                line += f"  token: {company.token}"
            ctx.out(line)
        if any(company.token for company in summary.companies):
            ctx.out("(the tokens are shown once; only their SHA-256 is stored)")
        if summary.statuses.get("pending"):
            ctx.out("next: 'myapp dispatch --all' assigns the pending bookings to drivers")
