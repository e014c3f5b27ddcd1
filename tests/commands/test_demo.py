"""The README's demo, as a new user runs it: initdb, seed, dispatch, then the API and dashboard.

The console script runs for real (subprocesses) on a fresh database of the
current backend; the API and the dashboard are then read through the WSGI
application on that same database, as ``pserve`` would serve them.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time

import pytest
from sqlalchemy import func, text
from sqlalchemy import select as sql_select
from webtest import TestApp

from myapp.models import Booking, Company

from .conftest import Cli, assert_one_error_line, myapp_command

SESSION_SECRET = "demo-test-session-secret-0123456789abcdef-xyz"


def tokens_of(output: str) -> dict[int, str]:
    return {
        int(m.group(1)): m.group(2) for m in re.finditer(r"company (\d+): .*  token: (\S+)", output)
    }


def counts(cli: Cli) -> dict[str, int]:
    with cli.engine() as engine, engine.connect() as conn:
        return {
            table: conn.scalar(text(f"SELECT count(*) FROM {table}"))
            for table in ("companies", "drivers", "bookings", "invoices", "dispatch_runs")
        }


def web_app(cli: Cli) -> TestApp:
    from myapp import main

    settings = {
        "sqlalchemy.url": cli.url,
        "myapp.env": "testing",
        "myapp.session_secret": SESSION_SECRET,
    }
    return TestApp(main({}, **settings))


def test_the_readme_demo_assigns_bookings_and_shows_every_run(cli: Cli) -> None:
    assert cli.run("initdb").returncode == 0

    seeded = cli.run("seed")
    assert seeded.returncode == 0, seeded
    assert "next: 'myapp dispatch --all'" in seeded.stdout
    assert "\x1b[" not in seeded.stdout and "━" not in seeded.stdout  # piped: no bar
    tokens = tokens_of(seeded.stdout)
    assert len(tokens) == 3

    with cli.engine() as engine, engine.connect() as conn:
        pending = conn.scalar(
            sql_select(func.count()).select_from(Booking).where(Booking.status == "pending")
        )
    assert pending > 0

    dispatched = cli.run("dispatch", "--all")
    assert dispatched.returncode == 0, dispatched
    total = re.search(r"^total: (\d+) assigned", dispatched.stdout, re.M)
    assert total and int(total.group(1)) > 0, dispatched  # the demo demos
    assert "pickup_time_passed" not in dispatched.stdout
    assert "\x1b[" not in dispatched.stdout and "━" not in dispatched.stdout  # piped: no bar

    # every CLI dispatch is a recorded run: the API lists it, the dashboard shows it
    with cli.engine() as engine, engine.connect() as conn:
        runs = conn.execute(text("SELECT company_id, source FROM dispatch_runs")).all()
        first = conn.scalar(sql_select(func.min(Company.id)))
    assert sorted(runs) == sorted((cid, "cli") for cid in tokens)

    app = web_app(cli)
    try:
        listed = app.get(
            f"/api/companies/{first}/dispatch-runs",
            headers={"Authorization": f"Bearer {tokens[first]}"},
        ).json
        assert listed["total"] == 1
        assert listed["items"][0]["source"] == "cli"
        assert listed["items"][0]["assigned_count"] > 0

        form = app.get("/dashboard/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
        app.post("/dashboard/login", {"token": tokens[first], "csrf_token": csrf}, status=303)
        page = app.get("/dashboard")
        assert "No dispatch has been run" not in page.text
        assert "from the command line" in page.text
    finally:
        app.app.registry["db"].dispose()


def test_seed_refuses_a_second_run_and_reset_starts_over(cli: Cli) -> None:
    assert cli.run("initdb").returncode == 0
    first = cli.run("seed", "--companies", "2", "--bookings", "10")
    assert first.returncode == 0, first
    before = counts(cli)

    again = cli.run("seed", "--companies", "2", "--bookings", "10")
    assert_one_error_line(again, 1, "already has 2 company(ies)", "myapp seed --reset")
    assert again.stdout == ""
    assert counts(cli) == before  # nothing was added

    reset = cli.run("seed", "--reset", "--companies", "1", "--bookings", "4", "--drivers", "2")
    assert reset.returncode == 0, reset
    assert reset.stdout.startswith("reset: deleted 0 invoices, 0 dispatch_runs, 20 bookings")
    assert counts(cli) == {
        "companies": 1,
        "drivers": 2,
        "bookings": 4,
        "invoices": 0,
        "dispatch_runs": 0,
    }


def read_terminal(master: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> str:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif proc.poll() is not None:
            break
    return b"".join(chunks).decode("utf-8", "replace")


def on_a_terminal(cli: Cli, *args: str) -> tuple[int, str, str]:
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*myapp_command(), "-c", str(cli.ini), *args],
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=subprocess.PIPE,
            env={**cli.environ, "COLUMNS": "120"},
        )
        os.close(slave)
        slave = -1
        screen = read_terminal(master, proc)
        proc.wait(timeout=120)
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    return proc.returncode, screen, stderr


@pytest.mark.skipif(not hasattr(pty, "openpty"), reason="needs a pseudo-terminal")
def test_seed_and_dispatch_show_progress_on_a_terminal(cli: Cli) -> None:
    assert cli.run("initdb").returncode == 0
    status, screen, stderr = on_a_terminal(
        cli, "seed", "--companies", "3", "--drivers", "2", "--bookings", "30", "--batch-size", "10"
    )
    assert status == 0, (screen, stderr)
    assert "seed" in screen and "99/99" in screen  # 3 x (1 company + 2 drivers + 30 bookings)
    assert "\x1b[" in screen

    status, screen, stderr = on_a_terminal(cli, "dispatch", "--all")
    assert status == 0, (screen, stderr)
    assert "3/3" in screen and "\x1b[" in screen
    assert "total: " in screen
