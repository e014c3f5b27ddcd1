"""Batch operations: many rows written in batches, each batch its own committed transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState

from .compat import pending_changes
from .datamanager import join_transaction
from .errors import BatchFailed, NestedTransactionError
from .manager import unit_manager
from .scope import current_scope
from .session import Session as SessionT
from .writes import refuse_in_maintenance, statement_writes


@dataclass
class BatchProgress:
    """What a batch operation has committed so far (a snapshot passed to ``progress``).

    ``batches``/``rows``: committed so far; ``history``: rows per committed
    batch; ``done``: the operation finished (the last call).
    """

    batches: int = 0
    rows: int = 0
    done: bool = False
    history: list[int] = field(default_factory=list)


@contextmanager
def db_batch_operation(
    batch_size: int = 100,
    auto_commit_batch: bool = True,
    progress: Callable[[BatchProgress], Any] | None = None,
) -> Iterator[tuple[SessionT, Callable[..., None]]]:
    """Write many rows in batches, each batch its own committed transaction.

    Yields ``(session, commit_batch)``. A *row* is an object added, changed
    or deleted, or a parameter set of a Core/``text()`` write statement. With
    ``auto_commit_batch=True``, ``commit_batch()`` commits once ``batch_size``
    rows are pending (call it after every row, or every N rows);
    ``commit_batch(force=True)``, and every call with ``auto_commit_batch=False``,
    commits at once. Each commit is real and expunges the objects the batch
    wrote, so the identity map never holds more than one batch and memory
    stays flat (written objects are detached after their commit; objects only
    read stay attached, expired if ``expire_on_commit``). The remainder commits
    at the end. ``progress(state)`` is called after every
    committed batch and once more at the end (``state.done``).

    On error the uncommitted batch is rolled back, committed batches stay, and
    :class:`BatchFailed` says how many batches and rows were committed.
    Refused inside another transaction (intermediate commits would break its
    atomicity) and in maintenance mode. Under the test toolkit each commit is
    a savepoint release.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    nesting = unit_manager().nesting
    if nesting.enclosing() is not None:
        raise NestedTransactionError(
            "db_batch_operation() commits every batch and cannot run inside another "
            "transaction (a request, 'with transaction.manager:' or db_transaction()): "
            "run it from a management command or a script"
        )
    scope = current_scope()
    session = scope.session
    refuse_in_maintenance(session, "db_batch_operation()", "before writing anything")
    state = BatchProgress()
    counted = 0  # rows flushed or written with statements since the last commit
    committing: int | None = None
    written: list[Any] = []  # objects flushed since the last commit

    def after_flush(s: Any, flush_context: Any) -> None:
        nonlocal counted
        counted += pending_changes(s)  # still the pre-flush state here
        written.extend(s.new)
        written.extend(s.dirty)

    def on_execute(orm_state: ORMExecuteState) -> None:
        nonlocal counted
        if statement_writes(orm_state):
            params = orm_state.parameters
            counted += len(params) if isinstance(params, list | tuple) else 1

    def pending_rows() -> int:
        return counted + pending_changes(session)

    def commit(rows: int, *, last: bool = False) -> None:
        nonlocal counted, committing, ended
        committing = rows
        if last:  # the unit ends with this commit: no new transaction after it
            ended = True
            nesting.exit(unit, None)
        else:
            nesting.commit_and_continue(unit, session)
        committing = None
        for obj in written:
            if obj in session:
                session.expunge(obj)
        written.clear()
        counted = 0
        if rows:
            state.batches += 1
            state.rows += rows
            state.history.append(rows)

    def commit_batch(force: bool = False) -> None:
        rows = pending_rows()
        if auto_commit_batch and not force and rows < batch_size:
            return
        commit(rows)
        join_transaction(session)
        if progress is not None and rows:
            progress(replace(state, history=list(state.history)))

    # adopts the scope's implicit transaction; the last batch commits as the unit ends
    unit = nesting.enter(session, manual=True, kind="db_batch_operation()")
    ended = False
    event.listen(session, "after_flush", after_flush)
    event.listen(session, "do_orm_execute", on_execute)
    error: BaseException | None = None
    try:
        yield session, commit_batch
        commit(pending_rows(), last=True)
        state.done = True
        if progress is not None:
            progress(replace(state, history=list(state.history)))
    except Exception as exc:
        error = exc
        rolled_back = committing if committing is not None else pending_rows()
        raise BatchFailed(
            f"batch operation failed after committing {state.batches} batch(es) "
            f"({state.rows} rows); the current batch ({rolled_back} rows) was rolled back: "
            f"{type(exc).__name__}: {exc}",
            batches=state.batches,
            rows=state.rows,
            rolled_back_rows=rolled_back,
        ) from exc
    except BaseException as exc:
        error = exc
        raise
    finally:
        event.remove(session, "after_flush", after_flush)
        event.remove(session, "do_orm_execute", on_execute)
        if not ended:  # failed, or abandoned (the generator was closed): roll back
            nesting.exit(unit, error if error is not None else GeneratorExit())
