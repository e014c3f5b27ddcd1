"""The dashboard in a real headless Chromium, against a real ``pserve`` and a real database.

Log in with a company token, see the bookings by status and the drivers, press
"Dispatch now", see the result; the dispatch's commit is then visible from a
fresh connection to the server's database. Skipped (with the reason) where
/usr/bin/chromium or playwright is missing; CI installs both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import text

SCREENSHOTS = os.environ.get("MYAPP_SCREENSHOTS")  # a folder to keep the screenshots in


def _seed(server: Any, name: str) -> dict[str, Any]:
    """A company with two drivers (one inactive) and three pending bookings, through the API."""
    status, company = server.api("POST", "/api/companies", {"name": name})
    assert status == 201, company
    token, cid = company["api_token"], company["id"]
    drivers = []
    for driver in ({"name": "Ada Lovelace"}, {"name": "Bob Resting", "active": False}):
        status, body = server.api("POST", f"/api/companies/{cid}/drivers", driver, token)
        assert status == 201, body
        drivers.append(body)
    bookings = []
    for i, hour in enumerate((9, 10, 11)):  # three different days and times
        status, body = server.api(
            "POST",
            f"/api/companies/{cid}/bookings",
            {
                "pickup_time": f"2041-04-0{i + 1}T{hour:02d}:00:00+02:00",
                "pickup_address": f"{i + 1} place de la Gare, Lausanne",
                "dropoff_address": "Aéroport de Genève",
            },
            token,
        )
        assert status == 201, body
        bookings.append(body)
    return {"id": cid, "token": token, "drivers": drivers, "bookings": bookings}


def _shot(page: Any, tmp_path: Path, name: str) -> None:
    folder = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def test_log_in_see_bookings_dispatch_now(live_server: Any, browser: Any, tmp_path: Path) -> None:
    server = live_server
    acme = _seed(server, "Acme Cabs")
    other = _seed(server, "Globex Taxis")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        # not logged in: the dashboard sends us to the login form
        page.goto(server.url + "/dashboard")
        assert page.url.endswith("/dashboard/login")
        page.fill("#token", "mya_wrong-token")
        page.click("button[type=submit]")
        assert "That token is not valid." in page.inner_text("[role=alert]")

        page.fill("#token", acme["token"])
        page.click("button[type=submit]")
        page.wait_for_url("**/dashboard")
        assert page.inner_text(".company") == "Acme Cabs"
        assert page.inner_text("[data-status-count=pending]") == "3"
        assert page.inner_text("[data-status-count=assigned]") == "0"
        pending_rows = page.locator("tr[data-status=pending]")
        assert pending_rows.count() == 3
        assert "place de la Gare" in pending_rows.first.inner_text()
        drivers = page.inner_text("#drivers")
        assert "Ada Lovelace" in drivers and "Bob Resting" in drivers and "inactive" in drivers
        assert "No dispatch has been run" in page.inner_text("#last-run")
        # another company's bookings are nowhere on the page
        for booking in other["bookings"]:
            assert page.locator(f"tr[data-booking-id='{booking['id']}']").count() == 0
        _shot(page, tmp_path, "dashboard-before")

        page.click("#dispatch-now")
        page.wait_for_selector("[role=status]")
        # one active driver, three different pickup times: all three go to Ada
        assert page.inner_text("[role=status]") == "Dispatch done: 3 assigned, 0 left pending."
        assert page.inner_text("[data-status-count=pending]") == "0"
        assert page.inner_text("[data-status-count=assigned]") == "3"
        last_run = page.inner_text("#last-run")
        assert "3 assigned" in last_run and "from the dashboard" in last_run
        assert last_run.count("Ada Lovelace") == 3
        # the charts are drawn (server-side SVG): the assigned bookings and Ada's load
        assert page.locator("svg[data-chart=bookings-per-day]").is_visible()
        assert page.locator("svg[data-chart=driver-load]").is_visible()
        ada_bar = page.locator("svg[data-chart=driver-load] rect[data-status=assigned]")
        assert ada_bar.get_attribute("data-count") == "3"
        assert ada_bar.bounding_box()["width"] > 50  # really drawn, not an empty element
        assert "Times are in Europe/Paris." in page.inner_text("#timezone")
        _shot(page, tmp_path, "dashboard-after-dispatch")

        # the dispatch committed for real: a fresh connection to the server's database sees it
        with server.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT status, driver_id FROM bookings WHERE company_id = :c"),
                {"c": acme["id"]},
            ).all()
        ada = acme["drivers"][0]["id"]
        assert sorted(rows) == [("assigned", ada)] * 3
        with server.engine.connect() as conn:
            untouched = conn.execute(
                text("SELECT count(*) FROM bookings WHERE company_id = :c AND status = 'pending'"),
                {"c": other["id"]},
            ).scalar()
        assert untouched == 3

        # the API sees the run the dashboard recorded
        status, runs = server.api(
            "GET", f"/api/companies/{acme['id']}/dispatch-runs", token=acme["token"]
        )
        assert status == 200 and runs["items"][0]["source"] == "dashboard"

        # log out: the dashboard is closed again
        page.click("text=Log out")
        page.wait_for_url("**/dashboard/login")
        page.goto(server.url + "/dashboard")
        assert page.url.endswith("/dashboard/login")
    finally:
        context.close()


def test_a_forged_cross_site_form_is_refused(live_server: Any, browser: Any) -> None:
    """A logged-in browser posting "dispatch now" without the CSRF token: 400, nothing done."""
    server = live_server
    acme = _seed(server, "Csrf Cabs")
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(server.url + "/dashboard/login")
        page.fill("#token", acme["token"])
        page.click("button[type=submit]")
        page.wait_for_url("**/dashboard")
        # the forged form: same browser (the session cookie goes along), no CSRF token
        page.set_content(
            f'<form id="f" method="post" action="{server.url}/dashboard/dispatch"></form>'
        )
        with page.expect_navigation():
            page.evaluate("document.getElementById('f').submit()")
        assert "Form expired" in page.inner_text("h1")
        with server.engine.connect() as conn:
            pending = conn.execute(
                text("SELECT count(*) FROM bookings WHERE company_id = :c AND status = 'pending'"),
                {"c": acme["id"]},
            ).scalar()
        assert pending == 3
    finally:
        context.close()


def test_api_dispatch_over_http_commits_for_real(live_server: Any) -> None:
    """No browser needed: the API trigger over real HTTP, seen from another connection."""
    server = live_server
    acme = _seed(server, "Http Cabs")
    status, body = server.api("POST", f"/api/companies/{acme['id']}/dispatch", token=acme["token"])
    assert status == 200 and body["assigned_count"] == 3, body
    with server.engine.connect() as conn:
        assigned = conn.execute(
            text("SELECT count(*) FROM bookings WHERE company_id = :c AND status = 'assigned'"),
            {"c": acme["id"]},
        ).scalar()
    assert assigned == 3
    status, body = server.api("POST", "/api/companies/99999/dispatch")
    assert (status, body) == (404, {"error": "not found"})
