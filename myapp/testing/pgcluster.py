"""Private PostgreSQL servers for tests: a primary and, optionally, a streaming replica.

The machine's own PostgreSQL accepts no replication connections and has
``max_prepared_transactions = 0``; tests of read replicas and of two-phase
commit need servers they configure themselves. :class:`PgCluster` starts them
on free loopback ports in a fresh temporary directory and removes everything
at the end::

    with PgCluster(replica=True, max_prepared_transactions=10) as cluster:
        url = cluster.create_database("app")           # on the primary, replicated
        replica_url = cluster.replica.url("app")       # the same database, read-only
        ...
        cluster.wait_for_replica()                     # replay caught up with the primary
        cluster.stop_replica()                         # the replica goes down ...
        cluster.start_replica()                        # ... and comes back, catching up

In a test suite, a session-scoped fixture (one cluster per pytest-xdist worker)::

    # conftest.py
    from myapp.testing.pgcluster import pg_cluster_fixture

    pg_cluster = pg_cluster_fixture(replica=True, max_prepared_transactions=10)

The servers are the PostgreSQL 15 binaries of ``/usr/lib/postgresql/15/bin``
(``MYAPP_PG_BINDIR`` overrides), run with ``pg_ctl`` as the ``postgres`` OS
user when the tests run as root (``initdb`` refuses root), as the current user
otherwise. Authentication is ``trust`` for the ``postgres`` role on 127.0.0.1
and on the private Unix socket only; replication connections are allowed from
127.0.0.1. The primary runs with ``wal_level = replica`` and the replica is a
``pg_basebackup -R`` copy streaming through a physical replication slot, so a
replica stopped for a while catches up when it starts again.

Durability is traded for speed by default (``fsync = off``: a crash of the
*machine* could corrupt these throw-away servers; a SIGKILL of a server
process cannot). Every server is stopped and the directory deleted when the
cluster is closed, at interpreter exit if it was not, and, for a run that was
SIGKILLed, by the next cluster started on the machine (:func:`sweep_leftovers`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

#: where the PostgreSQL 15 server binaries are (Debian's postgresql-15 package)
DEFAULT_BINDIR = "/usr/lib/postgresql/15/bin"
ENV_BINDIR = "MYAPP_PG_BINDIR"
#: the OS user that runs the servers when the tests run as root
SERVER_OS_USER = "postgres"
#: the database role the clusters are initialised with (superuser, trust on loopback)
SUPERUSER = "postgres"
#: temporary directories of clusters are named ``<prefix><owner pid>-<random>``
DIR_PREFIX = "myapp-pgcluster-"
#: the physical replication slot the replica streams through
REPLICATION_SLOT = "myapp_replica"

#: Replay delay of a standby, in seconds, asked of the standby itself (what ``myapp check``
#: can run on a replica connection): 0 when everything received has been replayed, else the
#: age of the last replayed transaction. ``NULL`` when the server is not in recovery.
REPLICA_DELAY_SQL = """\
SELECT CASE
    WHEN NOT pg_is_in_recovery() THEN NULL
    WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0.0
    ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0.0)::float8
END"""

_DEFAULT_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "wal_level": "replica",
    "max_wal_senders": "5",
    "max_replication_slots": "5",
    "hot_standby": "on",
    "shared_buffers": "32MB",
    "max_connections": "60",
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "on",
    "log_min_messages": "warning",
    "logging_collector": "off",
    "dynamic_shared_memory_type": "posix",
    # a replica whose primary went away (or that was itself restarted) reconnects quickly
    "wal_retrieve_retry_interval": "200ms",
}

_HBA = """\
# written by myapp.testing.pgcluster: trust for the postgres role, loopback and socket only
local   all             {user}                                  trust
host    all             {user}          127.0.0.1/32            trust
local   replication     {user}                                  trust
host    replication     {user}          127.0.0.1/32            trust
"""


class ClusterError(RuntimeError):
    """A private server could not be set up, started or stopped (the message says why)."""


# ---------------------------------------------------------------------------
# running the server binaries


def bindir() -> Path:
    """The directory of the PostgreSQL server binaries (``MYAPP_PG_BINDIR`` or Debian's)."""
    return Path(os.environ.get(ENV_BINDIR, DEFAULT_BINDIR))


def available() -> str | None:
    """``None`` if private clusters can be started here, else the reason they cannot."""
    for tool in ("initdb", "pg_ctl", "pg_basebackup", "postgres"):
        if not (bindir() / tool).is_file():
            return (
                f"{bindir() / tool} not found: install the PostgreSQL 15 server "
                f"(apt-get install postgresql-15) or set {ENV_BINDIR}"
            )
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam(SERVER_OS_USER)
        except KeyError:
            return f"running as root and there is no {SERVER_OS_USER!r} OS user to run servers as"
    return None


def _as_server_user() -> dict[str, Any]:
    """``subprocess`` keywords that run a command as the server's OS user."""
    if os.geteuid() != 0:
        return {}
    return {"user": SERVER_OS_USER, "group": SERVER_OS_USER, "extra_groups": []}


def _chown_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, SERVER_OS_USER, SERVER_OS_USER)


def _run(args: list[str], *, cwd: Path, timeout: float = 120) -> str:
    """Run a server tool as the server's OS user; its output, or :class:`ClusterError`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    try:
        out = subprocess.run(
            args,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **_as_server_user(),
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{Path(args[0]).name} did not finish in {timeout} s") from exc
    if out.returncode != 0:
        raise ClusterError(
            f"{' '.join(args)} failed (exit {out.returncode}):\n{out.stdout[-2000:]}"
            f"{out.stderr[-2000:]}"
        )
    return out.stdout


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    """``pid`` runs (a zombie, exited and waiting for its parent to reap it, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


# ---------------------------------------------------------------------------
# one server


@dataclass
class PgServer:
    """One private PostgreSQL server: its data directory, port, socket and log."""

    name: str
    datadir: Path
    port: int
    socket_dir: Path
    logfile: Path

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL (psycopg 3) of ``database`` on this server, over TCP."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """The libpq connection string of ``database`` (for :func:`psycopg.connect`)."""
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database}"

    def connect(self, database: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        """A new psycopg connection to ``database``, in autocommit unless told otherwise."""
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 10)
        return psycopg.connect(self.dsn(database), **kwargs)

    def query(self, sql: str, database: str = "postgres") -> Any:
        """The first column of the first row of ``sql`` (autocommit, a connection of its own)."""
        with self.connect(database) as conn:
            row = conn.execute(sql).fetchone()
        return None if row is None else row[0]

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while the server runs, else ``None``."""
        try:
            first = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return None
        pid = int(first) if first.strip().isdigit() else None
        return pid if pid is not None and _pid_alive(pid) else None

    def process_ids(self) -> list[int]:
        """The postmaster and its children (backends, walwriter, walsender...)."""
        pid = self.pid
        return [] if pid is None else [pid, *_children(pid)]

    def is_running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = 60) -> None:
        """Start the server and wait until it accepts connections (:class:`ClusterError` if not)."""
        if self.is_running():
            return
        args = [str(bindir() / "pg_ctl"), "start", "-w", "-t", str(int(timeout))]
        args += ["-D", str(self.datadir), "-l", str(self.logfile)]
        args += ["-o", f"-p {self.port} -k {shlex.quote(str(self.socket_dir))}"]
        try:
            _run(args, cwd=self.datadir.parent, timeout=timeout + 10)
        except ClusterError as exc:
            raise ClusterError(f"{self.name}: {exc}\n--- server log:\n{self.log_tail()}") from exc
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until a client connection succeeds (a standby: once it is consistent)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.connect(connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"{self.name} (port {self.port}) not ready after {timeout} s: {exc}\n"
                        f"--- server log:\n{self.log_tail()}"
                    ) from exc
                time.sleep(0.1)

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """Stop the server (``fast``: clean shutdown; ``immediate``: as after a crash).

        Waits until the postmaster and all its children are gone; a server
        that does not stop in ``timeout`` seconds is SIGKILLed.
        """
        pids = self.process_ids()
        if not pids:
            return
        args = [str(bindir() / "pg_ctl"), "stop", "-w", "-t", str(int(timeout))]
        args += ["-D", str(self.datadir), "-m", mode]
        with contextlib.suppress(ClusterError):
            _run(args, cwd=self.datadir.parent, timeout=timeout + 10)
        _wait_gone(pids, timeout=10)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def _wait_gone(pids: list[int], timeout: float) -> None:
    """Wait until ``pids`` have exited; SIGKILL the survivors after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while any(_pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            for p in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.05)
            return
        time.sleep(0.05)


# ---------------------------------------------------------------------------
# a primary and its replica


@dataclass(frozen=True)
class ReplicaLag:
    """How far the replica is behind the primary, at one moment."""

    #: WAL bytes the primary has written and the replica has not replayed yet
    bytes: int
    #: the replica's own estimate (:data:`REPLICA_DELAY_SQL`): 0 if it replayed all it received
    seconds: float
    #: the primary sees the replica's WAL receiver streaming (``pg_stat_replication``)
    streaming: bool


class PgCluster:
    """A private primary and, with ``replica=True``, a streaming hot-standby replica.

    ``max_prepared_transactions`` > 0 allows ``PREPARE TRANSACTION`` on the
    primary (two-phase commit); the replica gets the same value (a hot
    standby requires at least the primary's). ``settings`` adds or overrides
    ``postgresql.conf`` parameters (values as they would be written there,
    e.g. ``{"log_statement": "'all'"}``). ``base_dir`` is where the temporary
    directory is made (default: the system's temporary directory; it must be
    reachable by the ``postgres`` OS user when running as root).

    Use it as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        *,
        replica: bool = False,
        max_prepared_transactions: int = 0,
        settings: Mapping[str, str] | None = None,
        base_dir: str | Path | None = None,
    ) -> None:
        self.with_replica = replica
        self.max_prepared_transactions = max_prepared_transactions
        self.settings = {
            **_DEFAULT_SETTINGS,
            "max_prepared_transactions": str(max_prepared_transactions),
            **(settings or {}),
        }
        self.base_dir = Path(base_dir) if base_dir is not None else Path(tempfile.gettempdir())
        self.root: Path | None = None
        self.primary: PgServer | None = None
        self.replica: PgServer | None = None
        self._closed = False

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self) -> PgCluster:
        """Create the directory, initialise and start the primary, then the replica."""
        reason = available()
        if reason:
            raise ClusterError(reason)
        sweep_leftovers(self.base_dir)
        self.root = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir=self.base_dir))
        (self.root / "owner.pid").write_text(f"{os.getpid()}\n")
        _LIVE.add(self)
        try:
            os.chmod(self.root, 0o700)
            _chown_to_server_user(self.root)
            self.primary = self._init_primary()
            if self.with_replica:
                self.replica = self._init_replica()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every server (fast, then SIGKILL if needed) and delete the directory."""
        if self._closed:
            return
        self._closed = True
        _LIVE.discard(self)
        if self.root is None:
            return
        # every server with a data directory, started or half-started (not only those assigned)
        for server in _servers_in(self.root):
            try:
                server.stop("fast", timeout=30)
            except Exception:  # keep going: the directory must go anyway
                _wait_gone(server.process_ids(), timeout=0)
        shutil.rmtree(self.root, ignore_errors=True)

    def _server(self, name: str) -> PgServer:
        assert self.root is not None
        socket_dir = self.root / f"{name}.sock"
        socket_dir.mkdir(mode=0o700)
        _chown_to_server_user(socket_dir)
        return PgServer(
            name=name,
            datadir=self.root / name,
            port=free_port(),
            socket_dir=socket_dir,
            logfile=self.root / f"{name}.log",
        )

    def _start_on_free_port(self, server: PgServer) -> None:
        # another process may take the port between free_port() and the server's bind: retry
        for attempt in range(3):
            try:
                server.start()
                return
            except ClusterError:
                if attempt == 2 or "could not" not in server.log_tail():
                    raise
                server.port = free_port()

    def _init_primary(self) -> PgServer:
        assert self.root is not None
        server = self._server("primary")
        args = [str(bindir() / "initdb"), "-D", str(server.datadir), "-U", SUPERUSER]
        args += ["--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"]
        _run(args, cwd=self.root)
        conf = "\n".join(f"{k} = {v}" for k, v in self.settings.items())
        with open(server.datadir / "postgresql.conf", "a") as f:
            f.write(f"\n# myapp.testing.pgcluster\n{conf}\n")
        (server.datadir / "pg_hba.conf").write_text(_HBA.format(user=SUPERUSER))
        self._start_on_free_port(server)
        return server

    def _init_replica(self) -> PgServer:
        assert self.root is not None and self.primary is not None
        server = self._server("replica")
        args = [str(bindir() / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.primary.port)]
        args += ["-U", SUPERUSER, "-D", str(server.datadir), "-R", "-X", "stream"]
        args += ["-c", "fast", "--no-sync", "-C", "-S", REPLICATION_SLOT]
        _run(args, cwd=self.root)
        self.replica = server
        self._start_on_free_port(server)
        self.wait_for_replica()
        return server

    # -- databases -----------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create ``name`` on the primary (the replica follows); its primary URL."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"database name {name!r}: letters, digits and underscores only")
        primary = self._require_primary()
        with primary.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        if self.replica is not None and self.replica.is_running():
            self.wait_for_replica()
        return primary.url(name)

    def _require_primary(self) -> PgServer:
        if self.primary is None:
            raise ClusterError("the cluster is not started")
        return self.primary

    def _require_replica(self) -> PgServer:
        if self.replica is None:
            raise ClusterError("this cluster has no replica (PgCluster(replica=True))")
        return self.replica

    # -- the replica ------------------------------------------------------------

    def replica_lag(self) -> ReplicaLag:
        """The replica's lag now: WAL bytes behind the primary, its own delay estimate.

        Connects to both servers (:class:`psycopg.OperationalError` if the
        replica is down).
        """
        primary, replica = self._require_primary(), self._require_replica()
        with primary.connect() as conn:
            current = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
            streaming = conn.execute(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
            ).fetchone()[0]  # type: ignore[index]
        with replica.connect() as conn:
            behind = conn.execute(
                "SELECT pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn())", (current,)
            ).fetchone()[0]  # type: ignore[index]
            seconds = conn.execute(REPLICA_DELAY_SQL).fetchone()[0]  # type: ignore[index]
        return ReplicaLag(
            bytes=max(0, int(behind)), seconds=float(seconds), streaming=streaming > 0
        )

    def wait_for_replica(self, timeout: float = 60) -> None:
        """Wait until the replica has replayed everything the primary had written on the call."""
        primary, replica = self._require_primary(), self._require_replica()
        with primary.connect() as conn:
            target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        deadline = time.monotonic() + timeout
        while True:
            try:
                with replica.connect(connect_timeout=2) as conn:
                    behind = conn.execute(
                        "SELECT pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn())", (target,)
                    ).fetchone()[0]  # type: ignore[index]
                if behind is not None and behind <= 0:
                    return
            except psycopg.OperationalError:
                behind = "unreachable"
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"the replica did not replay up to {target} in {timeout} s "
                    f"(behind: {behind})\n--- replica log:\n{replica.log_tail()}"
                )
            time.sleep(0.05)

    def pause_replay(self) -> None:
        """Make the replica lag on purpose: it keeps receiving WAL but stops replaying it.

        Reads on the replica then see the data as of the pause; :meth:`replica_lag`
        grows with every write on the primary. :meth:`resume_replay` undoes it.
        """
        with self._require_replica().connect() as conn:
            conn.execute("SELECT pg_wal_replay_pause()")
            deadline = time.monotonic() + 30
            while conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone() != ("paused",):
                if time.monotonic() > deadline:
                    raise ClusterError("the replica did not pause its replay in 30 s")
                time.sleep(0.02)

    def resume_replay(self) -> None:
        """Let a paused replica replay again (it catches up on its own)."""
        with self._require_replica().connect() as conn:
            conn.execute("SELECT pg_wal_replay_resume()")

    def stop_replica(self, mode: str = "fast") -> None:
        """Stop the replica (``immediate`` for a crash); the primary keeps its WAL (slot)."""
        self._require_replica().stop(mode)

    def start_replica(self, timeout: float = 60) -> None:
        """Start the replica again (same port); it resumes streaming from its slot."""
        self._require_replica().start(timeout)

    def process_ids(self) -> list[int]:
        """Every process of every server of this cluster now."""
        return [
            pid for s in (self.primary, self.replica) if s is not None for pid in s.process_ids()
        ]


# ---------------------------------------------------------------------------
# cleanup


def _servers_in(root: Path) -> list[PgServer]:
    """The servers whose data directories are in ``root``, replica first (stop order)."""
    return [
        PgServer(name, root / name, 0, root / f"{name}.sock", root / f"{name}.log")
        for name in ("replica", "primary")
        if (root / name).is_dir()
    ]


#: clusters started and not closed yet (strong references: closed at exit even if dropped)
_LIVE: set[PgCluster] = set()


@atexit.register
def _close_live_clusters() -> None:
    for cluster in list(_LIVE):
        cluster.close()


def sweep_leftovers(base_dir: str | Path | None = None) -> list[Path]:
    """Stop the servers of, and delete, cluster directories whose owner process is dead.

    A test run killed with SIGKILL cannot clean up after itself; the next
    cluster started on the machine does it. Directories of live owners are
    left alone. Returns the directories removed.
    """
    base = Path(base_dir) if base_dir is not None else Path(tempfile.gettempdir())
    removed = []
    for root in base.glob(f"{DIR_PREFIX}*"):
        try:
            owner = int((root / "owner.pid").read_text())
        except (OSError, ValueError):
            owner = None
        if owner is None or _pid_alive(owner):
            # no owner file: a cluster being created right now, or not ours to judge
            continue
        for server in _servers_in(root):
            server.stop("immediate", timeout=20)
        shutil.rmtree(root, ignore_errors=True)
        removed.append(root)
    return removed


# ---------------------------------------------------------------------------
# pytest


def pg_cluster_fixture(
    *,
    replica: bool = False,
    max_prepared_transactions: int = 0,
    settings: Mapping[str, str] | None = None,
    scope: str = "session",
) -> Callable[..., Iterator[PgCluster]]:
    """A pytest fixture (session-scoped by default) yielding a started :class:`PgCluster`.

    Assign it to a name in a conftest.py or test module; the fixture has that
    name. Each pytest-xdist worker gets its own cluster. The cluster is closed
    after the last test using it, whatever the tests' outcome. When the server
    binaries are missing the tests using it fail with the reason (they do not skip).
    """
    import pytest

    @pytest.fixture(scope=scope)  # type: ignore[call-overload, misc]
    def _pg_cluster() -> Iterator[PgCluster]:
        cluster = PgCluster(
            replica=replica, max_prepared_transactions=max_prepared_transactions, settings=settings
        )
        with cluster:
            yield cluster

    return _pg_cluster
