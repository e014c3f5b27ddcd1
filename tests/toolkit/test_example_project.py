"""The outside example (examples/notes_service) uses myapp only through its public API.

Its own tests run in CI (``.ci/run``) on SQLite and PostgreSQL, installed in
the same virtual environment; here: no private name is imported.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "notes_service"
#: the modules a project may import from, with their public names
PUBLIC = ("myapp.db", "myapp.testing")
#: what it may include with config.include(...)
INCLUDABLE = ("myapp.db.pyramid",)


def _sources() -> list[Path]:
    return sorted(p for p in EXAMPLE.rglob("*.py") if ".egg-info" not in str(p))


def test_the_example_exists() -> None:
    names = {p.relative_to(EXAMPLE).as_posix() for p in _sources()}
    assert {"notes_service/models.py", "notes_service/views.py", "tests/test_notes.py"} <= names
    assert any(n.startswith("notes_service/alembic/versions/") for n in names)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: p.relative_to(EXAMPLE).as_posix())
def test_only_public_names_of_myapp(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "myapp":
                    pytest.fail(
                        f"{path.name}:{node.lineno}: import {alias.name} (use from-imports)"
                    )
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "myapp":
            assert node.module in PUBLIC, f"{path.name}:{node.lineno}: from {node.module}"
            public = set(importlib.import_module(node.module).__all__)
            for alias in node.names:
                assert alias.name in public, f"{path.name}:{node.lineno}: {alias.name} is private"
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "include"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).startswith("myapp")
        ):
            assert node.args[0].value in INCLUDABLE, f"{path.name}:{node.lineno}"
