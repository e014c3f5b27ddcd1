"""``myapp dispatch``: assign pending bookings, one company or all; every run is recorded."""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import datetime

from sqlalchemy import select

from myapp.db import db_read_only

from .arguments import instant_argument, positive_int
from .context import CommandContext
from .errors import CommandError
from .progress import ProgressBar
from .registry import Command, register


@register
class Dispatch(Command):
    name = "dispatch"
    help = "Assign pending bookings to drivers: one company (--company ID) or all (--all)"
    description = """
        Run the dispatch engine (earliest pickup first, least-loaded active driver,
        never a double booking; see docs/domain.md) for one company or for every company.
        Each company is its own durable unit of work, committed before the next one
        starts, and recorded as a dispatch run (source "cli"), which the dashboard and
        GET /api/companies/{id}/dispatch-runs show. Prints, per company, how many bookings
        were assigned and how many were left pending, with the reasons; with --all a
        progress bar runs on a terminal.

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
        from myapp.services.dispatching import dispatch_and_record

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
        lines: list[str] = []
        bar_total = len(companies) if len(companies) > 1 else None
        with ProgressBar(ctx.stdout, "dispatch", total=bar_total) as bar:
            for done, (company_id, name) in enumerate(companies, start=1):
                try:
                    run = dispatch_and_record(company_id, source="cli", now=now)
                except Exception as exc:  # --all carries on; reported below and in the status
                    if company is not None:
                        raise
                    failed.append(f"company {company_id}: {type(exc).__name__}: {exc}")
                    lines.append(f"company {company_id} ({name}): FAILED, nothing committed: {exc}")
                    bar.update(done, bar_total)
                    continue
                bar.update(done, bar_total)
                if run is None:  # deleted since we listed it
                    if company is not None:
                        raise CommandError(f"company {company_id} not found")
                    lines.append(f"company {company_id} ({name}): not found any more, skipped")
                    continue
                reasons = Counter(item["reason"] for item in run["unassigned"])
                line = (
                    f"company {company_id} ({name}): {run['assigned_count']} assigned, "
                    f"{run['unassigned_count']} left pending"
                )
                if reasons:
                    line += " (" + ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items())) + ")"
                lines.append(line)
                if details:
                    for item in run["assigned"]:
                        lines.append(
                            f"  booking {item['booking_id']} -> driver {item['driver_id']}"
                        )
                    for item in run["unassigned"]:
                        lines.append(f"  booking {item['booking_id']}: {item['reason']}")
                totals["companies"] += 1
                totals["assigned"] += run["assigned_count"]
                totals["unassigned"] += run["unassigned_count"]
        for line in lines:
            ctx.out(line)
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
