"""Every read-modify-write of the API, the dashboard and the invoicing run, raced 20 ways.

Both backends, real commits, 20 threads released together by a barrier, each
with its own WebTest client on the same application (its own thread-local
transaction manager and pooled connection; the pool holds all 20). PostgreSQL
is where the row locks matter (READ COMMITTED lets a request read a row another
is changing); on SQLite the requests' ``BEGIN IMMEDIATE`` queues the writers,
and the promised outcomes are the same. Each test
states the outcome ``docs/reliability.md`` promises for that operation and its
concurrency control, and checks it exactly, then checks that what was handed
out works (a rotated token authenticates) and nothing else does.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import webtest
from reliability_helpers import Live, new_token_and_hash
from sqlalchemy import func, select, text

from myapp.models import Booking, Company, Driver, Invoice
from myapp.models.dispatch import DispatchRun
from myapp.testing.factories import insert_booking_rows

N = 20
ADMIN_TOKEN, ADMIN_HASH = new_token_and_hash()
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
T0 = datetime(2043, 3, 3, 9, 0, tzinfo=UTC)


@pytest.fixture
def live(dbengine: Any) -> Iterator[Live]:
    """:class:`Live` with a pool that holds 20 concurrent requests."""
    stack = Live(dbengine.url.render_as_string(hide_password=False), pool_size=N + 2)
    try:
        yield stack
        assert stack.engine.pool.checkedout() == 0, "a connection is still checked out"
    finally:
        stack.cleanup()


def race(live: Live, call: Callable[[webtest.TestApp, int], Any]) -> list[Any]:
    """``call(client, i)`` on N threads released together; the responses in order of i."""
    app = live.app(**{"myapp.admin_token_hash": ADMIN_HASH})
    barrier = threading.Barrier(N)
    results: list[Any] = [None] * N
    errors: list[BaseException] = []

    def run(i: int) -> None:
        client = webtest.TestApp(app, extra_environ={"HTTP_HOST": "example.com"})
        try:
            barrier.wait(timeout=30)
            results[i] = call(client, i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"racer-{i}") for i in range(N)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a racer is stuck"
    assert errors == [], errors
    return results


def statuses(responses: list[Any]) -> Counter[int]:
    return Counter(r.status_int for r in responses)


def scalar(live: Live, stmt: Any) -> Any:
    with live.engine.connect() as conn:
        return conn.execute(stmt).scalar()


def company_with(live: Live, drivers: int = 0, pickups: list[datetime] | None = None) -> dict:
    company_id, token = live.company()
    with live.engine.begin() as conn:
        driver_ids = [
            conn.scalar(
                Driver.__table__.insert()
                .values(company_id=company_id, name=f"D{i}", active=True, created=T0, updated=T0)
                .returning(Driver.id)
            )
            for i in range(drivers)
        ]
        booking_ids = insert_booking_rows(conn, company_id, pickups or [])
    return {
        "id": company_id,
        "token": token,
        "headers": {"Authorization": f"Bearer {token}"},
        "url": f"/api/companies/{company_id}",
        "drivers": driver_ids,
        "bookings": booking_ids,
    }


def test_token_rotation_with_the_company_token_hands_out_one_working_token(live: Live) -> None:
    """Row lock + re-check of the caller after the lock: one 200, nineteen 401s."""
    co = company_with(live)
    responses = race(
        live,
        lambda c, i: c.post(co["url"] + "/token", headers=co["headers"], expect_errors=True),
    )
    assert statuses(responses) == {200: 1, 401: N - 1}, [r.body[:80] for r in responses]
    (winner,) = [r.json["api_token"] for r in responses if r.status_int == 200]
    client = webtest.TestApp(live.app(), extra_environ={"HTTP_HOST": "example.com"})
    assert client.get(co["url"], headers={"Authorization": f"Bearer {winner}"}).status_int == 200
    assert client.get(co["url"], headers=co["headers"], status=401).json == {
        "error": "invalid token"
    }


def test_token_rotation_with_the_admin_token_is_serialized(live: Live) -> None:
    """Admin rotations queue on the row lock: twenty 200s, the last one's token works."""
    co = company_with(live)
    responses = race(
        live, lambda c, i: c.post(co["url"] + "/token", headers=ADMIN, expect_errors=True)
    )
    assert statuses(responses) == {200: N}
    tokens = [r.json["api_token"] for r in responses]
    assert len(set(tokens)) == N
    client = webtest.TestApp(live.app(), extra_environ={"HTTP_HOST": "example.com"})
    working = [
        t
        for t in tokens
        if client.get(
            co["url"], headers={"Authorization": f"Bearer {t}"}, expect_errors=True
        ).status_int
        == 200
    ]
    assert len(working) == 1  # each rotation replaced the one committed before it


def test_assigning_one_booking_to_twenty_drivers_assigns_it_once(live: Live) -> None:
    """Booking row lock (FOR UPDATE) then the transition check: one 200, nineteen 409s."""
    co = company_with(live, drivers=N, pickups=[T0])
    (booking,) = co["bookings"]
    responses = race(
        live,
        lambda c, i: c.post_json(
            f"{co['url']}/bookings/{booking}/status",
            {"status": "assigned", "driver_id": co["drivers"][i]},
            headers=co["headers"],
            expect_errors=True,
        ),
    )
    assert statuses(responses) == {200: 1, 409: N - 1}
    (winner,) = [r.json for r in responses if r.status_int == 200]
    assert (
        scalar(live, select(Booking.driver_id).where(Booking.id == booking)) == winner["driver_id"]
    )
    for r in responses:
        if r.status_int == 409:
            assert r.json["error"] == f"booking {booking} cannot go from assigned to assigned"


def test_twenty_bookings_at_one_time_for_one_driver_get_him_once(live: Live) -> None:
    """Unique (driver_id, pickup_time): one 200, nineteen 409s naming driver_id."""
    co = company_with(live, drivers=1, pickups=[T0] * N)
    (driver,) = co["drivers"]
    responses = race(
        live,
        lambda c, i: c.patch_json(
            f"{co['url']}/bookings/{co['bookings'][i]}",
            {"driver_id": driver},
            headers=co["headers"],
            expect_errors=True,
        ),
    )
    assert statuses(responses) == {200: 1, 409: N - 1}
    assert all(r.json["field"] == "driver_id" for r in responses if r.status_int == 409)
    assigned = scalar(
        live,
        select(func.count())
        .select_from(Booking)
        .where(Booking.driver_id == driver, Booking.status == "assigned"),
    )
    assert assigned == 1


def test_status_changes_of_one_booking_apply_once(live: Live) -> None:
    """Twenty clients cancel or complete the same assigned booking: exactly one wins."""
    co = company_with(live, drivers=1, pickups=[T0])
    (booking,) = co["bookings"]
    client = webtest.TestApp(
        live.app(**{"myapp.admin_token_hash": ADMIN_HASH}),
        extra_environ={"HTTP_HOST": "example.com"},
    )
    client.post_json(
        f"{co['url']}/bookings/{booking}/status",
        {"status": "assigned", "driver_id": co["drivers"][0]},
        headers=co["headers"],
    )

    def change(c: webtest.TestApp, i: int) -> Any:
        if i % 2:
            return c.post(
                f"{co['url']}/bookings/{booking}/cancel", headers=co["headers"], expect_errors=True
            )
        return c.post_json(
            f"{co['url']}/bookings/{booking}/status",
            {"status": "completed"},
            headers=co["headers"],
            expect_errors=True,
        )

    responses = race(live, change)
    assert statuses(responses) == {200: 1, 409: N - 1}
    (winner,) = [r.json["status"] for r in responses if r.status_int == 200]
    assert scalar(live, select(Booking.status).where(Booking.id == booking)) == winner


def test_concurrent_driver_changes_lose_no_field(live: Live) -> None:
    """Each PATCH writes only the fields it names: renames and a deactivation all stand."""
    co = company_with(live, drivers=1)
    (driver,) = co["drivers"]
    names = [f"Driver {i}" for i in range(N)]

    def change(c: webtest.TestApp, i: int) -> Any:
        body = {"active": False} if i == 0 else {"name": names[i]}
        return c.patch_json(
            f"{co['url']}/drivers/{driver}", body, headers=co["headers"], expect_errors=True
        )

    responses = race(live, change)
    assert statuses(responses) == {200: N}
    with live.engine.connect() as conn:
        name, active = conn.execute(
            select(Driver.name, Driver.active).where(Driver.id == driver)
        ).one()
    assert active is False  # the deactivation was not overwritten by a rename
    assert name in names[1:]


def test_twenty_dispatches_assign_each_booking_once(live: Live) -> None:
    """SKIP LOCKED claims + driver locks + unique slot: every booking assigned exactly once."""
    pickups = [T0 + timedelta(minutes=30 * slot) for slot in range(10) for _ in range(4)]
    co = company_with(live, drivers=4, pickups=pickups)
    responses = race(
        live,
        lambda c, i: c.post(co["url"] + "/dispatch", headers=co["headers"], expect_errors=True),
    )
    assert statuses(responses) == {200: N}
    assigned = [a["booking_id"] for r in responses for a in r.json["assigned"]]
    assert sorted(assigned) == sorted(co["bookings"])  # each once, none missed
    per_slot = scalar(
        live,
        text(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM bookings WHERE company_id = :c "
            "GROUP BY driver_id, pickup_time) AS slots"
        ).bindparams(c=co["id"]),
    )
    assert per_slot == 1
    runs = scalar(
        live,
        select(func.count()).select_from(DispatchRun).where(DispatchRun.company_id == co["id"]),
    )
    assert runs == N


@pytest.mark.not_mysql(
    reason="invoicing has no conflict-skipping INSERT for MySQL/MariaDB (ON CONFLICT is "
    "PostgreSQL's and SQLite's): the unique booking_id refuses the duplicate, but the run that "
    "meets it fails with 1062 instead of skipping; left to invoicing's owner"
)
def test_twenty_invoicing_runs_invoice_each_booking_once(live: Live) -> None:
    """Unique invoices.booking_id: concurrent runs skip what another committed."""
    from myapp.services.invoicing import generate_invoices

    period_start = datetime(2039, 7, 1, 8, 0, tzinfo=UTC)
    co = company_with(live, drivers=0)
    with live.engine.begin() as conn:
        bookings = insert_booking_rows(
            conn,
            co["id"],
            [period_start + timedelta(hours=h) for h in range(60)],
            status="completed",
        )
    results: list[Any] = [None] * N
    barrier = threading.Barrier(N)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            with live.database.scope():
                results[i] = generate_invoices("2039-07", batch_size=7)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(N)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not any(t.is_alive() for t in threads)
    assert errors == [], errors
    invoiced = scalar(
        live,
        select(func.count(func.distinct(Invoice.booking_id))).where(
            Invoice.booking_id.in_(bookings)
        ),
    )
    rows = scalar(
        live, select(func.count()).select_from(Invoice).where(Invoice.booking_id.in_(bookings))
    )
    assert invoiced == rows == len(bookings)
    assert sum(r.created for r in results) == len(bookings)


def test_the_company_table_is_untouched_by_refused_rotations(live: Live) -> None:
    """The nineteen refused rotations of the first test wrote nothing: one hash change only."""
    co = company_with(live)
    before = scalar(live, select(Company.api_token_hash).where(Company.id == co["id"]))
    responses = race(
        live,
        lambda c, i: c.post(co["url"] + "/token", headers=co["headers"], expect_errors=True),
    )
    (winner,) = [r.json["api_token"] for r in responses if r.status_int == 200]
    after = scalar(live, select(Company.api_token_hash).where(Company.id == co["id"]))
    assert before != after == hashlib.sha256(winner.encode()).hexdigest()
