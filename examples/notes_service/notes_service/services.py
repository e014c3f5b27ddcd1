"""Business code: units of work from ``myapp.db``, never a bare ``session.commit()``."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from myapp.db import current_session, db_transaction

from .models import Note, Notebook


class NotebookError(ValueError):
    """A notebook cannot do what was asked (nothing was written)."""


def add_note(notebook_id: int, title: str, body: str = "", max_title: int = 80) -> Note:
    """Add a note to a notebook in the caller's unit of work (a savepoint, or a new one).

    Raises :class:`NotebookError` (nothing written) for an unknown notebook
    or a title that is empty or too long.
    """
    title = title.strip()
    if not title or len(title) > max_title:
        raise NotebookError(f"a title has 1 to {max_title} characters")
    with db_transaction() as session:
        notebook = session.get(Notebook, notebook_id)
        if notebook is None:
            raise NotebookError(f"no notebook {notebook_id}")
        note = Note(notebook=notebook, title=title, body=body)
        session.add(note)
        session.flush()
        return note


@db_transaction()
def publish(notebook_id: int, now: datetime | None = None) -> int:
    """Publish a notebook that has notes: commits (outermost) and returns its note count.

    Either the notebook is published or nothing changed: a notebook without
    notes raises :class:`NotebookError` and the unit of work rolls back.
    """
    session = current_session()
    notebook = session.get(Notebook, notebook_id)
    if notebook is None:
        raise NotebookError(f"no notebook {notebook_id}")
    notebook.published_at = now or datetime.now(UTC)
    session.flush()  # the change reaches the database before the check
    count = len(session.scalars(select(Note.id).where(Note.notebook_id == notebook_id)).all())
    if count == 0:
        raise NotebookError(f"notebook {notebook.name!r} has no notes")
    return count
