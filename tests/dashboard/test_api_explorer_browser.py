"""The API explorer (``/api/docs/``) in a real headless Chromium with no network.

Every request the page makes to anything but the server under test is
refused (and recorded) by the browser context; the page must still render
Swagger UI from the app's own assets, and "Try it out" must call the API.
The Content-Security-Policy is checked in the browser too: a script from
another origin, added to the page, is blocked by it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from test_dashboard_browser import _shot

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def test_the_explorer_renders_and_tries_an_operation_offline(
    live_server: Any, browser: Any, tmp_path: Path
) -> None:
    server = live_server
    status, created = server.api("POST", "/api/companies", {"name": "Explorer Cabs"})
    assert status == 201, created
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    outside: list[str] = []
    problems: list[str] = []

    def only_this_server(route: Any) -> None:
        if urlparse(route.request.url).hostname in LOOPBACK:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_this_server)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        response = page.goto(server.url + "/api/docs/")
        assert response is not None and response.status == 200
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "http" not in csp  # no other origin allowed anywhere

        page.wait_for_selector(".swagger-ui .info .title")
        assert "myapp" in page.inner_text(".swagger-ui .info .title").lower()

        # authorize with the admin token (the bearer scheme of the spec)
        page.click(".swagger-ui .auth-wrapper button.authorize")
        page.fill(".swagger-ui .auth-container input[type=text]", server.admin_token)
        page.click(".swagger-ui .auth-btn-wrapper button.authorize")
        page.click(".swagger-ui .auth-btn-wrapper button.btn-done")

        operation = page.locator("#operations-companies-listCompanies")
        operation.locator(".opblock-summary").click()
        operation.locator("button.try-out__btn").click()
        operation.locator("button.execute").click()
        live = operation.locator(".live-responses-table tr.response")
        status_cell = live.locator(".response-col_status").first
        status_cell.wait_for()
        assert status_cell.inner_text().strip().startswith("200")
        body = operation.locator(".live-responses-table .microlight").first.inner_text()
        assert "Explorer Cabs" in body
        _shot(page, tmp_path, "api-explorer-offline")

        # the policy would block any external load: the browser refuses a foreign script
        blocked = page.evaluate(
            """() => new Promise((resolve) => {
                document.addEventListener('securitypolicyviolation', (e) => resolve(e.blockedURI));
                const script = document.createElement('script');
                script.src = 'https://cdn.example.org/swagger-ui-bundle.js';
                document.body.appendChild(script);
                setTimeout(() => resolve(null), 5000);
            })"""
        )
        assert blocked == "https://cdn.example.org/swagger-ui-bundle.js"
        assert outside == [], outside  # nothing was even attempted outside this server
        assert not [p for p in problems if "cdn.example.org" not in p], problems
    finally:
        context.close()
