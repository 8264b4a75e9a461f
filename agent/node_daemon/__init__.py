"""node-daemon: the IDRA exit-node agent (register, peer sync, heartbeat, drain)."""

__version__ = "0.1.0"
