"""Two PostgreSQL databases on a private cluster that allows prepared transactions.

The machine's shared server has ``max_prepared_transactions = 0``: these tests
start their own cluster (one per pytest-xdist worker, for the session) and need
no ``--dburl``. Each test gets a fresh pair of databases, ``main`` and
``ledger``, with an ``entries`` table in both.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy

from myapp.db import Database
from myapp.testing.pgcluster import PgCluster, pg_cluster_fixture

twophase_cluster = pg_cluster_fixture(max_prepared_transactions=20)

_names = itertools.count()

SCHEMA = (
    "CREATE TABLE entries (id int PRIMARY KEY, note text NOT NULL)",
    # checked at COMMIT/PREPARE, not at the INSERT: a way to make a PREPARE fail
    "CREATE TABLE checked (id int, CONSTRAINT checked_unique UNIQUE (id) "
    "DEFERRABLE INITIALLY DEFERRED)",
)


@dataclass
class Pair:
    """The URLs of a fresh main database and a fresh ledger database."""

    main_url: str
    ledger_url: str
    cluster: PgCluster

    def database(self, **options: object) -> Database:
        """A main ``Database`` with ``ledger`` added (the caller disposes of it)."""
        return Database.from_url(self.main_url, databases={"ledger": self.ledger_url}, **options)

    def rows(self, name: str, table: str = "entries") -> list[tuple[int, str]]:
        url = self.main_url if name == "main" else self.ledger_url
        engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY 1")]
        finally:
            engine.dispose()

    def prepared(self) -> list[str]:
        """Every prepared transaction left on the cluster (both databases)."""
        assert self.cluster.primary is not None
        with self.cluster.primary.connect() as conn:
            return [r[0] for r in conn.execute("SELECT gid FROM pg_prepared_xacts")]

    def decisions(self) -> list[tuple[str, str]]:
        assert self.cluster.primary is not None
        name = self.main_url.rsplit("/", 1)[1]
        with self.cluster.primary.connect(name) as conn:
            exists = conn.execute("SELECT to_regclass('myapp_twophase.decisions')").fetchone()
            if exists is None or exists[0] is None:
                return []
            return [
                tuple(r)
                for r in conn.execute(
                    "SELECT txid, outcome FROM myapp_twophase.decisions ORDER BY decided_at"
                )
            ]


def make_pair(cluster: PgCluster) -> Pair:
    n = next(_names)
    urls = []
    for role in ("main", "ledger"):
        url = cluster.create_database(f"tp_{role}_{n}")
        assert cluster.primary is not None
        with cluster.primary.connect(f"tp_{role}_{n}") as conn:
            for ddl in SCHEMA:
                conn.execute(ddl)
            conn.commit()
        urls.append(url)
    return Pair(urls[0], urls[1], cluster)


@pytest.fixture
def pair(twophase_cluster: PgCluster) -> Iterator[Pair]:
    yield make_pair(twophase_cluster)
