"""The hub's identity in its database: the fingerprint of the subject secret it was created
with (see exchange.ownership); the ledger's head row keeps the tree's right edge and the last
entry's time (see exchange.ledger.storage).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hub_identity",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    with op.batch_alter_table("ledger_head") as table:
        table.add_column(sa.Column("edge", sa.LargeBinary, nullable=True))
        table.add_column(sa.Column("last_time_ns", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ledger_head") as table:
        table.drop_column("last_time_ns")
        table.drop_column("edge")
    op.drop_table("hub_identity")
