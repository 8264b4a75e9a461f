"""The ops loop's state: its lease (``ops_leases``) and the canary's confirmations
(``canary_listings``). Two new tables only: the release before runs beside it.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ops_leases",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_table(
        "canary_listings",
        sa.Column(
            "node_id", sa.Text, sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("listed_runs", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("canary_listings")
    op.drop_table("ops_leases")
