"""``python -m idra.lab.supervise -- COMMAND…``: respawn COMMAND whenever it exits, as
OpenRC's supervise-daemon does for the agent on a real node. SIGTERM stops both."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

RESPAWN_DELAY = 1.0


def supervise(command: list[str]) -> int:
    stopping = False
    child: subprocess.Popen | None = None

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        if child and child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        child = subprocess.Popen(command)
        code = child.wait()
        if not stopping:
            print(f"supervise: exited with {code}, restarting", file=sys.stderr, flush=True)
            time.sleep(RESPAWN_DELAY)
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(supervise(args[1:] if args[:1] == ["--"] else args))
