"""The examples of docs/session-management.md, runnable (and run by the test suite).

    python examples/session_management.py sqlite:///var/example.sqlite
    python examples/session_management.py postgresql://127.0.0.1/mydb

Each function is one section of the guide. The script checks what each
example did (on a separate connection when it matters) and exits non-zero on
the first surprise. It only touches events whose id starts with ``doc_`` and
items whose name starts with ``doc-``, and deletes them at the start and end.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import transaction
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from webob import Request

from myapp.db import (
    BatchFailed,
    Database,
    MaintenanceMode,
    NestedTransactionError,
    NoScope,
    ReadOnlyViolation,
    TransactionFailed,
    TransactionManaged,
    current_session,
    db_batch_operation,
    db_read_only,
    db_transaction,
    init_db,
    is_in_transaction,
    on_commit,
    savepoint,
)
from myapp.models import Event, Item


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"unexpected: {what}")
    print(f"ok: {what}")


@contextmanager
def expect_error(error: type[Exception], what: str) -> Iterator[None]:
    try:
        yield
    except error as exc:
        print(f"ok: {what} ({type(exc).__name__}: {exc})")
    else:
        raise SystemExit(f"unexpected: no {error.__name__}: {what}")


def committed_ids(db: Database) -> set[str]:
    with db.engine.connect() as conn:
        return set(conn.scalars(select(Event.id).where(Event.id.like("doc_%"))))


def clean(db: Database) -> None:
    with db.engine.begin() as conn:
        conn.execute(delete(Event).where(Event.id.like("doc_%")))
        conn.execute(delete(Item).where(Item.name.like("doc-%")))


# --- business code: it never receives a session, it asks for the current one ---


def create_event(event_id: str, title: str) -> Event:
    with db_transaction() as session:
        event = Event(id=event_id, title=title)
        session.add(event)
    return event


def rename_event(event_id: str, title: str) -> None:
    with db_transaction() as session:
        session.get(Event, event_id).title = title


# --- the guide's sections ----------------------------------------------------


def scripts_and_scopes(db: Database) -> None:
    with db.scope():
        create_event("doc_scope", "created in a script")
        expect(committed_ids(db) == {"doc_scope"}, "db_transaction() committed at its end")
    with expect_error(NoScope, "outside any scope, NoScope says where to open one"):
        current_session()


def nesting(db: Database) -> None:
    with db.scope():
        with db_transaction():
            create_event("doc_outer", "outer")  # nested: a savepoint, released
            try:
                with db_transaction():
                    create_event("doc_inner", "inner")
                    raise ValueError("the inner unit fails")
            except ValueError:
                pass  # only the inner unit was rolled back
            expect("doc_outer" not in committed_ids(db), "nothing committed before the outermost")
        expect({"doc_outer"} <= committed_ids(db), "the outer unit committed without the inner")
        expect("doc_inner" not in committed_ids(db), "the inner unit's work was rolled back")


def manual_commit(db: Database) -> None:
    with db.scope():
        with db_transaction(auto_commit=False) as session:
            session.add(Event(id="doc_manual", title="committed by the block"))
            session.flush()  # to get ids without committing
            session.commit()
            session.add(Event(id="doc_never", title="not committed: discarded at the end"))
        ids = committed_ids(db)
        expect("doc_manual" in ids and "doc_never" not in ids, "auto_commit=False")


def retries(db: Database) -> None:
    attempts = []

    @db_transaction(attempts=3)
    def book_seat() -> None:
        attempts.append(1)
        create_event("doc_retry", "retried on serialization failures and deadlocks")

    with db.scope():
        book_seat()
    expect(attempts == [1], "a decorated unit of work runs once when nothing conflicts")


def read_only(db: Database) -> None:
    with db.scope():
        with db_read_only() as session:
            events = session.scalars(select(Event).where(Event.id.like("doc_%"))).all()
            with expect_error(ReadOnlyViolation, "db_read_only() refuses writes"):
                session.execute(update(Event).values(title="nope"))
        expect(all(e.title != "nope" for e in events), "objects read stay usable after the block")


def batches(db: Database) -> None:
    seen = []
    with db.scope():
        with db_batch_operation(batch_size=100, progress=seen.append) as (session, commit_batch):
            for n in range(250):
                session.add(Item(name=f"doc-{n}"))
                commit_batch()  # commits once 100 rows are pending
        with (
            db_transaction(),
            expect_error(NestedTransactionError, "no batches in a transaction"),
            db_batch_operation(),
        ):
            pass
        with (
            expect_error(BatchFailed, "a failed batch operation"),
            db_batch_operation(batch_size=100) as (session, commit_batch),
        ):
            for n in range(150):
                if n == 120:
                    raise ValueError("bad row")
                session.add(Item(name=f"doc-failed-{n}"))
                commit_batch()
    expect([p.batches for p in seen] == [1, 2, 3], "three batches committed (100, 100, 50)")
    with db.engine.connect() as conn:
        count = conn.scalar(select(func.count()).where(Item.name.like("doc-%")))
    expect(count == 350, "250 rows + the 100 of the failed operation's committed batch")


def savepoints(db: Database) -> None:
    with db.scope(), db_transaction():
        create_event("doc_sp_a", "kept")
        with expect_error(IntegrityError, "the savepoint's duplicate id"), savepoint():
            create_event("doc_sp_b", "rolled back alone")
            create_event("doc_sp_a", "duplicate id: fails")
        create_event("doc_sp_c", "the transaction goes on")
    ids = committed_ids(db)
    expect({"doc_sp_a", "doc_sp_c"} <= ids and "doc_sp_b" not in ids, "savepoint()")


def hooks(db: Database) -> None:
    sent: list[str] = []
    with db.scope(), db_transaction():
        create_event("doc_hook", "t")
        on_commit(lambda: sent.append("mail for doc_hook"))
        try:
            with db_transaction():
                on_commit(lambda: sent.append("never: its savepoint rolled back"))
                raise ValueError()
        except ValueError:
            pass
        expect(sent == [], "on_commit hooks wait for the outermost commit")
    expect(sent == ["mail for doc_hook"], "the hook ran once, after the commit")


def transaction_manager_in_a_script(db: Database) -> None:
    session = db.session_factory()
    try:
        with transaction.manager:
            session.add(Event(id="doc_tm", title="joined"))  # the session joins the transaction
            expect(is_in_transaction() and current_session() is session, "found via the tm")
            rename_event("doc_tm", "renamed by business code")  # nested: a savepoint
        expect("doc_tm" in committed_ids(db), "'with transaction.manager:' committed")
    finally:
        session.close()


def errors(db: Database) -> None:
    with db.scope() as session:
        with db_transaction(), expect_error(TransactionManaged, "session.commit() in a unit"):
            session.commit()
        with (
            expect_error(TransactionFailed, "an error swallowed without a savepoint"),
            db_transaction() as s,
        ):
            s.add(Event(id="doc_err", title="t"))
            try:
                s.add(Event(id="doc_scope", title="duplicate id"))
                s.flush()
            except IntegrityError:
                pass  # swallowed without a savepoint: the unit of work cannot commit
        expect("doc_err" not in committed_ids(db), "and nothing of it was committed")
        db.maintenance.on = True
        try:
            with expect_error(MaintenanceMode, "maintenance mode refuses writes"):
                create_event("doc_maintenance", "refused")
        finally:
            db.maintenance.on = False


def fastapi_mapping(db: Database) -> None:
    """FastAPI's ``Depends(get_session)`` is ``request.dbsession`` here."""

    def list_events(request: Any) -> dict[str, Any]:
        rows = request.dbsession.scalars(select(Event.id).where(Event.id.like("doc_%")))
        create_event("doc_request", "nested in the request's transaction")
        return {"ids": sorted(rows), "same": request.dbsession is current_session()}

    # imported here, after myapp (which hides Pyramid's pkg_resources warning on Python 3.12+)
    from pyramid.config import Configurator

    with Configurator(settings={"myapp.database": db}) as config:
        config.include("myapp.db.pyramid")
        config.add_route("events", "/events")
        config.add_view(list_events, route_name="events", renderer="json")
    app = config.make_wsgi_app()
    # a POST: GET, HEAD and OPTIONS requests read on a read-only connection
    response = Request.blank("/events", method="POST").get_response(app)
    expect(response.status_int == 200 and response.json["same"], "request.dbsession")
    expect("doc_request" in committed_ids(db), "the request committed when the view returned")


def main(url: str) -> None:
    db = Database.from_url(url)
    init_db(db)
    clean(db)
    try:
        for section in (
            scripts_and_scopes,
            nesting,
            manual_commit,
            retries,
            read_only,
            batches,
            savepoints,
            hooks,
            transaction_manager_in_a_script,
            errors,
            fastapi_mapping,
        ):
            section(db)
        expect(db.engine.pool.checkedout() == 0, "no connection left checked out")
    finally:
        clean(db)
        db.dispose()
    print("session management examples: ok")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        raise SystemExit(1)
    main(sys.argv[1])
