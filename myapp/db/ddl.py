"""Migration steps that are safe to run again: each one checks the schema before acting.

MySQL and MariaDB cannot roll DDL back: every ``CREATE``, ``ALTER`` and
``DROP`` commits at once, so a migration that fails half-way leaves its first
steps applied while ``alembic_version`` still names the revision before it
(:mod:`myapp.commands.migrations` says so and keeps a journal). Run again,
a plain ``op.create_table`` would then fail on the table it made the first
time. myapp's migrations use these wrappers of alembic's ``op`` instead: a
step whose result is already there is skipped, so rerunning the migration
finishes it. On PostgreSQL and SQLite (transactional DDL) they act exactly as
``op``'s: nothing is ever half-applied there.

Each looks at the live schema (a fresh :func:`sqlalchemy.inspect` of the
migration's connection, inside its transaction) right before its step.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa


def _op() -> Any:
    """alembic's ``op`` as the running migration sees it (looked up at each call: the
    migration scripts import it afresh at each run, and so must these steps)."""
    from alembic import op

    return op


def _inspector() -> Any:
    return sa.inspect(_op().get_bind())


def has_table(name: str) -> bool:
    """Does table ``name`` exist?"""
    return bool(_inspector().has_table(name))


def has_column(table: str, column: str) -> bool:
    """Does ``table`` have ``column``?"""
    return column in {c["name"] for c in _inspector().get_columns(table)}


def has_index(table: str, name: str) -> bool:
    """Does ``table`` have an index (or, on MySQL, a unique key) named ``name``?"""
    inspector = _inspector()
    names = {i["name"] for i in inspector.get_indexes(table)}
    names |= {u["name"] for u in inspector.get_unique_constraints(table)}
    return name in names


def create_table(name: str, *columns: Any, **kw: Any) -> None:
    """``op.create_table`` unless the table exists."""
    if not has_table(name):
        _op().create_table(name, *columns, **kw)


def drop_table(name: str) -> None:
    """``op.drop_table`` if the table exists."""
    if has_table(name):
        _op().drop_table(name)


def create_index(name: str, table: str, columns: list[str], *, unique: bool = False) -> None:
    """``op.create_index`` unless an index of that name exists."""
    if not has_index(table, name):
        _op().create_index(name, table, columns, unique=unique)


def drop_index(name: str, table: str) -> None:
    """``op.drop_index`` if it exists.

    On MySQL/MariaDB an index a foreign key uses cannot be dropped (error 1553)
    while the key exists: it is left to the ``drop_table`` that follows.
    """
    if not (has_table(table) and has_index(table, name)):
        return
    inspector = _inspector()
    if inspector.dialect.name in ("mysql", "mariadb"):
        columns = next(
            (i["column_names"] for i in inspector.get_indexes(table) if i["name"] == name), []
        )
        for fk in inspector.get_foreign_keys(table):
            if fk["constrained_columns"] == columns[: len(fk["constrained_columns"])]:
                return
    _op().drop_index(name, table_name=table)


def add_column(table: str, column: sa.Column[Any]) -> None:
    """``add_column`` (batch mode on SQLite) unless the column exists."""
    if not has_column(table, column.name):
        with _op().batch_alter_table(table) as batch:
            batch.add_column(column)


def drop_column(table: str, name: str) -> None:
    """``drop_column`` (batch mode on SQLite) if the column exists."""
    if has_table(table) and has_column(table, name):
        with _op().batch_alter_table(table) as batch:
            batch.drop_column(name)


def create_unique_constraint(name: str, table: str, columns: list[str]) -> None:
    """A unique constraint (batch mode on SQLite) unless one of that name exists."""
    if not has_index(table, name):
        with _op().batch_alter_table(table) as batch:
            batch.create_unique_constraint(name, columns)


def drop_constraint(name: str, table: str, type_: str) -> None:
    """``drop_constraint`` (batch mode on SQLite) if it exists (unique constraints)."""
    if has_table(table) and has_index(table, name):
        with _op().batch_alter_table(table) as batch:
            batch.drop_constraint(name, type_=type_)
