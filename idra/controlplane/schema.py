"""The control plane's tables (SQLAlchemy Core), as the newest migration leaves them.

The store queries through these objects; the migrations (``migrations/versions``) create
and change the tables themselves and never import this module, so an old migration keeps
meaning what it meant.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("instance_id", sa.Text, nullable=False, unique=True),
    sa.Column("public_ip", sa.Text, nullable=False),
    sa.Column("public_key", sa.Text, nullable=False),
    sa.Column("listen_port", sa.Integer, nullable=False),
    sa.Column("region", sa.Text, nullable=False),
    sa.Column("agent_version", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False, server_default="active"),
    sa.Column("drain_reason", sa.Text),
    sa.Column("drain_started_at", sa.Float),
    sa.Column("registered_at", sa.Float, nullable=False),
    sa.Column("last_heartbeat_at", sa.Float),
    sa.Column("reported_state", sa.Text),
    sa.Column("active_peers", sa.Integer, nullable=False, server_default="0"),
    sa.Column("stats", sa.Text),
    sa.Column("nftables_baseline", sa.Text),
    sa.Column("root_readonly_baseline", sa.Integer, nullable=False, server_default="0"),
    sa.Column("account_id", sa.Text),
    sa.Column("credential_sha256", sa.Text),
    sa.Column("identity_refusals", sa.Integer, nullable=False, server_default="0"),
    sa.Column("identity_refused_at", sa.Float),
)

retired = sa.Table(
    "retired",
    metadata,
    sa.Column("instance_id", sa.Text, primary_key=True),
    sa.Column("retired_at", sa.Float, nullable=False),
)

peers = sa.Table(
    "peers",
    metadata,
    sa.Column("public_key", sa.Text, primary_key=True),
    sa.Column("node_id", sa.Text, sa.ForeignKey("nodes.id", ondelete="CASCADE"), nullable=False),
    sa.Column("slot", sa.BigInteger, nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

canaries = sa.Table(
    "canaries",
    metadata,
    sa.Column("node_id", sa.Text, sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("public_key", sa.Text, nullable=False),
    sa.Column("slot", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

changes = sa.Table(
    "changes",
    metadata,
    sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("node_id", sa.Text, nullable=False),
    sa.Column("public_key", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# One key, one owner: every WireGuard public key the store holds has one row here,
# written in the same transaction as the node, client peer or canary peer that uses it.
# The primary key makes the database refuse a second owner, whoever writes; ``slot``
# (UNIQUE) is the address of a client or of a canary key (the same on every node).
key_owners = sa.Table(
    "key_owners",
    metadata,
    sa.Column("public_key", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),  # node, client, canary
    sa.Column("owner", sa.Text),  # the node id, for a node's key
    sa.Column("slot", sa.BigInteger, unique=True),
)

# Named counters; ``version`` is the change-log version, bumped inside each writing
# transaction (its row lock orders writers: versions are commit-ordered).
counters = sa.Table(
    "counters",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

# The ops loop's state (``idra ops run``), so a replaced loop carries on. A lease: who
# holds it until when (seconds since the epoch, by the database's clock).
ops_leases = sa.Table(
    "ops_leases",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("holder", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

# The canary's confirmations: how many runs in a row listed the node.
canary_listings = sa.Table(
    "canary_listings",
    metadata,
    sa.Column("node_id", sa.Text, sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("listed_runs", sa.Integer, nullable=False),
)
