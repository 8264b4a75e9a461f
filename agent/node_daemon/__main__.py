"""python -m node_daemon"""

from node_daemon.cli import main

main()
