"""Request ids, and one ``myapp.units`` record per request, command and business unit."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from webtest import TestApp

from myapp.observability.context import HEADER
from myapp.observability.logs import JsonFormatter, configure_log_format

from . import conftest


class Records:
    """The log records of the running test phase (caplog's list is replaced between phases)."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog

    def __iter__(self) -> Iterator[logging.LogRecord]:
        return iter(list(self.caplog.records))

    def clear(self) -> None:
        self.caplog.clear()


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Records:
    caplog.set_level(logging.INFO)
    return Records(caplog)


def units(records: Records, kind: str = "request") -> list[logging.LogRecord]:
    return [r for r in records if r.name == "myapp.units" and r.kind == kind]


def test_a_request_id_is_made_returned_and_on_every_log_line(
    real_app: TestApp, records: Records
) -> None:
    real_app.get("/items")  # the app is built (its startup warnings are not requests)
    records.clear()
    response = real_app.post("/items", status=200)
    request_id = response.headers[HEADER]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    mine = [r for r in records if getattr(r, "request_id", None) == request_id]
    assert mine and all(r.request_id == request_id for r in records)  # every line of it
    assert {r.name for r in mine} >= {"myapp.units", "myapp.db.tx"}

    other = real_app.get("/items").headers[HEADER]
    assert other != request_id  # one per request


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123_DEF.4:5", True),
        ("0f8fad5b-d9cb-469f-a165-70867728950e", True),
        ("x" * 129, False),  # too long
        ("has space", False),
        ("new\nline", False),
        ("é-accent", False),
        ("", False),
    ],
    ids=["plain", "uuid", "too-long", "space", "newline", "non-ascii", "empty"],
)
def test_a_client_request_id_is_kept_only_when_sane(
    real_app: TestApp, sent: str, kept: bool
) -> None:
    try:
        response = real_app.get("/items", headers={HEADER: sent})
    except ValueError:  # webob refuses a header value with a newline: nothing to test
        pytest.skip("the HTTP client cannot send this header")
    returned = response.headers[HEADER]
    if kept:
        assert returned == sent
    else:
        assert returned != sent and re.fullmatch(r"[0-9a-f]{32}", returned)


def one_record(records: Records, path: str) -> logging.LogRecord:
    mine = [r for r in units(records) if r.path == path]
    assert len(mine) == 1, [r.getMessage() for r in units(records)]
    return mine[0]


def test_a_read_request_counts_the_statements_of_the_read_engine(
    real_app: TestApp, records: Records
) -> None:
    """GET requests read on the read-only engine: its statements are counted too."""
    real_app.get("/items", status=200)
    listed = one_record(records, "/items")
    assert listed.statements >= 1, listed.getMessage()


def test_one_record_per_request_with_its_outcome(real_app: TestApp, records: Records) -> None:
    real_app.post("/items", status=200)
    created = one_record(records, "/items")
    assert (created.outcome, created.transaction, created.status) == ("commit", "commit", 200)
    assert created.statements >= 1 and created.db_ms >= 0 and created.duration_ms > 0
    assert created.route == "items" and created.retries == 0
    message = created.getMessage()
    assert message.startswith("request POST /items ")
    assert "outcome=commit" in message and "statements=" in message

    records.clear()
    real_app.get("/items/99999", status=404)
    missing = one_record(records, "/items/99999")
    assert (missing.outcome, missing.transaction, missing.status) == ("refused", "rollback", 404)

    records.clear()
    real_app.get("/no/such/route", status=404)
    unmatched = one_record(records, "/no/such/route")
    assert (unmatched.outcome, unmatched.route, unmatched.status) == ("refused", "unmatched", 404)

    records.clear()
    real_app.get("/api/companies", status=401)
    refused = one_record(records, "/api/companies")
    assert (refused.outcome, refused.status) == ("refused", 401)


def test_a_retried_request_is_one_record_saying_how_many_retries(
    real_app: TestApp, records: Records
) -> None:
    conftest.CALLS.clear()
    response = real_app.get("/test/flaky", status=200)
    assert response.json == {"calls": 2}
    record = one_record(records, "/test/flaky")
    assert (record.outcome, record.retries, record.status) == ("commit", 1, 200)

    records.clear()
    real_app.get("/test/conflict", status="*")
    conflict = one_record(records, "/test/conflict")
    assert conflict.outcome == "conflict" and conflict.retries == 2  # 3 attempts in all


def test_json_log_lines_carry_the_fields(real_app: TestApp, records: Records) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("myapp.units")
    logger.addHandler(handler)
    try:
        response = real_app.post("/items", headers={HEADER: "json-test-1"})
    finally:
        logger.removeHandler(handler)
    assert response.headers[HEADER] == "json-test-1"
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["request_id"] == "json-test-1"
    assert line["logger"] == "myapp.units" and line["level"] == "INFO"
    assert (line["kind"], line["outcome"], line["method"], line["status"]) == (
        "request",
        "commit",
        "POST",
        200,
    )
    assert line["statements"] >= 1 and "db_ms" in line and "duration_ms" in line
    assert line["time"].endswith("+00:00")


def test_the_log_format_setting_switches_the_root_handlers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    monkeypatch.setattr(root, "handlers", [handler])
    configure_log_format({"myapp.log_format": "json"})
    assert isinstance(handler.formatter, JsonFormatter)
    configure_log_format({"myapp.log_format": "text"})
    assert "%(request_id)s" in handler.formatter._fmt  # type: ignore[union-attr]
    from pyramid.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match="expected 'json' or 'text'"):
        configure_log_format({"myapp.log_format": "xml"})


def test_commands_and_business_units_log_one_record_each(
    real_database: Any, records: Records, tmp_path: Any, backend: str
) -> None:
    from myapp.commands import main
    from myapp.testing.cli import write_ini

    url = real_database.engine.url.render_as_string(hide_password=False)
    ini = write_ini(tmp_path / "app.ini", url)
    assert main(["-c", str(ini), "seed", "--reset", "--companies", "1", "--bookings", "8"]) == 0
    assert main(["-c", str(ini), "dispatch", "--all"]) == 0
    assert main(["-c", str(ini), "dispatch", "--company", "999999"]) == 1
    assert main(["-c", str(ini), "invoices", "generate", "--period", "2026-10"]) == 0

    commands = units(records, "command")
    assert [(r.unit, r.outcome) for r in commands] == [
        ("seed", "commit"),
        ("dispatch", "commit"),
        ("dispatch", "refused"),
        ("invoices generate", "commit"),
    ]
    seed = commands[0]
    assert seed.commits >= 2 and seed.statements >= 3 and seed.rollbacks == 0
    business = units(records, "business")
    assert [(r.unit, r.outcome) for r in business] == [
        ("dispatch", "commit"),
        ("invoicing", "commit"),
    ]
    assert business[0].statements >= 3
    # a command's records share its request id, and it differs from the next command's
    assert len({r.request_id for r in commands}) == 4
