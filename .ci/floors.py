"""Print pip constraints pinning the stack to the lowest versions pyproject.toml admits.

The stack: SQLAlchemy, transaction, zope.sqlalchemy, pyramid, pyramid_tm,
pyramid_retry, psycopg, alembic. ``name>=X`` becomes ``name==X`` (the
``[binary]`` extra of psycopg pins psycopg-binary too). Used by .ci/run for
the "dependency floors" leg of the version matrix.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

STACK = {
    "sqlalchemy",
    "transaction",
    "zope.sqlalchemy",
    "pyramid",
    "pyramid_tm",
    "pyramid_retry",
    "psycopg",
    "alembic",
}


def main() -> int:
    pyproject = Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    found = set()
    for dep in deps:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*).*", dep)
        if match is None:
            continue
        name, extras, floor = match.groups()
        key = name.lower().replace("-", "_")
        if key not in {s.replace("-", "_") for s in STACK}:
            continue
        found.add(key)
        print(f"{name}=={floor}")
        if extras and "binary" in extras:
            print(f"{name}-binary=={floor}")
    missing = {s.replace("-", "_") for s in STACK} - found
    if missing:
        print(f"floors: no '>=' floor in pyproject.toml for {sorted(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
