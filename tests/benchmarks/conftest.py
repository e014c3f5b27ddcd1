"""The benchmarks live in the top-level ``benchmarks`` package beside ``myapp``: make sure the
project root is importable whatever way pytest was started (``pytest`` or ``python -m pytest``)."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
