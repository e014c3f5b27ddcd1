"""Side-by-side benchmarks (issue 7). Not tests: scripts that print figures and write
JSON + PNG under ``docs/benchmarks/``. See ``docs/benchmarks.md``; ``python -m benchmarks.all``
runs them all."""
