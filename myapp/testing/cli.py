"""Running ``myapp`` management commands from tests: the real console script, in a subprocess.

``run_myapp("-c", ini, "check")`` returns a :class:`Result` (exit status,
stdout, stderr); :func:`assert_one_error_line` checks the CLI's error
contract (one ``myapp: error:`` line, no traceback, the expected status).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).with_name("myapp")
TIMEOUT = 120
#: Environment variables that would change what a command reads or prints.
UNSET = ("DATABASE_URL", "MYAPP_ENV", "MYAPP_CONFIG", "FORCE_COLOR", "TTY_COMPATIBLE")


def myapp_command() -> list[str]:
    """The installed console script, or ``python -m myapp.commands`` if it is missing."""
    if SCRIPT.exists():
        return [str(SCRIPT)]
    return [sys.executable, "-m", "myapp.commands"]


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without the variables that override an ini file."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(extra)
    return env


def write_ini(path: Path, sqlalchemy_url: str, script_location: str | None = None) -> Path:
    """Write testing.ini to ``path`` with another ``sqlalchemy.url`` (and ``script_location``)."""
    source = (ROOT / "testing.ini").read_text()
    line = f"sqlalchemy.url = {sqlalchemy_url}"
    source, n = re.subn(r"(?m)^sqlalchemy\.url\s*=.*$", line, source)
    assert n == 1, "testing.ini has no sqlalchemy.url line"
    if script_location is not None:
        source, n = re.subn(
            r"(?m)^script_location\s*=.*$", f"script_location = {script_location}", source
        )
        assert n == 1, "testing.ini has no script_location line"
    path.write_text(source)
    return path


@dataclass
class Result:
    """What a command did: its arguments, exit status and output."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def __str__(self) -> str:
        return (
            f"$ myapp {' '.join(self.args)}\nexit {self.returncode}\n"
            f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )


def assert_one_error_line(result: Result, returncode: int, *fragments: str) -> str:
    """The command failed with ``returncode`` and ONE ``myapp: error:`` line, no traceback."""
    assert result.returncode == returncode, result
    assert "Traceback" not in result.stderr, result
    assert len(result.stderr_lines) == 1, result
    line = result.stderr_lines[0]
    assert line.startswith("myapp: error: "), result
    for fragment in fragments:
        assert fragment in line, result
    return line


def run_myapp(
    *args: str,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    input: str | None = None,
    prefix: list[str] | None = None,
) -> Result:
    """Run the console script with ``args`` (stdin: ``input`` or empty) and capture it."""
    argv = [*(prefix or myapp_command()), *args]
    proc = subprocess.run(
        argv,
        cwd=cwd,
        env=env if env is not None else clean_environ(),
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return Result(list(args), proc.returncode, proc.stdout, proc.stderr)
