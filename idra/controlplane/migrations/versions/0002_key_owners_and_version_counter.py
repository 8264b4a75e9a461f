"""One key, one owner in a table (both backends) and a commit-ordered version counter.

``key_owners`` replaces the SQLite-only triggers (dropped here: SQLite serves from one
process, so no older release runs beside this one); ``counters.version`` starts at the
highest version the change log has handed out.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TRIGGERS = [f"{table}_key_{event}" for table in ("nodes", "peers", "canaries")
            for event in ("insert", "update")]  # fmt: skip


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for trigger in TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.create_table(
        "key_owners",
        sa.Column("public_key", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("owner", sa.Text),
        sa.Column("slot", sa.BigInteger, unique=True),
    )
    op.create_table(
        "counters",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.execute(
        "INSERT INTO key_owners (public_key, kind, owner, slot) "
        "SELECT public_key, 'node', id, NULL FROM nodes"
    )
    op.execute(
        "INSERT INTO key_owners (public_key, kind, owner, slot) "
        "SELECT public_key, 'client', NULL, slot FROM peers"
    )
    op.execute(
        "INSERT INTO key_owners (public_key, kind, owner, slot) "
        "SELECT public_key, 'canary', NULL, MIN(slot) FROM canaries GROUP BY public_key"
    )
    version = bind.execute(sa.text("SELECT MAX(version) FROM changes")).scalar() or 0
    if bind.dialect.name == "sqlite":  # AUTOINCREMENT remembers versions pruned since
        has_sequence = bind.execute(
            sa.text("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'")
        ).scalar()
        if has_sequence:
            seq = bind.execute(
                sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'changes'")
            ).scalar()
            version = max(version, seq or 0)
    op.execute(sa.text("INSERT INTO counters (name, value) VALUES ('version', :v)").bindparams(
        v=version))  # fmt: skip


def downgrade() -> None:
    op.drop_table("counters")
    op.drop_table("key_owners")
