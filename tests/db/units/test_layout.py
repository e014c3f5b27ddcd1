"""``myapp.db`` can be lifted into another project: no domain import, no Pyramid at import time."""

from __future__ import annotations

import subprocess
import sys


def test_importing_myapp_db_loads_neither_pyramid_nor_the_domain() -> None:
    code = (
        "import sys, myapp.db, myapp.db.nesting, myapp.db.units, myapp.db.batch; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyramid' "
        "or m.startswith(('myapp.models', 'myapp.services', 'myapp.api', 'myapp.views'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_only_the_wiring_module_imports_pyramid() -> None:
    code = "import sys, myapp.db.pyramid; print('pyramid.config' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "True"
