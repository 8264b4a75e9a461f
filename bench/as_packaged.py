"""``node-daemon`` with the imports of the packaged agent (``node-daemon.pyz``), for
memory figures: the dev environment has rich installed (for ``idra``), and httpx then
imports it for its own command line (3.5 MiB the packaged agent never loads).

    python -m bench.as_packaged run ...      (the flags of node-daemon run)
"""

from __future__ import annotations

import sys

sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

if __name__ == "__main__":
    from node_daemon.cli import main

    main()
