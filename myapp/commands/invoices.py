"""``myapp invoices generate`` and ``myapp invoices list`` (see docs/invoicing.md)."""

from __future__ import annotations

import argparse

from sqlalchemy import select

from myapp.db import db_read_only

from .arguments import period_argument, positive_int
from .context import CommandContext
from .errors import CommandError
from .progress import ProgressBar
from .registry import Command, register, register_group

register_group("invoices", help="Invoices: generate and list them for a period (YYYY-MM)")


@register
class GenerateInvoices(Command):
    name = "invoices generate"
    help = "Invoice the completed, not yet invoiced bookings of a period (in batches)"
    description = """
        Write one invoice per completed booking whose pickup time falls in --period
        (YYYY-MM, UTC) and that has no invoice yet, in committed batches of
        --batch-size bookings. Safe to run again at any time: a rerun after a crash or
        an interruption creates no duplicate and finishes the rest; a second run creates
        nothing. The tariff is described in docs/invoicing.md.

        A progress bar is shown when standard output is a terminal; otherwise only the
        summary is printed.

        Exit status: 0 done; 1 failed (the committed batches stay; the message says how
        many; run it again to finish); 2 bad arguments.
        """
    atomic = False  # each batch commits by itself

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--period", type=period_argument, required=True, metavar="YYYY-MM", help="the month"
        )
        parser.add_argument(
            "--batch-size",
            type=positive_int,
            default=500,
            metavar="N",
            help="bookings per committed batch (default: 500)",
        )

    def handle(self, ctx: CommandContext, *, period: str, batch_size: int) -> None:
        from myapp.services.invoicing import InvoicingFailed, generate_invoices

        try:
            with ProgressBar(ctx.stdout, f"invoices {period}") as bar:
                summary = generate_invoices(
                    period,
                    batch_size=batch_size,
                    progress=lambda state: bar.update(state.processed, state.expected),
                )
        except InvoicingFailed as exc:
            raise CommandError(str(exc)) from exc
        ctx.out(
            f"invoices {summary.period}: {summary.created} created, {summary.skipped} already "
            f"invoiced (skipped), {summary.considered} completed booking(s) considered, "
            f"{summary.batches} batch(es) committed, total amount {summary.total_amount:.2f}"
        )


@register
class ListInvoices(Command):
    name = "invoices list"
    help = "List the invoices of a period (optionally of one company) and their total"
    atomic = False  # reads only, in db_read_only()

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--period", type=period_argument, required=True, metavar="YYYY-MM", help="the month"
        )
        parser.add_argument("--company", type=positive_int, metavar="ID", help="one company")

    def handle(self, ctx: CommandContext, *, period: str, company: int | None = None) -> None:
        from decimal import Decimal

        from myapp.models import Invoice

        stmt = (
            select(Invoice.id, Invoice.company_id, Invoice.booking_id, Invoice.amount)
            .where(Invoice.period == period)
            .order_by(Invoice.company_id, Invoice.id)
            .execution_options(yield_per=1000)
        )
        if company is not None:
            stmt = stmt.where(Invoice.company_id == company)
        count = 0
        total = Decimal("0.00")
        with db_read_only() as session:
            for row in session.execute(stmt):
                if count == 0:
                    ctx.out(f"{'invoice':>8}  {'company':>8}  {'booking':>8}  {'amount':>10}")
                ctx.out(f"{row.id:>8}  {row.company_id:>8}  {row.booking_id:>8}  {row.amount:>10}")
                count += 1
                total += row.amount
        who = f" of company {company}" if company is not None else ""
        ctx.out(f"{count} invoice(s){who} in {period}, total {total:.2f}")
