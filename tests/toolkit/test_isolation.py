"""Isolation between tests, proved on inner pytest sessions run in shuffled orders.

The inner tests write in every way the project allows (session commits,
units of work, the dispatch engine, requests, batches, raw SQL, savepoints,
the doomed mode) and each one first checks that it starts from an empty
database. Run in several shuffled orders, on the outer test's backend, they
must all pass: nothing leaks from one test to the next, whatever the order.
The same session checks that fixture data committed before the code under
test survives that code's commits and rollbacks.
"""

from __future__ import annotations

import re
import textwrap

import pytest

INNER_CONFTEST = """
    import random

    import pytest
    from sqlalchemy import func, select

    from myapp.models import Booking, Company, Driver, Invoice, Item
    from myapp.testing import persisted_fixture
    from myapp.testing.factories import CompanyFactory, DriverFactory

    def pytest_addoption(parser):
        parser.addoption("--shuffle-seed", type=int, default=None)

    def pytest_collection_modifyitems(config, items):
        seed = config.getoption("--shuffle-seed")
        if seed is not None:
            random.Random(seed).shuffle(items)

    def counts(session):
        return {
            model.__name__: session.scalar(select(func.count()).select_from(model))
            for model in (Company, Driver, Booking, Invoice, Item)
        }

    @pytest.fixture(autouse=True)
    def clean_slate(db):
        # autouse fixtures run first: before any other fixture writes
        assert counts(db.session) == dict.fromkeys(
            ["Company", "Driver", "Booking", "Invoice", "Item"], 0
        ), "data leaked from an earlier test"

    @pytest.fixture
    def company(db):
        return persisted_fixture(db, CompanyFactory(name="fixture company"), Company)

    @pytest.fixture
    def driver(db, company):
        return persisted_fixture(db, DriverFactory(company=company), Driver)

    @pytest.fixture(scope="session")
    def app(database):
        # the real application, plus a view that flushes a row and then fails
        from pyramid.config import Configurator

        def fail(request):
            request.dbsession.add(Item(name="flushed by a failing request"))
            request.dbsession.flush()
            raise RuntimeError("the view fails after flushing")

        settings = {"myapp.database": database, "myapp.env": "testing"}
        with Configurator(settings=settings) as config:
            config.include("myapp")
            config.add_route("fail", "/fail")
            config.add_view(fail, route_name="fail", renderer="json")
        return config.make_wsgi_app()
"""

INNER_TESTS = """
    from datetime import timedelta

    import pytest
    import transaction
    from sqlalchemy import select, text

    from myapp.db import db_batch_operation, db_transaction
    from myapp.models import Company, Item
    from myapp.services import dispatch
    from myapp.testing import ensure_committed, nested_savepoint
    from myapp.testing.factories import (
        BASE_PICKUP_TIME, BookingFactory, CompanyFactory, InvoiceFactory,
    )

    NOW = BASE_PICKUP_TIME - timedelta(hours=1)

    def fixture_company_is_there(db, company):
        db.session.expire_all()
        names = db.session.scalars(select(Company.name)).all()
        assert "fixture company" in names, names

    def test_session_commit(db):
        CompanyFactory.create_batch(3)
        db.session.commit()

    def test_flush_only(db):
        InvoiceFactory()

    def test_unit_of_work_commits(db, company):
        with db_transaction() as session:
            session.add(Item(name="committed by a unit of work"))
        fixture_company_is_there(db, company)

    def test_unit_of_work_fails(db, company):
        with pytest.raises(RuntimeError):
            with db_transaction() as session:
                session.add(Item(name="aborted"))
                session.flush()
                raise RuntimeError("abort")
        fixture_company_is_there(db, company)

    def test_code_rolls_back(db, company):
        db.session.add(Item(name="discarded"))
        db.session.flush()
        db.session.rollback()  # back to the last savepoint: after the fixture's commit
        fixture_company_is_there(db, company)

    def test_manager_abort(db, company):
        db.session.add(Item(name="discarded"))
        transaction.abort()
        fixture_company_is_there(db, company)

    def test_engine_run(db, company, driver):
        BookingFactory.create_batch(2, company=company)
        with ensure_committed(db):
            result = dispatch.run(company.id, now=NOW)
        assert len(result.assigned) == 2
        fixture_company_is_there(db, company)

    def test_engine_run_after_uncommitted_work(db, company, driver):
        BookingFactory(company=company)  # flushed, not committed: discarded by the engine
        result = dispatch.run(company.id, now=NOW)
        assert result.assigned == []
        fixture_company_is_there(db, company)

    def test_request_commits(testapp, db):
        testapp.post("/items")
        assert len(testapp.get("/items").json["items"]) == 1

    def test_failing_request(testapp, db):
        testapp.post("/fail", status=500)
        assert testapp.get("/items").json == {"items": []}
        testapp.post("/items")
        testapp.post("/fail", status=500)
        assert len(testapp.get("/items").json["items"]) == 1
        assert db.session.scalars(select(Item.name)).all() == ["Item #" + str(
            testapp.get("/items").json["items"][0]["id"]
        )]

    def test_raw_sql_commit(db):
        db.session.execute(text(
            "INSERT INTO items (name) "
            "VALUES ('raw')"
        ))
        db.session.commit()

    def test_model_save(db):
        Company(name="saved").save()

    def test_batches(db):
        with db_batch_operation(batch_size=2) as (session, commit_batch):
            for i in range(5):
                session.add(Item(name=f"batch {i}"))
                commit_batch()

    def test_nested_savepoint(db, company):
        with nested_savepoint(db):
            CompanyFactory()
            db.session.commit()
        fixture_company_is_there(db, company)

    @pytest.mark.doomed
    def test_doomed(db):
        CompanyFactory.create_batch(2)

    def test_app_request(app_request, db):
        app_request.dbsession.add(Item(name="via app_request"))
        app_request.dbsession.commit()
"""

N_TESTS = INNER_TESTS.count("\n    def test_")


def _order(result: pytest.RunResult) -> list[str]:
    return re.findall(r"::(test_\w+)\[", result.stdout.str())


@pytest.fixture
def inner_isolation(inner):
    inner.pytester.makeconftest(textwrap.dedent(INNER_CONFTEST))
    inner.pytester.makepyfile(test_inner_isolation=textwrap.dedent(INNER_TESTS))
    return inner


def test_no_leaks_in_shuffled_orders(inner_isolation):
    orders = []
    for seed in (None, 1, 2, 3):
        args = ["-v"] + ([] if seed is None else ["--shuffle-seed", str(seed)])
        result = inner_isolation.run(*args)
        result.assert_outcomes(passed=N_TESTS)
        orders.append(_order(result))
    assert all(sorted(order) == sorted(orders[0]) for order in orders)
    assert len({tuple(order) for order in orders}) == 4, "the seeds did not shuffle"


def test_the_clean_slate_check_catches_a_leak(inner_isolation):
    # the same inner session, with one test that really commits (outside the fixture's
    # transaction, on its own connection): the next test must see it and fail
    inner_isolation.pytester.makepyfile(
        test_inner_real_leak=textwrap.dedent(
            """
            from sqlalchemy import text

            def test_1_commits_for_real(db):
                with db.engine.begin() as conn:
                    conn.execute(text(
                        "INSERT INTO items (name) "
                        "VALUES ('real')"
                    ))

            def test_2_sees_it(db):
                pass
            """
        )
    )
    result = inner_isolation.run("test_inner_real_leak.py")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*data leaked from an earlier test*"])
