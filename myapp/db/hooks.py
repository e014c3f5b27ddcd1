"""``on_commit`` hooks: callbacks that run once the outermost transaction has committed.

Django's rules, savepoints included:

* registered inside a unit of work, a hook runs after the outermost commit,
  in registration order, *outside* the committed transaction (it may open a
  unit of work of its own);
* it is dropped if the transaction aborts, if a savepoint it was registered
  after rolls back, or if the COMMIT itself fails;
* outside any transaction it runs at once;
* a hook registered with ``robust=True`` that raises is logged and the next
  hooks still run; a hook registered without it that raises propagates out
  of the commit call (the data is committed) and the hooks after it are
  discarded -- as in Django, where the exception leaves the ``atomic`` block.

The hooks of a transaction are kept by :class:`OnCommitHooks`, a no-op data
manager joined to the transaction: ``transaction.savepoint()`` asks every
joined resource for a savepoint, so whichever way a savepoint rolls back (a
nested unit, ``savepoint()``, ``transaction.savepoint()``) the hooks
registered after it are dropped, in this one place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

hook_log = logging.getLogger("myapp.db.on_commit")

#: ``Transaction.extension`` key: the callbacks registered with :func:`on_commit`.
HOOKS = "myapp.on_commit"

Hook = tuple[Callable[[], Any], bool]


class ReadyHooks:
    """The hooks of a committed transaction, to run once the manager has forgotten it."""

    __slots__ = ("hooks",)

    def __init__(self) -> None:
        self.hooks: list[Hook] = []

    def run(self) -> None:
        if self.hooks:
            hooks, self.hooks = self.hooks, []
            run_hooks(hooks, after_commit=True)


_NO_HOOKS = ReadyHooks()


def run_hooks(hooks: list[Hook], *, after_commit: bool) -> None:
    """Run ``hooks`` in order; robust ones log their errors, others propagate (the rest dropped)."""
    when = "after the commit" if after_commit else "(no transaction: it ran at once)"
    while hooks:
        fn, robust = hooks.pop(0)
        if robust:
            try:
                fn()
            except Exception:
                hook_log.exception("on_commit hook %r failed %s", fn, when)
        else:
            fn()


class OnCommitHooks:
    """A transaction's ``on_commit`` callbacks, joined to it as a data manager."""

    transaction_manager = None

    def __init__(self, txn: Any) -> None:
        self.txn = txn
        self.hooks: list[Hook] = []
        self.joined = False
        self.ready: ReadyHooks | None = None
        txn.addAfterCommitHook(self._after_commit)

    def add(self, fn: Callable[[], Any], robust: bool) -> None:
        if not self.joined:
            self.txn.join(self)
            self.joined = True
        self.hooks.append((fn, robust))

    def _after_commit(self, committed: bool) -> None:
        hooks, self.hooks = self.hooks, []
        if not committed:
            return
        if self.ready is not None:  # the manager runs them once it has forgotten the transaction
            self.ready.hooks = hooks
            return
        # committed by Transaction.commit() called directly, not through the
        # manager: the transaction is still current; run them here, all robust
        for fn, _robust in hooks:
            try:
                fn()
            except Exception:
                hook_log.exception("on_commit hook %r failed after the commit", fn)

    # IDataManager: nothing to write; an abort (of the transaction, or of a
    # savepoint taken before this joined) drops every hook.
    def abort(self, txn: Any) -> None:
        del self.hooks[:]
        self.joined = False

    def tpc_begin(self, txn: Any) -> None:
        pass

    def commit(self, txn: Any) -> None:
        pass

    def tpc_vote(self, txn: Any) -> None:
        pass

    def tpc_finish(self, txn: Any) -> None:
        pass

    def tpc_abort(self, txn: Any) -> None:
        pass

    def sortKey(self) -> str:
        return "myapp.on_commit"

    def savepoint(self) -> _HooksSavepoint:
        return _HooksSavepoint(self, len(self.hooks))


class _HooksSavepoint:
    def __init__(self, manager: OnCommitHooks, mark: int) -> None:
        self.manager = manager
        self.mark = mark

    def rollback(self) -> None:
        del self.manager.hooks[self.mark :]


def run_after_commit(txn: Any) -> ReadyHooks:
    """Hand ``txn``'s hooks over after its commit, to :func:`commit_transaction`."""
    hooks = txn.extension.get(HOOKS)
    if hooks is None:
        return _NO_HOOKS
    ready = hooks.ready = ReadyHooks()
    return ready


def commit_transaction(txn: Any) -> None:
    """Commit ``txn``, then run its ``on_commit`` hooks outside it.

    Raises what the commit raised (the transaction is then left for the
    caller to abort), or what a non-robust hook raised (the data is
    committed; the remaining hooks are discarded).
    """
    ready = run_after_commit(txn)
    txn.commit()
    ready.run()
