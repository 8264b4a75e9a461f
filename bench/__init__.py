"""Benchmarks, run by hand with ``python -m bench.run``; results go to docs/benchmarks.md."""

import signal
import sys

# A bench stopped with SIGTERM (kill, timeout) unwinds like Ctrl-C: its ``finally`` blocks
# remove the namespaces, servers and PostgreSQL clusters it started.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
