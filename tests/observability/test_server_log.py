"""What the README promises about the server log, checked on a real ``pserve`` (development.ini).

One ``myapp.units`` line per request, saying how its unit of work ended, also
for the requests that never reach a view (401, an unmatched route), and the
request id on it.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from myapp.testing.server import ServerProcess


@pytest.fixture(scope="module")
def server(backend: str, request: pytest.FixtureRequest, tmp_path_factory: Any) -> Any:
    with ServerProcess(
        tmp_path_factory.mktemp("serverlog"),
        backend=backend,
        dburl=request.config.getoption("--dburl"),
        settings={"myapp.log_format": "text"},
    ) as running:
        yield running


def unit_lines(log: str, request_id: str) -> list[str]:
    tag = f"[{request_id}]"
    return [line for line in log.splitlines() if tag in line and "myapp.units" in line]


def wait_for(server: Any, request_id: str) -> list[str]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = unit_lines(server.log_text(), request_id)
        if lines:
            return lines
        time.sleep(0.1)
    return []


@pytest.mark.parametrize(
    ("method", "path", "status", "outcome", "transaction"),
    [
        ("POST", "/items", 200, "commit", "commit"),
        ("GET", "/items", 200, "commit", "commit"),
        ("GET", "/items/99", 404, "refused", "rollback"),
        ("GET", "/api/companies", 401, "refused", "rollback"),
        ("GET", "/no/such/page", 404, "refused", "rollback"),
    ],
    ids=["created", "listed", "not-found", "unauthenticated", "unmatched"],
)
def test_one_log_line_per_request_says_how_it_ended(
    server: Any, method: str, path: str, status: int, outcome: str, transaction: str
) -> None:
    slug = re.sub(r"\W", "-", path)
    request_id = f"readme-{method}{slug}-{time.monotonic_ns()}"
    answer, _, _ = server.request(method, path, headers={"X-Request-ID": request_id})
    assert answer == status
    lines = wait_for(server, request_id)
    assert len(lines) == 1, server.log_text()[-3000:]
    line = lines[0]
    assert f"request {method} {path} " in line
    assert f"status={status}" in line and f"outcome={outcome}" in line
    assert f"transaction={transaction}" in line and "statements=" in line and "db_ms=" in line
