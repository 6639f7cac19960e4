"""Request claims: who holds a request id (hub process), until when (lease), and the ledger
entry its answer was committed with (see exchange.store.requests).

Revision ID: 0010_request_claims
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_request_claims"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("holder", sa.String(200), nullable=True))
        batch.add_column(sa.Column("lease_until_us", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("ledger_sequence", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("ledger_sequence")
        batch.drop_column("lease_until_us")
        batch.drop_column("holder")
