"""A real ``pserve`` process for tests that need HTTP over a socket (browser, load, transcripts).

``ServerProcess`` copies an ini file with a free loopback port and a database
of its own (a SQLite file under the given directory, or a fresh PostgreSQL
database that is dropped afterwards), migrates it with ``alembic upgrade
head`` as in production, starts ``pserve`` and waits until it listens::

    with ServerProcess(tmp_path, backend="sqlite") as server:
        status, content_type, body = server.request("GET", "/items")

Stopping terminates the process (then kills it after 20 s) and drops the
PostgreSQL database, whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
#: Environment variables that would override the copied ini file's settings.
OVERRIDING_ENV = ("DATABASE_URL", "MYAPP_ENV", "MYAPP_ADMIN_TOKEN_HASH", "MYAPP_SESSION_SECRET")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_ini(base: Path, target: Path, settings: dict[str, str]) -> Path:
    """Copy ``base`` to ``target``, replacing each ``key = value`` line of ``settings``.

    Keys absent from ``base`` are added to ``[app:main]``.
    """
    text = base.read_text()
    missing = []
    for key, value in settings.items():
        text, count = re.subn(rf"(?m)^{re.escape(key)}\s*=.*$", f"{key} = {value}", text)
        if count > 1:
            raise ValueError(f"{base} sets {key} more than once")
        if count == 0:
            missing.append(f"{key} = {value}")
    if missing:
        text, count = re.subn(
            r"(?m)^use = egg:myapp\s*$", "use = egg:myapp\n" + "\n".join(missing), text
        )
        if count != 1:
            raise ValueError(f"{base} has no single 'use = egg:myapp' line")
    target.write_text(text)
    return target


class ServerProcess:
    """``pserve`` on a copy of ``base_ini`` with its own database and a free port."""

    def __init__(
        self,
        directory: Path,
        *,
        backend: str = "sqlite",
        dburl: str | None = None,
        base_ini: Path | None = None,
        settings: dict[str, str] | None = None,
        sqlite_file: str = "server.sqlite",
        startup_timeout: float = 60.0,
    ) -> None:
        if backend != "sqlite" and not dburl:
            raise ValueError(f"the {backend} backend needs a server URL (--dburl)")
        self.directory = Path(directory)
        self.backend = backend
        self.dburl = dburl
        self.base_ini = base_ini or Path(__file__).resolve().parents[2] / "development.ini"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.sqlite_path = self.directory / sqlite_file
        self.settings = {
            "sqlalchemy.url": f"sqlite:///{self.sqlite_path}",
            "listen": f"127.0.0.1:{self.port}",
            "script_location": "myapp:alembic",
            **(settings or {}),
        }
        self.startup_timeout = startup_timeout
        self.ini = self.directory / "server.ini"
        self.log_path = self.directory / "pserve.log"
        self.database_url = f"sqlite:///{self.sqlite_path}"
        self.process: subprocess.Popen[bytes] | None = None
        self._pg: Any = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> ServerProcess:
        """Write the ini, create and migrate the database, start pserve, wait for the port."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        write_ini(self.base_ini, self.ini, self.settings)
        env = {k: v for k, v in os.environ.items() if k not in OVERRIDING_ENV}
        try:
            if self.backend != "sqlite":  # PostgreSQL or MySQL/MariaDB: a fresh database
                from .database import test_database_for

                self._pg = test_database_for(self.dburl)  # type: ignore[arg-type]
                self.database_url = env["DATABASE_URL"] = self._pg.create()
            migrate = subprocess.run(
                [str(BIN / "alembic"), "-c", str(self.ini), "upgrade", "head"],
                cwd=self.directory,
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            if migrate.returncode != 0:
                raise RuntimeError(f"alembic upgrade failed:\n{migrate.stdout}{migrate.stderr}")
            with self.log_path.open("wb") as out:
                self.process = subprocess.Popen(
                    [str(BIN / "pserve"), str(self.ini)],
                    cwd=self.directory,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            self._wait_until_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_listening(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"pserve exited with {self.process.returncode}:\n{self.log_text()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return  # a bare connect: no HTTP request, so no log line
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(
            f"pserve did not listen within {self.startup_timeout} s:\n{self.log_text()}"
        )

    def stop(self) -> None:
        """Terminate the server (kill after 20 s) and drop its PostgreSQL database."""
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=20)
        finally:
            if self._pg is not None:
                self._pg.drop()
                self._pg = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- use ---------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.process is not None, "the server is not running"
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> tuple[int, str, Any]:
        """One HTTP request; returns ``(status, content type, decoded JSON body)``."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return (
                    response.status,
                    response.headers["Content-Type"],
                    json.loads(response.read()),
                )
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.headers["Content-Type"], json.loads(error.read())
