"""``/metrics``: the numbers move as the requests say, labels stay bounded, access is restricted."""

from __future__ import annotations

import secrets
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from webtest import TestApp

from myapp.observability.metrics import METHODS, UNMATCHED
from myapp.services.tokens import hash_token

from .conftest import make_app


def scrape(app: TestApp) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = app.get("/metrics", status=200)
    assert response.content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_numbers_move_as_the_requests_say(real_app: TestApp) -> None:
    before = scrape(real_app)
    for _ in range(3):
        real_app.post("/items", status=200)
    real_app.get("/items/424242", status=404)
    real_app.get("/api/companies", status=401)
    after = scrape(real_app)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("myapp_units_total", kind="request", outcome="commit") >= 3 + 1  # +1: /metrics
    assert moved("myapp_units_total", kind="request", outcome="refused") == 2
    assert moved("myapp_requests_total", method="POST", route="items", status="2xx") == 3
    assert moved("myapp_requests_total", method="GET", route="item", status="4xx") == 1
    assert moved("myapp_request_duration_seconds_count", method="POST", route="items") == 3
    assert moved("myapp_transactions_total", outcome="commit") >= 3
    assert moved("myapp_transactions_total", outcome="rollback") >= 2
    assert moved("myapp_unit_statements_count", kind="request") >= 5
    assert moved("myapp_unit_statements_sum", kind="request") >= 3  # an INSERT per POST
    assert value(after, "myapp_pool_checked_out") == 0  # every connection went back


def test_retries_are_counted(real_app: TestApp) -> None:
    from . import conftest

    conftest.CALLS.clear()
    before = scrape(real_app)
    real_app.get("/test/flaky", status=200)
    after = scrape(real_app)
    assert (
        value(after, "myapp_request_retries_total") - value(before, "myapp_request_retries_total")
        == 1
    )


def test_no_label_carries_user_input(real_app: TestApp) -> None:
    marker = "zz" + secrets.token_hex(6)
    before = scrape(real_app)
    real_app.get(f"/{marker}/path", status=404)
    real_app.get(f"/items/{marker}", status="*")
    real_app.request(f"/items?{marker}=1", method="PROPFIND", status="*")
    real_app.get("/items", headers={"X-Request-ID": marker, "User-Agent": marker})
    real_app.get("/items/%FF%FE", status="*")  # not UTF-8
    text = real_app.get("/metrics").text
    assert marker not in text
    after = scrape(real_app)
    # the samples these requests moved: their labels are this app's route names and classes
    routes = {route.name for route in real_app.app.routes_mapper.get_routes()}
    moved = [labels for key, labels in after if after[(key, labels)] != before.get((key, labels))]
    assert moved
    for labels in moved:
        values = dict(labels)
        if "route" in values:
            assert values["route"] in routes | {UNMATCHED}, values
        if "method" in values:
            assert values["method"] in METHODS | {"OTHER"}, values
        if "status" in values:
            assert values["status"] in {"1xx", "2xx", "3xx", "4xx", "5xx", "other"}, values
    assert 'method="OTHER"' in text  # PROPFIND


def test_access_is_restricted_by_address_or_token(real_database: Any) -> None:
    default = make_app(real_database)
    default.get("/metrics", status=200)  # from 127.0.0.1
    answer = default.get("/metrics", extra_environ={"REMOTE_ADDR": "203.0.113.9"}, status=403)
    assert answer.json["error"] == "forbidden"

    token = "metrics-" + secrets.token_hex(16)
    settings = {"myapp.metrics.allow": "10.0.0.0/8", "myapp.metrics.token_hash": hash_token(token)}
    guarded = make_app(real_database, **settings)
    guarded.get("/metrics", status=403)  # 127.0.0.1 is no longer listed
    guarded.get("/metrics", extra_environ={"REMOTE_ADDR": "10.1.2.3"}, status=200)
    outside = {"REMOTE_ADDR": "203.0.113.9"}
    guarded.get("/metrics", extra_environ=outside, status=403)
    guarded.get(
        "/metrics", extra_environ=outside, headers={"Authorization": "Bearer nope"}, status=403
    )
    guarded.get(
        "/metrics", extra_environ=outside, headers={"Authorization": f"Bearer {token}"}, status=200
    )

    off = make_app(real_database, **{"myapp.metrics": "false"})
    off.get("/metrics", status=404)
