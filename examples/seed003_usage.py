"""Seed 003's usage snippets, run as written in a script (only the imports are adapted).

    python examples/seed003_usage.py sqlite:///var/example.sqlite
    python examples/seed003_usage.py postgresql://127.0.0.1/mydb
    python examples/seed003_usage.py development.ini

Seed 003's ``from app.database.connection import transaction, db`` becomes
``from myapp.db import db_transaction as transaction, savepoint`` plus a
``Database`` built from a URL or an ini file. Each snippet runs in a
``db.scope()`` (what the seed's middleware does per request; a script opens
it itself), and after each one the script checks, on a separate connection,
what was really committed. The snippets reuse the same ids, so the script
deletes them between snippets (and at the end).
"""

from __future__ import annotations

import sys

from sqlalchemy import delete, select

from myapp.db import Database, init_db, savepoint
from myapp.db import db_transaction as transaction
from myapp.models import Event

IDS = ("ev_001", "ev_002", "ev_003")


def committed(db: Database) -> list[tuple[str, str]]:
    """What another connection sees: the committed rows of the seed's ids."""
    with db.engine.connect() as conn:
        query = select(Event.id, Event.title).where(Event.id.in_(IDS)).order_by(Event.id)
        rows = conn.execute(query)
        return [tuple(row) for row in rows]


def clean(db: Database) -> None:
    with db.engine.begin() as conn:
        conn.execute(delete(Event).where(Event.id.in_(IDS)))


def check(label: str, got: object, expected: object) -> None:
    if got != expected:
        raise SystemExit(f"{label}: expected {expected!r}, got {got!r}")
    print(f"{label}: {got!r}")


def basic_model_operations(db: Database) -> None:
    # --- seed 003, "Basic Model Operations" -------------------------------
    # fmt: off
    # Create and save
    event = Event(
        id="ev_001",
        title="Jazz Festival 2025",
        description="Annual jazz festival"
    )
    event.save()  # Automatically commits if not in transaction
    # fmt: on

    check("basic/create", committed(db), [("ev_001", "Jazz Festival 2025")])

    # Query
    events = Event.session.query(Event).all()

    check("basic/query", [e.id for e in events if e.id in IDS], ["ev_001"])

    # Update
    event.title = "Updated Title"
    event.save()

    check("basic/update", committed(db), [("ev_001", "Updated Title")])

    # Delete
    event.delete()

    check("basic/delete", committed(db), [])


def simple_transaction(db: Database) -> None:
    # --- seed 003, "Transaction Management" -------------------------------
    # Simple transaction
    with transaction():
        event1 = Event(id="ev_001", title="Event 1").save()
        event2 = Event(id="ev_002", title="Event 2").save()
        # Both are committed together, or rolled back if any fails

    check("transaction/both", committed(db), [("ev_001", "Event 1"), ("ev_002", "Event 2")])
    assert (event1.id, event2.id) == ("ev_001", "ev_002")


def rolled_back_if_any_fails(db: Database) -> None:
    # ... "or rolled back if any fails" (the database refuses the duplicate id):
    try:
        with transaction():
            Event(id="ev_003", title="Event 3").save()
            Event(id="ev_001", title="Event 1 again").save()  # duplicate id: fails
    except Exception as exc:
        print(f"transaction/failed: {type(exc).__name__}")
    check("transaction/none", committed(db), [("ev_001", "Event 1"), ("ev_002", "Event 2")])


def nested_transactions(db: Database) -> None:
    # Nested transactions with savepoints
    with transaction():
        event1 = Event(id="ev_001", title="Event 1").save()

        with savepoint():
            event2 = Event(id="ev_002", title="Event 2").save()
            # This can be rolled back independently

    check("savepoint/both", committed(db), [("ev_001", "Event 1"), ("ev_002", "Event 2")])
    assert (event1.id, event2.id) == ("ev_001", "ev_002")


def rolled_back_independently(db: Database) -> None:
    # ... "This can be rolled back independently":
    with transaction():
        Event(id="ev_003", title="Event 3").save()
        try:
            with savepoint():
                Event(id="ev_001", title="Event 1 again").save()  # fails: only this rolls back
        except Exception as exc:
            print(f"savepoint/failed: {type(exc).__name__}")
    check(
        "savepoint/independent",
        committed(db),
        [("ev_001", "Event 1"), ("ev_002", "Event 2"), ("ev_003", "Event 3")],
    )


def request_scoped_operations(db: Database) -> None:
    # --- seed 003, "Request-Scoped Operations" ----------------------------
    # Manual scope management
    with db.scope():
        event = Event.session.query(Event).first()
        # Session is isolated and automatically cleaned up

    check("scope/first", event is not None, True)


def main(target: str) -> None:
    db = Database.from_config(target) if target.endswith(".ini") else Database.from_url(target)
    init_db(db)  # creates the tables that do not exist yet (`myapp initdb`)
    clean(db)
    try:
        with db.scope():
            basic_model_operations(db)
        clean(db)
        with db.scope():
            simple_transaction(db)
        with db.scope():
            rolled_back_if_any_fails(db)
        clean(db)
        with db.scope():
            nested_transactions(db)
        with db.scope():
            rolled_back_independently(db)
        request_scoped_operations(db)  # opens its own scope, as written in the seed
        check("connections left checked out", db.engine.pool.checkedout(), 0)
    finally:
        clean(db)
        db.dispose()
    print("seed 003 usage: ok")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
