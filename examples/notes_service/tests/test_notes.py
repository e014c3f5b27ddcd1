"""notes_service's tests, written with myapp's test toolkit (configured in pyproject.toml).

Each test runs once per backend: SQLite, and PostgreSQL with
``--dburl postgresql://...``. The ``db`` fixture isolates every test: what
the code under test commits is a savepoint release, rolled back afterwards.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from notes_service import services
from notes_service.models import Note, Notebook
from sqlalchemy import func, select

from myapp.testing import (
    capture_original_values,
    persisted_fixture,
    verify_rollback_restores_values,
)


@pytest.fixture
def notebook(db) -> Notebook:
    """A committed notebook (the services' rollbacks must not take it away)."""
    return persisted_fixture(db, Notebook(name="Ideas"), Notebook)


def test_a_committing_service(db, notebook) -> None:
    """``publish`` commits its own unit of work; the test sees the result afterwards."""
    services.add_note(notebook.id, "first")
    db.session.commit()
    when = datetime(2030, 5, 4, 12, 0, tzinfo=UTC)

    assert services.publish(notebook.id, now=when) == 1  # outermost db_transaction: commits

    db.session.expire_all()
    published = db.session.get(Notebook, notebook.id).published_at
    assert published.replace(tzinfo=published.tzinfo or UTC) == when


def test_a_failing_request_is_rolled_back(testapp, db) -> None:
    """The view flushes the notebook, then a note is refused: the whole request rolls back."""
    response = testapp.post_json(
        "/notebooks", {"name": "Doomed", "notes": ["fine", ""]}, status=400
    )
    assert response.json == {"error": "a title has 1 to 80 characters"}

    assert testapp.get("/notebooks").json == {"notebooks": []}  # the next request sees nothing
    assert db.session.scalar(select(func.count()).select_from(Notebook)) == 0  # nor the test
    assert db.session.scalar(select(func.count()).select_from(Note)) == 0


def test_a_successful_request_commits(testapp, db) -> None:
    created = testapp.post_json("/notebooks", {"name": "Kept", "notes": ["a", "b"]}, status=201)
    assert testapp.get("/notebooks").json == {
        "notebooks": [{"id": created.json["id"], "name": "Kept", "notes": ["a", "b"]}]
    }
    assert db.session.get(Notebook, created.json["id"]).name == "Kept"


def test_a_failed_publish_restores_the_values(db, notebook) -> None:
    """``publish`` flushed ``published_at`` before refusing: its rollback restores it."""
    original_values = capture_original_values(notebook, ["name", "published_at"])

    with pytest.raises(services.NotebookError, match="has no notes"):
        services.publish(notebook.id)

    verify_rollback_restores_values(db.session, Notebook, notebook.id, original_values)


def test_publishing_over_http(testapp, db, notebook) -> None:
    testapp.post_json(f"/notebooks/{notebook.id}/notes", {"title": "hello"}, status=201)
    assert testapp.post(f"/notebooks/{notebook.id}/publish").json == {
        "notes": 1,
        "published": True,
    }
    testapp.post("/notebooks/999999/publish", status=404)
