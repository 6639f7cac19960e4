"""The operator's signing keys, apart from the hub's (see exchange.store.operator_keys), and the
log keys the operator approved for a rotation of the hub's checkpoint key
(exchange.store.log_keys).

An existing database gets an empty table; the hub, at its next start, records the hub key as the
operator's key until then and introduces the operator's own key with an entry signed by it
(docs/operations.md, "The operator's key").

Revision ID: 0006
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operator_keys",
        sa.Column("keyid", sa.String(64), primary_key=True),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        sa.Column("valid_from_us", sa.BigInteger, nullable=False),
        sa.Column("valid_until_us", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "log_keys",
        sa.Column("keyid", sa.String(64), primary_key=True),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        sa.Column("approved_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("log_keys")
    op.drop_table("operator_keys")
