"""The dispatch domain's commands: ``seed``, ``dispatch``, ``invoices generate``, ``invoices list``.

All of them manage their own transactions (``atomic = False``): ``seed`` and
``invoices generate`` write in committed batches (``db_batch_operation``),
``dispatch`` calls the engine, a durable unit of work per company, and
``invoices list`` reads in ``db_read_only()``. See docs/invoicing.md and
docs/cli.md.
"""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from myapp.db import db_read_only

from .base import Command, CommandContext, CommandError, register, register_group

register_group("invoices", help="Invoices: generate and list them for a period (YYYY-MM)")


def period_argument(value: str) -> str:
    """argparse ``type=`` for ``YYYY-MM`` (a bad value is a usage error, status 2)."""
    from myapp.services.invoicing import InvalidPeriod, parse_period

    try:
        return parse_period(value).name
    except InvalidPeriod as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _whole_number(value: str, minimum: int, meaning: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < minimum:
        raise argparse.ArgumentTypeError(f"must be {meaning}, got {number}")
    return number


def positive_int(value: str) -> int:
    return _whole_number(value, 1, "at least 1")


def count_argument(value: str) -> int:
    return _whole_number(value, 0, "zero or more")


def instant_argument(value: str) -> datetime:
    """An ISO 8601 date and time; without an offset it is taken as UTC."""
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 date and time such as 2026-10-01T08:00Z, got {value!r}"
        ) from None
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------
# myapp seed


@register
class Seed(Command):
    name = "seed"
    help = "Add deterministic demo data: companies, drivers, bookings (same --seed, same data)"
    description = """
        Add demo companies, drivers and bookings, drawn from a random generator seeded
        with --seed: the same seed and sizes give the same data (names, addresses,
        pickup times, statuses, driver assignments). Pickup times fall in --period
        (YYYY-MM, UTC); about half the bookings are completed, the others pending,
        assigned or cancelled. Rows are written in committed batches. Each company gets
        a fresh API token, printed once (only its hash is stored).

        examples:
          myapp seed                                  3 companies, 5 drivers and 50 bookings each
          myapp seed --seed 7 --companies 10 --bookings 10000 --period 2026-11
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
            "--period",
            type=period_argument,
            default="2026-10",
            metavar="YYYY-MM",
            help="the month of the pickup times (default: 2026-10)",
        )
        parser.add_argument(
            "--batch-size",
            type=positive_int,
            default=500,
            metavar="N",
            help="rows per committed batch (default: 500)",
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
        period: str,
        batch_size: int,
        no_tokens: bool = False,
    ) -> None:
        from myapp.services.demo_data import generate_demo_data

        summary = generate_demo_data(
            seed=seed,
            companies=companies,
            drivers=drivers,
            bookings=bookings,
            period=period,
            batch_size=batch_size,
            with_tokens=not no_tokens,
        )
        ctx.out(
            f"seed {summary.seed}: {len(summary.companies)} company(ies), {summary.drivers} "
            f"driver(s), {summary.bookings} booking(s) in {summary.period} "
            f"({summary.batches} batch(es) committed)"
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


# ---------------------------------------------------------------------------
# myapp dispatch


@register
class Dispatch(Command):
    name = "dispatch"
    help = "Assign pending bookings to drivers: one company (--company ID) or all (--all)"
    description = """
        Run the dispatch engine (earliest pickup first, least-loaded active driver,
        never a double booking; see docs/domain.md) for one company or for every company.
        Each company is its own durable unit of work, committed before the next one
        starts. Prints, per company, how many bookings were assigned and how many were
        left pending, with the reasons.

        Exit status: 0 done; 1 unknown company (--company), or a company whose dispatch
        failed (--all carries on with the others, then reports them).

        examples:
          myapp dispatch --company 3
          myapp dispatch --all --details
        """
    atomic = False  # the engine commits each company's dispatch itself

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--company", type=positive_int, metavar="ID", help="one company")
        which.add_argument("--all", action="store_true", help="every company, by id")
        parser.add_argument(
            "--details", action="store_true", help="list every assignment and pending booking"
        )
        parser.add_argument(
            "--now",
            type=instant_argument,
            default=None,
            metavar="WHEN",
            help="dispatch as if it were WHEN (ISO 8601; UTC if no offset). Default: now",
        )

    def handle(
        self,
        ctx: CommandContext,
        *,
        company: int | None = None,
        all: bool = False,
        details: bool = False,
        now: datetime | None = None,
    ) -> int | None:
        from myapp.models import Company
        from myapp.services import dispatch as engine

        with db_read_only() as session:
            stmt = select(Company.id, Company.name).order_by(Company.id)
            if company is not None:
                stmt = stmt.where(Company.id == company)
            companies = [(row.id, row.name) for row in session.execute(stmt)]
        if company is not None and not companies:
            raise CommandError(f"company {company} not found")
        if not companies:
            ctx.out("no companies: nothing to dispatch")
            return None

        totals: Counter[str] = Counter()
        failed: list[str] = []
        for company_id, name in companies:
            try:
                result = engine.run(company_id, now=now)
            except Exception as exc:  # --all carries on; reported below and in the status
                if company is not None:
                    raise
                failed.append(f"company {company_id}: {type(exc).__name__}: {exc}")
                ctx.out(f"company {company_id} ({name}): FAILED, nothing committed: {exc}")
                continue
            if result.reason == engine.COMPANY_NOT_FOUND:  # deleted since we listed it
                if company is not None:
                    raise CommandError(f"company {company_id} not found")
                ctx.out(f"company {company_id} ({name}): not found any more, skipped")
                continue
            reasons = Counter(reason for _, reason in result.unassigned)
            line = (
                f"company {company_id} ({name}): {len(result.assigned)} assigned, "
                f"{len(result.unassigned)} left pending"
            )
            if reasons:
                line += " (" + ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items())) + ")"
            ctx.out(line)
            if details:
                for booking_id, driver_id in result.assigned:
                    ctx.out(f"  booking {booking_id} -> driver {driver_id}")
                for booking_id, reason in result.unassigned:
                    ctx.out(f"  booking {booking_id}: {reason}")
            totals["companies"] += 1
            totals["assigned"] += len(result.assigned)
            totals["unassigned"] += len(result.unassigned)
        if len(companies) > 1:
            ctx.out(
                f"total: {totals['assigned']} assigned, {totals['unassigned']} left pending, "
                f"{totals['companies']} company(ies) dispatched"
            )
        if failed:
            raise CommandError(
                f"dispatch failed for {len(failed)} company(ies), the others were committed: "
                + "; ".join(failed)
            )
        return None


# ---------------------------------------------------------------------------
# myapp invoices generate / list


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

        bar = _ProgressBar(ctx, f"invoices {period}") if _is_terminal(ctx.stdout) else None
        try:
            summary = generate_invoices(
                period, batch_size=batch_size, progress=bar.update if bar else None
            )
        except InvoicingFailed as exc:
            raise CommandError(str(exc)) from exc
        finally:
            if bar is not None:
                bar.stop()
        ctx.out(
            f"invoices {summary.period}: {summary.created} created, {summary.skipped} already "
            f"invoiced (skipped), {summary.considered} completed booking(s) considered, "
            f"{summary.batches} batch(es) committed, total amount {summary.total_amount:.2f}"
        )


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class _ProgressBar:
    """A rich progress bar on the command's standard output (used only on a terminal)."""

    def __init__(self, ctx: CommandContext, description: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=ctx.stdout),
            transient=False,
        )
        self.task = self.progress.add_task(description, total=None)
        self.progress.start()

    def update(self, summary: Any) -> None:
        self.progress.update(
            self.task,
            total=max(summary.expected, summary.processed),
            completed=summary.processed,
        )

    def stop(self) -> None:
        self.progress.stop()


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
