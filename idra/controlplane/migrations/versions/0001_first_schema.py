"""The schema of the releases before Alembic (their SQLite files upgrade from here).

On an empty database: create it. On a SQLite file of an earlier release (no
``alembic_version`` yet): add what its ad-hoc upgrades used to add at start.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES = {
    "nodes": [
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
    ],
    "retired": [
        sa.Column("instance_id", sa.Text, primary_key=True),
        sa.Column("retired_at", sa.Float, nullable=False),
    ],
    "peers": [
        sa.Column("public_key", sa.Text, primary_key=True),
        sa.Column(
            "node_id", sa.Text, sa.ForeignKey("nodes.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("slot", sa.BigInteger, nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
    ],
    "canaries": [
        sa.Column(
            "node_id", sa.Text, sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("slot", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    ],
    "changes": [
        sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("node_id", sa.Text, nullable=False),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False, server_default="0"),
    ],
}
INDEXES = {
    "peers_node": ("peers", ["node_id"]),
    "peers_node_slot": ("peers", ["node_id", "slot"]),
    "canaries_key": ("canaries", ["public_key"]),
    "changes_node": ("changes", ["node_id", "version"]),
    "changes_age": ("changes", ["created_at"]),
    "nodes_key": ("nodes", ["public_key"]),
}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    existing = set(inspector.get_table_names())
    for table, columns in TABLES.items():
        if table not in existing:
            op.create_table(table, *columns)
            continue
        have = {c["name"] for c in inspector.get_columns(table)}
        for column in columns:  # an earlier release's file: the columns added since
            if column.name not in have:
                op.add_column(table, column.copy())
    have_indexes = {i["name"] for t in TABLES if t in existing for i in inspector.get_indexes(t)}
    for name, (table, columns) in INDEXES.items():
        if name not in have_indexes:
            op.create_index(name, table, columns)


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
