"""``myapp shell``: the session's unit of work, committed when the shell ends well."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Cli, InProcess, assert_one_error_line, myapp_command, run_myapp

SEES_THE_APPLICATION = """
from myapp.db import current_session, is_in_transaction
from myapp.db import current_transaction
assert not is_in_transaction(), "tm.commit()/tm.abort() are the shell user's to call"
assert current_session() is dbsession is request.dbsession
assert db is registry["db"] and tm is request.tm
assert models.Item is Item and settings["myapp.env"] == "testing"
item = Item(name="from the shell")
dbsession.add(item)
dbsession.flush()
assert current_transaction() is not None, "the session began its unit of work"
print("id:", item.id)
"""


def test_shell_code_sees_the_app_and_commits(migrated_cli: Cli) -> None:
    result = migrated_cli.run("shell", "-C", SEES_THE_APPLICATION)
    assert result.returncode == 0, result
    assert "id: 1" in result.stdout
    assert result.stderr == ""
    # committed: visible from another connection after the process ended
    assert migrated_cli.item_names() == ["from the shell"]


def test_shell_code_that_raises_commits_nothing(migrated_cli: Cli) -> None:
    code = "dbsession.add(Item(name='doomed'))\ndbsession.flush()\nraise RuntimeError('boom')\n"
    result = migrated_cli.run("shell", "-C", code)
    assert assert_one_error_line(result, 1) == "myapp: error: RuntimeError: boom"
    assert migrated_cli.item_names() == []


@pytest.mark.parametrize(
    ("ending", "returncode", "stderr"),
    [
        ("raise KeyboardInterrupt", 130, "myapp: error: interrupted\n"),
        ("raise SystemExit(3)", 3, ""),
        ("raise SystemExit('bye')", 1, "myapp: error: bye\n"),
        ("dbsession.add(Item(id=1, name='duplicate'))\ndbsession.flush()", 1, "IntegrityError"),
    ],
    ids=["ctrl-c", "exit-3", "exit-message", "integrity-error"],
)
def test_every_way_of_failing_commits_nothing(
    in_process: InProcess, ending: str, returncode: int, stderr: str
) -> None:
    code = f"dbsession.add(Item(id=1, name='doomed'))\ndbsession.flush()\n{ending}\n"
    result = in_process("shell", "-C", code)
    assert result.returncode == returncode, result
    if stderr == "IntegrityError":  # the driver's message follows, per backend
        assert result.stderr.startswith("myapp: error: IntegrityError: "), result
        assert result.stderr.count("\n") == 1, result
    else:
        assert result.stderr == stderr
    assert in_process.cli.item_names() == []


def test_tm_commit_inside_the_shell_commits_at_once(migrated_cli: Cli) -> None:
    """What the banner promises: tm.commit() commits now, the rest is one more unit of work."""
    code = (
        "dbsession.add(Item(name='kept'))\n"
        "tm.commit()\n"
        "dbsession.add(Item(name='lost'))\n"
        "dbsession.flush()\n"
        "raise ValueError('after the commit')\n"
    )
    result = migrated_cli.run("shell", "--command", code, "--traceback")
    assert result.returncode == 1, result
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr_lines[-1] == "myapp: error: ValueError: after the commit"
    assert migrated_cli.item_names() == ["kept"]


def test_shell_runs_code_from_stdin(migrated_cli: Cli) -> None:
    script = (
        "dbsession.add(Item(name='piped'))\n"
        "print(dbsession.scalar(select(func.count()).select_from(Item)))\n"
    )
    result = migrated_cli.run("shell", input=script)
    assert result.returncode == 0, result
    assert result.stdout.strip() == "1"
    assert migrated_cli.item_names() == ["piped"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses a Linux pseudo-terminal")
def test_interactive_shell_commits_when_left_with_exit(migrated_cli: Cli) -> None:
    """A real terminal: the banner, a statement, exit() → committed, status 0."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*myapp_command(), "-c", str(migrated_cli.ini), "shell", "-i", "python"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=migrated_cli.environ,
        close_fds=True,
    )
    os.close(slave)
    output = b""

    def read_until(token: bytes, timeout: float = 60) -> None:
        nonlocal output
        deadline = time.monotonic() + timeout
        while token not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
        assert token in output, output.decode(errors="replace")

    try:
        read_until(b">>> ")
        assert b"A unit of work is open" in output
        assert b"dbsession" in output and b"Item" in output
        output = b""
        os.write(master, b"dbsession.add(Item(name='typed'))\n")
        read_until(b">>> ")
        os.write(master, b"exit()\n")
        assert proc.wait(timeout=60) == 0, output.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert migrated_cli.item_names() == ["typed"]


def test_pshell_setup_gives_pshell_the_same_names_and_unit_of_work(migrated_cli: Cli) -> None:
    """``pshell app.ini`` (the ini's [pshell] setup is myapp.commands.shell.pshell_setup)."""
    pshell = Path(sys.executable).with_name("pshell")
    if not pshell.exists():
        pytest.skip("the pshell script is not installed next to this Python")
    code = (
        "from myapp.db import current_session, is_in_transaction\n"
        "same = current_session() is dbsession and db is registry['db']\n"
        "print('checks', is_in_transaction(), same)\n"
        "dbsession.add(Item(name='from pshell'))\n"
    )
    result = run_myapp(
        str(migrated_cli.ini), prefix=[str(pshell)], env=migrated_cli.environ, input=code
    )
    assert result.returncode == 0, result
    assert "checks False True" in result.stdout  # the session began its own unit of work
    # the short banner of myapp's pshell runner, not pshell's docstring dump (12.7 KB)
    banner = result.stdout + result.stderr
    assert "Loaded: " in banner and "A unit of work is open" in banner
    assert len(banner) < 2500, len(banner)
    assert "Environment:" not in banner
    assert migrated_cli.item_names() == ["from pshell"]
