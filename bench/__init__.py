"""Benchmarks, run by hand with ``python -m bench.run``; results go to docs/benchmarks.md."""
