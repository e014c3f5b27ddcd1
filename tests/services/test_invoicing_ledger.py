"""Invoicing with a ledger database: invoices in main, ledger entries in the ledger, atomically.

A private PostgreSQL cluster with prepared transactions (the shared server has
none): ``main`` with the application's schema, ``ledger`` empty (invoicing
creates its table). Each committed chunk is one two-phase unit of work, so the
two databases always hold the same bookings.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import insert, select

from myapp.db import Database, init_db
from myapp.models import Base, Booking, Invoice
from myapp.models.ledger import LedgerEntry
from myapp.services.invoicing import InvoicingFailed, generate_invoices
from myapp.testing.cli import ROOT, clean_environ, run_myapp
from myapp.testing.factories import insert_company_rows
from myapp.testing.pgcluster import PgCluster, pg_cluster_fixture

ledger_cluster = pg_cluster_fixture(max_prepared_transactions=10)
OCT = datetime(2026, 10, 1, tzinfo=UTC)
BOOKINGS = 25
_n = iter(range(1000))


@pytest.fixture
def urls(ledger_cluster: PgCluster) -> Iterator[tuple[str, str]]:
    n = next(_n)
    main_url = ledger_cluster.create_database(f"inv_main_{n}")
    ledger_url = ledger_cluster.create_database(f"inv_ledger_{n}")
    db = Database.from_url(main_url)
    try:
        init_db(db.engine, Base.metadata)
        with db.engine.begin() as conn:
            company, _ = insert_company_rows(conn, "c", 0, created=OCT)
            conn.execute(
                insert(Booking.__table__),
                [
                    {
                        "company_id": company,
                        "pickup_time": OCT + timedelta(hours=7 * i),
                        "pickup_address": "a",
                        "dropoff_address": "b",
                        "status": "completed",
                        "driver_id": None,
                        "created": OCT,
                        "updated": OCT,
                    }
                    for i in range(BOOKINGS)
                ],
            )
    finally:
        db.dispose()
    yield main_url, ledger_url


def _state(main_url: str, ledger_url: str) -> tuple[dict[int, Decimal], dict[int, Decimal]]:
    db = Database.from_url(main_url, databases={"ledger": ledger_url})
    try:
        with db.engine.connect() as conn:
            invoices = dict(conn.execute(select(Invoice.booking_id, Invoice.amount)).all())
        with db.database("ledger").engine.connect() as conn:
            entries = dict(conn.execute(select(LedgerEntry.booking_id, LedgerEntry.amount)).all())
    finally:
        db.dispose()
    return invoices, entries


def test_each_batch_writes_invoices_and_ledger_entries_in_one_two_phase_unit(
    urls: tuple[str, str],
) -> None:
    db = Database.from_url(urls[0], databases={"ledger": urls[1]})
    try:
        with db.scope():
            summary = generate_invoices("2026-10", batch_size=10)
        with db.engine.connect() as conn:
            decisions = conn.exec_driver_sql(
                "SELECT count(*) FROM myapp_twophase.decisions WHERE outcome = 'commit'"
            ).scalar()
        assert decisions == 3  # 10 + 10 + 5: one two-phase commit per batch
    finally:
        db.dispose()
    invoices, entries = _state(*urls)
    assert summary.created == BOOKINGS == len(invoices)
    assert invoices == entries
    assert sum(entries.values()) == summary.total_amount


def test_a_failing_run_leaves_both_databases_agreeing_and_a_rerun_finishes(
    urls: tuple[str, str],
) -> None:
    db = Database.from_url(urls[0], databases={"ledger": urls[1]})

    def stop_after_the_first_batch(state: Any) -> None:
        if state.batches == 1 and not state.done:
            raise RuntimeError("stopped")

    try:
        with db.scope(), pytest.raises(InvoicingFailed):
            generate_invoices("2026-10", batch_size=10, progress=stop_after_the_first_batch)
        invoices, entries = _state(*urls)
        assert len(invoices) == 10 and invoices == entries
        with db.scope():
            again = generate_invoices("2026-10", batch_size=10)
        assert again.created == BOOKINGS - 10
    finally:
        db.dispose()
    invoices, entries = _state(*urls)
    assert len(invoices) == BOOKINGS and invoices == entries


def test_the_cli_uses_the_ledger_when_it_is_configured(urls: tuple[str, str]) -> None:
    env = clean_environ(DATABASE_URL=urls[0], MYAPP_DATABASES="ledger", LEDGER_DATABASE_URL=urls[1])
    ini = str(ROOT / "testing.ini")
    result = run_myapp("-c", ini, "invoices", "generate", "--period", "2026-10", env=env)
    assert result.returncode == 0, str(result)
    assert f"{BOOKINGS} created" in result.stdout
    invoices, entries = _state(*urls)
    assert len(entries) == BOOKINGS and invoices == entries
    # without the ledger configured the same command works on the main database alone
    env.pop("MYAPP_DATABASES")
    rerun = run_myapp("-c", ini, "invoices", "generate", "--period", "2026-10", env=env)
    assert rerun.returncode == 0 and "0 created" in rerun.stdout, str(rerun)
