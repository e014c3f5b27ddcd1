"""Pins: the ``transaction`` package behaviours that myapp's bridge relies on.

Each test names what in ``myapp.db`` depends on the behaviour, so that a
release of ``transaction`` that changes it fails here, by name, before a
user's request does. They use a private ``TransactionManager(explicit=True)``
of their own (no database), so they say nothing about myapp's code, only
about the library's. Private names that ``myapp.db`` reads are pinned by the
tests of ``myapp/db/compat.py`` (``tests/db/units/test_compat.py``); these pin
public behaviour.
"""

from __future__ import annotations

from typing import Any

import pytest
import transaction
from transaction.interfaces import (
    AlreadyInTransaction,
    DoomedTransaction,
    InvalidSavepointRollbackError,
    NoTransaction,
    TransactionFailedError,
    TransientError,
)

from .conftest import Recorder, SavepointRecorder


@pytest.fixture
def tm() -> transaction.TransactionManager:
    manager = transaction.TransactionManager(explicit=True)
    yield manager
    try:
        manager.get()
    except NoTransaction:
        return
    manager.abort()


def test_pins_explicit_mode(tm: transaction.TransactionManager) -> None:
    """Explicit mode: ``get()`` with no transaction raises ``NoTransaction`` (never begins
    one), ``begin()`` inside one raises ``AlreadyInTransaction`` (never aborts it), and
    so does a nested ``with manager:``.

    myapp: ``get_tm()`` runs the thread's manager in explicit mode; a session
    used outside a unit of work is refused instead of silently beginning a
    transaction, and a nested ``with transaction.manager:`` cannot throw the
    enclosing work away.
    """
    assert tm.explicit is True
    with pytest.raises(NoTransaction):
        tm.get()
    txn = tm.begin()
    with pytest.raises(AlreadyInTransaction):
        tm.begin()
    with pytest.raises(AlreadyInTransaction), tm:
        pass  # pragma: no cover
    assert tm.get() is txn
    assert txn.status == "Active"
    tm.abort()
    with pytest.raises(NoTransaction):
        tm.get()


def test_pins_two_phase_commit_order_follows_sort_keys(tm: transaction.TransactionManager) -> None:
    """``commit()`` runs ``tpc_begin`` on every resource, then ``commit``, then ``tpc_vote``,
    then ``tpc_finish``, each phase in ``sortKey()`` order.

    myapp: the failure guard (``"!myapp.failure"``) sorts first, so it vetoes
    in ``tpc_begin`` before any session flushes; the session data manager
    (zope's ``"~sqlalchemy:..."``) sorts last and commits in ``tpc_vote``, after
    every other resource voted.
    """
    log: list[tuple[str, str]] = []
    txn = tm.begin()
    for key in ("~sqlalchemy:1", "myapp.on_commit", "!myapp.failure"):
        txn.join(Recorder(key, log))
    tm.commit()
    order = ["!myapp.failure", "myapp.on_commit", "~sqlalchemy:1"]
    assert log == [
        (key, phase) for phase in ("tpc_begin", "commit", "tpc_vote", "tpc_finish") for key in order
    ]


def test_pins_a_failed_vote_aborts_the_others(tm: transaction.TransactionManager) -> None:
    """A resource that raises in ``tpc_vote``: the ones that have not voted get ``abort()``,
    every one gets ``tpc_abort()``, the error propagates and the transaction is left in
    COMMITFAILED (``join()`` and ``commit()`` then raise ``TransactionFailedError``) until
    it is aborted.

    myapp: a session data manager that has not voted is rolled back when a
    resource sorted before it votes no (atomicity); units of work abort a
    transaction left in COMMITFAILED.
    """
    log: list[tuple[str, str]] = []
    txn = tm.begin()
    txn.join(Recorder("a", log, fail_in="tpc_vote"))
    txn.join(Recorder("b", log))
    with pytest.raises(RuntimeError, match="a fails in tpc_vote"):
        tm.commit()
    assert log[-4:] == [("a", "abort"), ("b", "abort"), ("a", "tpc_abort"), ("b", "tpc_abort")]
    assert ("b", "tpc_vote") not in log
    assert txn.status == "Commit failed"
    with pytest.raises(TransactionFailedError):
        txn.join(Recorder("c", log))
    with pytest.raises(TransactionFailedError):
        tm.commit()
    tm.abort()
    tm.begin()  # a new transaction can begin


def test_pins_status_is_committing_during_the_commit(tm: transaction.TransactionManager) -> None:
    """Inside the resources' ``commit``/``tpc_vote`` the transaction's status is
    ``"Committing"``.

    myapp: the session's ``before_commit`` event lets SQLAlchemy's commit
    through only while the transaction manager is committing (otherwise
    ``session.commit()`` in a unit of work raises ``TransactionManaged``).
    """
    seen: list[str] = []

    class Watcher(Recorder):
        def tpc_vote(self, txn: Any) -> None:
            seen.append(txn.status)

    txn = tm.begin()
    txn.join(Watcher("w", []))
    tm.commit()
    assert seen == ["Committing"]
    assert txn.status == "Committed"


def test_pins_savepoint_protocol(tm: transaction.TransactionManager) -> None:
    """``txn.savepoint()`` asks every joined resource for a savepoint (its ``savepoint``
    attribute, called); ``rollback()`` calls each one's ``rollback``; a resource joined
    after the savepoint is aborted and leaves the transaction; rolling back an earlier
    savepoint invalidates the later ones; commit invalidates them all.

    myapp: nested units of work are ``transaction`` savepoints; the on-commit
    hooks and the failure guard join late and rely on being aborted (their
    hooks or recorded error dropped) when an earlier savepoint rolls back.
    """
    log: list[tuple[str, str]] = []
    txn = tm.begin()
    txn.join(SavepointRecorder("early", log))
    s1 = txn.savepoint()
    late = Recorder("late", log)
    txn.join(late)
    s2 = txn.savepoint(optimistic=True)  # "late" has no savepoint support
    s1.rollback()
    assert ("early", "savepoint_rollback") in log
    assert ("late", "abort") in log
    with pytest.raises(InvalidSavepointRollbackError):
        s2.rollback()
    log.clear()
    tm.commit()
    assert [key for key, phase in log if phase == "tpc_begin"] == ["early"], "late stayed joined"
    assert not s1.valid


def test_pins_savepoint_without_support(tm: transaction.TransactionManager) -> None:
    """A resource without a ``savepoint`` attribute (or whose ``savepoint`` property raises
    ``AttributeError``) makes ``savepoint()`` raise ``TypeError("Savepoints unsupported")``;
    with ``optimistic=True`` the savepoint is taken, and rolling it back raises
    ``TypeError``.

    myapp: zope.sqlalchemy's data manager refuses savepoints on SQLite by
    raising ``AttributeError`` from its ``savepoint`` property; myapp's data
    manager keeps that protocol for SQLite engines without its workaround.
    """
    txn = tm.begin()
    txn.join(Recorder("plain", []))
    with pytest.raises(TypeError, match="Savepoints unsupported"):
        txn.savepoint()
    tm.abort()
    txn = tm.begin()
    txn.join(Recorder("plain", []))
    optimistic = txn.savepoint(optimistic=True)
    with pytest.raises(TypeError, match="Savepoints unsupported"):
        optimistic.rollback()


def test_pins_after_commit_hooks(tm: transaction.TransactionManager) -> None:
    """After-commit hooks get ``True`` after a commit and ``False`` after a failed one, and
    run while the manager still holds the committed transaction (``get()`` returns it).

    myapp: ``on_commit`` hooks are dropped unless the commit succeeded, and
    run only once the manager has forgotten the transaction (so a hook may
    begin its own unit of work); if ``transaction`` freed it before the
    hooks, myapp's hand-over could go.
    """
    seen: list[tuple[bool, Any]] = []
    txn = tm.begin()
    txn.addAfterCommitHook(lambda ok: seen.append((ok, tm.get())))
    tm.commit()
    assert seen == [(True, txn)]
    with pytest.raises(NoTransaction):
        tm.get()

    seen.clear()
    txn = tm.begin()
    txn.join(Recorder("no", [], fail_in="tpc_vote"))
    txn.addAfterCommitHook(lambda ok: seen.append((ok, None)))
    with pytest.raises(RuntimeError):
        tm.commit()
    assert seen == [(False, None)]


def test_pins_retry_protocol(tm: transaction.TransactionManager) -> None:
    """``Transaction.isRetryableError(e)`` is true for a ``TransientError`` and when a joined
    resource's ``should_retry(e)`` says so; ``run(func, tries)`` asks before aborting, so
    the resources are still joined, and calls ``func`` again in a new transaction.

    myapp: its data manager's ``should_retry`` answers with myapp's error
    classification, so ``transaction``'s ``attempts()``/``run()`` and
    pyramid_retry retry what ``db_transaction(attempts=N)`` retries.
    """
    dm = Recorder("dm", [])
    txn = tm.begin()
    txn.join(dm)
    error = RuntimeError("deadlock")
    assert txn.isRetryableError(TransientError()) is True
    assert txn.isRetryableError(error) is False
    dm.retry = True
    assert txn.isRetryableError(error) is True
    tm.abort()

    calls: list[int] = []

    def work() -> str:
        tm.get().join(dm)
        calls.append(1)
        if len(calls) == 1:
            raise error
        return "done"

    assert tm.run(work, tries=3) == "done"
    assert len(calls) == 2
    dm.retry = False
    calls.clear()
    with pytest.raises(RuntimeError):
        tm.run(work, tries=3)
    assert len(calls) == 1


def test_pins_extension_and_doom(tm: transaction.TransactionManager) -> None:
    """``Transaction.extension`` is a dict of the transaction (a new one for each); a doomed
    transaction accepts joins and savepoints but its ``commit()`` raises
    ``DoomedTransaction``.

    myapp: marks transactions through ``extension`` (a scope's implicit unit
    of work, the on-commit hooks, the failure guard, the first session);
    the test toolkit's doomed mode relies on doom.
    """
    txn = tm.begin()
    txn.extension["myapp.pin"] = True
    tm.abort()
    txn = tm.begin()
    assert "myapp.pin" not in txn.extension
    txn.doom()
    assert txn.isDoomed()
    txn.join(SavepointRecorder("dm", []))
    txn.savepoint()
    with pytest.raises(DoomedTransaction):
        tm.commit()
    tm.abort()
