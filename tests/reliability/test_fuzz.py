"""Schema-driven fuzzing of the JSON API from its OpenAPI document (schemathesis + hypothesis).

For every operation of ``myapp/api/openapi.yaml``, hypothesis draws requests
that match the document (positive) and requests that break it (negative:
wrong types, missing or extra fields, out-of-range values, odd strings), with
either random ids or the ids of a real company of the test, and with the admin
token, the company's token, another company's token or none. Each request
goes through the real application in-process (WSGI, on the test's savepoint
connection) under production error settings. Whatever is drawn:

* no response is a 5xx (a response off the spec is a 500: response
  validation is on, so 2xx bodies are checked against the document too);
* every error is JSON with an ``error`` message, and no body carries a stack
  trace, SQL or a file path;
* a rejected request (4xx) wrote nothing: the row counts of every table are
  the same before and after it.

The examples are derandomized (the same on every run, so CI is repeatable)
and bounded: :data:`EXAMPLES` per operation and backend. To hunt further,
``MYAPP_FUZZ_EXAMPLES=500 MYAPP_FUZZ_RANDOM=1`` draws more, and new ones.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from reliability_helpers import LEAKS, build_app
from sqlalchemy import func, select

from myapp.api.spec import SPEC_PATH
from myapp.models import Booking, Company, Driver, Invoice
from myapp.models.dispatch import DispatchRun
from myapp.services.tokens import new_token_and_hash
from myapp.testing.factories import BookingFactory, CompanyFactory, DriverFactory
from myapp.testing.plugin import threaded_wsgi

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = int(os.environ.get("MYAPP_FUZZ_EXAMPLES", "50"))
TABLES = (Company, Driver, Booking, Invoice, DispatchRun)
SCHEMA = schemathesis.openapi.from_path(SPEC_PATH)
OPERATIONS = [(op.method.upper(), op.path) for op in (r.ok() for r in SCHEMA.get_all_operations())]
ADMIN_TOKEN, ADMIN_HASH = new_token_and_hash()


def _counts(db: Any) -> tuple[int, ...]:
    db.session.expire_all()
    return tuple(db.session.scalar(select(func.count()).select_from(m)) for m in TABLES)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzzed_requests_never_fail_and_rejected_ones_write_nothing(
    db: Any, database: Any, request_thread: Any, method: str, path: str
) -> None:
    from schemathesis import GenerationMode

    app = threaded_wsgi(
        build_app(database, **{"myapp.admin_token_hash": ADMIN_HASH}), request_thread
    )
    tokens: dict[str, str] = {}
    ids: dict[str, int] = {}
    for name in ("acme", "globex"):
        token, token_hash = new_token_and_hash()
        company = CompanyFactory(name=name, api_token_hash=token_hash)
        driver = DriverFactory(company_id=company.id)
        booking = BookingFactory(company_id=company.id)
        db.session.commit()
        tokens[name] = token
        if name == "acme":
            ids = {"company_id": company.id, "driver_id": driver.id, "booking_id": booking.id}
    operation = SCHEMA[path][method.lower()]
    names = [p.name for p in operation.path_parameters]
    seen: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=not os.environ.get("MYAPP_FUZZ_RANDOM"),
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def fuzz(data: Any) -> None:
        mode = data.draw(st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE]))
        # real ids and an authorised token twice as often as the alternatives: the assertion
        # below (the fuzz reached the views) must not depend on a few lucky draws
        real_ids = data.draw(st.sampled_from([True, True, False])) if names else False
        fixed = {n: ids[n] for n in names} if real_ids else None
        case = data.draw(operation.as_strategy(generation_mode=mode, path_parameters=fixed))
        if fixed is not None and isinstance(case.body, dict):
            # ids in the body too (a booking's driver_id): drawn numbers only match a real
            # row by chance, and how likely that is would depend on the database's sequences
            for key in ("driver_id", "booking_id"):
                if isinstance(case.body.get(key), int) and data.draw(st.booleans()):
                    case.body[key] = ids[key]
        who = data.draw(st.sampled_from(["admin", "admin", "acme", "acme", "globex", "nobody"]))
        headers = {}
        if who != "nobody":
            headers["Authorization"] = f"Bearer {ADMIN_TOKEN if who == 'admin' else tokens[who]}"
        before = _counts(db)
        response = case.call(app=app, headers=headers)
        status = response.status_code
        seen[status] = seen.get(status, 0) + 1
        text = response.text
        assert status < 500, f"{case.as_curl_command()} -> {status} {text[:500]}"
        sent = case.as_curl_command()
        for leak in LEAKS:  # (an error may echo what the request itself sent)
            if leak in text and leak not in sent:
                raise AssertionError(f"{sent} leaks {leak!r}: {text[:500]}")
        if status >= 400:
            assert response.headers.get("content-type", [""])[0].startswith("application/json")
            assert "error" in json.loads(text), text[:500]
            assert _counts(db) == before, f"{case.as_curl_command()} -> {status} wrote rows"
        elif path.endswith("/token") and fixed is not None:  # acme's token was rotated
            tokens["acme"] = json.loads(text)["api_token"]

    fuzz()
    # the fuzz reached the views (a success, or a 409 from the domain rules) and was refused
    assert any(s < 300 or s == 409 for s in seen), seen
    assert any(400 <= s < 500 for s in seen), seen
    assert sum(seen.values()) >= EXAMPLES // 2, seen
