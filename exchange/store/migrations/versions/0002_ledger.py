"""Ledger: head row, entries, persisted Merkle nodes, checkpoints (see exchange.ledger.storage).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# On SQLite only INTEGER PRIMARY KEY is the rowid itself; BIGINT would add a second b-tree.
KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    head = op.create_table(
        "ledger_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("last_leaf_hash", sa.LargeBinary, nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "size": 0, "last_leaf_hash": bytes(32)}])
    op.create_table(
        "ledger_entries",
        sa.Column("sequence", KEY, primary_key=True, autoincrement=False),
        sa.Column("entry", sa.LargeBinary, nullable=False),
        sa.Column("envelope", sa.LargeBinary, nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary, nullable=False),
        sa.Column("subject_ref", sa.LargeBinary, nullable=True),
    )
    op.create_index("ix_ledger_entries_subject_ref", "ledger_entries", ["subject_ref"])
    op.create_table(
        "ledger_nodes",
        # index * 64 + level: one integer key per complete aligned subtree above the leaves
        sa.Column("node_id", KEY, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "ledger_checkpoints",
        sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("root_hash", sa.LargeBinary, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ledger_checkpoints")
    op.drop_table("ledger_nodes")
    op.drop_index("ix_ledger_entries_subject_ref", table_name="ledger_entries")
    op.drop_table("ledger_entries")
    op.drop_table("ledger_head")
