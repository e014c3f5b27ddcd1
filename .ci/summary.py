"""CI's verdict on the JUnit files of every leg: counts per Python and per backend, no skips.

Usage: python .ci/summary.py ALLOWED_SKIPS LEG[@BACKENDS]=JUNIT.xml [...]

A leg is one Python (``3.11``, ``3.12``, ``3.13``, ``3.11-floors``) and one suite. Prints,
per leg and per backend (from the test id's ``sqlite``/``postgresql``/``mysql`` parameter;
``-`` for tests without one), how many passed, failed, errored and were skipped, then the
totals per backend. ``@BACKENDS`` (comma-separated) declares the backends a leg runs
(default ``sqlite,postgresql``). Fails (exit 1) if a test failed or errored, if a declared
backend ran no test in a leg that uses the database, if no leg declared and ran the mysql
backend (the MariaDB half of CI), or if a test was skipped without being on the allow-list.
"""

from __future__ import annotations

import fnmatch
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

BACKENDS = ("sqlite", "postgresql", "mysql")
#: the backends of a leg that declares none
DEFAULT_BACKENDS = ("sqlite", "postgresql")
#: backends CI must have run somewhere (the MariaDB half of CI included)
REQUIRED = ("sqlite", "postgresql", "mysql")


def backend_of(name: str) -> str:
    match = re.search(r"\[(.*)\]$", name)
    if match:
        for part in re.split(r"[-,]", match.group(1)):
            if part in BACKENDS:
                return part
    return "-"


def outcome(case: ET.Element) -> str:
    tags = {child.tag for child in case}
    for tag in ("failure", "error", "skipped"):
        if tag in tags:
            return tag
    return "passed"


def explain(case: ET.Element, lines: int = 12) -> str:
    """The failure's message and its last ``E`` lines (the whole exception chain's ends)."""
    element = next(c for c in case if c.tag in ("failure", "error"))
    text = element.text or ""
    errors = [line for line in text.splitlines() if line.startswith("E ")]
    message = (element.get("message") or "").splitlines()[:3]
    shown = [*message, *errors[-lines:]]
    return "".join(f"\n      {line[:300]}" for line in shown)


def node_id(case: ET.Element) -> str:
    classname = case.get("classname", "")
    return f"{classname.replace('.', '/')}.py::{case.get('name', '')}" if classname else ""


def allowed_patterns(path: Path) -> list[str]:
    patterns = []
    for line in path.read_text().splitlines():
        line = line.split(" # ")[0].strip()
        if line and not line.startswith("#"):
            patterns.append(line)
    return patterns


def main(argv: list[str]) -> int:
    allowed = allowed_patterns(Path(argv[1]))
    problems: list[str] = []
    per_python: dict[str, Counter[str]] = defaultdict(Counter)
    per_backend: dict[str, Counter[str]] = defaultdict(Counter)
    print(f"{'leg':<34} {'backend':<11} {'passed':>7} {'failed':>7} {'errors':>7} {'skipped':>8}")
    for spec in argv[2:]:
        leg, _, path = spec.partition("=")
        leg, _, declared = leg.partition("@")
        expected = tuple(declared.split(",")) if declared else DEFAULT_BACKENDS
        cases = list(ET.parse(path).getroot().iter("testcase"))
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for case in cases:
            result = outcome(case)
            counts[backend_of(case.get("name", ""))][result] += 1
            if result == "skipped":
                nid = node_id(case)
                if not any(fnmatch.fnmatch(nid, p) or nid == p for p in allowed):
                    message = next(iter(case)).get("message", "")
                    problems.append(f"{leg}: skipped without being allowed: {nid} ({message})")
            elif result in ("failure", "error"):
                problems.append(f"{leg}: {result}: {node_id(case)}{explain(case)}")
        for backend in sorted(counts):
            c = counts[backend]
            print(
                f"{leg:<34} {backend:<11} {c['passed']:>7} {c['failure']:>7} {c['error']:>7} "
                f"{c['skipped']:>8}"
            )
            per_python[leg.split(":")[0]].update(c)
            per_backend[backend].update(c)
        if any(b in counts for b in BACKENDS):
            for backend in expected:
                if counts[backend]["passed"] == 0:
                    problems.append(f"{leg}: no {backend} test passed (the backend did not run)")
        if not cases:
            problems.append(f"{leg}: no test ran")
    print()
    for python, c in per_python.items():
        total = sum(c.values())
        print(
            f"Python {python}: {total} tests: {c['passed']} passed, {c['failure']} failed, "
            f"{c['error']} errors, {c['skipped']} skipped"
        )
    print()
    for backend in (*BACKENDS, "-"):
        c = per_backend.get(backend, Counter())
        print(
            f"backend {backend}: {c['passed']} passed, {c['failure']} failed, "
            f"{c['error']} errors, {c['skipped']} skipped"
        )
    for backend in REQUIRED:
        if per_backend[backend]["passed"] == 0:
            problems.append(f"no {backend} test passed in any leg (that half of CI did not run)")
    if problems:
        print("\nCI FAILED:", *problems, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
