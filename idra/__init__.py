"""IDRA exit nodes: provisioning and operation of a stateless WireGuard exit-node fleet."""

__version__ = "0.1.0"
