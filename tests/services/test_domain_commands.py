"""``myapp seed``, ``myapp dispatch``, ``myapp invoices generate`` and ``myapp invoices list``.

Most runs are in-process (``main()``, the console script's own function, on
``store``'s database); the behaviours that depend on the process — output to
a pipe or a terminal, a failure seen by the shell — run the real script.
"""

from __future__ import annotations

import os
import pty
import select as select_module
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select, text

from myapp.commands import main
from myapp.models import Booking, Company, Driver, Invoice
from myapp.services.invoicing import parse_period
from myapp.services.tokens import hash_token

from .conftest import InProcess, Store, assert_one_error_line

#: seed "now" for the invoicing tests: the history then lies mostly in October 2026
OCTOBER_NOW = "2026-10-27T12:00"


# -- help ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (
            ["seed", "--help"],
            ["--seed SEED", "--companies N", "--bookings K", "--days-back D", "--reset"],
        ),
        (["dispatch", "--help"], ["--company ID", "--all", "Exit status"]),
        (["invoices", "generate", "--help"], ["--period YYYY-MM", "--batch-size N", "progress"]),
        (["invoices", "list", "--help"], ["--period YYYY-MM", "--company ID"]),
    ],
    ids=["seed", "dispatch", "invoices generate", "invoices list"],
)
def test_help(argv: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"usage: myapp {' '.join(argv[:-1])}")
    for fragment in fragments:
        assert fragment in out
    assert err == ""


def test_the_invoices_group_lists_its_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["invoices", "--help"]) == 0
    out, _ = capsys.readouterr()
    assert "generate" in out and "list" in out
    assert main(["--help"]) == 0
    out, _ = capsys.readouterr()
    for name in ("seed", "dispatch", "invoices"):
        assert f"\n    {name} " in out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["dispatch"], "one of the arguments --company --all is required"),
        (["dispatch", "--company", "1", "--all"], "not allowed with argument"),
        (["dispatch", "--company", "x"], "expected a whole number"),
        (["invoices", "generate"], "the following arguments are required: --period"),
        (["invoices", "generate", "--period", "2026-13"], "invalid period '2026-13'"),
        (["invoices", "generate", "--period", "2026-10", "--batch-size", "0"], "at least 1"),
        (["seed", "--bookings", "-3"], "must be zero or more"),
    ],
)
def test_usage_errors(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("myapp: error: "), err
    assert fragment in lines[0]


# -- seed ----------------------------------------------------------------------------


def dump(store: Store) -> list[Any]:
    """Everything seeded, ids included (the database is emptied before each seeding)."""
    with store.engine.connect() as conn:
        return [
            conn.execute(select(Company.id, Company.name).order_by(Company.id)).all(),
            conn.execute(
                select(Driver.id, Driver.company_id, Driver.name, Driver.active).order_by(Driver.id)
            ).all(),
            conn.execute(
                select(
                    Booking.id,
                    Booking.company_id,
                    Booking.pickup_time,
                    Booking.pickup_address,
                    Booking.dropoff_address,
                    Booking.status,
                    Booking.driver_id,
                ).order_by(Booking.id)
            ).all(),
        ]


def tokens_of(output: str) -> dict[int, str]:
    tokens = {}
    for line in output.splitlines():
        if line.startswith("company ") and "token: " in line:
            company_id = int(line.split()[1].rstrip(":"))
            tokens[company_id] = line.rsplit("token: ", 1)[1]
    return tokens


def test_seed_is_deterministic_and_prints_the_tokens(store: Store, myapp: InProcess) -> None:
    args = ("seed", "--seed", "11", "--companies", "2", "--drivers", "3", "--bookings", "40")
    args += ("--now", "2026-12-01T09:00")
    first = myapp(*args, "--batch-size", "25")
    assert first.returncode == 0, first
    assert first.stdout.startswith(
        "seed 11: 2 company(ies), 6 driver(s), 80 booking(s) from 2026-10-27 to 2026-12-08 (UTC) ("
    ), first
    assert "only their SHA-256 is stored" in first.stdout
    data = dump(store)
    tokens = tokens_of(first.stdout)
    with store.engine.connect() as conn:
        hashes = dict(conn.execute(select(Company.id, Company.api_token_hash)).all())
    assert sorted(tokens) == sorted(hashes) and len(tokens) == 2
    assert all(hashes[cid] == hash_token(token) for cid, token in tokens.items())

    store.reset()
    second = myapp(*args)  # another batch size: the same data
    assert second.returncode == 0, second
    assert dump(store) == data
    assert set(tokens_of(second.stdout).values()).isdisjoint(tokens.values())

    store.reset()
    other = myapp("seed", "--seed", "12", *args[3:])
    assert other.returncode == 0, other
    assert dump(store) != data


def test_seed_sizes_and_window(store: Store, myapp: InProcess) -> None:
    result = myapp(
        "seed", "--companies", "1", "--drivers", "2", "--bookings", "5", "--now",
        "2027-02-10T08:00", "--days-back", "3", "--days-ahead", "2", "--no-tokens",
    )  # fmt: skip
    assert result.returncode == 0, result
    assert "token" not in result.stdout
    start, end = datetime(2027, 2, 7, 8, 15, tzinfo=UTC), datetime(2027, 2, 12, 8, 15, tzinfo=UTC)
    with store.engine.connect() as conn:
        pickups = list(conn.scalars(select(Booking.pickup_time)))
        assert conn.scalar(select(func.count()).select_from(Driver)) == 2
    assert len(pickups) == 5
    assert all(start <= p < end for p in pickups)


# -- dispatch ----------------------------------------------------------------------------


def statuses(store: Store) -> dict[int, dict[str, int]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(Booking.company_id, Booking.status, func.count()).group_by(
                Booking.company_id, Booking.status
            )
        ).all()
    out: dict[int, dict[str, int]] = {}
    for company_id, status, count in rows:
        out.setdefault(company_id, {})[status] = count
    return out


def seed_future(myapp: InProcess, companies: int = 2) -> None:
    seeded = myapp(
        "seed", "--seed", "3", "--companies", str(companies), "--drivers", "2",
        "--bookings", "30", "--no-tokens",
    )  # fmt: skip
    assert seeded.returncode == 0, seeded


def test_dispatch_one_company(store: Store, myapp: InProcess) -> None:
    seed_future(myapp)
    before = statuses(store)
    company_id = min(before)

    result = myapp("dispatch", "--company", str(company_id), "--details")

    assert result.returncode == 0, result
    after = statuses(store)
    assigned = before[company_id].get("pending", 0) - after[company_id].get("pending", 0)
    left = after[company_id].get("pending", 0)
    assert assigned > 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"company {company_id} (")
    assert f"): {assigned} assigned, {left} left pending" in lines[0]
    assert sum(" -> driver " in line for line in lines) == assigned
    assert sum(line.startswith("  booking ") for line in lines) == assigned + left
    others = [cid for cid in before if cid != company_id]
    assert all(after[cid] == before[cid] for cid in others)  # only that company
    assert result.stderr == ""


def test_dispatch_all_companies(store: Store, myapp: InProcess) -> None:
    seed_future(myapp, companies=3)
    before = statuses(store)

    result = myapp("dispatch", "--all")

    assert result.returncode == 0, result
    after = statuses(store)
    lines = result.stdout.splitlines()
    assert len(lines) == 4  # one per company, then the total
    total = 0
    for line, company_id in zip(lines, sorted(before), strict=False):
        assigned = before[company_id].get("pending", 0) - after[company_id].get("pending", 0)
        assert line.startswith(f"company {company_id} (")
        assert f"{assigned} assigned, {after[company_id].get('pending', 0)} left pending" in line
        total += assigned
    assert lines[-1].startswith(f"total: {total} assigned, ")
    assert lines[-1].endswith("3 company(ies) dispatched")

    again = myapp("dispatch", "--all")  # nothing left that can be assigned
    assert again.returncode == 0, again
    assert again.stdout.splitlines()[-1].startswith("total: 0 assigned")
    assert statuses(store) == after


def test_dispatch_gives_the_reasons(store: Store, myapp: InProcess) -> None:
    seed_future(myapp, companies=1)  # then the pickups are in the past for --now
    result = myapp("dispatch", "--all", "--now", "2041-01-01T00:00")
    assert result.returncode == 0, result
    pending = statuses(store)[1]["pending"]
    assert f"0 assigned, {pending} left pending (pickup_time_passed: {pending})" in result.stdout


def test_dispatch_an_unknown_company(store: Store, myapp: InProcess) -> None:
    seed_future(myapp, companies=1)
    before = statuses(store)
    result = myapp("dispatch", "--company", "999999")
    assert_one_error_line(result, 1, "company 999999 not found")
    assert result.stdout == ""
    assert statuses(store) == before


def test_dispatch_all_without_companies(store: Store, myapp: InProcess) -> None:
    result = myapp("dispatch", "--all")
    assert (result.returncode, result.stdout) == (0, "no companies: nothing to dispatch\n")


# -- invoices ---------------------------------------------------------------------------


def completed_in_october(store: Store) -> int:
    october = parse_period("2026-10")
    with store.engine.connect() as conn:
        return conn.scalar(
            select(func.count())
            .select_from(Booking)
            .where(
                Booking.status == "completed",
                Booking.pickup_time >= october.start,
                Booking.pickup_time < october.end,
            )
        )


def test_generate_through_a_pipe_prints_only_the_summary(store: Store, myapp: InProcess) -> None:
    seeded = myapp(
        "seed", "--companies", "2", "--bookings", "60", "--now", OCTOBER_NOW, "--no-tokens"
    )
    assert seeded.returncode == 0, seeded
    completed = completed_in_october(store)
    with store.engine.connect() as conn:
        total = conn.scalar(select(func.count()).select_from(Booking))
    assert 0 < completed < total

    result = store.run("invoices", "generate", "--period", "2026-10", "--batch-size", "7")

    assert result.returncode == 0, result
    batches = -(-completed // 7)
    with store.engine.connect() as conn:
        amount = conn.scalar(select(func.sum(Invoice.amount)))
    assert result.stdout.splitlines() == [
        f"invoices 2026-10: {completed} created, 0 already invoiced (skipped), {completed} "
        f"completed booking(s) considered, {batches} batch(es) committed, total amount "
        f"{amount:.2f}"
    ]
    assert "\x1b" not in result.stdout and "\r" not in result.stdout  # no progress bar
    assert result.stderr == ""
    assert (
        store.assert_each_completed_booking_invoiced_once(
            parse_period("2026-10").start, parse_period("2026-10").end
        )
        == completed
    )

    again = myapp("invoices", "generate", "--period", "2026-10")
    assert again.returncode == 0, again
    assert f": 0 created, {completed} already invoiced (skipped)" in again.stdout

    listed = myapp("invoices", "list", "--period", "2026-10", "--company", "1")
    assert listed.returncode == 0, listed
    with store.engine.connect() as conn:
        mine = conn.execute(
            select(func.count(), func.sum(Invoice.amount)).where(Invoice.company_id == 1)
        ).one()
    assert listed.stdout.splitlines()[-1] == (
        f"{mine[0]} invoice(s) of company 1 in 2026-10, total {mine[1]:.2f}"
    )
    assert len(listed.stdout.splitlines()) == mine[0] + 2  # header, rows, total


def read_terminal(master: int, proc: subprocess.Popen[bytes]) -> str:
    chunks = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select_module.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return b"".join(chunks).decode("utf-8", "replace")


def test_generate_on_a_terminal_shows_a_progress_bar(store: Store, myapp: InProcess) -> None:
    seeded = myapp(
        "seed", "--companies", "1", "--bookings", "80", "--now", OCTOBER_NOW, "--no-tokens"
    )
    assert seeded.returncode == 0, seeded
    completed = completed_in_october(store)
    master, slave = pty.openpty()
    try:
        proc = store.popen(
            "invoices", "generate", "--period", "2026-10", "--batch-size", "5",
            stdout=slave, stderr=subprocess.PIPE,
        )  # fmt: skip
        os.close(slave)
        slave = -1
        screen = read_terminal(master, proc)
        proc.wait(timeout=60)
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    assert proc.returncode == 0, (screen, stderr)
    assert "invoices 2026-10" in screen
    assert f"{completed}/{completed}" in screen  # the bar's M/N column, complete
    assert "\x1b[" in screen  # drawn with terminal control sequences
    assert f"invoices 2026-10: {completed} created" in screen


def install_failing_trigger(store: Store, booking_id: int) -> None:
    """A real database error when the invoice of ``booking_id`` is inserted (committed DDL)."""
    with store.engine.begin() as conn:
        if store.backend == "postgresql":
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_invoice() RETURNS trigger LANGUAGE plpgsql AS $$ "
                    "BEGIN RAISE EXCEPTION 'invoice refused by the test trigger'; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_invoice BEFORE INSERT ON invoices FOR EACH ROW "
                    f"WHEN (NEW.booking_id = {booking_id}) EXECUTE FUNCTION refuse_invoice()"
                )
            )
        elif store.backend == "mysql":
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_invoice BEFORE INSERT ON invoices FOR EACH ROW "
                    f"BEGIN IF NEW.booking_id = {booking_id} THEN SIGNAL SQLSTATE '45000' "
                    "SET MESSAGE_TEXT = 'invoice refused by the test trigger'; END IF; END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_invoice BEFORE INSERT ON invoices "
                    f"WHEN NEW.booking_id = {booking_id} "
                    "BEGIN SELECT RAISE(ABORT, 'invoice refused by the test trigger'); END"
                )
            )


def drop_failing_trigger(store: Store) -> None:
    with store.engine.begin() as conn:
        if store.backend == "postgresql":
            conn.execute(text("DROP TRIGGER IF EXISTS refuse_invoice ON invoices"))
            conn.execute(text("DROP FUNCTION IF EXISTS refuse_invoice()"))
        else:
            conn.execute(text("DROP TRIGGER IF EXISTS refuse_invoice"))


def test_a_failing_run_says_what_was_committed_and_a_rerun_finishes(store: Store) -> None:
    company_id, _ = store.company()
    october = parse_period("2026-10")
    store.bookings(
        company_id,
        [(october.start.replace(day=1 + n % 28, hour=n % 24), "completed") for n in range(25)],
    )
    with store.engine.connect() as conn:
        victim = conn.scalars(select(Booking.id).order_by(Booking.id)).all()[12]
    install_failing_trigger(store, victim)  # in the third batch of 5
    try:
        failed = store.run("invoices", "generate", "--period", "2026-10", "--batch-size", "5")
        assert_one_error_line(
            failed,
            1,
            "invoicing 2026-10 failed after committing 2 batch(es) (10 invoice(s)",
            "run it again to finish",
            "invoice refused by the test trigger",
        )
        assert failed.stdout == ""
        assert store.invoice_count() == 10
    finally:
        drop_failing_trigger(store)

    rerun = store.run("invoices", "generate", "--period", "2026-10", "--batch-size", "5")
    assert rerun.returncode == 0, rerun
    assert "15 created, 10 already invoiced (skipped), 25 completed booking(s)" in rerun.stdout
    assert store.assert_each_completed_booking_invoiced_once(october.start, october.end) == 25
