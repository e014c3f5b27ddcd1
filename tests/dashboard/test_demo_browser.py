"""The README's demo seen in a real Chromium: seed and dispatch from the CLI, then the dashboard.

``myapp seed`` and ``myapp dispatch --all`` run as subprocesses on the live
server's database; a company logs in with the token seed printed and sees the
dispatch the CLI ran, and both charts with data. The screenshot is kept
(``MYAPP_SCREENSHOTS``, else the test's tmp_path).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from test_dashboard_browser import _shot

from myapp.testing.cli import clean_environ, run_myapp, write_ini


def test_a_new_user_sees_the_demo_with_charts(
    live_server: Any, browser: Any, tmp_path: Path
) -> None:
    server = live_server
    ini = write_ini(tmp_path / "demo.ini", server.engine.url.render_as_string(hide_password=False))
    env = clean_environ()
    seeded = run_myapp("-c", str(ini), "seed", "--reset", env=env)
    assert seeded.returncode == 0, seeded
    token = re.search(r"company \d+: .*  token: (\S+)", seeded.stdout).group(1)
    dispatched = run_myapp("-c", str(ini), "dispatch", "--all", env=env)
    assert dispatched.returncode == 0, dispatched
    assigned = int(re.search(r"company \d+ \(.*?\): (\d+) assigned", dispatched.stdout).group(1))
    assert assigned > 0, dispatched

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(server.url + "/dashboard/login")
        page.fill("#token", token)
        page.click("button[type=submit]")
        page.wait_for_url("**/dashboard")
        last_run = page.inner_text("#last-run")
        assert f"{assigned} assigned" in last_run and "from the command line" in last_run
        per_day = page.locator("svg[data-chart=bookings-per-day] rect[data-count]")
        assert per_day.count() > 10  # history and upcoming days have bars
        statuses = {per_day.nth(i).get_attribute("data-status") for i in range(per_day.count())}
        assert {"completed", "assigned"} <= statuses
        drivers = page.locator("svg[data-chart=driver-load] rect[data-count]")
        assert drivers.count() >= 2
        assert int(page.inner_text("[data-status-count=assigned]")) >= assigned
        _shot(page, tmp_path, "dashboard-demo")
    finally:
        context.close()
